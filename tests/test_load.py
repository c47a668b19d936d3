"""sw.io.load: section headers scanned without decoding agree with the reader."""

import numpy as np
import pytest

from sim.cases import corrupt, random_container
from sw.codec.container import CodedTensor, RawTensor, parse, read_container, write_container
from sw.format import SectionKind
from sw.io.load import scan_headers
from sw.params import CodecParams

PARAMS = CodecParams(state_count=8)


@pytest.mark.parametrize("seed", range(20))
def test_scan_matches_reader(seed):
    data, tensors = random_container(seed, PARAMS, sections=5)
    scan = scan_headers(data)
    container = read_container(data)
    assert scan.complete and scan.problem == "" and scan.params == PARAMS
    assert [s.offset for s in scan.sections] == [s.offset for s in container.sections]
    for header, tensor in zip(scan.sections, tensors):
        assert header.dims == tensor.shape
        assert header.values == int(np.prod(tensor.shape, dtype=np.int64))
        assert header.kind == (SectionKind.CODED if isinstance(tensor, CodedTensor)
                               else SectionKind.RAW)
    assert scan.values == container.parameter_count


@pytest.mark.parametrize("seed", range(60))
def test_scan_of_damaged_file_covers_what_the_reader_decodes(seed):
    """Never raises; every section the reader gets through is in the scan, same size."""
    rng = np.random.default_rng(seed)
    data, _ = random_container(seed, PARAMS, sections=4)
    damaged = corrupt(data, rng, ["flip", "truncate", "word"][seed % 3])
    scan = scan_headers(damaged)
    read = []
    try:
        parse(damaged, software_checks=False, on_section=read.append)
    except ValueError:
        pass
    scanned = {s.index: s for s in scan.sections}
    for section in read:
        header = scanned[section.index]
        if section.kind == SectionKind.CODED:
            assert header.symbol_count == len(section.symbols)
        else:
            assert header.data_bytes == len(section.data)


def test_scan_stops_where_a_field_is_refused():
    data = bytearray(write_container([RawTensor("b", np.ones(2, np.float32)),
                                      CodedTensor("w", np.zeros(5, np.int64), 1, 0)], PARAMS))
    assert scan_headers(bytes(data)).complete
    second = scan_headers(bytes(data)).sections[1].offset
    data[second] = 7                                  # unknown kind
    scan = scan_headers(bytes(data))
    assert not scan.complete and "unknown kind 7" in scan.problem
    assert [s.index for s in scan.sections] == [0]
    assert not scan_headers(b"SBIT").complete
    assert "bad magic" in scan_headers(b"").problem


def test_scan_of_mapped_sections():
    """MAPPED sections: their symbol counts and value dtype, so decode sizes their output in
    the tensors' own dtypes; the damaged ones are covered as the reader reads them."""
    from sim.cases import mapped_container
    data = mapped_container(PARAMS)
    scan = scan_headers(data)
    container = read_container(data)
    assert scan.complete and scan.values == container.parameter_count
    mapped = [s for s in scan.sections if s.kind == SectionKind.MAPPED]
    assert [s.dtype.numpy.name for s in mapped] == ["int16", "int8", "uint64", "int32", "int16",
                                                    "int32"]
    assert [s.symbol_count for s in mapped] == [500, 77, 90, 1200, 60, 0]
    rng = np.random.default_rng(9)
    for case in range(60):
        damaged = corrupt(data, rng, ["flip", "truncate", "word"][case % 3])
        read = []
        try:
            parse(damaged, software_checks=False, on_section=read.append)
        except ValueError:
            pass
        scanned = {s.index: s for s in scan_headers(damaged).sections}
        for section in read:
            if section.kind == SectionKind.MAPPED:
                assert scanned[section.index].symbol_count == len(section.symbols)
                assert scanned[section.index].dtype == section.dtype


def test_load_arrays_keeps_mapped_dtypes(tmp_path):
    from sim.cases import mapped_container
    from sw.io.load import load_arrays
    path = tmp_path / "m.sbit"
    path.write_bytes(mapped_container(PARAMS))
    arrays = load_arrays(path)
    assert arrays["uint64"].dtype == np.uint64 and arrays["uint64"].max() == (1 << 64) - 1
    assert set(arrays["two"].tolist()) == {-200, 200} and arrays["two"].dtype == np.int16
    assert arrays["layer"].dtype == np.float32       # CODED: dequantized
