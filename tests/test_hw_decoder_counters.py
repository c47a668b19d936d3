"""The decoder's short-carry counters (hw.decoder.counters) against a Python model."""

import random

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.decoder.counters import CutCounter, successor


class _Harness(wiring.Component):
    def __init__(self, width, cut, step):
        self.width, self.cut, self.step = width, cut, step
        super().__init__({"load": In(1), "value": In(width), "dec": In(1),
                          "whole": Out(width), "below": Out(1), "equals_one": Out(1),
                          "wrapped": Out(3)})

    def elaborate(self, platform):
        m = Module()
        counter = CutCounter(m, "c", self.width, self.cut, self.step)
        with m.If(self.load):
            m.d.sync += [r.eq(v) for r, v in counter.loaded(self.value)]
        with m.Elif(self.dec):
            m.d.sync += [r.eq(v) for r, v in counter.stepped()]
        m.d.comb += [
            self.whole.eq(((counter.high - counter.borrowed) << self.cut) | counter.low),
            self.below.eq(counter.below(1 << (self.cut - 1))),
            self.equals_one.eq(counter.equals(1)),
        ]
        # successor() wraps at a bound that is not a power of two
        ring = Signal(3)
        m.d.sync += ring.eq(successor(ring, 5))
        m.d.comb += self.wrapped.eq(ring)
        return m


@pytest.mark.parametrize("width,cut,step", [(32, 16, 1), (29, 15, 4), (12, 4, 2)])
def test_cut_counter_is_exact_every_cycle(width, cut, step):
    dut = _Harness(width, cut, step)
    rng = random.Random(width)

    async def testbench(ctx):
        model = 0
        for cycle in range(3000):
            load = rng.random() < 0.02 or model < step
            dec = not load and rng.random() < 0.8
            value = rng.randrange(step, 1 << width) if rng.random() < 0.5 else \
                rng.randrange(step, step << (cut + 1))
            ctx.set(dut.load, load)
            ctx.set(dut.value, value)
            ctx.set(dut.dec, dec)
            assert ctx.get(dut.whole) == model, cycle
            assert ctx.get(dut.below) == (model < 1 << (cut - 1))
            assert ctx.get(dut.equals_one) == (model == 1)
            assert ctx.get(dut.wrapped) == cycle % 5
            await ctx.tick()
            model = value if load else model - step if dec else model

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
