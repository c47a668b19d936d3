"""``python -m sw.bench hw``: the iCEBreaker board system built for 1, 2, 4 and 8 lanes.

Each build is the full ``python -m hw.build`` flow (Yosys ``synth_ice40 -dsp``, nextpnr-ice40,
icepack, all YoWASP) on the default model; the table gives the resources, the Fmax nextpnr
reports for the core clock and ``weights/s = lanes x Fmax`` (the decoder's peak rate; on the
board the flash and the one-weight-per-cycle CRC cap it lower, see docs/BOARD.md). A
configuration that does not fit the UP5K is shown as such. It prints figures; it is not a test.
"""

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["main"]


def _build_one(lanes: int, out_root: str, container: bytes, name: str) -> dict:
    # Imported here so that `python -m sw.bench codec` never pays for Amaranth.
    from hw.build import BuildError, build

    out = Path(out_root) / f"lanes{lanes}"
    try:
        return build(lanes=lanes, container=container, model_name=name, out_dir=out,
                     log=lambda *_: None)
    except BuildError as error:
        reason = str(error)
        return {"lanes": lanes, "error": reason}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.bench hw", description=__doc__)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--jobs", type=int, default=2, help="builds in parallel (default 2)")
    parser.add_argument("--out", metavar="DIR", help="keep the builds here (default: temporary)")
    args = parser.parse_args(argv)

    from sw.board import default_container
    name, container = default_container()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or scratch
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            reports = list(pool.map(_build_one, args.lanes, [root] * len(args.lanes),
                                    [container] * len(args.lanes), [name] * len(args.lanes)))

    print("iCEBreaker (iCE40UP5K) board system, core clock target 48 MHz")
    header = (f"{'lanes':>5} {'LCs':>11} {'LUT4':>5} {'FF':>5} {'DSP':>4} {'EBR':>5} "
              f"{'Fmax MHz':>9} {'met':>4} {'Mweights/s':>11} {'build s':>8}")
    print(header)
    print("-" * len(header))
    for report in reports:
        if "error" in report:
            print(f"{report['lanes']:>5}  {report['error']}")
            continue
        res = report["resources"]
        clock = min(report["clocks"].values(), key=lambda c: c["fmax_mhz"])
        lcs = res["logic_cells"]
        print(f"{report['lanes']:>5} {lcs['used']:>5} ({100 * lcs['used'] / lcs['available']:3.0f}%)"
              f" {res['luts']['used']:>5} {res['ffs']['used']:>5} {res['dsp']['used']:>4} "
              f"{res['ebr']['used']:>5} {clock['fmax_mhz']:>9.2f} "
              f"{'yes' if report['timing_met'] else 'no':>4} "
              f"{report['weights_per_second'] / 1e6:>11.1f} {report['build_seconds']:>8.0f}")
    return 0
