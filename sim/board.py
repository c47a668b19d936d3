"""Simulation of the board system under Icarus with third-party verification IP.

The Amaranth design is converted to Verilog and wrapped in a small testbench module that joins
its split tri-state flash pins to ``cocotbext-qspi``'s Verilog QSPI NOR flash model
(``qspi_flash.v``, W25Q-style); the cocotb tests (``sim/board_tests.py``,
``sim/board_flash_tests.py``) put a flash image into the model's memory array and listen to the
UART pin with ``cocotbext-uart``.

The simulated top is :class:`hw.system.BoardSystem`, which is everything of the iCEBreaker top
(:class:`boards.icebreaker.ICEBreakerTop`) except the PLL, the reset stretcher and the I/O
buffers: the testbench drives its clock and reset directly.
"""

import json
import os
import shutil
import sys
from pathlib import Path

__all__ = ["main", "simulate_board", "FLASH_MODEL", "flash_wrapper", "build_and_run", "load_config", "image_runs",
           "write_flash"]


def _flash_model() -> Path:
    import cocotbext.qspi
    return Path(cocotbext.qspi.__file__).parent / "verilog" / "qspi_flash.v"


FLASH_MODEL = _flash_model()

#: Dummy clocks of ``0xEB`` on the iCEBreaker's W25Q128JV (the model's default is 8).
W25Q_QUAD_DUMMY = 4


def flash_wrapper(dut_module: str, ports: dict, *, mem_depth: int, name: str = "tb") -> str:
    """Verilog of a testbench top joining ``dut_module``'s flash pins to ``qspi_flash``.

    ``ports`` maps the DUT's other port names to ``(direction, width)``; they become ports of
    the wrapper, so cocotb drives and reads them by name. The flash pins must be called
    ``flash__cs``, ``flash__sck``, ``flash__dq_o``, ``flash__dq_oe``, ``flash__dq_i``.
    """
    declarations, connections = [], []
    for port, (direction, width) in ports.items():
        kind = "input wire" if direction == "i" else "output wire"
        declarations.append(f"    {kind} [{width - 1}:0] {port}")
        connections.append(f"        .{port}({port})")
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
                  build_dir, mem_depth: int, config: dict, testcase=None) -> None:
    """Write the sources, build with Icarus and run ``test_module``; raise if a test fails.

    ``config`` is handed to the cocotb tests as JSON in ``SUBBIT_SIM_CONFIG``.
    """
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    core = build_dir / f"{dut_module}.v"
    core.write_text(verilog)
    wrapper = build_dir / "tb.v"
    wrapper.write_text(flash_wrapper(dut_module, ports, mem_depth=mem_depth))
    config_path = build_dir / "config.json"
    config_path.write_text(json.dumps(config))

    runner = get_runner("icarus")
    # -g2005: under -g2012 Amaranth's `always @*` blocks miss the time-zero trigger.
    runner.build(sources=[core, wrapper, FLASH_MODEL], hdl_toplevel="tb", build_dir=build_dir,
                 timescale=("1ns", "1ps"), build_args=["-g2005"], always=True,
                 log_file=build_dir / "build.log")
    repo = str(Path(__file__).resolve().parent.parent)
    results = runner.test(
        test_module=test_module, hdl_toplevel="tb", build_dir=build_dir, test_dir=build_dir,
        testcase=testcase, timescale=("1ns", "1ps"), log_file=build_dir / "sim.log",
        extra_env={"SUBBIT_SIM_CONFIG": str(config_path),
                   "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])})
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


def main(argv=None) -> int:
    """``python -m sim.board CONTAINER``: the line the simulated board prints, and the check."""
    import argparse
    import tempfile

    from sw.board import check_line
    from sw.params import CodecParams

    parser = argparse.ArgumentParser(
        prog="python -m sim.board",
        description="Simulate the iCEBreaker board system (Icarus, cocotbext-qspi flash model, "
                    "cocotbext-uart) on a container and compare its UART line with software's.")
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--single-spi", action="store_true")
    parser.add_argument("--precision-bits", type=int, default=CodecParams().precision_bits)
    parser.add_argument("--states", type=int, default=CodecParams().state_count)
    args = parser.parse_args(argv)
    try:
        params = CodecParams(precision_bits=args.precision_bits, state_count=args.states)
        params.check_lanes(args.lanes)
        path = Path(args.container)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        container = path.read_bytes()
        with tempfile.TemporaryDirectory() as build_dir:
            line, (green, red) = simulate_board(container, params, lanes=args.lanes,
                                                quad=not args.single_spi, build_dir=build_dir)
    except (ValueError, OSError, AssertionError) as error:
        print(f"python -m sim.board: error: {error}", file=sys.stderr)
        return 1
    print(line)
    print(f"LEDs: green {'on' if green else 'off'}, red {'on' if red else 'off'}")
    problems = check_line(line, container, params)
    for problem in problems:
        print(problem)
    print("matches software" if not problems else "MISMATCH with software")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
