"""The board side of the software: flash images and the UART lines the board must print.

The iCEBreaker runs one of two systems (``boards/icebreaker.py`` around ``hw/system.py``,
docs/BOARD.md). The **inference system** (the default) classifies the test images held in
flash with the container's integer program while its decoder expands the weights, and prints a
line per image and a final line. The **CRC system** decodes the container once and prints one
line with a digest of the weights. This module computes what those lines must say, from the
container and the images through the golden model and the reference engine, lays out the flash
image that ``iceprog`` writes, and holds the lines' templates, which the hardware's ROM is
made from. No Amaranth here: it runs wherever ``sw`` runs.

``python -m sw board image`` and ``python -m sw board expect`` are its command line.
"""

import re
import string
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sw.codec.golden import golden_decode
from sw.format import Status
from sw.params import CodecParams

__all__ = [
    "FLASH_SIZE", "FLASH_OFFSET", "IMAGE_HEADER_BYTES", "MAX_CONTAINER_BYTES", "IMAGES_OFFSET",
    "MAX_IMAGE_SET_BYTES", "IMAGE_STORE_WORDS", "ENGINE_MEMORIES", "FIELD_BITS", "CRC_LINE",
    "IMAGE_LINE", "FINAL_LINE", "line_fields", "render_line", "parse_fields",
    "BoardReport", "model_region", "flash_image", "expected_report", "format_line", "parse_line",
    "check_line", "ImageLine", "InferenceReport", "image_set", "parse_image_set",
    "record_words", "default_images", "expected_inference", "inference_lines",
    "check_inference", "images_region", "add_arguments", "run",
]

#: The iCEBreaker's W25Q128JV: 16 MiB.
FLASH_SIZE = 16 << 20
#: Where the model lies in flash. The iCE40UP5K bitstream (104 090 bytes) sits at 0; 1 MiB keeps
#: clear of it and of any larger bitstream a later board brings, and is sector aligned.
FLASH_OFFSET = 0x100000
#: At ``FLASH_OFFSET``: ``u32`` little-endian container length in bytes, then the container.
IMAGE_HEADER_BYTES = 4
#: The flash reader never reads more than this, whatever the length word says.
MAX_CONTAINER_BYTES = FLASH_SIZE - FLASH_OFFSET - IMAGE_HEADER_BYTES

#: Where the inference system's test images lie (``u32`` length, then the image set): after
#: the bitstream (104,090 bytes for the UP5K, 870,192 compressed for the ECP5-85F's inference
#: system at 16 columns), before the model, so one flash image of ~1 MiB holds all three. The
#: 64 KiB left are twice what the image store holds.
IMAGES_OFFSET = 0x0F0000
#: The image set region's data never runs into the model's region.
MAX_IMAGE_SET_BYTES = FLASH_OFFSET - IMAGES_OFFSET - IMAGE_HEADER_BYTES
#: 16-bit words of the board's image store (one SB_SPRAM256KA): the records of the image set.
IMAGE_STORE_WORDS = 16384
#: The inference system's engine memories (``hw.engine.InferenceEngine`` parameters): the
#: limits a program must fit on the board (docs/INFERENCE.md, "The engine in hardware").
#: The board's models need 6,208 activation words, 237 program words, 128 channels and 64
#: positions; these memories (4 EBR) hold them, and the narrower counters and checks save
#: ~50 logic cells over 512/512/512 (8 EBR).
ENGINE_MEMORIES = {"memory_words": 8192, "program_words": 256, "max_channels": 128,
                   "max_positions": 64}

#: Status names as the board prints them (``sw.format.Status``).
STATUS_NAMES = {status.value: status.name for status in Status}

#: Width in bits of every field a board line prints, as lower-case hex of ``bits / 4`` digits.
#: ``status`` is also printed by name (``{name}``).
FIELD_BITS = {"status": 8, "layers": 16, "weights": 32, "crc": 32, "cycles": 32,
              "image": 16, "class": 16, "label": 8, "image_cycles": 32, "correct": 16}
#: The lines (docs/BOARD.md), each sent with ``\r\n``. The hardware's ROM
#: (``hw.system.ReportLine``) is made from these templates.
CRC_LINE = ("subbit {name} status={status} layers={layers} weights={weights} crc={crc} "
            "cycles={cycles}")
IMAGE_LINE = "subbit image={image} class={class} label={label} cycles={image_cycles}"
#: ``image`` counts the images answered: the index of the image a line reports, and on the final
#: line how many were answered.
FINAL_LINE = "subbit {name} status={status} images={image} correct={correct} cycles={cycles}"


def line_fields(template: str) -> list:
    """The fields a template prints, in order (``name`` stands for the status's name)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render_line(template: str, values: dict) -> str:
    """``template`` with ``values``; a value of ``None`` prints as ``?`` digits."""
    def shown(name):
        if name == "name":
            return Status(values["status"]).name
        digits = FIELD_BITS[name] // 4
        value = values[name]
        return "?" * digits if value is None else f"{value:0{digits}x}"
    return template.format_map({name: shown(name) for name in line_fields(template)})


def _pattern(template: str):
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name == "name":
            parts.append("(?P<name>[A-Z_0-9]+)")
        elif name:
            parts.append(f"(?P<{name}>[0-9a-f]{{{FIELD_BITS[name] // 4}}})")
    return re.compile("^" + "".join(parts) + "$")


def parse_fields(template: str, line: str) -> dict:
    """The fields of a board line made from ``template``; ``ValueError`` if it is not one."""
    match = _pattern(template).match(line.strip())
    if not match:
        raise ValueError(f"not a subbit board line: {line.strip()!r}")
    values = {name: int(text, 16) for name, text in match.groupdict().items() if name != "name"}
    if "status" in values:
        if values["status"] not in STATUS_NAMES or STATUS_NAMES[values["status"]] != match["name"]:
            raise ValueError(f"status {values['status']} does not match its name {match['name']}")
        values["status"] = Status(values["status"])
    return values


@dataclass
class BoardReport:
    """What the board prints: the decoder's verdict and a digest of the weights it emitted."""

    status: Status
    layers: int     #: coded sections that emitted at least one weight
    weights: int    #: weights (int16 values) emitted
    crc: int        #: CRC-32 of the weights as little-endian int16, in emission order
    cycles: int = None  #: core clock cycles from reset to the verdict (hardware only)


def _region(data: bytes, limit: int, what: str, where: str) -> bytes:
    """A length-prefixed flash region: the ``u32`` length, then ``data`` (at most ``limit``)."""
    if len(data) > limit:
        raise ValueError(f"{what} ({len(data)} bytes) does not fit {where}")
    return struct.pack("<I", len(data)) + bytes(data)


def model_region(container: bytes, offset: int = FLASH_OFFSET) -> bytes:
    """What lies at ``offset`` (``FLASH_OFFSET``): the ``u32`` length, then the container."""
    return _region(container, FLASH_SIZE - offset - IMAGE_HEADER_BYTES, "the container",
                   f"in the flash after {offset:#x}")


def flash_image(container: bytes, bitstream: bytes = None, *, offset: int = FLASH_OFFSET,
                images: bytes = None) -> bytes:
    """The bytes to write from flash address 0: bitstream, erased gaps, the regions.

    The model region (``u32`` length, container) lies at ``offset``; ``images`` (an image set,
    :func:`image_set`), when given, in a region of its own at :data:`IMAGES_OFFSET`. Without a
    bitstream the first bytes are erased (0xFF); to keep a bitstream already in flash, write
    :func:`model_region` at ``offset`` instead (``iceprog -o 1M``), or :func:`images_region`.
    """
    regions = [(offset, model_region(container, offset))]
    if images is not None:
        regions.insert(0, (IMAGES_OFFSET, _region(
            images, MAX_IMAGE_SET_BYTES, "the image set",
            f"between {IMAGES_OFFSET:#x} and the model at {FLASH_OFFSET:#x}")))
    image = bytearray(bitstream or b"")
    if len(image) > regions[0][0]:
        raise ValueError(f"the bitstream ({len(image)} bytes) runs past flash address "
                         f"{regions[0][0]:#x}")
    for address, region in regions:
        if len(image) > address:
            raise ValueError(f"the regions overlap at flash address {address:#x}")
        image += b"\xff" * (address - len(image)) + region
    return bytes(image)


def images_region(container: bytes, images: bytes) -> bytes:
    """From :data:`IMAGES_OFFSET` to the model's end: the image set and the model, for
    ``iceprog -o 960k`` over a bitstream already in flash."""
    return flash_image(container, images=images)[IMAGES_OFFSET:]


def expected_report(container: bytes, params: CodecParams = CodecParams()) -> BoardReport:
    """What a correct board must report for ``container`` (golden model).

    ``layers``, ``weights`` and ``crc`` are predicted only when the status is ``OK``: on an
    error the decoder has already emitted part of the failing section, which the golden model
    does not keep.
    """
    # The digest is counted as the golden model streams (memory independent of the symbol
    # counts). A section that fails is the last to emit anything, so the CRC as it stood
    # after the last section fully read is the one a correct board's would be compared with.
    after = {}      # coded section index -> CRC-32 of all integers up to its last chunk
    running = [0]

    def digest(index, first, integers):
        running[0] = zlib.crc32(integers.astype("<i2", copy=False).tobytes(), running[0])
        after[index] = running[0]

    # the CRC system has no engine: it checks what the decoder checks (FORMAT.md, BAD_PROGRAM)
    result = golden_decode(bytes(container), params, check_program=False, keep_integers=False,
                           on_integers=digest)
    emitted = [section for section in result.coded if section.count]
    crc = after[emitted[-1].index] if emitted else 0
    return BoardReport(result.status, len(emitted), result.weight_count, crc)


def format_line(report: BoardReport) -> str:
    """The CRC system's line (without ``\\r\\n``); unknown ``cycles`` print as ``????????``."""
    return render_line(CRC_LINE, {"status": int(report.status), "layers": report.layers,
                                  "weights": report.weights, "crc": report.crc,
                                  "cycles": report.cycles})


def parse_line(line: str) -> BoardReport:
    """A :class:`BoardReport` from the CRC system's line; ``ValueError`` if it is malformed."""
    values = parse_fields(CRC_LINE, line)
    return BoardReport(values["status"], values["layers"], values["weights"], values["crc"],
                       values["cycles"])


def check_line(line: str, container: bytes, params: CodecParams = CodecParams()) -> list:
    """Differences between the board's ``line`` and what software predicts (empty if none).

    Cycles are not predicted. On an error only the status is (see :func:`expected_report`).
    """
    got = parse_line(line)
    expected = expected_report(container, params)
    fields = ["status"] + (["layers", "weights", "crc"] if expected.status == Status.OK else [])
    shown = {"status": lambda v: Status(v).name, "crc": lambda v: f"{v:08x}"}
    return [f"{name}: board {shown.get(name, str)(getattr(got, name))}, "
            f"expected {shown.get(name, str)(getattr(expected, name))}"
            for name in fields if getattr(got, name) != getattr(expected, name)]


# -- the inference system ----------------------------------------------------------------------
#
# The image set (docs/BOARD.md): u16 image count, u16 pixels per image, then one record per
# image: its U8 pixels (the program's input, C order), its label (u8), a zero byte when needed
# to end on a 16-bit word. The board keeps the records in its image store.

IMAGE_SET_HEADER_BYTES = 4


def record_words(pixels: int) -> int:
    """16-bit words of one image's record: its pixels and its label, rounded up."""
    return (pixels + 2) // 2


def image_set(pixels, labels) -> bytes:
    """The image set of ``pixels`` (``(count, P)`` integers in 0..255) and their ``labels``."""
    pixels = np.asarray(pixels).reshape(len(pixels), -1)
    labels = np.asarray(labels).reshape(-1)
    count, size = pixels.shape
    if count != len(labels):
        raise ValueError(f"{count} images but {len(labels)} labels")
    if not 1 <= count <= 0xFFFF or not 1 <= size <= 0xFFFD:
        raise ValueError(f"an image set holds 1 to 65535 images of 1 to 65533 pixels, not "
                         f"{count} of {size}")
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 255:
        raise ValueError("pixels and labels must be in 0..255")
    if count * record_words(size) > IMAGE_STORE_WORDS:
        raise ValueError(f"{count} images of {size} pixels need {count * record_words(size)} "
                         f"words; the board's image store holds {IMAGE_STORE_WORDS}")
    records = np.zeros((count, 2 * record_words(size)), np.uint8)
    records[:, :size] = pixels
    records[:, size] = labels
    return struct.pack("<HH", count, size) + records.tobytes()


def parse_image_set(data: bytes) -> tuple:
    """``(pixels (count, P) int64, labels)`` of an image set; ``ValueError`` if malformed."""
    if len(data) < IMAGE_SET_HEADER_BYTES:
        raise ValueError("the image set is shorter than its header")
    count, size = struct.unpack_from("<HH", data)
    words = count * record_words(size)
    if count == 0 or size == 0 or words > IMAGE_STORE_WORDS:
        raise ValueError(f"an image set of {count} images of {size} pixels does not fit the "
                         f"board's image store")
    if len(data) < IMAGE_SET_HEADER_BYTES + 2 * words:
        raise ValueError("the image set is shorter than its records")
    records = np.frombuffer(data, np.uint8, 2 * words, IMAGE_SET_HEADER_BYTES)
    records = records.reshape(count, -1).astype(np.int64)
    return records[:, :size], records[:, size]


def default_images(container: bytes, count: int = None) -> tuple:
    """``(pixels, labels)``: the held-out digits (the first ``count``), quantized to ``U8`` by
    the container's program, as the board holds them."""
    from sw.codec.container import read_container
    from sw.data import digits_arrays
    from sw.network.engine import quantize_images
    _, _, x_test, y_test = digits_arrays()
    if count is not None:
        if not 1 <= count <= len(x_test):
            raise ValueError(f"the held-out digits are 1 to {len(x_test)} images, not {count}")
        x_test, y_test = x_test[:count], y_test[:count]
    program = read_container(container).program
    if program is None:
        raise ValueError("the container has no program: the board cannot run it")
    pixels = quantize_images(program, x_test)
    return pixels.reshape(len(x_test), -1), y_test


@dataclass
class ImageLine:
    """One image's line: its index, the class the board predicts, its label, the cycles."""

    image: int
    predicted: int
    label: int
    cycles: int = None      #: the engine's cycles for the image (hardware only)


@dataclass
class InferenceReport:
    """What the inference system prints: a line per image answered, then the final line."""

    status: Status
    images: int             #: images answered (every image, unless an error stopped the run)
    correct: int            #: answers equal to the label
    cycles: int = None      #: core clock cycles from reset to the final line (hardware only)
    lines: list = field(default_factory=list)


def expected_inference(container: bytes, pixels, labels,
                       params: CodecParams = CodecParams()) -> InferenceReport:
    """What a correct inference system prints for ``container`` and the image set.

    The status is the golden model's, with the program's rules (docs/INFERENCE.md) and the
    board engine's memories (:data:`ENGINE_MEMORIES`); images whose pixel count is not the
    program's input are ``BAD_IMAGES``. On an error no image is answered: the board checks
    the container before it reports an image.
    """
    from sw.codec.container import read_container
    from sw.network.engine import BoundNetwork, infer

    status = golden_decode(bytes(container), params, keep_integers=False).status
    if status == Status.OK:
        network = BoundNetwork.from_container(read_container(bytes(container)))
        if not _fits_engine(network.program):
            status = Status.BAD_PROGRAM
        elif np.asarray(pixels).reshape(len(pixels), -1).shape[1] != network.program.input_size:
            status = Status.BAD_IMAGES
    if status != Status.OK:
        return InferenceReport(status, 0, 0)
    predictions = infer(network, np.asarray(pixels), quantized=True).predictions
    lines = [ImageLine(i, int(p), int(label))
             for i, (p, label) in enumerate(zip(predictions, labels))]
    return InferenceReport(Status.OK, len(lines), sum(x.predicted == x.label for x in lines),
                           lines=lines)


def _fits_engine(program) -> bool:
    """The program fits the board engine's memories (as the engine checks it)."""
    return (len(program.to_words()) <= ENGINE_MEMORIES["program_words"]
            and program.memory_words <= ENGINE_MEMORIES["memory_words"]
            and all(op.out_channels <= ENGINE_MEMORIES["max_channels"] for op in program.ops)
            and all(op.output_size // max(op.out_channels, 1)
                    <= ENGINE_MEMORIES["max_positions"] for op in program.ops))


def inference_lines(report: InferenceReport) -> list:
    """The board's lines (without ``\\r\\n``); unknown cycles print as ``?`` digits."""
    lines = [render_line(IMAGE_LINE, {"image": x.image, "class": x.predicted, "label": x.label,
                                      "image_cycles": x.cycles}) for x in report.lines]
    lines.append(render_line(FINAL_LINE, {"status": int(report.status), "image": report.images,
                                          "correct": report.correct, "cycles": report.cycles}))
    return lines


def parse_inference(text: str) -> InferenceReport:
    """An :class:`InferenceReport` from the board's output; ``ValueError`` if malformed.

    Lines before the first ``subbit`` line are ignored (what a terminal shows from before the
    reset); the last line must be the final line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("subbit ")), None)
    if start is None:
        raise ValueError("no subbit line in the board's output")
    *images, final = lines[start:]
    values = parse_fields(FINAL_LINE, final)
    report = InferenceReport(values["status"], values["image"], values["correct"],
                             values["cycles"])
    for line in images:
        x = parse_fields(IMAGE_LINE, line)
        report.lines.append(ImageLine(x["image"], x["class"], x["label"], x["image_cycles"]))
    return report


def check_inference(text: str, expected: InferenceReport) -> list:
    """Differences between the board's output and ``expected`` (empty if none); cycles are
    not predicted."""
    try:
        got = parse_inference(text)
    except ValueError as error:
        return [str(error)]
    shown = {"status": lambda v: Status(v).name}
    problems = [f"{name}: board {shown.get(name, str)(getattr(got, name))}, expected "
                f"{shown.get(name, str)(getattr(expected, name))}"
                for name in ("status", "images", "correct")
                if getattr(got, name) != getattr(expected, name)]
    if len(got.lines) != len(expected.lines):
        problems.append(f"{len(got.lines)} image lines, expected {len(expected.lines)}")
    for g, e in zip(got.lines, expected.lines):
        if (g.image, g.predicted, g.label) != (e.image, e.predicted, e.label):
            problems.append(f"image {e.image}: board class {g.predicted} label {g.label} "
                            f"(image {g.image}), expected class {e.predicted} label {e.label}")
    return problems


# -- command line ------------------------------------------------------------------------------



def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="board_command", metavar="ACTION", required=True)
    image = sub.add_parser("image", help="flash image for iceprog: bitstream + images + model, "
                           "or the images and the model alone (write them at 960 KiB)")
    image.add_argument("container", metavar="CONTAINER")
    image.add_argument("--bitstream", metavar="BIN",
                       help="bitstream to place at address 0; without it the output starts at "
                            "the images (iceprog -o 960k), or at the model with --crc-system "
                            "(iceprog -o 1M)")
    image.add_argument("-o", "--out", required=True, metavar="FILE")
    expect = sub.add_parser("expect", help="the lines the board must print for CONTAINER")
    expect.add_argument("container", metavar="CONTAINER")
    expect.add_argument("--check", metavar="LINE",
                        help="(--crc-system) compare with a line received from the board; exit "
                             "1 if it differs")
    expect.add_argument("--received", metavar="FILE",
                        help="compare with what the board printed (a capture of its UART); "
                             "exit 1 if it differs")
    for action in (image, expect):
        action.add_argument("--images", type=int, metavar="K",
                            help="the first K held-out digits (default: all 450)")
        action.add_argument("--crc-system", action="store_true",
                            help="the CRC system's flash image and line (decode once, digest)")
        action.add_argument("--precision-bits", type=int, default=CodecParams().precision_bits,
                            metavar="P", help="the decoder's P (default %(default)s)")
        action.add_argument("--states", type=int, default=CodecParams().state_count,
                            metavar="K", help="the decoder's K (default %(default)s)")


def _read(path) -> bytes:
    from sw.io.tensors import checked_input
    return checked_input(path).read_bytes()


def run(args) -> int:
    params = CodecParams(precision_bits=args.precision_bits, state_count=args.states)
    container = _read(args.container)
    if args.board_command == "image":
        if args.crc_system:
            images = None
        else:
            images = image_set(*default_images(container, args.images))
        if args.bitstream:
            image = flash_image(container, _read(args.bitstream), images=images)
            command = f"iceprog {args.out}"
        elif images is None:
            image = model_region(container)
            command = f"iceprog -o {FLASH_OFFSET >> 20}M {args.out}"
        else:
            image = images_region(container, images)
            command = f"iceprog -o {IMAGES_OFFSET >> 10}k {args.out}"
        Path(args.out).write_bytes(image)
        what = (f"model ({len(container)} bytes) at {FLASH_OFFSET:#x}" if images is None else
                f"images ({len(images)} bytes) at {IMAGES_OFFSET:#x} and model "
                f"({len(container)} bytes) at {FLASH_OFFSET:#x}")
        print(f"{args.out}: {len(image)} bytes, {what}; write with: {command}")
        return 0
    if args.crc_system:
        line = format_line(expected_report(container, params))
        if args.check is None and args.received is None:
            print(line)
            return 0
        received = args.check if args.check is not None else \
            _read(args.received).decode("ascii", errors="replace")
        problems = check_line(received, container, params)
    else:
        if args.check is not None:
            raise ValueError("--check takes the CRC system's one line; give the inference "
                             "system's output with --received FILE")
        expected = expected_inference(container, *default_images(container, args.images),
                                      params)
        if args.received is None:
            for line in inference_lines(expected):
                print(line)
            return 0
        problems = check_inference(_read(args.received).decode("ascii", errors="replace"),
                                   expected)
    for problem in problems:
        print(problem)
    print("match" if not problems else "MISMATCH")
    return 1 if problems else 0
