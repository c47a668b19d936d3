"""ECP5 boards: the ULX3S (LFE5U-85F) versions of the board system and the decoder harness.

What differs from the iCEBreaker (:mod:`boards.icebreaker`) is only what an ECP5 board has:
the PLL is an ``EHXPLLL`` (dividers found as Project Trellis' ``ecppll`` finds them), the
configuration flash clock goes through the ``USRMCLK`` primitive (it is not a user pin), and
the pins are those of ``amaranth_boards.ulx3s``. :class:`hw.system.BoardSystem` and
:class:`hw.decoder.WeightDecoder` are used unchanged.

The ULX3S reads its flash with plain Read (``0x03``, one data lane): boards were made with
Winbond and with ISSI flash, whose quad-enable bits differ, and the reader's quad set-up is
Winbond's (docs/BOARD.md).
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
from amaranth.build import Attrs, Pins, Resource
from amaranth.lib import io

from hw.system import BoardSystem, InferenceSystem, measured_decoder
from sw.params import CodecParams

__all__ = ["CONTAINER_CACHE_WORDS", "ecp5_pll_settings", "ULX3STop", "ULX3SDecoderHarness",
           "ECP5_BOARDS"]

#: EHXPLLL limits (MHz), as Project Trellis' ``ecppll`` uses them.
PFD_RANGE = (3.125, 400.0)
VCO_RANGE = (400.0, 800.0)
OUTPUT_RANGE = (10.0, 400.0)

#: Keys of :func:`ecp5_pll_settings` that go into report.json.
PLL_KEYS = ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOS_DIV", "vco_mhz")


def ecp5_pll_settings(f_in: float, f_out: float) -> dict:
    """EHXPLLL dividers giving the frequency nearest ``f_out`` (``ecppll --highres``).

    The loop runs on ``CLKOP`` (feedback ``CLKOP``: ``VCO = f_in / CLKI_DIV * CLKFB_DIV *
    CLKOP_DIV`` in 400..800 MHz, ``CLKOP`` in 10..400 MHz) and the core clock is ``CLKOS = VCO /
    CLKOS_DIV``, which reaches many more frequencies than ``CLKOP`` alone (24 MHz from 25 MHz:
    600 / 25). Ties go to the VCO nearest 600 MHz, as in ``ecppll``.
    """
    f_in_mhz, f_out_mhz = f_in / 1e6, f_out / 1e6
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in_mhz / clki_div
        if not PFD_RANGE[0] <= f_pfd <= PFD_RANGE[1]:
            continue
        for clkfb_div in range(1, 81):
            for clkop_div in range(1, 129):
                f_vco = f_pfd * clkfb_div * clkop_div
                if not VCO_RANGE[0] <= f_vco <= VCO_RANGE[1]:
                    continue
                if not OUTPUT_RANGE[0] <= f_vco / clkop_div <= OUTPUT_RANGE[1]:
                    continue
                # The CLKOS divider nearest the target for this VCO (and its neighbour).
                ideal = f_vco / f_out_mhz
                for clkos_div in {max(1, min(128, int(ideal))), max(1, min(128, int(ideal) + 1))}:
                    achieved = f_vco / clkos_div
                    key = (abs(achieved - f_out_mhz), abs(f_vco - 600))
                    if best is None or key < best[0]:
                        best = (key, {"CLKI_DIV": clki_div, "CLKFB_DIV": clkfb_div,
                                      "CLKOP_DIV": clkop_div, "CLKOS_DIV": clkos_div,
                                      "vco_mhz": round(f_vco, 6),
                                      "frequency": achieved * 1e6, "f_in": f_in})
    if best is None or not OUTPUT_RANGE[0] <= best[1]["frequency"] / 1e6 <= OUTPUT_RANGE[1]:
        raise ValueError(f"no PLL setting for {f_out / 1e6:.3f} MHz from {f_in / 1e6:.3f} MHz")
    return best[1]


def _buffer(m: Module, platform, direction: str, resource: tuple, subsignal: str = None,
            name: str = None):
    """An ``io.Buffer`` on a pin of the board (raw ports: ``PinsN`` inversion included)."""
    port = platform.request(*resource, dir="-")
    if subsignal is not None:
        port = getattr(port, subsignal)
    buffer = io.Buffer(direction, port)
    m.submodules[name or "_".join([*map(str, resource), *([subsignal] if subsignal else [])])] \
        = buffer
    return buffer


def _ecp5_core_clock(m: Module, platform, pll: dict, *, clock: str, button=None) -> None:
    """The ``sync`` domain from an EHXPLLL, reset for 2**12 cycles after lock (or the button).

    ECP5 block RAM needs no wait after configuration (the iCE40's does), but the decoder must
    not start on a clock that is still locking.
    """
    clk_in = platform.request(clock, dir="-")
    m.submodules.clk_in = clk_buffer = io.Buffer("i", clk_in)
    m.domains.sync = sync = ClockDomain("sync")
    m.domains.por = ClockDomain("por", reset_less=True)
    lock = Signal()
    core_clk = Signal()
    feedback = Signal()
    m.d.comb += sync.clk.eq(core_clk)
    m.submodules.pll = Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{pll['f_in'] / 1e6:g}",
        a_FREQUENCY_PIN_CLKOS=f"{pll['frequency'] / 1e6:.6g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED",
        p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC",
        p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=pll["CLKI_DIV"], p_CLKFB_DIV=pll["CLKFB_DIV"],
        p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=pll["CLKOP_DIV"],
        p_CLKOP_CPHASE=(pll["CLKOP_DIV"] - 1) // 2, p_CLKOP_FPHASE=0,
        p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=pll["CLKOS_DIV"], p_CLKOS_CPHASE=0,
        p_CLKOS_FPHASE=0,
        p_FEEDBK_PATH="CLKOP",
        i_CLKI=clk_buffer.i, i_CLKFB=feedback, i_RST=Const(0), i_STDBY=Const(0),
        i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1),
        i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0),
        i_ENCLKOP=Const(0),
        o_CLKOP=feedback, o_CLKOS=core_clk, o_LOCK=lock)
    m.d.comb += ClockSignal("por").eq(core_clk)
    # No FREQUENCY NET of our own: Yosys renames the PLL's output net (the constraint then
    # names a net that is gone), and nextpnr-ecp5 derives the core clock's constraint from the
    # 25 MHz pin and the EHXPLLL's dividers ("Derived frequency constraint of 24.0 MHz").

    pressed = Const(0)
    if button is not None:
        button_sync = Signal(2)
        pin = _buffer(m, platform, "i", button)
        m.d.por += button_sync.eq(Cat(pin.i, button_sync[0]))
        pressed = button_sync[1]
    por = Signal(range(1 << 12 + 1))
    with m.If(~lock | pressed):
        m.d.por += por.eq(0)
    with m.Elif(~por[12]):
        m.d.por += por.eq(por + 1)
    m.d.comb += ResetSignal("sync").eq(~por[12])


class _ULX3S:
    clock = "clk25"
    clock_frequency = 25e6
    button = ("button_fire", 0)     # FIRE1, active high


#: Words of the inference system's container cache (hw.stream.ReplayBuffer) on the ULX3S:
#: 0x03 reads bring a word in 32 cycles, slower than a 16-column engine takes weights (the
#: digits ResNet's 29,744-byte container: ~476,000 cycles an image against the engine's
#: 383,865), so the first image's container is kept in 16 of the 85F's block RAMs.
CONTAINER_CACHE_WORDS = 16384


class ULX3STop(Elaboratable):
    """The ULX3S design: EHXPLLL, reset, pins, and a board system.

    :class:`hw.system.InferenceSystem` (``inference``; its image store and activations in
    block RAM, as ECP5 has no SPRAM, and a container cache of :data:`CONTAINER_CACHE_WORDS`)
    or the CRC system :class:`hw.system.BoardSystem`. The
    flash is read with ``0x03`` on one lane (``quad=False`` always; see the module's
    docstring); its clock leaves through ``USRMCLK``. The UART lines go to the FTDI (``uart``
    0, ``/dev/ttyUSB0``); LED 0 is green's role (``OK``) and LED 1 red's (any error). FIRE1
    starts again.
    """

    pll_keys = PLL_KEYS

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 4, *,
                 columns: int = 1, frequency: float = 48e6, inference: bool = False,
                 wide_crc: bool = False):
        self.params = params
        self.lanes = lanes
        self.columns = columns
        self.quad = False
        self.inference = inference
        self.wide_crc = wide_crc
        self.pll = ecp5_pll_settings(_ULX3S.clock_frequency, frequency)
        self.frequency = self.pll["frequency"]

    def elaborate(self, platform):
        m = Module()
        _ecp5_core_clock(m, platform, self.pll, clock=_ULX3S.clock, button=_ULX3S.button)
        if self.inference:
            system = InferenceSystem(self.params, self.lanes, columns=self.columns,
                                     clk_freq=self.frequency, quad=False,
                                     container_cache_words=CONTAINER_CACHE_WORDS)
        else:
            system = BoardSystem(self.params, self.lanes, clk_freq=self.frequency, quad=False,
                                 wide_crc=self.wide_crc)
        m.submodules.system = system

        flash = platform.request("spi_flash", 0, dir="-")
        # The configuration flash's clock pin belongs to the configuration logic: user logic
        # reaches it through USRMCLK (USRMCLKTS low: driven).
        m.submodules.usrmclk = Instance("USRMCLK", i_USRMCLKI=system.flash.sck,
                                        i_USRMCLKTS=Const(0))
        pins = {}
        for pin, direction in [("cs", "o"), ("copi", "o"), ("cipo", "i"), ("wp", "o"),
                               ("hold", "o")]:
            pins[pin] = m.submodules[f"flash_{pin}"] = io.Buffer(direction,
                                                                 getattr(flash, pin))
        m.d.comb += [
            pins["cs"].o.eq(system.flash.cs),       # PinsN: 1 drives CS# low
            pins["copi"].o.eq(system.flash.dq_o[0]),
            system.flash.dq_i[1].eq(pins["cipo"].i),
            pins["wp"].o.eq(0),     # PinsN: 0 drives WP# high (inactive)
            pins["hold"].o.eq(0),
        ]
        m.d.comb += [
            _buffer(m, platform, "o", ("uart", 0), "tx").o.eq(system.uart_tx),
            _buffer(m, platform, "o", ("led", 0)).o.eq(system.led_green),
            _buffer(m, platform, "o", ("led", 1)).o.eq(system.led_red),
        ]
        return m


class ULX3SDecoderHarness(Elaboratable):
    """:class:`boards.icebreaker.DecoderHarness` on the ULX3S: the decoder alone, to measure it.

    Words enter one bit per cycle from a GPIO pin, every output bit is folded (XOR) onto LED
    0, ``status.done`` drives LED 1: nothing is optimised away and the harness adds a few
    dozen LUTs. The clock is the EHXPLLL's (as the iCEBreaker harness uses its PLL).
    """

    pll_keys = PLL_KEYS

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 4, *,
                 frequency: float = 48e6):
        self.params = params
        self.lanes = lanes
        self.pll = ecp5_pll_settings(_ULX3S.clock_frequency, frequency)
        self.frequency = self.pll["frequency"]

    def elaborate(self, platform):
        m = Module()
        _ecp5_core_clock(m, platform, self.pll, clock=_ULX3S.clock)
        platform.add_resources([
            Resource("harness", 0, Pins("0+ 0- 1+", dir="i", conn=("gpio", 0)),
                     Attrs(IO_TYPE="LVCMOS33")),
        ])
        pins = _buffer(m, platform, "i", ("harness", 0))
        decoder, folded = measured_decoder(m, self.params, self.lanes, pins.i)
        m.d.comb += [_buffer(m, platform, "o", ("led", 0)).o.eq(folded),
                     _buffer(m, platform, "o", ("led", 1)).o.eq(decoder.status.done)]
        return m


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


#: ECP5 boards of ``python -m hw.build`` (described in ``hw.build.BOARDS``): name -> platform
#: factory, PLL check, tops.
ECP5_BOARDS = {
    "ulx3s-85f": {
        "platform": _ulx3s_85f,
        # The PLL setting for a requested core clock (raises ValueError when there is none).
        "pll": lambda frequency: ecp5_pll_settings(_ULX3S.clock_frequency, frequency),
        "top": ULX3STop,
        "harness": ULX3SDecoderHarness,
    },
}
