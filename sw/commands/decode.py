from ..container import CodedTensor
from ..tensorio import save_npz
from . import read_file, read_with_progress



def add_arguments(parser):
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", metavar="OUT.npz", required=True)
    parser.add_argument("--dequantize", action="store_true",
                        help="write coded tensors as float32 (integer x scale)")


def run(args) -> int:
    if not args.output.endswith(".npz"):
        raise ValueError(f"output must end in .npz: {args.output}")
    container = read_with_progress(read_file(args.input), "decode")
    arrays = {}
    for tensor in container.tensors:
        if isinstance(tensor, CodedTensor):
            arrays[tensor.name] = tensor.dequantize() if args.dequantize else tensor.integers()
        else:
            arrays[tensor.name] = tensor.data
    save_npz(args.output, arrays)
    print(f"{args.output}: {len(arrays)} tensors")
    return 0
