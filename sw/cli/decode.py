"""``python -m sw decode``: a container to ``.npz`` or ``.safetensors``."""

from pathlib import Path

from sw.cli.files import read_file, read_with_progress
from sw.format import SectionKind
from sw.io.load import DEFAULT_MAX_VALUES, byte_size, check_size, decoded_arrays, scan_headers
from sw.io.tensors import OUTPUT_SUFFIXES, save_tensors


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="OUT.npz or OUT.safetensors")
    parser.add_argument("--dequantize", action="store_true",
                        help="write coded tensors as float32 (integer x scale); tensors coded "
                             "through a value table keep their integer dtype")
    parser.add_argument("--max-values", type=int, default=DEFAULT_MAX_VALUES, metavar="N",
                        help="refuse, before decoding, a file that declares more values than "
                             "this (default %(default)s = 2**28)")


def run(args) -> int:
    if Path(args.output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"output must end in {' or '.join(OUTPUT_SUFFIXES)}: {args.output}")
    if args.max_values < 0:
        raise ValueError(f"--max-values must be 0 or more, not {args.max_values}")
    data = read_file(args.input)
    # Size the output from the section headers before anything is allocated: a coded section
    # of one level has no payload, so a tiny file can declare 2**28 values per section.
    scan = scan_headers(data)
    item = 4 if args.dequantize else 2
    size = sum(s.symbol_count * item if s.kind == SectionKind.CODED
               else s.symbol_count * s.dtype.numpy.itemsize if s.kind == SectionKind.MAPPED
               else s.data_bytes for s in scan.sections)
    print(f"{args.input}: {len(scan.sections)} tensors, {scan.values:,} values, "
          f"{byte_size(size)} decoded")
    check_size(scan, args.max_values, args.input)
    container = read_with_progress(data, "decode", scan)
    arrays = decoded_arrays(container, args.dequantize)
    save_tensors(args.output, arrays)
    print(f"{args.output}: {len(arrays)} tensors")
    return 0
