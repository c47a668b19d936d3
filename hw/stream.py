"""Stream pieces shared by the decoder and the board systems."""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


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
