"""cocotb tests of :class:`hw.spiflash.SPIFlashReader` against cocotbext-qspi's flash model.

Run through ``tests/test_spiflash.py`` (which builds the wrapper with :mod:`sim.board`).
"""

import random
import struct

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer

from sim.board import load_config, write_flash


async def _reset(dut, region: int = 0):
    dut.rst.value = 1
    dut.region.value = region
    dut.stop.value = 0
    dut.words__ready.value = 0
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0


async def _collect(dut, ready_probability: float, limit_cycles: int) -> list:
    """Words received until the reader says it is exhausted, under random backpressure."""
    words = []
    rng = random.Random(1)
    for _ in range(limit_cycles):
        dut.words__ready.value = int(rng.random() < ready_probability)
        await RisingEdge(dut.clk)
        if dut.words__valid.value and dut.words__ready.value:
            words.append(dut.words__payload.value.to_unsigned())
        if dut.exhausted.value:
            return words
    raise AssertionError(f"no end after {limit_cycles} cycles ({len(words)} words)")


@cocotb.test()
async def reads_bounded_region(dut):
    """Length-prefixed data arrives in order as LE words; long or blank lengths are clamped."""
    config = load_config()
    offset, max_bytes = config["offset"], config["max_bytes"]
    cocotb.start_soon(Clock(dut.clk, 20, unit="ns").start())
    dut.rst.value = 1
    await Timer(5, "ns")   # after the model's own time-zero erase of its array
    rng = random.Random(config["seed"])
    runs = []
    cases = [("short", 200, 0.6), ("clamped", max_bytes + 300, 0.3), ("empty", 0, 1.0),
             ("blank", None, 1.0)]
    for name, length, ready_probability in cases:
        if length is None:
            image = b""
            expected = [0xFFFF] * (max_bytes // 2)
        else:
            payload = bytes(rng.randrange(256) for _ in range(length))
            image = b"\xff" * offset + struct.pack("<I", length) + payload
            kept = payload[:min(length, max_bytes)]
            expected = list(struct.unpack(f"<{len(kept) // 2}H", kept))
        runs = await write_flash(dut.flash.memory, image, runs)
        await _reset(dut)
        words = await _collect(dut, ready_probability, 40 * max_bytes + 2000)
        assert words == expected, f"{name}: {len(words)} words, first mismatch at " \
            f"{next((i for i, (a, b) in enumerate(zip(words, expected)) if a != b), None)}"
        dut._log.info(f"{name}: {len(words)} words ok")
    # The second region, read after a reset with region 1 while the first one stays in flash.
    first = bytes(rng.randrange(256) for _ in range(100))
    second = bytes(rng.randrange(256) for _ in range(60))
    image = bytearray(b"\xff" * (config["second_offset"] + 4 + len(second)))
    image[offset:offset + 4 + len(first)] = struct.pack("<I", len(first)) + first
    image[config["second_offset"]:] = struct.pack("<I", len(second)) + second
    runs = await write_flash(dut.flash.memory, bytes(image), runs)
    for region, data in ((1, second), (0, first), (1, second)):
        await _reset(dut, region)
        words = await _collect(dut, 0.7, 40 * max_bytes + 2000)
        assert words == list(struct.unpack(f"<{len(data) // 2}H", data)), f"region {region}"
    # Stopping mid-stream releases the flash at once.
    runs = await write_flash(dut.flash.memory,
                             b"\xff" * offset + struct.pack("<I", 400) + bytes(400), runs)
    for wait in (300, 700):   # during set-up, then while streaming data
        await _reset(dut)
        dut.words__ready.value = 1
        await ClockCycles(dut.clk, wait)
        assert dut.flash_cs.value == 1
        dut.stop.value = 1
        await ClockCycles(dut.clk, 2)
        dut.stop.value = 0
        await ClockCycles(dut.clk, 50)
        assert dut.flash_cs.value == 0 and dut.flash_sck.value == 0
