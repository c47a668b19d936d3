"""The iCEBreaker (iCE40UP5K): the board system and the decoder harness on the real chip.

:class:`ICEBreakerTop` is a board system (:class:`hw.system.InferenceSystem` by default, or the
CRC system :class:`hw.system.BoardSystem`) plus what only a real iCE40 has: the
PLL from the 12 MHz oscillator (``SB_PLL40_PAD``, dividers found as icestorm's ``icepll`` finds
them), the power-on reset that keeps block RAM out of use for its first microseconds, and the
pins of ``amaranth_boards.icebreaker``. :class:`DecoderHarness` puts the decoder alone on the
same clock and reset, to measure what it costs; :class:`EngineHarness` does the same for the
inference engine.

docs/BOARD.md gives the flash layout, the UART line and the LEDs.
"""

from amaranth import (
    Cat,
    ClockDomain,
    ClockSignal,
    Const,
    Elaboratable,
    Instance,
    Module,
    ResetSignal,
    Signal,
)
from amaranth.lib import io

from hw.system import BoardSystem, InferenceSystem, measured_decoder, measured_engine
from sw.params import CodecParams

__all__ = ["ICEBreakerTop", "DecoderHarness", "EngineHarness", "pll_settings"]


def pll_settings(f_in: float, f_out: float) -> dict:
    """SB_PLL40 dividers (simple feedback) giving the frequency nearest ``f_out``.

    The same search as icestorm's ``icepll``: PFD ``f_in/(DIVR+1)`` in 10..133 MHz, VCO
    ``PFD*(DIVF+1)`` in 533..1066 MHz, output ``VCO / 2**DIVQ``.
    """
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                achieved = f_vco / (1 << divq)
                if best is None or abs(achieved - f_out) < abs(best["frequency"] - f_out):
                    best = {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "frequency": achieved,
                            "pfd": f_pfd}
    if best is None:
        raise ValueError(f"no PLL setting for {f_out / 1e6:.3f} MHz from {f_in / 1e6:.3f} MHz")
    pfd = best["pfd"]
    best["FILTER_RANGE"] = next(i for i, top in enumerate(
        [17e6, 26e6, 44e6, 66e6, 101e6, float("inf")], start=1) if pfd < top)
    return best


def _core_clock(m: Module, platform, pll: dict) -> None:
    """The ``sync`` domain from the PLL, with the power-on reset block RAM needs."""
    clk12 = platform.request("clk12", dir="-")
    m.domains.sync = sync = ClockDomain("sync")
    m.domains.por = ClockDomain("por", reset_less=True)
    lock = Signal()
    core_clk = Signal()   # named, so the PCF's set_frequency finds the net
    m.d.comb += sync.clk.eq(core_clk)
    m.submodules.pll = Instance(
        "SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE",
        p_DIVR=pll["DIVR"], p_DIVF=pll["DIVF"], p_DIVQ=pll["DIVQ"],
        p_FILTER_RANGE=pll["FILTER_RANGE"],
        i_PACKAGEPIN=clk12.io, i_RESETB=Const(1), i_BYPASS=Const(0),
        o_PLLOUTGLOBAL=core_clk, o_LOCK=lock)
    m.d.comb += ClockSignal("por").eq(core_clk)
    platform.add_clock_constraint(core_clk, pll["frequency"])

    # The user button decodes again: synchronised, then it restarts the reset count.
    button = platform.request("button", 0)
    button_sync = Signal(2)
    m.d.por += button_sync.eq(Cat(button.i, button_sync[0]))

    # Block RAM reads as zero for ~3 us after configuration: hold reset for 2**12 core
    # cycles (85 us at 48 MHz) after the PLL locks, and again whenever it loses lock.
    por = Signal(range(1 << 12 + 1))
    with m.If(~lock | button_sync[1]):
        m.d.por += por.eq(0)
    with m.Elif(~por[12]):
        m.d.por += por.eq(por + 1)
    m.d.comb += ResetSignal("sync").eq(~por[12])


class ICEBreakerTop(Elaboratable):
    """The iCEBreaker design: PLL, power-on reset, pins, and a board system.

    Parameters
    ----------
    params, lanes, quad
        As :class:`InferenceSystem` and :class:`BoardSystem`.
    columns : int
        As :class:`InferenceSystem` (the inference system only).
    frequency : float
        Requested core clock (Hz); the PLL gives the nearest it can (``self.frequency``).
    inference : bool
        :class:`InferenceSystem` (classify the images in flash) or the CRC system
        :class:`BoardSystem` (decode once, digest the weights).
    wide_crc : bool
        As :class:`BoardSystem` (the CRC system only).
    """

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 1, *,
                 columns: int = 1, frequency: float = 36e6, quad: bool = True,
                 inference: bool = True, wide_crc: bool = False):
        self.params = params
        self.lanes = lanes
        self.columns = columns
        self.quad = quad
        self.inference = inference
        self.wide_crc = wide_crc
        self.pll = pll_settings(12e6, frequency)
        self.frequency = self.pll["frequency"]

    def elaborate(self, platform):
        m = Module()
        _core_clock(m, platform, self.pll)

        if self.inference:
            system = InferenceSystem(self.params, self.lanes, columns=self.columns,
                                     clk_freq=self.frequency, quad=self.quad)
        else:
            system = BoardSystem(self.params, self.lanes, clk_freq=self.frequency,
                                 quad=self.quad, wide_crc=self.wide_crc)
        m.submodules.system = system

        if self.quad:
            # dq as raw ports with one buffer per pin: the reader enables each lane on its own
            # (single-lane commands drive IO0 and hold WP#/HOLD# high while IO1 is an input).
            flash = platform.request("spi_flash_4x", 0, dir={"dq": "-"})
            m.d.comb += [flash.cs.o.eq(system.flash.cs), flash.clk.o.eq(system.flash.sck)]
            for lane in range(4):
                buffer = io.Buffer("io", flash.dq[lane])
                m.submodules[f"flash_dq{lane}"] = buffer
                m.d.comb += [
                    buffer.o.eq(system.flash.dq_o[lane]),
                    buffer.oe.eq(system.flash.dq_oe[lane]),
                    system.flash.dq_i[lane].eq(buffer.i),
                ]
        else:
            flash = platform.request("spi_flash_1x", 0)
            m.d.comb += [
                flash.cs.o.eq(system.flash.cs),
                flash.clk.o.eq(system.flash.sck),
                flash.copi.o.eq(system.flash.dq_o[0]),
                system.flash.dq_i[1].eq(flash.cipo.i),
                flash.wp.o.eq(0),     # PinsN: 0 drives WP# high (inactive)
                flash.hold.o.eq(0),
            ]
        uart = platform.request("uart", 0)
        m.d.comb += uart.tx.o.eq(system.uart_tx)
        m.d.comb += platform.request("led_g", 0).o.eq(system.led_green)
        m.d.comb += platform.request("led_r", 0).o.eq(system.led_red)
        return m


class DecoderHarness(Elaboratable):
    """The decoder alone on the iCEBreaker, to measure what it costs without the board system.

    Not a design to run: the words come in one bit per cycle from a pin and every output bit
    of the decoder is folded (XOR) onto an LED, so nothing is optimised away and the harness
    adds only ~60 logic cells. Resources and Fmax of this build are the decoder's own (plus
    the PLL and reset of :class:`ICEBreakerTop`).
    """

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 4, *,
                 frequency: float = 48e6):
        self.params = params
        self.lanes = lanes
        self.pll = pll_settings(12e6, frequency)
        self.frequency = self.pll["frequency"]

    def elaborate(self, platform):
        from amaranth.build import Pins, Resource

        m = Module()
        _core_clock(m, platform, self.pll)
        platform.add_resources([
            Resource("harness", 0, Pins("1 2 3", dir="i", conn=("pmod", 0))),
        ])
        pins = platform.request("harness", 0)
        decoder, folded = measured_decoder(m, self.params, self.lanes, pins.i)
        m.d.comb += [platform.request("led_g", 0).o.eq(folded),
                     platform.request("led_r", 0).o.eq(decoder.status.done)]
        return m


class EngineHarness(Elaboratable):
    """The inference engine alone on the iCEBreaker, as :class:`DecoderHarness` the decoder.

    Not a design to run: :func:`hw.system.measured_engine` feeds every input from a flip-flop
    (payloads shifted in from one pin, valid and ready bits from four more) and folds every
    output onto an LED. The harness adds one flip-flop per input bit (about 70 at 2 lanes) and
    ~30 LUTs of XOR; the rest of the report is the engine's own, with the PLL and reset of
    :class:`ICEBreakerTop`. ``options`` go to :class:`hw.engine.InferenceEngine`.
    """

    def __init__(self, lanes: int = 2, *, frequency: float = 36e6, **options):
        self.lanes = lanes
        self.options = options
        self.pll = pll_settings(12e6, frequency)
        self.frequency = self.pll["frequency"]

    def elaborate(self, platform):
        from amaranth.build import Pins, Resource

        m = Module()
        _core_clock(m, platform, self.pll)
        platform.add_resources([
            Resource("harness", 0, Pins("1 2 3 4 7", dir="i", conn=("pmod", 0))),
        ])
        pins = platform.request("harness", 0)
        engine, folded = measured_engine(m, self.lanes, pins.i, **self.options)
        m.d.comb += [platform.request("led_g", 0).o.eq(folded),
                     platform.request("led_r", 0).o.eq(engine.status.error)]
        return m
