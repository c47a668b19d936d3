"""Run the RTL decoder on a container under Icarus and compare it with the golden model.

    python -m sim.decode CONTAINER [--lanes N] [--stall P] [--seed S]

The decoder is generated for the container's own parameters (``precision_bits``,
``state_count`` from its header; ``--precision-bits``/``--state-count`` override them, to see a
decoder refuse a container). Prints the status, the values, the cycles and values/cycle;
exits 0 only when the RTL agrees with :func:`sw.codec.golden.golden_decode` on every output and on
the status, 1 when it does not, 2 on bad arguments.
"""

import argparse
import struct
import sys
import time
from pathlib import Path

__all__ = ["cycle_bound", "main"]


def _header_params(data: bytes):
    from sw.params import CodecParams
    if len(data) >= 14 and data[:4] == b"SBIT":
        precision_bits, state_count = struct.unpack_from("<HH", data, 10)
        try:
            return CodecParams(precision_bits=precision_bits, state_count=state_count)
        except (ValueError, TypeError):
            pass
    return CodecParams()


def cycle_bound(data: bytes, params, lanes: int, stall: float = 0.0) -> int:
    """Cycles after which the RTL has surely finished with ``data``, or never will.

    The bound comes from what the file declares, not from what the golden model emitted: a
    section whose error (a CRC, a payload word short) is found at its end is decoded whole by
    the RTL first, but emits nothing in the golden model, so a bound from the golden output
    gave up before the RTL reached the error. It is the testbench's default
    (:func:`sim.testbench._default_max_cycles`: four cycles per file word, three per step of
    ``lanes`` symbols, twice a table walk per section), with every symbol that the section
    headers declare (:func:`sw.io.load.scan_headers`, up to where the scan stops), each step
    stretched by the ring's bubbles when a lane serves fewer states than the pipeline has
    stages, and the whole stretched by the stalls.

    Parameters
    ----------
    data : bytes
        The container, damaged or not.
    params : CodecParams
        The decoder's.
    lanes : int
    stall : float
        Probability of a stall cycle on the input and on the output.

    Returns
    -------
    int
    """
    from hw.decoder import PIPELINE_DEPTH
    from hw.tables import bucket_shift
    from sw.io.load import scan_headers
    scan = scan_headers(data)
    words = (len(data) + 1) // 2
    per_lane = params.state_count // lanes
    bubbles = -(-PIPELINE_DEPTH // per_lane) if per_lane < PIPELINE_DEPTH else 1
    steps = sum(-(-section.symbol_count // lanes) for section in scan.sections)
    walk = 256 + (1 << (params.precision_bits - bucket_shift(params.precision_bits)))
    per_section = walk + 100 + params.state_count
    stretch = 1 / max(0.05, 1 - stall)
    return int(stretch * (4 * words + 3 * bubbles * steps
                          + 2 * per_section * (len(scan.sections) + 2)))


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
    parser.add_argument("--max-cycles", type=int,
                        help="give up after this many cycles (default: a bound from the "
                             "section headers, see cycle_bound)")
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
    max_cycles = args.max_cycles or cycle_bound(data, params, args.lanes, args.stall)
    started = time.perf_counter()
    result, = run_cases(params, args.lanes, [Case(args.container.name, data, args.stall,
                                                  args.stall, seed=args.seed,
                                                  max_cycles=max_cycles)],
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
