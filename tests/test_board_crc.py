"""The lane-wide CRC-32 of the decoded weights against zlib (full and partial beats)."""

import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.crc import crc32_word_terms
from hw.weightcrc import WeightCRC, crc32_update_masks


def test_masks_agree_with_decoder_crc():
    # The decoder's one-word CRC (hw.crc) derives the same 16-bit update.
    masks = crc32_update_masks(16)
    terms = crc32_word_terms()
    assert [{i for i in range(48) if (mask >> i) & 1} for mask in masks] == [set(t) for t in terms]


def test_masks_match_zlib_bit_serial():
    # One 16-bit step of the symbolic update, applied by hand, equals zlib on two bytes.
    masks = crc32_update_masks(16)
    for value in (0x0000, 0x0001, 0xBEEF, 0x8000):
        inputs = 0xFFFFFFFF | (value << 32)
        state = sum((bin(mask & inputs).count("1") & 1) << i for i, mask in enumerate(masks))
        assert state ^ 0xFFFFFFFF == zlib.crc32(value.to_bytes(2, "little"))


@pytest.mark.parametrize("lanes,wide", [(1, True), (3, True), (4, True), (8, True), (4, False)])
def test_crc_unit_matches_zlib(lanes, wide):
    rng = np.random.default_rng(lanes)
    beats = []
    for _ in range(40):
        count = lanes if rng.random() < 0.6 else int(rng.integers(0, lanes + 1))
        beats.append((rng.integers(-32768, 32768, lanes).astype(np.int16), count))
    expected = zlib.crc32(b"".join(v[:c].astype("<i2").tobytes() for v, c in beats))
    dut = WeightCRC(lanes, wide)
    result = {}

    async def testbench(ctx):
        for values, count in beats:
            ctx.set(dut.data.valid, 1)
            ctx.set(dut.data.payload, {"values": [int(x) for x in values], "count": count})
            await ctx.tick().until(dut.data.ready)
        ctx.set(dut.data.valid, 0)
        await ctx.tick()
        result["crc"] = ctx.get(dut.value)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        result["cleared"] = ctx.get(dut.value)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert result["crc"] == expected
    assert result["cleared"] == zlib.crc32(b"")
