"""The codec commands of ``python -m sw`` (see :mod:`sw.cli`)."""

import struct
from pathlib import Path

from tqdm import tqdm

from ..container import Container, parse
from ..format import MAGIC
from ..params import CodecParams


def read_file(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    return path.read_bytes()


def read_with_progress(data: bytes, description: str) -> Container:
    """Read and check a container, with a progress bar over its sections on a terminal."""
    total = struct.unpack_from("<H", data, 14)[0] \
        if len(data) >= 16 and data[:4] == MAGIC else None
    with tqdm(total=total, desc=description, unit="section", disable=None, leave=False) as bar:
        return parse(data, on_section=lambda section: bar.update())


def add_params_arguments(parser) -> None:
    defaults = CodecParams()
    parser.add_argument("--precision-bits", type=int, default=defaults.precision_bits,
                        metavar="P", help="frequencies sum to 2**P (default %(default)s)")
    parser.add_argument("--states", type=int, default=defaults.state_count, metavar="K",
                        help="interleaved rANS states; a decoder's lane count must divide it "
                             "(default %(default)s)")


def params_from(args) -> CodecParams:
    return CodecParams(precision_bits=args.precision_bits, state_count=args.states)
