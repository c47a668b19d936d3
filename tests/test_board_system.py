"""The whole board system under Icarus: flash model -> decoder -> CRC -> UART line.

One simulation of :class:`hw.system.BoardSystem` (4 lanes, quad flash reads) on a real trained
model (the build's default, small digits MLP), then the same model corrupted, truncated, and a
blank flash. The line received must equal the one :mod:`sw.board` computes.
"""

import base64

import pytest
from amaranth.back import verilog

from hw.system import BoardSystem
from sim.board import build_and_run
from sw.board import FLASH_OFFSET, default_container
from sw.container import read_container
from sw.params import CodecParams

CLOCK_MHZ = 48
BAUD = 3_000_000     # 16 cycles per bit: the line takes ~13k cycles instead of ~330k
PORTS = {"clk": ("i", 1), "rst": ("i", 1), "uart_tx": ("o", 1), "led_green": ("o", 1),
         "led_red": ("o", 1), "finished": ("o", 1)}


@pytest.mark.slow
def test_board_line_matches_software(tmp_path):
    params = CodecParams()
    _, container = default_container(params, hidden=(64,))
    parsed = read_container(container)
    # Flip a bit in the middle of the first coded section's payload.
    first = parsed.sections[0]
    corrupt_at = first.offset + first.size - 4 - first.payload_bytes // 2
    system = BoardSystem(params, 4, clk_freq=CLOCK_MHZ * 1e6, baud=BAUD,
                         truncation_idle_cycles=2048)
    build_and_run(
        verilog=verilog.convert(system, name="board", emit_src=False),
        dut_module="board", ports=PORTS, test_module="sim.board_tests", build_dir=tmp_path,
        # Addresses wrap at MEM_DEPTH: 2 MiB holds the model at its real 1 MiB offset.
        mem_depth=2 << 20,
        config={"params": {"precision_bits": params.precision_bits,
                           "state_count": params.state_count},
                "container": base64.b64encode(container).decode(),
                "corrupt_at": corrupt_at, "offset": FLASH_OFFSET, "baud": BAUD,
                "clock_ps": 2 * round(5e5 / CLOCK_MHZ), "limit_cycles": 400_000})
