"""Simulation of the board system under Icarus with third-party verification IP.

The Amaranth design is converted to Verilog and wrapped in a small testbench module that joins
its split tri-state flash pins to ``cocotbext-qspi``'s Verilog QSPI NOR flash model
(``qspi_flash.v``, W25Q-style); the cocotb tests (``sim/board_tests.py``,
``sim/board_flash_tests.py``) put a flash image into the model's memory array and listen to the
UART pin with ``cocotbext-uart``.

The simulated top is :class:`hw.system.BoardSystem`, which is everything of the iCEBreaker top
(:class:`hw.system.ICEBreakerTop`) except the PLL, the reset stretcher and the I/O buffers:
the testbench drives its clock and reset directly.
"""

import json
import os
import shutil
import sys
from pathlib import Path

__all__ = ["FLASH_MODEL", "flash_wrapper", "build_and_run", "load_config", "image_runs",
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
                 timescale=("1ns", "1ps"), build_args=["-g2005"], always=True)
    repo = str(Path(__file__).resolve().parent.parent)
    results = runner.test(
        test_module=test_module, hdl_toplevel="tb", build_dir=build_dir, test_dir=build_dir,
        testcase=testcase, timescale=("1ns", "1ps"),
        extra_env={"SUBBIT_SIM_CONFIG": str(config_path),
                   "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])})
    tests, failures = get_results(results)
    if failures or not tests:
        raise AssertionError(f"{failures} of {tests} cocotb tests failed; see {build_dir}")


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
