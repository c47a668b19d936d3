"""Run the RTL decoder on a container under Icarus and compare it with the golden model.

    python -m sim.decode CONTAINER [--lanes N] [--stall P] [--seed S]

The decoder is generated for the container's own parameters (``precision_bits``,
``state_count`` from its header; ``--precision-bits``/``--state-count`` override them, to see a
decoder refuse a container). Prints the status, the values, the cycles and values/cycle;
exits 0 only when the RTL agrees with :func:`sw.golden.golden_decode` on every output and on
the status, 1 when it does not, 2 on bad arguments.
"""

import argparse
import struct
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _header_params(data: bytes):
    from sw.params import CodecParams
    if len(data) >= 14 and data[:4] == b"SBIT":
        precision_bits, state_count = struct.unpack_from("<HH", data, 10)
        try:
            return CodecParams(precision_bits=precision_bits, state_count=state_count)
        except (ValueError, TypeError):
            pass
    return CodecParams()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: the message says what to fix.
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None) -> int:
    parser = _Parser(prog="python -m sim.decode",
                     description="Run the RTL decoder on a container.")
    parser.add_argument("container", type=Path)
    parser.add_argument("--lanes", type=int, default=4, help="decoder lanes N (default 4)")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="probability of a stall cycle on the input and on the output")
    parser.add_argument("--seed", type=int, default=1, help="seed of the stall generators")
    parser.add_argument("--precision-bits", type=int, help="build the decoder for this P")
    parser.add_argument("--state-count", type=int, help="build the decoder for this K")
    parser.add_argument("--max-cycles", type=int, help="give up after this many cycles")
    parser.add_argument("--buffer-depth", type=int, help="payload word buffer of the decoder")
    args = parser.parse_args(argv)

    if not 0 <= args.stall < 1:
        parser.error(f"--stall must be in [0, 1), not {args.stall}")
    try:
        data = args.container.read_bytes()
    except OSError as error:
        parser.error(f"cannot read {args.container}: {error.strerror or error}")

    from sw.params import CodecParams
    params = _header_params(data)
    try:
        params = CodecParams(
            precision_bits=args.precision_bits or params.precision_bits,
            state_count=args.state_count or params.state_count)
        params.check_lanes(args.lanes)
        options = {}
        if args.buffer_depth is not None:
            from hw.wordbuf import WordBuffer
            options["buffer_depth"] = WordBuffer.checked_depth(args.lanes, args.buffer_depth)
    except ValueError as error:
        parser.error(str(error))

    from sim.testbench import Case, run_cases
    from sw.format import Status
    started = time.perf_counter()
    result, = run_cases(params, args.lanes, [Case(args.container.name, data, args.stall,
                                                  args.stall, seed=args.seed,
                                                  max_cycles=args.max_cycles)],
                        options=options)
    seconds = time.perf_counter() - started
    status = result.status.name if result.done else "waiting (no status)"
    print(f"decoder   P={params.precision_bits} K={params.state_count} N={args.lanes}"
          f"  stall={args.stall}")
    print(f"status    {status}   golden {result.golden_status.name}")
    print(f"values    {result.values}   golden {result.golden_values}")
    print(f"cycles    {result.cycles}   values/cycle {result.values / max(1, result.cycles):.3f}"
          f"   in sections {result.values / max(1, result.section_cycles):.3f}")
    print(f"simulated in {result.seconds:.1f} s ({result.cycles / max(1e-9, result.seconds):.0f}"
          f" cycles/s), {seconds:.1f} s with build")
    problems = result.problems()
    for problem in problems:
        print(f"MISMATCH  {problem}")
    if not problems:
        print("match     every output agrees with the golden model")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
