"""Bounded memory: chunked decoding equals whole-section decoding, and the streaming readers
(``verify``, ``golden_decode(keep_integers=False)``, ``expected_report``) hold memory
independent of the symbol count a file declares (issue 16, "Bounded memory")."""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cases import corner_tensors, random_container
from sw.board import expected_report
from sw.codec.container import CodedTensor, ContainerError, parse, write_container
from sw.codec.golden import golden_decode
from sw.codec.rans import (
    FrequencyTable,
    PayloadExhausted,
    decode_section_chunked,
    decode_section_reference,
    encode_reference,
)
from sw.format import MAX_SECTION_SYMBOLS, Status
from sw.params import CodecParams


def coded(rng, levels, size, params):
    symbols = rng.integers(0, levels, size)
    table = FrequencyTable.from_counts(np.bincount(symbols, minlength=levels),
                                       params.precision_bits)
    states, payloads = encode_reference([(symbols, table)], params)
    return symbols, table, states, payloads[0]


def chunked(states, count, table, payload, params, fast, chunk_symbols):
    parts, firsts = [], []

    def on_chunk(first, symbols):
        firsts.append(first)
        parts.append(symbols.copy())
    used = decode_section_chunked(states, count, table, payload, params, on_chunk, fast=fast,
                                  chunk_symbols=chunk_symbols)
    assert firsts == list(range(0, count, chunk_symbols))
    return (np.concatenate(parts) if parts else np.zeros(0, np.uint8)), used


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(0, 700), st.integers(1, 300),
       st.integers(0, 2**32 - 1), st.booleans())
def test_chunked_equals_whole(state_count, levels, size, chunk_symbols, seed, fast):
    """Same symbols, words read and final states as one call, for both coders."""
    params = CodecParams(state_count=state_count)
    symbols, table, states, payload = coded(np.random.default_rng(seed), levels, size, params)
    whole_states = list(states)
    whole, whole_used = decode_section_reference(whole_states, size, table, payload, params)
    np.testing.assert_array_equal(whole, symbols)
    chunk_states = np.array(states, np.uint64) if fast else list(states)
    got, used = chunked(chunk_states, size, table, np.array(payload, np.uint16), params, fast,
                        chunk_symbols)
    np.testing.assert_array_equal(got, whole)
    assert used == whole_used == len(payload)
    assert [int(x) for x in chunk_states] == whole_states


@pytest.mark.parametrize("fast", [True, False])
def test_chunked_runs_out_of_payload_like_whole(fast):
    params = CodecParams(state_count=3)
    symbols, table, states, payload = coded(np.random.default_rng(1), 5, 500, params)
    short = np.array(payload[:len(payload) // 2], np.uint16)
    with pytest.raises(PayloadExhausted):
        decode_section_reference(list(states), 500, table, short, params)
    with pytest.raises(PayloadExhausted):
        chunked(np.array(states, np.uint64) if fast else list(states), 500, table, short, params,
                fast, 64)


@pytest.mark.parametrize("fast", [True, False])
def test_one_symbol_table_shortcut_is_the_coder(fast):
    """A table whose one symbol owns all M slots is decoded without the coder: same result."""
    params = CodecParams(state_count=5, precision_bits=6)
    table = FrequencyTable(np.array([0, 0, 64, 0]), 6)
    states = [65536 + 12345 * k for k in range(5)]
    whole_states = list(states)
    whole, used = decode_section_reference(whole_states, 77, table, [], params)
    assert used == 0 and whole_states == states and set(whole.tolist()) == {2}
    got, used = chunked(np.array(states, np.uint64) if fast else list(states), 77, table,
                        np.zeros(0, np.uint16), params, fast, 10)
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("seed", range(6))
def test_streaming_golden_equals_keeping(seed, monkeypatch):
    """Chunks of 37 symbols: same status, counts and integers as the whole sections."""
    params = CodecParams(state_count=7)
    data, _ = random_container(seed, params, sections=5, max_size=400)
    if seed % 2:
        data = write_container(corner_tensors(np.random.default_rng(seed), params), params)
    whole = golden_decode(data)
    monkeypatch.setattr(decode_section_chunked, "__kwdefaults__",
                        {"fast": True, "chunk_symbols": 37})
    streamed = {}
    lean = golden_decode(data, keep_integers=False,
                         on_integers=lambda i, first, ints: streamed.setdefault(i, []).append(
                             (first, ints.copy())))
    kept = golden_decode(data)
    assert whole.status == lean.status == kept.status == Status.OK
    assert [s.count for s in lean.coded] == [len(s.integers) for s in whole.coded]
    assert all(s.integers is None for s in lean.coded)
    for section in whole.coded:
        parts = streamed.get(section.index, [])
        assert [first for first, _ in parts] == list(range(0, section.count, 37))
        joined = np.concatenate([p for _, p in parts]) if parts else np.zeros(0, np.int16)
        np.testing.assert_array_equal(joined, section.integers)
    np.testing.assert_array_equal(kept.integers(), whole.integers())
    with pytest.raises(ValueError, match="not kept"):
        lean.integers()


def hostile(crc_right: bool, params=CodecParams()) -> bytes:
    """188 bytes declaring 2**28 symbols of a one-level section (no payload)."""
    data = bytearray(write_container([CodedTensor("w.x", np.zeros((4, 4), np.uint8), 1, 0)],
                                     params))
    start = 20 + 4 * params.state_count
    struct.pack_into("<II", data, start + 10, 1 << 14, 1 << 14)
    struct.pack_into("<I", data, start + 28, MAX_SECTION_SYMBOLS)
    if crc_right:
        struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[start:len(data) - 4]))
    return bytes(data)


def peak_bytes(function):
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


BOUND = 16 << 20   # a few chunks of 2**20 symbols, whatever the file declares


@pytest.mark.parametrize("crc_right", [False, True])
def test_hostile_file_in_bounded_memory(crc_right):
    data = hostile(crc_right)
    assert len(data) == 188
    status = Status.OK if crc_right else Status.CRC_MISMATCH
    result, peak = peak_bytes(lambda: golden_decode(data, keep_integers=False))
    assert result.status == status and peak < BOUND, peak
    if crc_right:
        assert result.weight_count == MAX_SECTION_SYMBOLS
    container, peak = peak_bytes(
        lambda: parse(data, keep_symbols=False) if crc_right else None)
    assert peak < BOUND
    if crc_right:
        assert container.weight_count == MAX_SECTION_SYMBOLS and container.tensors == []
    else:
        with pytest.raises(ContainerError) as error:
            parse(data, keep_symbols=False)
        assert error.value.status == Status.CRC_MISMATCH
    report, peak = peak_bytes(lambda: expected_report(data))
    assert report.status == status and peak < BOUND, peak
    if crc_right:
        # 2**28 zeros as int16: CRC-32 of 2**29 zero bytes, known in closed form only by
        # running it; the figure is that of the whole-array digest before streaming.
        assert (report.layers, report.weights, report.crc) == (1, 1 << 28, 1840808736)


def test_verify_command_in_bounded_memory(tmp_path, capsys):
    from sw.cli import main
    path = tmp_path / "hostile.sbit"
    path.write_bytes(hostile(True))
    code, peak = peak_bytes(lambda: main(["verify", str(path)]))
    assert code == 0 and peak < BOUND, peak
    assert f"{MAX_SECTION_SYMBOLS} weights" in capsys.readouterr().out


def test_expected_report_streamed_equals_whole():
    params = CodecParams(state_count=8)
    data, _ = random_container(3, params, sections=6)
    integers = golden_decode(data).integers().astype("<i2")
    report = expected_report(data, params)
    assert (report.weights, report.crc) == (integers.size, zlib.crc32(integers.tobytes()))
    # a damaged file: only the sections read in full count
    damaged = data[:len(data) - 6]
    golden = golden_decode(damaged, params, check_program=False)
    kept = golden.integers().astype("<i2")
    report = expected_report(damaged, params)
    assert report.status == golden.status == Status.TRUNCATED
    assert (report.weights, report.crc) == (kept.size, zlib.crc32(kept.tobytes()))


def hostile_mapped(params=CodecParams()) -> bytes:
    """A MAPPED section of one uint64 value declaring 2**28 symbols (no payload), CRC right."""
    from sw.codec.container import MappedTensor
    data = bytearray(write_container([MappedTensor.from_array(
        "w", np.full(16, (1 << 64) - 1, np.uint64))], params))
    start = 20 + 4 * params.state_count
    # kind, name_bytes, "w\0", ndim, dims[0], levels, dtype, values[0], then symbol_count
    struct.pack_into("<I", data, start + 8, MAX_SECTION_SYMBOLS)
    struct.pack_into("<I", data, start + 24, MAX_SECTION_SYMBOLS)
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[start:len(data) - 4]))
    return bytes(data)


def test_hostile_mapped_file_in_bounded_memory(tmp_path, capsys):
    """The streaming readers with value tables hold a few chunks, not 2 GiB of uint64 values;
    the RTL's model (and so ``expected_report``) stops at the kind word."""
    from sw.cli import main
    data = hostile_mapped()
    result, peak = peak_bytes(lambda: golden_decode(data, keep_integers=False,
                                                    value_tables=True))
    assert result.status == Status.OK and peak < BOUND, peak
    assert result.sections[0].count == MAX_SECTION_SYMBOLS and result.sections[0].values is None
    container, peak = peak_bytes(lambda: parse(data, keep_symbols=False))
    assert container.weight_count == MAX_SECTION_SYMBOLS and peak < BOUND, peak
    path = tmp_path / "hostile.sbit"
    path.write_bytes(data)
    code, peak = peak_bytes(lambda: main(["verify", str(path)]))
    assert code == 0 and peak < BOUND, peak
    assert f"{MAX_SECTION_SYMBOLS} weights" in capsys.readouterr().out
    report, peak = peak_bytes(lambda: expected_report(data))
    assert report.status == Status.UNSUPPORTED and report.weights == 0 and peak < BOUND
    # decode sizes the uint64 output from the headers and refuses it, in one line, before
    # allocating anything (2**28 is the default limit itself: a lower one here)
    assert main(["decode", str(path), "-o", str(tmp_path / "o.npz"), "--max-values",
                 "1000"]) == 1
    assert "declares 268,435,456 values" in capsys.readouterr().err
