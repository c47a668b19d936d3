"""The flash reader against cocotbext-qspi's W25Q-style flash model, quad and single mode."""

import pytest
from amaranth.back import verilog

from hw.spiflash import SPIFlashReader
from sim.board import build_and_run

OFFSET = 0x1F0    # not word-aligned in the model's terms, to catch address slips
SECOND_OFFSET = 0xA13
MAX_BYTES = 512
PORTS = {"clk": ("i", 1), "rst": ("i", 1), "stop": ("i", 1), "region": ("i", 1),
         "words__ready": ("i", 1),
         "words__valid": ("o", 1), "words__payload": ("o", 16), "length": ("o", 32),
         "exhausted": ("o", 1)}


@pytest.mark.slow
@pytest.mark.parametrize("quad", [True, False], ids=["quad", "single"])
def test_reader_against_flash_model(quad, tmp_path):
    reader = SPIFlashReader(offsets=(OFFSET, SECOND_OFFSET), max_bytes=MAX_BYTES, clk_freq=50e6,
                            quad=quad)
    build_and_run(verilog=verilog.convert(reader, name="reader", emit_src=False),
                  dut_module="reader", ports=PORTS, test_module="sim.board_flash_tests",
                  build_dir=tmp_path, mem_depth=4096,
                  config={"offset": OFFSET, "second_offset": SECOND_OFFSET,
                          "max_bytes": MAX_BYTES, "seed": int(quad)})
