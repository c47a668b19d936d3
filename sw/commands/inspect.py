import numpy as np

from ..codec import entropy_bits
from ..container import CodedTensor
from ..format import SectionKind
from . import read_file, read_with_progress



def add_arguments(parser):
    parser.add_argument("input", metavar="IN")


def run(args) -> int:
    container = read_with_progress(read_file(args.input), "inspect")
    params = container.params
    print(f"{args.input}: {container.size} bytes, P={params.precision_bits}, "
          f"K={params.state_count}, file header {container.file_header_bytes} bytes")
    columns = f"{'name':<28} {'shape':<18} {'levels':>6} {'entropy':>8} {'bits/w':>8} " \
              f"{'over %':>7} {'payload':>8} {'table':>6} {'header':>6}"
    print(columns)
    print("-" * len(columns))
    entropy_total = 0.0
    for tensor, info in zip(container.tensors, container.sections):
        shape = "x".join(map(str, tensor.shape)) or "scalar"
        if isinstance(tensor, CodedTensor):
            count = tensor.symbols.size
            entropy = entropy_bits(tensor.counts())
            entropy_total += entropy
            bits = 8 * info.size / count if count else float("nan")
            overhead = f"{100 * (8 * info.size - entropy) / entropy:7.2f}" if entropy else "      -"
            print(f"{tensor.name[:28]:<28} {shape[:18]:<18} {tensor.levels:>6} "
                  f"{entropy / count if count else 0:8.4f} {bits:8.4f} {overhead} "
                  f"{info.payload_bytes:>8} {info.table_bytes:>6} {info.header_bytes:>6}")
        else:
            print(f"{tensor.name[:28]:<28} {shape[:18]:<18} {'raw':>6} {'':>8} {'':>8} {'':>7} "
                  f"{info.payload_bytes:>8} {0:>6} {info.header_bytes:>6}")
    coded = [s for s in container.sections if s.kind == SectionKind.CODED]
    payload = sum(s.payload_bytes for s in coded)
    tables = sum(s.table_bytes for s in coded)
    headers = container.file_header_bytes + sum(s.header_bytes for s in container.sections)
    raw = sum(s.payload_bytes for s in container.sections if s.kind == SectionKind.RAW)
    weights = container.weight_count
    print("-" * len(columns))
    print(f"weights {weights}, other parameters {container.parameter_count - weights}")
    print(f"bytes: payload {payload}, tables {tables}, headers {headers}, raw tensors {raw}, "
          f"total {container.size}; headers+tables {100 * (headers + tables) / container.size:.2f} %")
    if weights:
        print(f"entropy {entropy_total / weights:.4f} bits/weight, payload "
              f"{8 * payload / weights:.4f} ({100 * (8 * payload / max(entropy_total, 1e-12) - 1):+.3f} %), "
              f"weights only {container.bits_per_weight(weights_only=True):.4f}, "
              f"whole model {container.bits_per_weight():.4f} bits/weight")
    return 0
