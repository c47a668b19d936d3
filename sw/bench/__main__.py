import importlib
import sys

BENCHMARKS = {
    "codec": ("sw.bench.codec",
              "bits/weight against entropy, Msym/s against zstd, xz, constriction"),
    "quant": ("sw.bench.quant", "rate-accuracy curve of the digits ResNet, PTQ and QAT"),
    "hw": ("hw.bench", "LUTs, DSPs, EBR and Fmax of the decoder for 1, 2, 4 and 8 lanes"),
}


def main(argv) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: python -m sw.bench {" + ",".join(BENCHMARKS) + "} [options]", file=sys.stderr)
        for name, (_, summary) in BENCHMARKS.items():
            print(f"  {name:<6} {summary}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return module.main(argv[1:])


sys.exit(main(sys.argv[1:]))
