"""sw.board: flash image layout, the expected UART line, and its parser and checker."""

import struct
import zlib

import numpy as np
import pytest

from sw.board import (FLASH_OFFSET, BoardReport, check_line, expected_report, flash_image,
                      format_line, model_region, parse_line)
from sw.container import CodedTensor, RawTensor, write_container
from sw.format import Status
from sw.golden import golden_decode


@pytest.fixture(scope="module")
def container():
    rng = np.random.default_rng(0)
    tensors = [
        CodedTensor.from_integers("a", rng.integers(-1, 2, (16, 24))),
        RawTensor("a.bias", rng.standard_normal(16).astype(np.float32)),
        CodedTensor.from_integers("empty", np.zeros((0, 4), np.int64)),
        CodedTensor.from_integers("b", rng.integers(-3, 4, (10, 16))),
    ]
    return write_container(tensors)


def test_flash_image_layout(container):
    bitstream = bytes(range(256)) * 10
    image = flash_image(container, bitstream)
    assert image[:len(bitstream)] == bitstream
    assert set(image[len(bitstream):FLASH_OFFSET]) == {0xFF}
    assert image[FLASH_OFFSET:] == model_region(container)
    assert struct.unpack_from("<I", image, FLASH_OFFSET)[0] == len(container)
    assert image[FLASH_OFFSET + 4:] == container
    with pytest.raises(ValueError, match="runs past"):
        flash_image(container, bytes(FLASH_OFFSET + 1))


def test_expected_report_is_crc_of_golden_integers(container):
    report = expected_report(container)
    integers = golden_decode(container).integers()
    assert report.status == Status.OK
    assert report.weights == 16 * 24 + 10 * 16 == integers.size
    assert report.layers == 2          # the empty coded section emits nothing
    assert report.crc == zlib.crc32(integers.astype("<i2").tobytes())


def test_line_round_trip_and_check(container):
    expected = expected_report(container)
    line = format_line(BoardReport(expected.status, expected.layers, expected.weights,
                                   expected.crc, cycles=0x1234))
    assert line.startswith("subbit OK status=00 ")
    assert parse_line(line + "\r\n") == BoardReport(Status.OK, expected.layers,
                                                    expected.weights, expected.crc, 0x1234)
    assert check_line(line, container) == []
    bad = line.replace(f"crc={expected.crc:08x}", f"crc={expected.crc ^ 1:08x}")
    assert [p.split(":")[0] for p in check_line(bad, container)] == ["crc"]
    # A damaged container: only the status is predicted, and it must match.
    damaged = container[:len(container) - 10]
    assert expected_report(damaged).status == Status.TRUNCATED
    line = "subbit TRUNCATED status=0a layers=0001 weights=00000100 crc=00000000 cycles=00000010"
    assert check_line(line, damaged) == []
    assert check_line(line.replace("TRUNCATED status=0a", "OK status=00"), damaged)


@pytest.mark.parametrize("line", [
    "",
    "subbit OK status=00 layers=0001",
    "subbit OK status=01 layers=0001 weights=00000001 crc=00000000 cycles=00000001",
    "subbit OK status=00 layers=0001 weights=00000001 crc=0000000g cycles=00000001",
])
def test_malformed_lines_rejected(line):
    with pytest.raises(ValueError):
        parse_line(line)
