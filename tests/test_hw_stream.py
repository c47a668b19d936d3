"""hw.stream.ReplayBuffer: the first pass kept as it goes by, later passes from the buffer."""

import random

import pytest
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.stream import ReplayBuffer


def test_replay_buffer_signature():
    members = ReplayBuffer(8).signature.members
    assert members["i"] == In(stream.Signature(16))
    assert members["o"] == Out(stream.Signature(16))
    assert members["source_end"] == In(1) and members["rewind"] == In(1)
    assert members["held"] == Out(1) and members["end"] == Out(1)
    with pytest.raises(ValueError, match="depth"):
        ReplayBuffer(0)


def run_passes(depth, words, passes, seed):
    """``passes`` passes of ``words`` with random gaps on both sides; the source restarts
    when the buffer does not hold the stream, as the system restarts the flash reader.
    Returns, per pass, the words given, the words the source gave, and ``held`` after it."""
    dut = ReplayBuffer(depth)
    rng = random.Random(seed)
    results = []

    async def testbench(ctx):
        for _ in range(passes):
            ctx.set(dut.rewind, 1)
            await ctx.tick()
            ctx.set(dut.rewind, 0)
            sent, got = 0, []
            for _ in range(40 * len(words) + 100):
                offer = sent < len(words) and rng.random() < 0.6
                take = rng.random() < 0.7
                ctx.set(dut.i.valid, offer)
                if offer:
                    ctx.set(dut.i.payload, words[sent])
                ctx.set(dut.source_end, sent == len(words))
                ctx.set(dut.o.ready, take)
                if offer and ctx.get(dut.i.ready):
                    sent += 1
                if take and ctx.get(dut.o.valid):
                    got.append(ctx.get(dut.o.payload))
                if ctx.get(dut.end) and len(got) == len(words):
                    break
                await ctx.tick()
            assert ctx.get(dut.end), "the pass never ended"
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, 0)
            await ctx.tick()
            results.append((got, sent, ctx.get(dut.held)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return results


@pytest.mark.parametrize("count", [1, 37, 64])
def test_a_pass_that_fits_is_replayed_without_the_source(count):
    words = [random.Random(count).getrandbits(16) for _ in range(count)]
    results = run_passes(64, words, 3, seed=count)
    first, *later = results
    assert first == (words, count, 1)
    for got, sent, held in later:
        assert (got, sent, held) == (words, 0, 1)


def test_a_pass_longer_than_the_buffer_comes_from_the_source_every_time():
    words = list(range(100, 165))       # one word more than the buffer
    for got, sent, held in run_passes(64, words, 2, seed=5):
        assert (got, sent, held) == (words, len(words), 0)


def test_a_pass_cut_short_is_not_kept():
    """The consumer stops before the source ends (a decoder that failed): nothing is held,
    and the next pass comes from the source."""
    dut = ReplayBuffer(16)

    async def testbench(ctx):
        ctx.set(dut.o.ready, 1)
        for word in range(5):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, word)
            await ctx.tick()
        ctx.set(dut.o.ready, 0)
        for _ in range(5):
            await ctx.tick()
        assert not ctx.get(dut.held) and not ctx.get(dut.end)
        ctx.set(dut.rewind, 1)
        await ctx.tick()
        ctx.set(dut.rewind, 0)
        ctx.set(dut.o.ready, 1)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 4   # the source's word

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
