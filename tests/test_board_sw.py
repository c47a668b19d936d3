"""sw.board: flash image layout, the expected UART line, and its parser and checker."""

import struct
import zlib

import numpy as np
import pytest

from sw.board import (
    FLASH_OFFSET,
    BoardReport,
    check_line,
    expected_report,
    flash_image,
    format_line,
    model_region,
    parse_line,
)
from sw.codec.container import CodedTensor, RawTensor, write_container
from sw.codec.golden import golden_decode
from sw.format import Status


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


# -- the inference system ----------------------------------------------------------------------

from sw.board import (  # noqa: E402
    CRC_LINE,
    FIELD_BITS,
    FINAL_LINE,
    IMAGE_LINE,
    IMAGE_STORE_WORDS,
    IMAGES_OFFSET,
    ImageLine,
    InferenceReport,
    check_inference,
    default_images,
    expected_inference,
    image_set,
    images_region,
    inference_lines,
    line_fields,
    parse_fields,
    parse_image_set,
    parse_inference,
    record_words,
    render_line,
)


@pytest.fixture(scope="module")
def mlp():
    from sw.quant.default_model import default_container
    return default_container(hidden=(32,))[1]


@pytest.mark.parametrize("template", [CRC_LINE, IMAGE_LINE, FINAL_LINE])
def test_every_line_renders_and_parses_back(template):
    rng = np.random.default_rng(1)
    values = {name: int(rng.integers(0, 1 << FIELD_BITS[name])) for name in line_fields(template)
              if name != "name"}
    if "status" in values:
        values["status"] = Status.BAD_PROGRAM
    line = render_line(template, values)
    assert parse_fields(template, line + "\r\n") == values
    with pytest.raises(ValueError):
        parse_fields(template, line.replace("subbit", "subbot"))


def test_image_set_round_trip_and_limits():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (5, 63))
    labels = rng.integers(0, 10, 5)
    data = image_set(pixels, labels)
    assert len(data) == 4 + 5 * 2 * record_words(63) and record_words(63) == 32
    assert record_words(64) == 33          # 64 pixels and the label: 65 bytes, one pad
    got_pixels, got_labels = parse_image_set(data)
    assert (got_pixels == pixels).all() and (got_labels == labels).all()
    with pytest.raises(ValueError, match="image store holds"):
        too_many = IMAGE_STORE_WORDS // 33 + 1
        image_set(np.zeros((too_many, 64)), np.zeros(too_many))
    with pytest.raises(ValueError, match="0..255"):
        image_set(np.full((1, 4), 256), [0])
    with pytest.raises(ValueError, match="labels"):
        image_set(np.zeros((2, 4)), [0])
    with pytest.raises(ValueError, match="shorter"):
        parse_image_set(data[:-1])
    with pytest.raises(ValueError, match="does not fit"):
        parse_image_set(struct.pack("<HH", 0, 64))


def test_flash_image_holds_images_before_the_model(container):
    images = image_set(np.arange(8).reshape(2, 4), [3, 4])
    image = flash_image(container, b"\x01" * 100, images=images)
    assert image[:100] == b"\x01" * 100 and set(image[100:IMAGES_OFFSET]) == {0xFF}
    assert struct.unpack_from("<I", image, IMAGES_OFFSET)[0] == len(images)
    assert image[IMAGES_OFFSET + 4:IMAGES_OFFSET + 4 + len(images)] == images
    assert image[FLASH_OFFSET:] == model_region(container)
    assert images_region(container, images) == image[IMAGES_OFFSET:]
    with pytest.raises(ValueError, match="runs past"):
        flash_image(container, bytes(IMAGES_OFFSET + 1), images=images)


def test_expected_inference_is_the_reference_engine(mlp):
    from sw.codec.container import read_container
    from sw.network.engine import BoundNetwork, infer

    pixels, labels = default_images(mlp, 40)
    report = expected_inference(mlp, pixels, labels)
    predictions = infer(BoundNetwork.from_container(read_container(mlp)), pixels,
                        quantized=True).predictions
    assert report.status == Status.OK and report.images == 40
    assert [line.predicted for line in report.lines] == list(predictions)
    assert report.correct == int((predictions == labels).sum()) >= 20   # chance is 4
    lines = inference_lines(report)
    assert len(lines) == 41 and lines[0].startswith("subbit image=0000 class=")
    assert lines[-1] == (f"subbit OK status=00 images=0028 correct={report.correct:04x} "
                         f"cycles=????????")


def test_expected_inference_errors(mlp):
    pixels, labels = default_images(mlp, 3)
    damaged = bytearray(mlp)
    damaged[len(damaged) // 2] ^= 0x10
    status = golden_decode(bytes(damaged)).status
    assert status != Status.OK
    assert expected_inference(bytes(damaged), pixels, labels) == InferenceReport(status, 0, 0)
    assert expected_inference(mlp, pixels[:, :60], labels).status == Status.BAD_IMAGES
    truncated = golden_decode(mlp[:-10]).status
    assert truncated != Status.OK
    assert expected_inference(mlp[:-10], pixels, labels).status == truncated


def test_check_inference_finds_every_difference(mlp):
    pixels, labels = default_images(mlp, 3)
    expected = expected_inference(mlp, pixels, labels)
    board = "\r\n".join(inference_lines(expected)).replace("????????", "0000abcd") + "\r\n"
    assert check_inference("garbage before reset\r\n" + board, expected) == []
    assert parse_inference(board).lines[0] == ImageLine(0, expected.lines[0].predicted,
                                                         int(labels[0]), 0xABCD)
    lines = board.splitlines()
    other = (expected.lines[1].predicted + 1) % 10
    lines[1] = lines[1].replace(f"class={expected.lines[1].predicted:04x}", f"class={other:04x}")
    assert [p.split(":")[0] for p in check_inference("\n".join(lines), expected)] == ["image 1"]
    assert check_inference("\r\n".join(board.splitlines()[1:]), expected)
    assert check_inference("no lines", expected) == ["no subbit line in the board's output"]
