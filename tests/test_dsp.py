"""hw.dsp: the SB_MAC16 counter counts as the plain one does (Yosys' cell model, Icarus)."""

from amaranth.sim import Simulator

from hw.dsp import Counter32, check_against_logic


def test_dsp_form_counts_as_the_logic_form():
    assert "bad=0" in check_against_logic(cycles=70000)


def test_logic_form_counts_and_clears():
    dut = Counter32(dsp=False)
    seen = []

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for enable in [1, 1, 0, 1]:
            ctx.set(dut.enable, enable)
            await ctx.tick()
            seen.append(ctx.get(dut.count))
        ctx.set(dut.clear, 1)
        ctx.set(dut.enable, 1)
        await ctx.tick()
        seen.append(ctx.get(dut.count))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1, 2, 2, 3, 0]
