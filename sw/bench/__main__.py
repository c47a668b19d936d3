"""``python -m sw.bench NAME``: run one benchmark by name.

The benchmarks are leaves: nothing imports them. ``hw`` names :mod:`hw.bench`, which builds
hardware and so lives in ``hw``; it is looked up by name only when asked for, so no module of
``sw`` imports ``hw`` (sw/__init__.py, tests/test_dependencies.py).
"""

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
