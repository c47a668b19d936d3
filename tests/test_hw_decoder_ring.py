"""The decoder's state ring (hw.decoder.ring) alone: counting, replay, verdicts, final check.

The lookups are left at zero and the sections given a single symbol (``single``): no lane
renormalises and the states stay as loaded, so what is checked is the ring's bookkeeping; the
arithmetic is checked through the whole decoder against the golden model (test_hw_units,
test_sim_decoder).
"""

import random

import pytest
from amaranth import unsigned
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.decoder import PIPELINE_DEPTH, SectionDescriptor, StateRing, StateWord, SymbolBatch
from hw.decoder.ring import issue_bits
from sw.params import CodecParams


def simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def test_state_ring_signature():
    params = CodecParams()
    ring = StateRing(params, 4)
    sig = ring.signature
    assert ring.depth == PIPELINE_DEPTH and ring.ring == 8
    assert sig.members["descriptor"] == In(stream.Signature(SectionDescriptor,
                                                             always_ready=True))
    assert sig.members["states"] == In(stream.Signature(StateWord(4), always_ready=True))
    assert sig.members["symbols"] == Out(stream.Signature(SymbolBatch(4)))
    assert sig.members["slot"] == Out(data.ArrayLayout(unsigned(params.precision_bits), 4))
    assert sig.members["words"] == In(data.ArrayLayout(unsigned(16), 4))
    assert SectionDescriptor.size == 35
    assert issue_bits(1) == 2 and issue_bits(4) == 4
    with pytest.raises(ValueError):
        StateRing(params, 3)


def run_ring(params, lanes, counts, *, off_state=None, enough=1.0, ready=1.0, seed=0):
    """Load the states (all ``L`` but ``off_state``), run a section of each of ``counts``
    symbols, then the final check. Returns the steps committed per section (count, first,
    last), and (past_end seen, final_bad)."""
    dut = StateRing(params, lanes)
    rng = random.Random(seed)
    L = params.lower_bound
    sections = []
    verdicts = {}

    async def testbench(ctx):
        ctx.set(dut.single, 1)
        ctx.set(dut.in_header, 1)
        for i in range(params.state_count):
            ctx.set(dut.states.valid, 1)
            ctx.set(dut.states.payload, {"value": L + 1 if i == off_state else L,
                                         "lane": i % lanes})
            await ctx.tick()
            # the parser takes a state's two words in two cycles at the least
            ctx.set(dut.states.valid, 0)
            await ctx.tick()
        await ctx.tick()
        ctx.set(dut.in_header, 0)
        past_end = False
        for count in counts:
            ctx.set(dut.descriptor.valid, 1)
            ctx.set(dut.descriptor.payload, {
                "symbol_count": count, "empty": count == 0, "small": count <= lanes,
                "narrow": count < 1 << issue_bits(lanes)})
            await ctx.tick()
            ctx.set(dut.descriptor.valid, 0)
            ctx.set(dut.in_payload, 1)
            ctx.set(dut.payload_more, 1)
            steps = []
            for _ in range(20 * count + 100):
                ctx.set(dut.enough, rng.random() < enough)
                if ctx.get(dut.symbols.valid):
                    step = ctx.get(dut.symbols.payload)
                    steps.append((step.count, step.first, step.last))
                past_end |= ctx.get(dut.past_end)
                if ctx.get(dut.drained):
                    break
                await ctx.tick()
                # ready is a flip-flop of the output stage: it changes only at an edge
                ctx.set(dut.symbols.ready, rng.random() < ready)
            else:
                raise AssertionError(f"section of {count} symbols never drained")
            ctx.set(dut.in_payload, 0)
            ctx.set(dut.symbols.ready, 1)
            sections.append(steps)
        ctx.set(dut.enough, 1)
        ctx.set(dut.in_final, 1)
        for _ in range(3 * params.state_count + 20):
            if ctx.get(dut.final_done):
                break
            await ctx.tick()
        else:
            raise AssertionError("the final check never ended")
        verdicts["past_end"] = past_end
        verdicts["final_bad"] = ctx.get(dut.final_bad)

    simulate(dut, testbench)
    return sections, verdicts


def expected_steps(count, lanes):
    sizes = [lanes] * (count // lanes) + ([count % lanes] if count % lanes else [])
    return [(size, i == 0, i == len(sizes) - 1) for i, size in enumerate(sizes)]


# 4 lanes of K = 32: R = 8 slots, states parked in block RAM; 8 lanes: R = D, registers;
# K = 4 on 2 lanes: two states per lane and five bubbles.
@pytest.mark.parametrize("state_count,lanes", [(32, 4), (32, 8), (4, 2)])
def test_ring_counts_steps_and_checks_final_states(state_count, lanes):
    params = CodecParams(state_count=state_count)
    counts = [1, 2 * lanes + 1, 37, 64]
    sections, verdicts = run_ring(params, lanes, counts, ready=0.6, seed=state_count)
    assert sections == [expected_steps(count, lanes) for count in counts]
    assert verdicts == {"past_end": False, "final_bad": 0}


@pytest.mark.parametrize("state_count,lanes", [(32, 4), (32, 8)])
def test_ring_replays_a_step_short_of_words(state_count, lanes):
    # ``enough`` low now and then: the step at Z and those behind it are replayed, and each
    # step still commits once, in order.
    params = CodecParams(state_count=state_count)
    counts = [29, 50]
    sections, verdicts = run_ring(params, lanes, counts, enough=0.7, ready=0.8, seed=lanes)
    assert sections == [expected_steps(count, lanes) for count in counts]
    assert not verdicts["past_end"]


@pytest.mark.parametrize("state_count,lanes", [(32, 4), (32, 8)])
def test_ring_final_check_finds_a_state_off(state_count, lanes):
    params = CodecParams(state_count=state_count)
    for off in (0, state_count - 1):
        _, verdicts = run_ring(params, lanes, [5], off_state=off)
        assert verdicts["final_bad"] == 1
