"""``python -m sw.bench hw``: the decoder and the CRC system for 1, 2, 4 and 8 lanes.

Every build is the full ``python -m hw.build`` flow (Yosys ``synth_ice40 -dsp``, nextpnr-ice40,
icepack, all YoWASP) on the iCE40UP5K of the iCEBreaker at a 48 MHz target: once the decoder
alone in a measurement harness (``--decoder-only``: its own cost), once the whole CRC system
(``--crc-system``) with the default model. The table gives resources, the Fmax nextpnr reports
for the core clock and ``weights/s = lanes x Fmax`` (the decoder's peak rate; on the board the
flash and the one-weight-per-cycle CRC cap it lower, see docs/BOARD.md). A configuration that
does not fit is shown as such. ``--seeds N`` gives each build that misses 48 MHz up to N
placements (nextpnr seeds, ``python -m hw.build --seeds``) and keeps the fastest; the ``seed``
column says which.
It prints figures; it is not a test.

It lives in ``hw`` because it drives the hardware build, and ``sw`` never imports ``hw``;
``python -m sw.bench hw`` runs it by name, beside the software benchmarks.
"""

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hw.build import BuildError, build
from sw.quant.default_model import default_container

__all__ = ["main"]


def _build_one(job) -> dict:
    lanes, decoder_only, out_root, container, name, seeds = job
    out = Path(out_root) / f"{'decoder' if decoder_only else 'system'}{lanes}"
    try:
        # the CRC system: the decoder's own rate at N lanes (the inference system takes one)
        return build(lanes=lanes, container=container, model_name=name, out_dir=out,
                     decoder_only=decoder_only, inference=False, frequency=48e6, seeds=seeds,
                     log=lambda *_: None)
    except BuildError as error:
        return {"lanes": lanes, "error": str(error),
                "design": "decoder harness" if decoder_only else "crc system"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.bench hw", description=__doc__)
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--jobs", type=int, default=2, help="builds in parallel (default 2)")
    parser.add_argument("--out", metavar="DIR", help="keep the builds here (default: temporary)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="placements per build that misses timing (default %(default)s)")
    args = parser.parse_args(argv)

    name, container = default_container()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or scratch
        jobs = [(lanes, decoder_only, root, container, name, args.seeds)
                for decoder_only in (True, False) for lanes in args.lanes]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            reports = list(pool.map(_build_one, jobs))

    print("iCEBreaker (iCE40UP5K-SG48), core clock target 48 MHz; "
          f"default model {name} ({len(container)} bytes)")
    header = (f"{'design':<8} {'lanes':>5} {'LCs':>11} {'LUT4':>5} {'FF':>5} {'DSP':>4} {'EBR':>5} "
              f"{'Fmax MHz':>9} {'met':>4} {'seed':>7} {'Mweights/s':>11} {'build s':>8}")
    print(header)
    print("-" * len(header))
    for report in reports:
        design = "decoder" if report["design"] == "decoder harness" else "system"
        if "error" in report:
            print(f"{design:<8} {report['lanes']:>5}  {report['error']}")
            continue
        res = report["resources"]
        clock = min(report["clocks"].values(), key=lambda c: c["fmax_mhz"])
        lcs = res["logic_cells"]
        share = 100 * lcs["used"] / lcs["available"]
        print(f"{design:<8} {report['lanes']:>5} {lcs['used']:>5} ({share:3.0f}%)"
              f" {res['luts']['used']:>5} {res['ffs']['used']:>5} {res['dsp']['used']:>4} "
              f"{res['ebr']['used']:>5} {clock['fmax_mhz']:>9.2f} "
              f"{'yes' if report['timing_met'] else 'no':>4} {report['placement_seed']:>7} "
              f"{report['weights_per_second'] / 1e6:>11.1f} {report['build_seconds']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
