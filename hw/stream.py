"""Stream pieces shared by the decoder and the board systems."""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["ReplayBuffer", "SkidBuffer"]


class SkidBuffer(wiring.Component):
    """A two-register stream slice: both sides see only flip-flops of the other.

    Between the flash reader and the decoder it keeps the decoder's combinational
    ``words.ready`` out of the reader's SCK and shift-register enables, and the reader's
    decisions out of the decoder's parser. At the decoder's output it keeps the consumer's
    ``ready`` out of the state ring: ``i.ready`` is a flip-flop (the skid register is empty).
    Full throughput, one cycle of latency.

    Parameters
    ----------
    shape : shape-castable
        The payload: a width, or a layout such as :class:`hw.decoder.WeightBatch`.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        ``ready`` while the skid register is empty.
    o : Out(stream.Signature(shape))
        ``payload`` and ``valid`` are flip-flops.
    """

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        # The payload registers have no reset: they matter only while valid, and a reset term
        # would sit in front of every one of their enables.
        out = Signal.like(self.o.payload, reset_less=True)
        skid = Signal.like(self.i.payload, reset_less=True)
        skid_valid = Signal()
        m.d.comb += [self.i.ready.eq(~skid_valid), self.o.payload.eq(out)]
        # The skid register takes the input on every cycle it is empty and the output register
        # full, whether or not a transfer is made: then ``i.valid`` reaches only the two valid
        # flags, not the payload's enables (at the decoder's output, ``i.valid`` is the ring's
        # commit, and as the skid register's enable it made a critical path). Loading it
        # whenever it is empty would do as well, but its input multiplexer would then be the
        # output register's, which Yosys shares, and the two registers no longer pack with
        # their LUTs (+81 logic cells at 4 lanes).
        with m.If(~skid_valid & self.o.valid):
            m.d.sync += skid.eq(self.i.payload)
        with m.If(self.o.ready | ~self.o.valid):
            with m.If(skid_valid):
                m.d.sync += [out.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [out.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += skid_valid.eq(1)
        return m


class ReplayBuffer(wiring.Component):
    """Keeps the words of a stream's first pass as they go by, and gives them on later passes.

    The inference system reads the same container for every image. Where the flash is slow
    (the ULX3S reads it with ``0x03``: a word every 32 cycles, slower than a 16-column engine
    takes its weights) and block RAM is free, the first image's words are kept as they pass to
    the decoder, and later images take them from here, the flash left idle. What is kept is the
    container as it lies in flash: compressed, as every weight stays. A first pass longer than
    the buffer is not kept, and every pass then comes from the source, as without a buffer.

    Parameters
    ----------
    depth : int
        Words it can keep.

    Attributes
    ----------
    i : In(stream.Signature(16))
        The source (the flash reader), passed through to ``o`` until the buffer holds a pass;
        then never ready.
    source_end : In(1)
        The source has delivered its last word: a pass kept whole makes the buffer ``held``.
    o : Out(stream.Signature(16))
    rewind : In(1)
        The next pass starts: from the first word kept, when ``held``. A ``source_end`` in
        the same cycle is the previous pass's (a source restarted with the rewind).
    held : Out(1)
        A whole pass is kept: passes come from the buffer, and the source may stop.
    end : Out(1)
        The pass has given its last word: ``source_end`` while passing through.
    """

    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.depth = depth
        super().__init__({"i": In(stream.Signature(16)), "source_end": In(1),
                          "o": Out(stream.Signature(16)), "rewind": In(1), "held": Out(1),
                          "end": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=16, depth=self.depth, init=[])
        write = memory.write_port()
        read = memory.read_port()
        kept = Signal(range(self.depth + 1))     # words of the first pass kept so far
        recording = Signal(init=1)               # ... and the pass still fits
        held = Signal()
        index = Signal(range(self.depth + 1))    # the next word to give
        given_valid = Signal()                   # read.data is a word not yet taken
        m.d.comb += self.held.eq(held)
        with m.If(held):
            fetch = Signal()
            m.d.comb += [fetch.eq((~given_valid | self.o.ready) & (index != kept)),
                         read.addr.eq(index), read.en.eq(fetch),
                         self.o.valid.eq(given_valid), self.o.payload.eq(read.data),
                         self.end.eq((index == kept) & ~given_valid)]
            with m.If(fetch):
                m.d.sync += [index.eq(index + 1), given_valid.eq(1)]
            with m.Elif(self.o.ready):
                m.d.sync += given_valid.eq(0)
        with m.Else():
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                         self.i.ready.eq(self.o.ready), self.end.eq(self.source_end)]
            with m.If(recording & self.i.valid & self.o.ready):
                with m.If(kept == self.depth):
                    m.d.sync += recording.eq(0)      # longer than the buffer: not kept
                with m.Else():
                    m.d.comb += [write.addr.eq(kept), write.data.eq(self.i.payload),
                                 write.en.eq(1)]
                    m.d.sync += kept.eq(kept + 1)
            with m.If(recording & self.source_end & ~self.rewind):
                # the pass under way ends as the source's did: nothing more to give until
                # the next rewind
                m.d.sync += [held.eq(1), recording.eq(0), index.eq(kept)]
        with m.If(self.rewind):
            m.d.sync += [index.eq(0), given_valid.eq(0)]
        return m
