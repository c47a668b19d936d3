"""Streams a length-prefixed region of a SPI NOR flash (W25Q-style) as 16-bit words.

The flash holds, at each of the reader's ``offsets``, a ``u32`` little-endian byte count
followed by that many bytes (the container, the test images; docs/BOARD.md); ``region`` says
which one a read takes, and a reset starts the next read. The reader wakes the flash, reads
the count, then streams the bytes as little-endian 16-bit words with backpressure, and stops
after ``min(count, max_bytes)`` bytes: a blank flash (count ``0xFFFFFFFF``) or a corrupt
count cannot make it read past the region. ``exhausted`` then tells the system that no more
words will come, which is how it can report a truncated container (the decoder itself just
waits).

SCK runs at half the core clock and is held low while the consumer is not ready: SPI NOR flash
is fully static, so pausing the clock pauses the transfer.

Quad mode uses Fast Read Quad I/O (``0xEB``: opcode on one lane; address, mode byte and data on
four; 4 dummy clocks, as on the W25Q128JV of the iCEBreaker) and 2 bits per core cycle. Because
the W25Q128JV's quad pins are ``WP#``/``HOLD#`` until the status register's ``QE`` bit is set,
the reader first sets ``QE`` in the volatile copy of status register 2 (``0x50`` then ``0x31
0x02``), which wears nothing and is lost at power-off. Single mode uses plain Read (``0x03``),
one bit per two core cycles.
"""

import math

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FlashPins", "SPIFlashReader"]

CMD_RELEASE_POWER_DOWN = 0xAB
CMD_VOLATILE_SR_WRITE_ENABLE = 0x50
CMD_WRITE_SR2 = 0x31
SR2_QE = 0x02
CMD_READ = 0x03
CMD_FAST_READ_QUAD_IO = 0xEB
QUAD_DUMMY_CLOCKS = 4

#: Pins of a quad SPI flash as the core sees them (tri-state split into o/oe/i).
FlashPins = wiring.Signature({
    "cs": Out(1),      # active high here; the board inverts it to CS#
    "sck": Out(1),
    "dq_o": Out(4),    # dq[0] = COPI/IO0, dq[1] = CIPO/IO1, dq[2] = WP#/IO2, dq[3] = HOLD#/IO3
    "dq_oe": Out(4),
    "dq_i": In(4),
})


class SPIFlashReader(wiring.Component):
    """Reads a length-prefixed region and streams it as 16-bit words, once after reset.

    Parameters
    ----------
    offsets : tuple of int
        Byte addresses of the regions' ``u32`` lengths; each region's data follows its length.
    max_bytes : int
        Never reads more data bytes than this, whatever the length says.
    clk_freq : float
        Core clock in Hz; sizes the wake-up wait (3 us after ``0xAB``) and the chip-select gaps.
    quad : bool
        ``0xEB`` quad I/O read (default) or ``0x03`` single read.

    Attributes
    ----------
    words : Out(stream.Signature(16))
        The data, two bytes per word, the first byte in bits 0-7.
    length : Out(32)
        The length word read from the flash (valid once ``words`` has started).
    exhausted : Out(1)
        Every word of the bounded region has been delivered.
    stop : In(1)
        Stop reading and release the flash (the consumer has finished).
    region : In(range(len(offsets)))
        The region to read (an index into ``offsets``): must hold still from reset until the
        read command is out.
    flash : Out(FlashPins)
    """

    def __init__(self, *, offsets: tuple, max_bytes: int, clk_freq: float, quad: bool = True):
        offsets = tuple(offsets)
        if not offsets:
            raise ValueError("the reader needs at least one region")
        for offset in offsets:
            if not 0 <= offset < (1 << 24) - 4:
                raise ValueError(f"offset {offset:#x} is not a 24-bit flash address")
        self.offsets = offsets
        self.max_bytes = max_bytes
        self.clk_freq = clk_freq
        self.quad = quad
        super().__init__({
            "words": Out(stream.Signature(16)),
            "length": Out(32),
            "exhausted": Out(1),
            "stop": In(1),
            "region": In(range(len(offsets))),
            "flash": Out(FlashPins),
        })

    def elaborate(self, platform):
        m = Module()
        pins = self.flash
        width = 4 if self.quad else 1
        # the read address of the region asked for: a constant when there is one
        offset = Signal(24)
        m.d.comb += offset.eq(self.offsets[0])
        for index, region_offset in enumerate(self.offsets[1:], start=1):
            with m.If(self.region == index):
                m.d.comb += offset.eq(region_offset)

        wake_cycles = max(2, math.ceil(self.clk_freq * 5e-6))   # tRES1 = 3 us, with margin
        gap_cycles = max(2, math.ceil(self.clk_freq * 100e-9))  # tSHSL >= 50 ns
        timer = Signal(range(wake_cycles + 1))
        # "timer is 0" and "this is the last SCK cycle" as flip-flops updated with their
        # counters: the FSM's transitions then test one bit instead of a compare each.
        timer_zero = Signal()
        last_clock = Signal()

        sr = Signal(32)                 # bits to send, MSB first
        clocks = Signal(range(33))      # SCK cycles left in the current shift phase
        acc = Signal(16)
        samples = Signal(range(16))     # samples taken of the current word
        samples_per_word = 16 // width
        header = Signal(2, init=2)      # length words still to read
        words_left = Signal(range(self.max_bytes // 2 + 1))
        # Registered "no word left", so the end test is one flip-flop rather than a wide
        # compare at the head of the STREAM state's decision chain.
        no_words = Signal()

        # The output register empties on a transfer; STREAM below may refill it in the same
        # cycle (statements later in the module win).
        with m.If(self.words.valid & self.words.ready):
            m.d.sync += self.words.valid.eq(0)

        def single_lane():
            # io0 carries the command; WP# and HOLD# held high (inactive) while they are pins.
            m.d.comb += [pins.dq_o.eq(Cat(sr[31], Const(0, 1), Const(0b11, 2))),
                         pins.dq_oe.eq(0b1101)]

        def quad_lanes():
            m.d.comb += [pins.dq_o.eq(sr[28:32]), pins.dq_oe.eq(0b1111)]

        def shift(step, on_last):
            """One SCK cycle per two core cycles; data changes while SCK is low."""
            with m.If(~pins.sck):
                m.d.sync += pins.sck.eq(1)
            with m.Else():
                m.d.sync += [pins.sck.eq(0), sr.eq(sr << step), clocks.eq(clocks - 1),
                             last_clock.eq(clocks == 2)]
                with m.If(last_clock):
                    on_last()

        def load(value, bits, lanes_per_clock):
            m.d.sync += [sr.eq(value << (32 - bits)), clocks.eq(bits // lanes_per_clock),
                         last_clock.eq(bits // lanes_per_clock == 1)]

        stopped = Signal()
        with m.FSM():
            with m.State("START"):
                m.d.sync += pins.cs.eq(1)
                load(CMD_RELEASE_POWER_DOWN, 8, 1)
                m.next = "WAKE"

            def command_then_pause(name, pause_cycles, then):
                """State ``name`` clocks out the loaded command; ``name``_WAIT then holds CS#
                high for ``pause_cycles`` and runs ``then`` to load the next command."""
                with m.State(name):
                    single_lane()

                    def after_command():
                        m.d.sync += [pins.cs.eq(0), timer.eq(pause_cycles), timer_zero.eq(0)]
                        m.next = f"{name}_WAIT"
                    shift(1, after_command)

                with m.State(f"{name}_WAIT"):
                    m.d.sync += [timer.eq(timer - 1), timer_zero.eq(timer == 1)]
                    with m.If(timer_zero):
                        m.d.sync += pins.cs.eq(1)
                        then()

            def after_wake():
                if self.quad:
                    load(CMD_VOLATILE_SR_WRITE_ENABLE, 8, 1)
                    m.next = "SR_ENABLE"
                else:
                    load(Cat(offset, Const(CMD_READ, 8)), 32, 1)
                    m.next = "READ_COMMAND"
            command_then_pause("WAKE", wake_cycles, after_wake)

            if self.quad:
                def after_enable():
                    load((CMD_WRITE_SR2 << 8) | SR2_QE, 16, 1)
                    m.next = "SR_WRITE"
                command_then_pause("SR_ENABLE", gap_cycles, after_enable)

                def after_write():
                    load(CMD_FAST_READ_QUAD_IO, 8, 1)
                    m.next = "READ_COMMAND"
                # A volatile status write needs no busy time on the W25Q128JV; wait as long as
                # after the wake-up anyway, it costs 5 us once.
                command_then_pause("SR_WRITE", wake_cycles, after_write)

                with m.State("READ_COMMAND"):
                    single_lane()

                    def after_opcode():
                        # Address and a mode byte of 0 (no continuous-read mode) on four lanes.
                        load(Cat(Const(0, 8), offset), 32, 4)
                        m.next = "READ_ADDRESS"
                    shift(1, after_opcode)

                with m.State("READ_ADDRESS"):
                    quad_lanes()

                    def after_address():
                        m.d.sync += [clocks.eq(QUAD_DUMMY_CLOCKS),
                                     last_clock.eq(QUAD_DUMMY_CLOCKS == 1)]
                        m.next = "DUMMY"
                    shift(4, after_address)

                with m.State("DUMMY"):
                    # Bus released: the flash turns it around to drive data.
                    m.d.comb += pins.dq_oe.eq(0)

                    def after_dummy():
                        m.next = "LENGTH"
                    shift(0, after_dummy)
            else:
                with m.State("READ_COMMAND"):
                    single_lane()

                    def after_command():
                        m.next = "LENGTH"
                    shift(1, after_command)

            # The data phase is split into states so that each keeps its decision short:
            # LENGTH reads the two length words, BOUND and CHECK bound it (a 32-bit compare,
            # then a zero test, each with a cycle of its own), STREAM delivers the words.
            if self.quad:
                sample = pins.dq_i
            else:
                sample = pins.dq_i[1]
            new_acc = Signal(16)
            m.d.comb += new_acc.eq(Cat(sample, acc) if width == 1 else Cat(sample, acc[:12]))
            last_sample = samples == samples_per_word - 1
            # Swap bytes: the first byte read is the low half of the word.
            word = Cat(new_acc[8:16], new_acc[0:8])

            def data_lanes():
                if self.quad:
                    m.d.comb += pins.dq_oe.eq(0)
                else:
                    single_lane()

            def take_sample(on_word):
                """The flash drove this bit/nibble after the last falling edge: take it as
                SCK rises (stopped is handled after the FSM, which forces SCK low)."""
                with m.If(~pins.sck):
                    m.d.sync += [pins.sck.eq(1), acc.eq(new_acc)]
                    with m.If(last_sample):
                        m.d.sync += samples.eq(0)
                        on_word()
                    with m.Else():
                        m.d.sync += samples.eq(samples + 1)
                with m.Else():
                    m.d.sync += pins.sck.eq(0)

            with m.State("LENGTH"):
                data_lanes()

                def length_word():
                    m.d.sync += [self.length.eq(Cat(self.length[16:], word)),
                                 header.eq(header - 1)]
                    with m.If(header == 1):
                        m.next = "BOUND"
                take_sample(length_word)

            with m.State("BOUND"):
                data_lanes()
                clamped = Mux(self.length > self.max_bytes, self.max_bytes, self.length)
                m.d.sync += [words_left.eq(clamped >> 1), pins.sck.eq(0)]
                m.next = "CHECK"

            with m.State("CHECK"):
                data_lanes()
                m.d.sync += no_words.eq(words_left == 0)
                m.next = "STREAM"

            with m.State("STREAM"):
                data_lanes()
                blocked = last_sample & self.words.valid & ~self.words.ready
                with m.If(no_words):
                    m.d.sync += [pins.cs.eq(0), pins.sck.eq(0)]
                    m.next = "END"
                with m.Elif(~blocked):
                    def data_word():
                        m.d.sync += [self.words.payload.eq(word),
                                     self.words.valid.eq(1),
                                     words_left.eq(words_left - 1),
                                     no_words.eq(words_left == 1)]
                    take_sample(data_word)

            with m.State("END"):
                m.d.comb += self.exhausted.eq(~self.words.valid)

        # After the FSM, so that it wins over whatever state the FSM is in.
        with m.If(self.stop | stopped):
            m.d.sync += [stopped.eq(1), pins.cs.eq(0), pins.sck.eq(0)]
        return m
