"""The decoder's output stage (hw.decoder.output) and the shared skid buffer (hw.stream)."""

import random

import pytest
from amaranth import signed, unsigned
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.decoder import OutputStage, SymbolBatch, WeightBatch
from hw.stream import SkidBuffer


def simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def test_output_stage_signature():
    sig = OutputStage(4).signature
    assert sig.members["symbols"] == In(stream.Signature(SymbolBatch(4)))
    assert sig.members["weights"] == Out(stream.Signature(WeightBatch(4)))
    assert sig.members["zero_point"] == In(signed(16))
    assert sig.members["section"] == In(unsigned(16))
    assert sig.members["single_symbol"] == In(unsigned(8))
    assert SkidBuffer(16).signature.members["o"] == Out(stream.Signature(16))


@pytest.mark.parametrize("layout", [False, True])
def test_skid_buffer_keeps_order_under_stalls(layout):
    shape = data.StructLayout({"a": 8, "b": 4}) if layout else 16
    dut = SkidBuffer(shape)
    rng = random.Random(1)
    sent = [{"a": rng.getrandbits(8), "b": rng.getrandbits(4)} if layout else rng.getrandbits(16)
            for _ in range(200)]
    got = []

    async def testbench(ctx):
        position = 0
        for _ in range(1000):
            offer = position < len(sent) and rng.random() < 0.7
            take = rng.random() < 0.6
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload, sent[position])
            ctx.set(dut.o.ready, take)
            if offer and ctx.get(dut.i.ready):
                position += 1
            if take and ctx.get(dut.o.valid):
                value = ctx.get(dut.o.payload)
                got.append({"a": value.a, "b": value.b} if layout else value)
            await ctx.tick()
        assert position == len(sent)

    simulate(dut, testbench)
    assert got == sent


@pytest.mark.parametrize("single", [0, 1])
def test_output_stage_takes_off_the_zero_point(single):
    lanes = 2
    dut = OutputStage(lanes)
    rng = random.Random(single)
    steps = [([rng.randrange(256) for _ in range(lanes)], rng.randrange(1, lanes + 1),
              i == 0, i == 59) for i in range(60)]
    zero_point, symbol = -300, 200
    expected = [([(symbol if single else s) - zero_point for s in symbols][:count], first, last)
                for symbols, count, first, last in steps]
    got = []

    async def testbench(ctx):
        ctx.set(dut.zero_point, zero_point)
        ctx.set(dut.section, 5)
        ctx.set(dut.single, single)
        ctx.set(dut.single_symbol, symbol)
        position = 0
        for _ in range(400):
            # The ring commits only while ready, and ready is a flip-flop: read it first.
            ready = ctx.get(dut.symbols.ready)
            offer = position < len(steps) and ready and rng.random() < 0.8
            ctx.set(dut.symbols.valid, offer)
            if offer:
                symbols, count, first, last = steps[position]
                ctx.set(dut.symbols.payload, {"symbols": symbols, "count": count,
                                              "first": first, "last": last})
                position += 1
            take = rng.random() < 0.5
            ctx.set(dut.weights.ready, take)
            if take and ctx.get(dut.weights.valid):
                batch = ctx.get(dut.weights.payload)
                assert batch.section == 5
                got.append(([batch.values[n] for n in range(batch.count)], batch.first,
                            batch.last))
            await ctx.tick()
        assert position == len(steps)

    simulate(dut, testbench)
    assert got == expected
