"""The whole board system under Icarus: flash model -> decoder -> CRC -> UART line.

One simulation of :class:`hw.system.BoardSystem` (4 lanes, quad flash reads) on a real trained
model (the build's default, small digits MLP), then the same model corrupted, truncated, and a
blank flash. The line received must equal the one :mod:`sw.board` computes.
"""

import pytest
from amaranth.back import verilog

from hw.system import BoardSystem
from sim.board import BOARD_PORTS, SIM_BAUD, board_config, build_and_run
from sw.codec.container import read_container
from sw.params import CodecParams
from sw.quant.default_model import default_container


@pytest.mark.slow
def test_board_line_matches_software(tmp_path):
    params = CodecParams()
    _, container = default_container(params, hidden=(64,))
    parsed = read_container(container)
    # Flip a bit in the middle of the first coded section's payload.
    first = parsed.sections[0]
    corrupt_at = first.offset + first.size - 4 - first.payload_bytes // 2
    system = BoardSystem(params, 4, clk_freq=48e6, baud=SIM_BAUD, truncation_idle_cycles=2048)
    build_and_run(
        verilog=verilog.convert(system, name="board", emit_src=False),
        dut_module="board", ports=BOARD_PORTS, test_module="sim.board_tests",
        build_dir=tmp_path, testcase="board_prints_golden_line",
        # Addresses wrap at MEM_DEPTH: 2 MiB holds the model at its real 1 MiB offset.
        mem_depth=2 << 20,
        config=board_config(container, params, corrupt_at=corrupt_at))
