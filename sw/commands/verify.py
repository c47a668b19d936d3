from . import read_file, read_with_progress



def add_arguments(parser):
    parser.add_argument("input", metavar="IN")


def run(args) -> int:
    container = read_with_progress(read_file(args.input), "verify")
    print(f"{args.input}: ok, {len(container.tensors)} sections, {container.weight_count} weights, "
          f"{container.size} bytes, {container.bits_per_weight():.4f} bits/weight")
    return 0
