from sw.cli.files import read_file, read_with_progress


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")


def run(args) -> int:
    # Every check of read_container, without keeping the tensors: memory does not grow with
    # the symbol counts the file declares (docs/FORMAT.md, "Checks").
    container = read_with_progress(read_file(args.input), "verify", keep_tensors=False)
    print(f"{args.input}: ok, {len(container.sections)} sections, "
          f"{container.weight_count} weights, "
          f"{container.size} bytes, {container.bits_per_weight():.4f} bits/weight")
    return 0
