
from sw.cli.files import read_file, read_with_progress
from sw.codec.container import CodedTensor, MappedTensor
from sw.codec.rans import entropy_bits
from sw.format import SectionKind


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")


def print_program(container) -> None:
    """The program, one line per operation, and what it costs of the file."""
    program = container.program
    section = container.program_section
    print(f"program: {len(program.ops)} operations, input {'x'.join(map(str, program.input_shape))}"
          f" U8 at 2**-{program.input_exponent}, {program.memory_words} activation words, "
          f"{program.multiply_accumulates} multiply-accumulates per image; {section.size} bytes = "
          f"{100 * section.size / container.size:.2f} % of the file, "
          f"{8 * section.size / max(container.weight_count, 1):.4f} bits/weight")
    for index, op in enumerate(program.ops):
        shape = "x".join(map(str, op.output_shape))
        detail = f"k{op.kernel} s{op.stride} " if op.kernel else ""
        extra = (f"{detail}A={op.multipliers[0] if len(op.multipliers) == 1 else 'per-channel'}"
                 f" S={op.shift}" + (f" B={op.bias_multiplier}" if op.has_bias else "")
                 + (f" skip@{op.skip_address}<<{op.skip_shift}" if op.has_skip else "")) \
            if op.multipliers else ""
        print(f"  op{index:<3} {op.opcode.name:<6} {op.output_type.name:<3} -> {shape:<10} "
              f"@{op.output_address:<5} 2**-{op.output_exponent:<3} {extra}")


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
        if isinstance(tensor, (CodedTensor, MappedTensor)):
            count = tensor.symbols.size
            entropy = entropy_bits(tensor.counts())
            entropy_total += entropy
            bits = 8 * info.size / count if count else float("nan")
            overhead = f"{100 * (8 * info.size - entropy) / entropy:7.2f}" if entropy else "      -"
            # "v": the levels are a value table's entries (MAPPED)
            levels = f"{tensor.levels}v" if isinstance(tensor, MappedTensor) else tensor.levels
            print(f"{tensor.name[:28]:<28} {shape[:18]:<18} {levels:>6} "
                  f"{entropy / count if count else 0:8.4f} {bits:8.4f} {overhead} "
                  f"{info.payload_bytes:>8} {info.table_bytes:>6} {info.header_bytes:>6}")
        else:
            print(f"{tensor.name[:28]:<28} {shape[:18]:<18} {'raw':>6} {'':>8} {'':>8} {'':>7} "
                  f"{info.payload_bytes:>8} {0:>6} {info.header_bytes:>6}")
    coded = [s for s in container.sections if s.kind in (SectionKind.CODED, SectionKind.MAPPED)]
    payload = sum(s.payload_bytes for s in coded)
    tables = sum(s.table_bytes for s in coded)
    headers = container.file_header_bytes + sum(s.header_bytes for s in container.sections)
    raw = sum(s.payload_bytes for s in container.sections if s.kind == SectionKind.RAW)
    weights = container.weight_count
    print("-" * len(columns))
    mapped = [t for t in container.tensors if isinstance(t, MappedTensor)]
    if mapped:
        shown = ", ".join(f"{t.name} {t.dtype} {t.values[0]}..{t.values[-1]}" for t in mapped[:4])
        more = f" and {len(mapped) - 4} more" if len(mapped) > 4 else ""
        print(f"levels 'Nv': coded through a table of N values (MAPPED, version 3; the RTL "
              f"decoder refuses these): {shown}{more}")
    print(f"weights {weights}, other parameters {container.parameter_count - weights}")
    print(f"bytes: payload {payload}, tables {tables}, headers {headers}, raw tensors {raw}, "
          f"total {container.size}; "
          f"headers+tables {100 * (headers + tables) / container.size:.2f} %")
    if container.program is not None:
        print_program(container)
    if weights:
        print(f"entropy {entropy_total / weights:.4f} bits/weight, payload "
              f"{8 * payload / weights:.4f} "
              f"({100 * (8 * payload / max(entropy_total, 1e-12) - 1):+.3f} %), "
              f"weights only {container.bits_per_weight(weights_only=True):.4f}, "
              f"whole model {container.bits_per_weight():.4f} bits/weight")
    return 0
