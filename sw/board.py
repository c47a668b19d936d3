"""The board side of the software: flash images and the UART line the board must print.

The iCEBreaker system (``boards/icebreaker.py`` around ``hw/system.py``, docs/BOARD.md) reads a
container from its SPI flash, decodes it and prints one line. This module computes, from the
container alone and through the golden model, what that line must say, and lays out the flash
image that ``iceprog`` writes.
No Amaranth here: it runs wherever ``sw`` runs.

``python -m sw board image`` and ``python -m sw board expect`` are its command line.
"""

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .format import Status
from .golden import golden_decode
from .params import CodecParams

__all__ = [
    "FLASH_SIZE", "FLASH_OFFSET", "IMAGE_HEADER_BYTES", "MAX_CONTAINER_BYTES",
    "BoardReport", "model_region", "flash_image", "expected_report", "format_line", "parse_line", "check_line",
    "default_container", "add_arguments", "run",
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

#: Status names as the board prints them (``sw.format.Status``).
STATUS_NAMES = {status.value: status.name for status in Status}

LINE_PATTERN = re.compile(
    r"^subbit (?P<name>[A-Z_]+) status=(?P<status>[0-9a-f]{2}) layers=(?P<layers>[0-9a-f]{4}) "
    r"weights=(?P<weights>[0-9a-f]{8}) crc=(?P<crc>[0-9a-f]{8}) cycles=(?P<cycles>[0-9a-f]{8})$")


@dataclass
class BoardReport:
    """What the board prints: the decoder's verdict and a digest of the weights it emitted."""

    status: Status
    layers: int     #: coded sections that emitted at least one weight
    weights: int    #: weights (int16 values) emitted
    crc: int        #: CRC-32 of the weights as little-endian int16, in emission order
    cycles: int = None  #: core clock cycles from reset to the verdict (hardware only)


def model_region(container: bytes) -> bytes:
    """What lies at ``FLASH_OFFSET``: the ``u32`` length, then the container."""
    if len(container) > MAX_CONTAINER_BYTES:
        raise ValueError(f"the container ({len(container)} bytes) does not fit in the flash "
                         f"after {FLASH_OFFSET:#x}")
    return struct.pack("<I", len(container)) + bytes(container)


def flash_image(container: bytes, bitstream: bytes = None, *, offset: int = FLASH_OFFSET) -> bytes:
    """The bytes to write from flash address 0: bitstream, erased gap, length, container.

    Without a bitstream the first ``offset`` bytes are erased (0xFF); to keep a bitstream
    already in flash, write :func:`model_region` at ``offset`` instead (``iceprog -o 1M``).
    """
    bitstream = bytes(bitstream or b"")
    if len(bitstream) > offset:
        raise ValueError(f"the bitstream ({len(bitstream)} bytes) runs past the model offset "
                         f"{offset:#x}")
    if len(container) > FLASH_SIZE - offset - IMAGE_HEADER_BYTES:
        raise ValueError(f"the container ({len(container)} bytes) does not fit in the flash "
                         f"after {offset:#x}")
    return (bitstream + b"\xff" * (offset - len(bitstream))
            + struct.pack("<I", len(container)) + bytes(container))


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
    """The UART line (without ``\\r\\n``); ``cycles`` unknown prints as ``????????``."""
    cycles = "????????" if report.cycles is None else f"{report.cycles:08x}"
    return (f"subbit {Status(report.status).name} status={int(report.status):02x} "
            f"layers={report.layers:04x} weights={report.weights:08x} crc={report.crc:08x} "
            f"cycles={cycles}")


def parse_line(line: str) -> BoardReport:
    """A :class:`BoardReport` from the board's line; ``ValueError`` if it is malformed."""
    match = LINE_PATTERN.match(line.strip())
    if not match:
        raise ValueError(f"not a subbit board line: {line.strip()!r}")
    status = int(match["status"], 16)
    if status not in STATUS_NAMES or STATUS_NAMES[status] != match["name"]:
        raise ValueError(f"status {status} does not match its name {match['name']}")
    return BoardReport(Status(status), int(match["layers"], 16), int(match["weights"], 16),
                       int(match["crc"], 16), int(match["cycles"], 16))


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


def default_container(params: CodecParams = CodecParams(), hidden=(128, 64), levels=3,
                      seed=0) -> tuple:
    """A small real model: an MLP trained on sklearn's bundled digits, ternary weights.

    Returns ``(name, container bytes)``. Training takes a few seconds; nothing is downloaded.
    Weight matrices are zero-point quantized to ``levels`` levels and biases to 31, all coded;
    the container carries the MLP's integer program (docs/INFERENCE.md), its activation scales
    calibrated on the training digits.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from .bench.codec import train_digits_mlp, zero_point_quantize
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from .container import CodedTensor, write_container
    from .lower import BIAS_LEVELS, lower, mlp_layers, order_tensors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp, accuracy = train_digits_mlp(hidden=hidden, seed=seed)
    tensors, names = [], []
    for index, (weights, bias) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        # sklearn stores (in, out); the container holds (out, in) like torch.
        symbols, zero_point, step = zero_point_quantize(np.ascontiguousarray(weights.T), levels)
        tensors.append(CodedTensor(f"fc{index}.weight", symbols, levels, zero_point, step))
        tensors.append(CodedTensor.symmetric(f"fc{index}.bias", bias, BIAS_LEVELS))
        names.append((f"fc{index}.weight", f"fc{index}.bias"))
    # Calibrate on the MLP's own training images (train_digits_mlp's split, which is also
    # sw.data.digits'). Not through sw.data: importing torch beside sklearn's training makes
    # its BLAS calls contend for threads (4x slower here).
    data = load_digits()
    x_train = train_test_split(data.images[:, None] / 16.0, data.target, test_size=0.25,
                               random_state=seed, stratify=data.target)[0]
    lowered = lower(mlp_layers(names), {t.name: t for t in tensors}, x_train)
    shape = "-".join(str(n) for n in (64, *hidden, 10))
    return f"digits-mlp-{shape}-{levels}level", write_container(
        order_tensors(tensors, lowered.tensor_order), params, program=lowered.program)


# -- command line ------------------------------------------------------------------------------



def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="board_command", metavar="ACTION", required=True)
    image = sub.add_parser("image", help="flash image for iceprog: bitstream + model at 1 MiB, "
                           "or the model alone (write it at 1 MiB)")
    image.add_argument("container", metavar="CONTAINER")
    image.add_argument("--bitstream", metavar="BIN",
                       help="bitstream to place at address 0; without it the output is the model "
                            "region alone, for iceprog -o 1M")
    image.add_argument("-o", "--out", required=True, metavar="FILE")
    expect = sub.add_parser("expect", help="the line the board must print for CONTAINER")
    expect.add_argument("container", metavar="CONTAINER")
    expect.add_argument("--check", metavar="LINE",
                        help="compare with a line received from the board; exit 1 if it differs")
    for action in (image, expect):
        action.add_argument("--precision-bits", type=int, default=CodecParams().precision_bits,
                            metavar="P", help="the decoder's P (default %(default)s)")
        action.add_argument("--states", type=int, default=CodecParams().state_count,
                            metavar="K", help="the decoder's K (default %(default)s)")


def _read(path) -> bytes:
    from .tensorio import checked_input
    return checked_input(path).read_bytes()


def run(args) -> int:
    params = CodecParams(precision_bits=args.precision_bits, state_count=args.states)
    container = _read(args.container)
    if args.board_command == "image":
        if args.bitstream:
            image = flash_image(container, _read(args.bitstream))
            command = f"iceprog {args.out}"
        else:
            image = model_region(container)
            command = f"iceprog -o {FLASH_OFFSET >> 20}M {args.out}"
        Path(args.out).write_bytes(image)
        print(f"{args.out}: {len(image)} bytes, model ({len(container)} bytes) for flash "
              f"address {FLASH_OFFSET:#x}; write with: {command}")
        return 0
    line = format_line(expected_report(container, params))
    if args.check is None:
        print(line)
        return 0
    problems = check_line(args.check, container, params)
    for problem in problems:
        print(problem)
    print("match" if not problems else "MISMATCH")
    return 1 if problems else 0
