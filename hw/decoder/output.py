"""The decoder's output stage: symbols less the zero point, through a skid buffer."""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..stream import SkidBuffer
from .layouts import SymbolBatch, WeightBatch

__all__ = ["OutputStage"]


class OutputStage(wiring.Component):
    """Turns the state ring's committed steps into ``weights`` transfers.

    A register and a skid register behind it (:class:`hw.stream.SkidBuffer`): the ring
    commits a step only while the skid register is empty (``symbols.ready``, a flip-flop), and
    one that finds the output register still held waits in the skid register, so the
    consumer's ``ready`` reaches no enable of the ring.

    Parameters
    ----------
    lanes : int

    Attributes
    ----------
    symbols : In(stream.Signature(SymbolBatch(lanes)))
        The ring's committed steps; ``valid`` is the ring's commit, which it raises only
        while ``ready`` (the ring holds otherwise).
    section : In(unsigned(16))
        Index of the section the steps belong to (a parser register).
    zero_point : In(signed(16))
        The section's ``zero_point`` (a parser register).
    single : In(1)
        The section has one symbol with a nonzero frequency, ``single_symbol``; the ring's
        symbols are then not looked up and every value is that one.
    single_symbol : In(unsigned(8))
    weights : Out(stream.Signature(WeightBatch(lanes)))
        ``payload`` and ``valid`` are flip-flops.
    """

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__({
            "symbols": In(stream.Signature(SymbolBatch(lanes))),
            "section": In(unsigned(16)),
            "zero_point": In(signed(16)),
            "single": In(1),
            "single_symbol": In(unsigned(8)),
            "weights": Out(stream.Signature(WeightBatch(lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.skid = skid = SkidBuffer(WeightBatch(self.lanes))
        step = self.symbols.payload
        produced = Signal(WeightBatch(self.lanes))
        m.d.comb += [
            produced.count.eq(step.count),
            produced.first.eq(step.first),
            produced.last.eq(step.last),
            produced.section.eq(self.section),
        ]
        for n in range(self.lanes):
            m.d.comb += produced.values[n].eq(
                Mux(self.single, self.single_symbol, step.symbols[n]) - self.zero_point)
        m.d.comb += [
            skid.i.valid.eq(self.symbols.valid),
            skid.i.payload.eq(produced),
            self.symbols.ready.eq(skid.i.ready),
        ]
        wiring.connect(m, skid.o, wiring.flipped(self.weights))
        return m
