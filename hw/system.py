"""The board system: flash -> decoder -> CRC and counters -> one UART line and two LEDs.

:class:`BoardSystem` is everything clocked by the core clock and is what the full-system
simulation runs (``sim/board.py``). It is the same on every board: the tops in ``boards/``
(:class:`boards.icebreaker.ICEBreakerTop`, :class:`boards.ulx3s.ULX3STop`) add what only the
real chip has: the PLL, the power-on reset and the board's pins. :func:`measured_decoder` is the
decoder wired for measurement, which both boards' decoder harnesses use.

docs/BOARD.md gives the flash layout, the UART line and the LEDs.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.board import FLASH_OFFSET, MAX_CONTAINER_BYTES
from sw.format import Status
from sw.params import CodecParams

from .decoder import WeightDecoder
from .spiflash import FlashPins, SPIFlashReader
from .uart import UARTTransmitter
from .weightcrc import WeightCRC

__all__ = ["LINE_TEMPLATE", "ReportLine", "BoardSystem", "measured_decoder", "measured_engine"]

#: The UART line; ``{name}`` is the status name, the other fields lower-case hex of the widths
#: given (docs/BOARD.md). ``sw.board.format_line`` prints the same.
LINE_TEMPLATE = [
    "subbit ", ("name",), " status=", ("status", 2), " layers=", ("layers", 4),
    " weights=", ("weights", 8), " crc=", ("crc", 8), " cycles=", ("cycles", 8), "\r\n",
]
FIELD_BITS = {"status": 8, "layers": 16, "weights": 32, "crc": 32, "cycles": 32}
NAME_CHARS = 16
NAMES_BASE = 256
#: Cycles with every word delivered and no decoder output before the system calls the
#: container truncated. The decoder may legitimately go quiet while it builds a frequency
#: table (at most 256 + 2**(P-4) cycles, 4352 for P = 16); 2**16 is well beyond that.
TRUNCATION_IDLE_CYCLES = 1 << 16
#: Most cycles between the verdict and the report spent letting pending beats reach the CRC.
DRAIN_LIMIT = 1023


class ReportLine(wiring.Component):
    """Prints the line of :data:`LINE_TEMPLATE` once when ``start`` rises.

    One 8-bit ROM holds the template and then the status names (16 characters each, zero
    padded). A template byte is an ASCII character (``0x00-0x7f``), a hex digit of the field
    vector (``0x80 | nibble``) or a character of the status name (``0xc0 | index``; padding is
    skipped). 8 bits and one synchronous read port let the whole ROM sit in one block RAM
    (512 x 8) instead of ~150 LUTs.

    Attributes
    ----------
    start : In(1)
    status, layers, weights, crc, cycles : In(...)
        Must hold still from ``start`` on (the board system's counters stop with the verdict;
        not latching them here saves 120 flip-flops).
    tx : Out(1)
    done : Out(1)
        The line has been sent.
    """

    def __init__(self, divisor: int):
        self.divisor = divisor
        ports = {"start": wiring.In(1), "tx": Out(1, init=1), "done": Out(1)}
        ports.update({name: wiring.In(bits) for name, bits in FIELD_BITS.items()})
        super().__init__(ports)

    @staticmethod
    def rom():
        """``(rom bytes, template length)``: the template, then at 256 16 names of 16 chars."""
        offsets, nibble = {}, 0
        for name, bits in FIELD_BITS.items():
            offsets[name] = nibble
            nibble += bits // 4
        assert nibble <= 64
        entries = []
        for item in LINE_TEMPLATE:
            if isinstance(item, str):
                entries += [ord(c) for c in item]
            elif item[0] == "name":
                entries += [0xC0 | i for i in range(NAME_CHARS)]
            else:
                name, digits = item
                # Most significant digit first.
                entries += [0x80 | (offsets[name] + d) for d in reversed(range(digits))]
        template_length = len(entries)
        # Names start at 256, so a name character's address is a concatenation, not a sum.
        assert template_length <= NAMES_BASE
        entries += [0] * (NAMES_BASE - template_length)
        for code in range(16):
            name = Status(code).name if code in Status._value2member_map_ else f"CODE_{code}"
            entries += [ord(c) for c in name[:NAME_CHARS].ljust(NAME_CHARS, "\0")]
        return entries, template_length

    def elaborate(self, platform):
        m = Module()
        entries, template_length = self.rom()
        m.submodules.rom = rom = memory.Memory(shape=8, depth=len(entries), init=entries)
        port = rom.read_port()
        m.submodules.uart = uart = UARTTransmitter(self.divisor)
        m.d.comb += self.tx.eq(uart.tx)

        fields = Cat(*(getattr(self, n) for n in FIELD_BITS))
        position = Signal(range(template_length + 1))
        char = Signal(8)
        # The ROM's output registered once more before anything decodes it: block RAM's
        # clock-to-out and routing left too little of the cycle for the decoding behind it.
        entry = Signal(8)
        m.d.sync += entry.eq(port.data)
        byte = Signal(8)
        high = Signal()
        digit = Signal(4)
        m.d.comb += [port.addr.eq(position), uart.data.payload.eq(char)]
        # The byte holding the digit the ROM names, registered every cycle whatever the state
        # (HEX uses the one selected in DECODE): a 30-way nibble select, the FSM's decode and
        # the conversion behind the ROM in one cycle were the board logic's slowest path.
        with m.Switch(entry[1:6]):
            for index in range(len(fields) // 8):
                with m.Case(index):
                    m.d.sync += byte.eq(fields[8 * index:8 * index + 8])
        m.d.sync += high.eq(entry[0])

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += position.eq(0)
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "LATCH"    # the ROM answers one cycle after the address ...
            with m.State("LATCH"):
                m.next = "DECODE"   # ... and `entry` a cycle after that
            with m.State("DECODE"):
                with m.If(~entry[7]):
                    m.d.sync += char.eq(entry)
                    m.next = "EMIT"
                with m.Elif(~entry[6]):
                    m.next = "HEX"
                with m.Else():
                    m.d.comb += port.addr.eq(Cat(entry[:4], fields[:4], Const(1, 1)))
                    m.next = "NAME_LATCH"
            with m.State("NAME_LATCH"):
                m.next = "NAME"
            with m.State("HEX"):
                m.d.comb += digit.eq(Mux(high, byte[4:], byte[:4]))
                m.d.sync += char.eq(Mux(digit < 10, ord("0") + digit, ord("a") - 10 + digit))
                m.next = "EMIT"
            with m.State("NAME"):
                with m.If(entry == 0):
                    m.d.sync += position.eq(position + 1)
                    m.next = "FETCH"
                with m.Else():
                    m.d.sync += char.eq(entry)
                    m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += uart.data.valid.eq(1)
                with m.If(uart.data.ready):
                    m.d.sync += position.eq(position + 1)
                    with m.If(position == template_length - 1):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("DRAIN"):
                with m.If(~uart.busy):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
        return m


class SkidBuffer(wiring.Component):
    """A two-register stream slice: both sides see only flip-flops of the other.

    Between the flash reader and the decoder it keeps the decoder's combinational
    ``words.ready`` out of the reader's SCK and shift-register enables, and the reader's
    decisions out of the decoder's parser. Full throughput, one cycle of latency.
    """

    def __init__(self, width: int):
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        skid = Signal.like(self.i.payload)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(self.o.ready | ~self.o.valid):
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m


class BoardSystem(wiring.Component):
    """Decodes the container in flash once after reset and reports over UART and LEDs.

    Parameters
    ----------
    params : CodecParams
        The decoder's code.
    lanes : int
        Decoder lanes.
    clk_freq : float
        Core clock (Hz): sets the UART divisor and the flash wake-up wait.
    baud : int
        UART rate (115200 on the board; simulations may go faster).
    flash_offset : int
        Where the length-prefixed container lies in flash.
    quad : bool
        Quad I/O flash reads (``0xEB``) or single (``0x03``).
    wide_crc : bool
        CRC a whole beat per cycle (:class:`hw.weightcrc.WeightCRC`). By default one weight
        per cycle, which saves ~450 LUTs at 4 lanes but then limits the board to one weight per
        cycle: the quad flash feeds 2 bits per cycle, i.e. ``2 / b`` weights per cycle for a
        model of ``b`` bits/weight, so below 2 bits/weight the CRC, not the flash, sets the
        pace (the decoder itself is unaffected; only the check is).
    truncation_idle_cycles : int
        Quiet cycles after the last flash word before the container is called truncated.

    Attributes
    ----------
    flash : Out(FlashPins)
    uart_tx : Out(1)
    led_green : Out(1)
        Lit when the container decoded with status ``OK``.
    led_red : Out(1)
        Lit on any error (including a truncated or missing container).
    finished : Out(1)
        The verdict is in (the line may still be going out).
    """

    flash: Out(FlashPins)
    uart_tx: Out(1, init=1)
    led_green: Out(1)
    led_red: Out(1)
    finished: Out(1)

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 4, *,
                 clk_freq: float, baud: int = 115200, flash_offset: int = FLASH_OFFSET,
                 quad: bool = True, wide_crc: bool = False,
                 truncation_idle_cycles: int = TRUNCATION_IDLE_CYCLES):
        params.check_lanes(lanes)
        self.params = params
        self.lanes = lanes
        self.clk_freq = clk_freq
        self.baud = baud
        self.flash_offset = flash_offset
        self.quad = quad
        self.wide_crc = wide_crc
        self.truncation_idle_cycles = truncation_idle_cycles
        self.divisor = round(clk_freq / baud)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = reader = SPIFlashReader(
            offset=self.flash_offset, max_bytes=MAX_CONTAINER_BYTES, clk_freq=self.clk_freq,
            quad=self.quad)
        m.submodules.decoder = decoder = WeightDecoder(self.params, self.lanes)
        m.submodules.crc = crc = WeightCRC(self.lanes, wide=self.wide_crc)
        m.submodules.report = report = ReportLine(self.divisor)

        wiring.connect(m, wiring.flipped(self.flash), reader.flash)
        m.submodules.skid = skid = SkidBuffer(16)
        wiring.connect(m, reader.words, skid.i)
        wiring.connect(m, skid.o, decoder.words)
        exhausted = Signal()     # no word left in the reader nor on its way
        m.d.comb += exhausted.eq(reader.exhausted & ~skid.o.valid)

        verdict = Signal()      # the decoder or the truncation check has spoken
        finished = Signal()     # ... and the beats on their way are counted: report
        m.d.comb += self.finished.eq(finished)

        # Once finished, the CRC and counters hold still for the report line; anything the
        # decoder still offers is drained and ignored.
        beat = decoder.weights.payload
        m.d.comb += [
            crc.data.valid.eq(decoder.weights.valid & ~finished),
            crc.data.payload.values.eq(beat.values),
            crc.data.payload.count.eq(beat.count),
            decoder.weights.ready.eq(crc.data.ready | finished),
        ]
        taken = Signal()
        m.d.comb += taken.eq(crc.data.valid & crc.data.ready)

        layers = Signal(16)
        weights = Signal(32)
        cycles = Signal(32)
        idle = Signal(range(self.truncation_idle_cycles + 1))
        truncated = Signal()
        code = Signal(4)
        drain = Signal(range(DRAIN_LIMIT + 1))

        with m.If(taken):
            m.d.sync += weights.eq(weights + beat.count)
            with m.If(beat.first & (beat.count != 0)):
                m.d.sync += layers.eq(layers + 1)

        with m.If(~finished):
            m.d.sync += cycles.eq(cycles + 1)

        # The decoder waits for words forever; only the feeder knows that none will come.
        with m.If(taken | ~exhausted):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self.truncation_idle_cycles):
            m.d.sync += idle.eq(idle + 1)

        with m.If(~verdict):
            with m.If(decoder.status.done):
                m.d.sync += [verdict.eq(1), code.eq(decoder.status.code)]
            with m.Elif(idle == self.truncation_idle_cycles):
                m.d.sync += [verdict.eq(1), truncated.eq(1), code.eq(Status.TRUNCATED)]
        with m.Elif(~finished):
            # Let beats already on their way reach the CRC (the decoder may finish its checks
            # while its last beats still wait at a one-weight-per-cycle CRC), but do not wait
            # forever on a decoder that keeps its output valid after an error.
            m.d.sync += drain.eq(drain + 1)
            with m.If(~decoder.weights.valid | (drain == DRAIN_LIMIT)):
                m.d.sync += finished.eq(1)

        m.d.comb += [
            reader.stop.eq(verdict),
            report.start.eq(finished),
            report.status.eq(code),
            report.layers.eq(layers),
            report.weights.eq(weights),
            report.crc.eq(crc.value),
            report.cycles.eq(cycles),
            self.uart_tx.eq(report.tx),
            self.led_green.eq(finished & (code == Status.OK)),
            self.led_red.eq(finished & (code != Status.OK)),
        ]
        return m


def measured_decoder(m: Module, params: CodecParams, lanes: int, pins) -> tuple:
    """A :class:`WeightDecoder` wired for measurement, as both boards' harnesses use it.

    Words are shifted in one bit per cycle from ``pins[0]`` (``words.valid`` from ``pins[1]``,
    ``weights.ready`` from ``pins[2]``), and every output bit is folded (XOR) into one
    register, so synthesis keeps the whole decoder. Returns ``(decoder, folded)``.
    """
    m.submodules.decoder = decoder = WeightDecoder(params, lanes)
    inputs = Signal(3)
    shift = Signal(16)
    m.d.sync += [inputs.eq(pins), shift.eq(Cat(inputs[0], shift[:-1]))]
    m.d.sync += [decoder.words.payload.eq(shift), decoder.words.valid.eq(inputs[1])]
    m.d.comb += decoder.weights.ready.eq(inputs[2])
    folded = Signal()
    outputs = Cat(decoder.weights.valid, decoder.weights.payload.as_value(),
                  decoder.words.ready, decoder.status.as_value(),
                  decoder.program.valid, decoder.program.payload.as_value())
    # Folded in two registered stages, four bits to a LUT first: an output's own logic
    # (words.ready is a few LUTs deep) then meets one LUT before a flip-flop, as in a real
    # consumer, and the harness's XOR tree is not what the measurement times.
    parts = Signal((len(outputs) + 3) // 4)
    m.d.sync += [parts.eq(Cat(*[outputs[i:i + 4].xor() for i in range(0, len(outputs), 4)])),
                 folded.eq(parts.xor())]
    return decoder, folded


def measured_engine(m: Module, lanes: int, pins, **options) -> tuple:
    """An :class:`hw.engine.InferenceEngine` wired for measurement, as :func:`measured_decoder`.

    Every input comes from a flip-flop: the payloads of ``program``, ``pixels`` and
    ``weights`` from one shift register fed from ``pins[0]`` (a bit of its own for every
    payload bit, so synthesis can assume nothing about them), the four valid/ready bits from
    ``pins[1:5]`` through a register. Every output bit is folded (XOR) into one register in two
    stages, so synthesis keeps the whole engine and the harness's XOR tree is not what the
    measurement times. Returns ``(engine, folded)``.
    """
    from .engine import InferenceEngine

    m.submodules.engine = engine = InferenceEngine(lanes, **options)
    payloads = Cat(engine.program.payload.as_value(), engine.pixels.payload,
                   engine.weights.payload.as_value())
    shift = Signal(len(payloads))
    controls = Signal(4)
    m.d.sync += [shift.eq(Cat(pins[0], shift[:-1])), controls.eq(pins[1:5])]
    m.d.comb += [payloads.eq(shift),
                 engine.program.valid.eq(controls[0]), engine.pixels.valid.eq(controls[1]),
                 engine.weights.valid.eq(controls[2]), engine.prediction.ready.eq(controls[3])]
    outputs = Cat(engine.pixels.ready, engine.weights.ready, engine.prediction.valid,
                  engine.prediction.payload.as_value(), engine.activations.valid,
                  engine.activations.payload.as_value(), engine.status.as_value())
    parts = Signal((len(outputs) + 3) // 4)
    folded = Signal()
    m.d.sync += [parts.eq(Cat(*[outputs[i:i + 4].xor() for i in range(0, len(outputs), 4)])),
                 folded.eq(parts.xor())]
    return engine, folded
