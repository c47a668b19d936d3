"""The board systems: everything clocked by the core clock, the same on every board.

:class:`InferenceSystem`: flash -> image store and, for every image, decoder -> inference
engine -> a UART line per image and a final line, two LEDs. :class:`BoardSystem` (the CRC
system): flash -> decoder -> CRC and counters -> one UART line and two LEDs. Both are what the
full-system simulations run (``sim/board.py``); the tops in ``boards/``
(:class:`boards.icebreaker.ICEBreakerTop`, :class:`boards.ulx3s.ULX3STop`) add what only the
real chip has: the PLL, the power-on reset and the board's pins. :func:`measured_decoder` and
:func:`measured_engine` are the decoder and the engine wired for measurement, which the boards'
harnesses use.

docs/BOARD.md gives the flash layout, the UART lines and the LEDs.
"""

import string

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.board import (
    CRC_LINE,
    ENGINE_MEMORIES,
    FIELD_BITS,
    FINAL_LINE,
    FLASH_OFFSET,
    IMAGE_LINE,
    IMAGE_STORE_WORDS,
    IMAGES_OFFSET,
    MAX_CONTAINER_BYTES,
    MAX_IMAGE_SET_BYTES,
    line_fields,
)
from sw.format import Status
from sw.params import CodecParams

from .decoder import WeightDecoder
from .spiflash import FlashPins, SPIFlashReader
from .spram import SinglePortRam
from .stream import ReplayBuffer, SkidBuffer
from .uart import UARTTransmitter
from .weightcrc import WeightCRC

__all__ = ["ReportLine", "SkidBuffer", "BoardSystem", "ImageStore", "InferenceSystem",
           "LayerProfile", "Profile", "measured_decoder", "measured_engine"]

NAME_CHARS = 16
NAMES_BASE = 256
#: Cycles with every word delivered and no decoder output before the system calls the
#: container truncated. The decoder may legitimately go quiet while it builds a frequency
#: table (at most 256 + 2**(P-4) cycles, 4352 for P = 16); 2**16 is well beyond that.
TRUNCATION_IDLE_CYCLES = 1 << 16
#: Most cycles between the verdict and the report spent letting pending beats reach the CRC.
DRAIN_LIMIT = 1023


def _quiet_cycles(m: Module, limit: int, active) -> Signal:
    """Cycles since ``active`` was last high, held at ``limit``: how a system tells that the
    decoder, which waits for words forever, will get none (it is ``limit`` then)."""
    idle = Signal(range(limit + 1))
    with m.If(active):
        m.d.sync += idle.eq(0)
    with m.Elif(idle != limit):
        m.d.sync += idle.eq(idle + 1)
    return idle


class ReportLine(wiring.Component):
    """Prints one of its lines (``sw.board`` templates) when ``start`` is high.

    One 8-bit ROM holds the templates one after the other and then the status names (16
    characters each, zero padded). A template byte is an ASCII character (``0x00-0x7f``), a
    hex digit of the field vector (``0x80 | nibble``) or a character of the status name
    (``0xc0 | index``; padding is skipped); a line ends with its ``\\n``. 8 bits and one
    synchronous read port let the whole ROM sit in one block RAM (512 x 8) instead of ~150
    LUTs.

    Parameters
    ----------
    divisor : int
        Core clock cycles per UART bit.
    templates : tuple of str
        ``sw.board`` line templates (``CRC_LINE``, ``IMAGE_LINE``, ``FINAL_LINE``); their
        fields (``sw.board.FIELD_BITS``) become the input ports.

    Attributes
    ----------
    start : In(1)
        Print the line ``select`` names; hold it until ``done``, drop it to print another.
    select : In(range(len(templates)))
    <field> : In(FIELD_BITS[field])
        One port per field of the templates, ``status`` first. They must hold still from
        ``start`` until ``done`` (the systems' counters do; not latching them here saves
        flip-flops).
    tx : Out(1)
    done : Out(1)
        The line has been sent (until ``start`` drops).
    """

    def __init__(self, divisor: int, templates: tuple):
        self.divisor = divisor
        self.templates = tuple(templates)
        names = [name for t in self.templates for name in line_fields(t) if name != "name"]
        # status first: a name character's ROM address is made of its code's low 4 bits
        self.fields = ["status"] + list(dict.fromkeys(n for n in names if n != "status"))
        ports = {"start": In(1), "select": In(range(len(self.templates))),
                 "tx": Out(1, init=1), "done": Out(1)}
        ports.update({name: In(FIELD_BITS[name]) for name in self.fields})
        super().__init__(ports)

    def rom(self):
        """``(rom bytes, start address of each template)``: the templates, then at 256 16 names
        of 16 characters."""
        offsets, nibble = {}, 0
        for name in self.fields:
            offsets[name] = nibble
            nibble += FIELD_BITS[name] // 4
        assert nibble <= 64
        entries, starts = [], []
        for template in self.templates:
            starts.append(len(entries))
            for literal, name, _, _ in string.Formatter().parse(template + "\r\n"):
                entries += [ord(c) for c in literal]
                if name == "name":
                    entries += [0xC0 | i for i in range(NAME_CHARS)]
                elif name:
                    # most significant digit first
                    digits = FIELD_BITS[name] // 4
                    entries += [0x80 | (offsets[name] + d) for d in reversed(range(digits))]
        # Names start at 256, so a name character's address is a concatenation, not a sum.
        assert len(entries) <= NAMES_BASE
        entries += [0] * (NAMES_BASE - len(entries))
        for code in range(16):
            name = Status(code).name if code in Status._value2member_map_ else f"CODE_{code}"
            entries += [ord(c) for c in name[:NAME_CHARS].ljust(NAME_CHARS, "\0")]
        return entries, starts

    def elaborate(self, platform):
        m = Module()
        entries, starts = self.rom()
        m.submodules.rom = rom = memory.Memory(shape=8, depth=len(entries), init=entries)
        port = rom.read_port()
        m.submodules.uart = uart = UARTTransmitter(self.divisor)
        m.d.comb += self.tx.eq(uart.tx)

        fields = Cat(*(getattr(self, n) for n in self.fields))
        position = Signal(range(NAMES_BASE))
        first = Signal.like(position)
        m.d.comb += first.eq(starts[0])
        for index, address in enumerate(starts[1:], start=1):
            with m.If(self.select == index):
                m.d.comb += first.eq(address)
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
        # (a binary tree of multiplexers: a Switch made a one-hot pmux of twice the LUTs)
        bytes_ = (len(fields) + 7) // 8
        m.d.sync += [byte.eq(Cat(fields, Const(0, 8 * bytes_ - len(fields)))
                             .word_select(entry[1:1 + max(1, (bytes_ - 1).bit_length())], 8)),
                     high.eq(entry[0])]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += position.eq(first)
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
                    with m.If(char == ord("\n")):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("DRAIN"):
                with m.If(~uart.busy):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                with m.If(~self.start):
                    m.next = "IDLE"
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
            offsets=(self.flash_offset,), max_bytes=MAX_CONTAINER_BYTES, clk_freq=self.clk_freq,
            quad=self.quad)
        m.submodules.decoder = decoder = WeightDecoder(self.params, self.lanes)
        m.submodules.crc = crc = WeightCRC(self.lanes, wide=self.wide_crc)
        m.submodules.report = report = ReportLine(self.divisor, (CRC_LINE,))

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
        idle = _quiet_cycles(m, self.truncation_idle_cycles, taken | ~exhausted)

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


class ImageStore(wiring.Component):
    """The test images in one SPRAM block: loaded once from flash, then streamed one at a time.

    ``load`` takes the image set region's words (docs/BOARD.md, ``sw.board.image_set``): the
    image count, the pixels per image, then the records, which the store keeps until
    ``load_end``. ``next`` then streams the next image's pixels (``U8``, C order) on
    ``pixels`` and reads its label; the images follow each other in flash order. Holding the
    images on the chip keeps the flash free for the container, which the decoder reads again
    for every image.

    Parameters
    ----------
    capacity : int
        16-bit words of records it holds (``sw.board.IMAGE_STORE_WORDS``: one SB_SPRAM256KA).
    spram : bool or None
        As :class:`hw.spram.SinglePortRam`.

    Attributes
    ----------
    load : In(stream.Signature(16))
    load_end : In(1)
        No word of the region is left to come.
    loaded : Out(1)
        The region is in; ``next`` may be used from now on.
    error : Out(1)
        The image set is empty, has images of no pixels, does not fit, or ends inside a record
        that was asked for (sticky; ``load`` then takes and drops every word).
    count : Out(16)
        Images in the set (as its header says).
    next : In(1)
        Stream the next image (taken when ``loaded`` and not streaming).
    pixels : Out(stream.Signature(unsigned(8)))
    label : Out(8)
    delivered : Out(1)
        Every pixel of the image asked for has been taken and ``label`` is its label.
    """

    def __init__(self, capacity: int, *, spram: bool = None):
        self.capacity = capacity
        self.spram = spram
        super().__init__({
            "load": In(stream.Signature(16)),
            "load_end": In(1),
            "loaded": Out(1),
            "error": Out(1),
            "count": Out(16),
            "next": In(1),
            "pixels": Out(stream.Signature(unsigned(8))),
            "label": Out(8),
            "delivered": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = SinglePortRam(self.capacity, spram=self.spram)

        pixel_count = Signal(16)
        # while loading the next word to write, then the word being streamed (after an
        # image's label: the next image's first word)
        address = Signal(range(self.capacity + 1))
        held = Signal.like(address)      # words loaded
        remaining = Signal(16)           # pixels of the image still to offer
        high = Signal()                  # the byte offered is its word's high byte
        m.d.comb += ram.addr.eq(address)

        with m.FSM():
            with m.State("COUNT"):
                m.d.comb += self.load.ready.eq(1)
                with m.If(self.load.valid):
                    m.d.sync += self.count.eq(self.load.payload)
                    m.next = "PIXELS"
            with m.State("PIXELS"):
                m.d.comb += self.load.ready.eq(1)
                with m.If(self.load.valid):
                    m.d.sync += pixel_count.eq(self.load.payload)
                    with m.If((self.count == 0) | (self.load.payload == 0) |
                              (self.load.payload > 0xFFFD)):
                        m.next = "ERROR"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.load.ready.eq(1)
                with m.If(self.load.valid):
                    with m.If(address == self.capacity):
                        m.next = "ERROR"          # more than the store holds
                    with m.Else():
                        m.d.comb += [ram.write_data.eq(self.load.payload),
                                     ram.write_enable.eq(1)]
                        m.d.sync += address.eq(address + 1)
                with m.Elif(self.load_end):
                    m.d.sync += [held.eq(address), address.eq(0)]
                    m.next = "READY"
            with m.State("READY"):
                m.d.comb += self.loaded.eq(1)
                with m.If(self.next):
                    m.d.sync += [remaining.eq(pixel_count), high.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                # the word at `address` is read in this cycle and stays on read_data while
                # the address holds (no write, and a read every cycle)
                m.d.comb += self.loaded.eq(1)
                with m.If(address == held):
                    m.next = "ERROR"              # the record is not all there
                with m.Else():
                    m.next = "OFFER"
            with m.State("OFFER"):
                m.d.comb += self.loaded.eq(1)
                half = Mux(high, ram.read_data[8:], ram.read_data[:8])
                with m.If(remaining == 0):
                    # the byte after the pixels is the label; the next record follows
                    m.d.sync += [self.label.eq(half), address.eq(address + 1)]
                    m.next = "DELIVERED"
                with m.Else():
                    m.d.comb += [self.pixels.valid.eq(1), self.pixels.payload.eq(half)]
                    with m.If(self.pixels.ready):
                        m.d.sync += [remaining.eq(remaining - 1), high.eq(~high)]
                        with m.If(high):
                            m.d.sync += address.eq(address + 1)
                            m.next = "READ"
            with m.State("DELIVERED"):
                m.d.comb += [self.loaded.eq(1), self.delivered.eq(1)]
                with m.If(self.next):
                    m.d.sync += [remaining.eq(pixel_count), high.eq(0)]
                    m.next = "READ"
            with m.State("ERROR"):
                m.d.comb += [self.error.eq(1), self.load.ready.eq(1)]
        return m


#: One layer type's counts in :class:`InferenceSystem`'s profile: the cycles the engine spends
#: on such layers, those it waits for a weight or bias (the decoder is late), and those the
#: decoder's next weights wait for the engine (the engine is busy).
LayerProfile = data.StructLayout({"cycles": 32, "engine_waiting": 32, "decoder_held": 32})
#: Convolutions and linear layers (pools take no weights).
Profile = data.StructLayout({"conv": LayerProfile, "linear": LayerProfile})


class InferenceSystem(wiring.Component):
    """Classifies the test images in flash while the decoder expands the weights for each one.

    After reset the flash reader reads the image set once into the :class:`ImageStore`. Then,
    for every image, the reader, the skid buffer and the decoder are reset and the container
    is decoded again from its start, straight into the :class:`hw.engine.InferenceEngine`:
    the program's words, then the weights as the engine takes them (its backpressure paces
    the decoder); the image's pixels come from the store. No decompressed weight is kept
    anywhere. When the engine answers and the decoder has checked the whole container, a line
    goes out on the UART (``sw.board.IMAGE_LINE``); after the last image, or at the first
    error, the final line (``sw.board.FINAL_LINE``) and the LEDs.

    Parameters
    ----------
    params : CodecParams
    lanes : int
        Decoder lanes.
    columns : int
        The engine's output columns a cycle (:class:`hw.engine.InferenceEngine`): each takes a
        multiplier and a copy of the activation memory.
    clk_freq : float
        Core clock (Hz): the UART divisor and the flash's waits.
    baud : int
    container_offset, images_offset : int
        Flash addresses of the two length-prefixed regions.
    quad : bool
        Quad I/O flash reads (``0xEB``) or single (``0x03``).
    truncation_idle_cycles : int
        Quiet cycles, with every flash word delivered and no decoder output, before the system
        gives up waiting: ``TRUNCATED`` while the decoder still expects words; ``BAD_PROGRAM``
        once it has checked the whole container and the engine has not answered (a program
        asking for more weights than the container holds, or spending longer than this after
        its last weight).
    spram : bool or None
        The image store and the engine's activations as ``SB_SPRAM256KA`` (``None``: on iCE40).
    profile : bool
        Count, per layer type, the cycles the engine spends and those it waits for a weight
        and the decoder waits for it (``profile``; for simulations, 192 flip-flops).
    container_cache_words : int
        With a positive count, a :class:`hw.stream.ReplayBuffer` of that many words between
        the flash reader and the decoder: the first image's container words are kept as they
        pass, and later images are decoded from there, the flash left idle, when the whole
        container fitted (the container, not decompressed weights). 0: none, every image
        reads the flash.

    Attributes
    ----------
    flash : Out(FlashPins)
    uart_tx : Out(1)
    led_green : Out(1)
        Every image answered and every check passed (status ``OK``).
    led_red : Out(1)
        The run stopped on an error (its status is on the final line).
    finished : Out(1)
        The final line has been sent.
    profile : Out(Profile)
        With ``profile`` only: the counts since reset, over every image.
    """

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 1, *,
                 columns: int = 1, clk_freq: float, baud: int = 115200,
                 container_offset: int = FLASH_OFFSET, images_offset: int = IMAGES_OFFSET,
                 quad: bool = True, truncation_idle_cycles: int = TRUNCATION_IDLE_CYCLES,
                 spram: bool = None, profile: bool = False, container_cache_words: int = 0):
        params.check_lanes(lanes)
        if container_cache_words < 0:
            raise ValueError(f"container_cache_words must be 0 or more, not "
                             f"{container_cache_words}")
        self.params = params
        self.lanes = lanes
        self.columns = columns
        self.clk_freq = clk_freq
        self.baud = baud
        self.container_offset = container_offset
        self.images_offset = images_offset
        self.quad = quad
        self.truncation_idle_cycles = truncation_idle_cycles
        self.spram = spram
        self.container_cache_words = container_cache_words
        self.divisor = round(clk_freq / baud)
        members = {"flash": Out(FlashPins), "uart_tx": Out(1, init=1), "led_green": Out(1),
                   "led_red": Out(1), "finished": Out(1)}
        if profile:
            members["profile"] = Out(Profile)
        super().__init__(members)

    def elaborate(self, platform):
        from sw.codec.program import Opcode

        from .engine import InferenceEngine

        m = Module()
        # Resetting the reader, the skid buffer and the decoder starts the next read.
        restart = Signal()
        m.submodules.reader = reader = ResetInserter(restart)(SPIFlashReader(
            offsets=(self.images_offset, self.container_offset),
            max_bytes=max(MAX_CONTAINER_BYTES, MAX_IMAGE_SET_BYTES), clk_freq=self.clk_freq,
            quad=self.quad))
        m.submodules.skid = skid = ResetInserter(restart)(SkidBuffer(16))
        m.submodules.decoder = decoder = ResetInserter(restart)(
            WeightDecoder(self.params, self.lanes))
        m.submodules.engine = engine = InferenceEngine(
            self.lanes, columns=self.columns, spram=self.spram, **ENGINE_MEMORIES)
        m.submodules.store = store = ImageStore(IMAGE_STORE_WORDS, spram=self.spram)
        m.submodules.report = report = ReportLine(self.divisor, (IMAGE_LINE, FINAL_LINE))
        wiring.connect(m, wiring.flipped(self.flash), reader.flash)

        region = Signal()               # 0 the image set, 1 the container
        m.d.comb += reader.region.eq(region)
        reading_images = Signal(init=1)
        # The container's words: from the reader, or from the cache once it holds them all
        # (then the reader stays stopped). The store and the container's path get the reader's
        # one payload; valid and ready say which takes it.
        if self.container_cache_words:
            m.submodules.cache = cache = ReplayBuffer(self.container_cache_words)
            container_words = cache.i
            wiring.connect(m, cache.o, skid.i)
            # (the reader's end of the image set is not the container's)
            m.d.comb += [cache.source_end.eq(reader.exhausted & ~reading_images),
                         cache.rewind.eq(restart)]
            with m.If(cache.held):
                m.d.comb += reader.stop.eq(1)
            source_end = cache.end
        else:
            container_words = skid.i
            source_end = reader.exhausted
        m.d.comb += [store.load.payload.eq(reader.words.payload),
                     container_words.payload.eq(reader.words.payload),
                     store.load.valid.eq(reader.words.valid & reading_images),
                     container_words.valid.eq(reader.words.valid & ~reading_images),
                     reader.words.ready.eq(Mux(reading_images, store.load.ready,
                                               container_words.ready))]
        wiring.connect(m, skid.o, decoder.words)
        wiring.connect(m, decoder.program, engine.program)
        wiring.connect(m, decoder.weights, engine.weights)
        wiring.connect(m, store.pixels, engine.pixels)
        if "profile" in self.signature.members:
            for kind, opcode in (("conv", Opcode.CONV), ("linear", Opcode.LINEAR)):
                counts = getattr(self.profile, kind)
                with m.If(engine.status.busy & (engine.activity.opcode == opcode)):
                    m.d.sync += counts.cycles.eq(counts.cycles + 1)
                    with m.If(engine.activity.waiting):
                        m.d.sync += counts.engine_waiting.eq(counts.engine_waiting + 1)
                    with m.If(decoder.weights.valid & ~engine.weights.ready):
                        m.d.sync += counts.decoder_held.eq(counts.decoder_held + 1)

        code = Signal(4)                # the final line's status
        image = Signal(16)              # the image running, and the images answered
        correct = Signal(16)
        cycles = Signal(32)
        # The engine holds its answer (label, cycles) until it is taken, which is after the
        # image's line: the line prints it from the engine's own register.
        answer = engine.prediction.payload
        finished = Signal()
        m.d.comb += self.finished.eq(finished)
        verdict = Signal()
        with m.If(~verdict):
            m.d.sync += cycles.eq(cycles + 1)

        # The decoder waits for words forever; only the feeder knows that none will come.
        exhausted = Signal()
        m.d.comb += exhausted.eq(source_end & ~skid.o.valid)
        idle = _quiet_cycles(m, self.truncation_idle_cycles,
                            ~exhausted | decoder.weights.valid | decoder.program.valid)
        decoded = Signal()              # the decoder checked the whole container: OK

        m.d.comb += [
            report.status.eq(code), report.image.eq(image), report.correct.eq(correct),
            getattr(report, "class").eq(answer.label),
            report.label.eq(store.label), report.image_cycles.eq(answer.cycles),
            report.cycles.eq(cycles),
            self.uart_tx.eq(report.tx),
        ]

        def fail(status):
            m.d.sync += [code.eq(status), verdict.eq(1)]
            m.next = "FINAL"

        with m.FSM():
            m.d.comb += store.load_end.eq(reader.exhausted)
            with m.State("LOAD"):
                with m.If(store.error):
                    fail(Status.BAD_IMAGES)
                with m.Elif(store.loaded):
                    m.d.comb += reader.stop.eq(1)
                    m.d.sync += [reading_images.eq(0), region.eq(1)]
                    m.next = "RESTART"
            with m.State("RESTART"):
                m.d.comb += [restart.eq(1), store.next.eq(1)]
                m.d.sync += [idle.eq(0), decoded.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(decoder.status.done & ~decoder.status.error):
                    m.d.sync += decoded.eq(1)
                # the first error wins; the decoder's before the engine's in the same cycle
                with m.If(decoder.status.done & decoder.status.error):
                    fail(decoder.status.code)
                with m.Elif(engine.status.error):
                    fail(engine.status.code)
                with m.Elif(store.error):
                    fail(Status.BAD_IMAGES)
                with m.Elif(idle == self.truncation_idle_cycles):
                    fail(Mux(decoded, Status.BAD_PROGRAM, Status.TRUNCATED))
                # the engine asks for more pixels than an image has, or answers before it
                # took them all: the images are not the program's input
                with m.Elif((store.delivered & engine.pixels.ready) |
                            (engine.prediction.valid & ~store.delivered)):
                    fail(Status.BAD_IMAGES)
                with m.Elif(decoded & engine.prediction.valid):
                    m.next = "LINE"
            with m.State("LINE"):
                m.d.comb += [report.select.eq(0), report.start.eq(1)]
                with m.If(report.done):
                    m.d.sync += [image.eq(image + 1),
                                 correct.eq(correct + (answer.label == store.label))]
                    m.next = "NEXT"
            with m.State("NEXT"):
                # the answer is printed: the engine may go on (to the next program); and
                # report.start is low for a cycle, so the line printer is ready again
                m.d.comb += engine.prediction.ready.eq(1)
                with m.If(image == store.count):
                    m.d.sync += verdict.eq(1)
                    m.next = "FINAL"
                with m.Else():
                    m.next = "RESTART"
            with m.State("FINAL"):
                m.d.comb += [report.select.eq(1), report.start.eq(1)]
                with m.If(report.done):
                    m.d.sync += finished.eq(1)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [report.select.eq(1), report.start.eq(1),
                             reader.stop.eq(1)]

        m.d.comb += [self.led_green.eq(finished & (code == Status.OK)),
                     self.led_red.eq(finished & (code != Status.OK))]
        return m
