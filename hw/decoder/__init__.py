"""The weight decoder: container words in, dequantized weights out, ``lanes`` per cycle.

docs/HARDWARE.md describes the microarchitecture; docs/FORMAT.md is the specification it
implements. In short: a word-level parser (:class:`ContainerParser`) walks the container and
checks every field in the order of :func:`sw.codec.container.parse`; a ring of ``R = max(K/N, D)``
slots per lane (:class:`StateRing`) holds the ``K`` coder states (in block RAM when ``R > D``),
so each lane's state recurrence (slot -> symbol lookup -> multiply -> add -> word offsets ->
renormalise, ``D = 7`` stages) has ``K/N`` cycles to come round; a word buffer
(:class:`hw.wordbuf.WordBuffer`) hands the lanes that renormalise the next payload words in
lane order, and a step short of words is replayed rather than stalling the ring; the output
stage (:class:`OutputStage`) takes the zero point off and holds a step the consumer is not
ready for. :class:`WeightDecoder` only connects them.
"""

from amaranth import Const, Module, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sw.params import CodecParams

from ..tables import SymbolTables
from ..wordbuf import WordBuffer
from .layouts import (
    ProgramWord,
    SectionDescriptor,
    StateWord,
    StatusLayout,
    SymbolBatch,
    WeightBatch,
)
from .output import OutputStage
from .parser import ContainerParser
from .ring import PIPELINE_DEPTH, StateRing

__all__ = ["WeightBatch", "StatusLayout", "ProgramWord", "WeightDecoder", "PIPELINE_DEPTH",
           "port_signals", "ContainerParser", "StateRing", "OutputStage", "SectionDescriptor",
           "StateWord", "SymbolBatch"]


class WeightDecoder(wiring.Component):
    """Streaming decoder of a whole subbit container.

    Parameters
    ----------
    params : CodecParams
        The code this decoder is built for; a container made with others is refused with
        ``PARAM_MISMATCH``.
    lanes : int
        ``N``: symbols decoded per cycle; must divide ``params.state_count``.
    buffer_depth : int, optional
        Payload words buffered ahead of the lanes (power of two >= ``lanes``; default ``2N``
        rounded up, at least 2). Deeper absorbs the bursts of renormalisations that come when
        many states run low together (uniform symbols above ~1.5 bits each); each doubling
        widens every lane's word multiplexer.

    Attributes
    ----------
    words : In(stream.Signature(16))
        The container as little-endian 16-bit words, in file order. Not ready after the last
        section; always ready after an error (input is drained and ignored).
    weights : Out(stream.Signature(WeightBatch(lanes)))
        Decoded integers of every coded section, in symbol order.
    status : Out(StatusLayout)
        ``done`` when the container is finished (last CRC and final-state check made) or an
        error happened; ``error`` and ``code`` say which.
    program : Out(stream.Signature(ProgramWord, always_ready=True))
        The data words of every PROGRAM section, each valid for one cycle, the cycle after
        the parser takes it; a section with ``data_bytes = 0`` gives none. There is no
        ``ready``: the consumer must take every word (the engine writes them into a RAM).
        They leave before the section's CRC is checked, so the consumer must not act on the
        program until the decoder has passed that CRC: at the first ``weights`` transfer, or
        at ``status.done`` without ``error``.
    """

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 1,
                 buffer_depth: int = None):
        params.check_lanes(lanes)
        self.buffer_depth = WordBuffer.checked_depth(lanes, buffer_depth)
        self.params = params
        self.lanes = lanes
        #: ``D``, stages of the state recurrence (:attr:`StateRing.depth`).
        self.depth = PIPELINE_DEPTH
        #: Slots of the state ring per lane (:attr:`StateRing.ring`).
        self.ring = max(params.state_count // lanes, PIPELINE_DEPTH)
        super().__init__({
            "words": In(stream.Signature(16)),
            "weights": Out(stream.Signature(WeightBatch(lanes))),
            "status": Out(StatusLayout),
            "program": Out(stream.Signature(ProgramWord, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        m.submodules.parser = parser = ContainerParser(self.params, N, self.buffer_depth)
        m.submodules.tables = tables = SymbolTables(self.params, N)
        m.submodules.buffer = buf = WordBuffer(N, self.buffer_depth)
        m.submodules.ring = ring = StateRing(self.params, N)
        m.submodules.output = output = OutputStage(N)

        wiring.connect(m, wiring.flipped(self.words), parser.words)
        wiring.connect(m, parser.program, wiring.flipped(self.program))
        wiring.connect(m, output.weights, wiring.flipped(self.weights))
        m.d.comb += self.status.eq(parser.status)

        # parser -> tables and buffer
        wiring.connect(m, parser.freqs, tables.freqs)
        wiring.connect(m, parser.payload, buf.push)
        m.d.comb += [tables.start.eq(parser.table_start), parser.table_idle.eq(tables.idle),
                     parser.buffered.eq(buf.count)]

        # parser <-> ring
        wiring.connect(m, parser.states, ring.states)
        wiring.connect(m, parser.descriptor, ring.descriptor)
        m.d.comb += [
            ring.in_header.eq(parser.in_header),
            ring.in_payload.eq(parser.in_payload),
            ring.in_final.eq(parser.in_final),
            ring.payload_more.eq(parser.payload_more),
            ring.single.eq(parser.single),
            parser.past_end.eq(ring.past_end),
            parser.drained.eq(ring.drained),
            parser.final_done.eq(ring.final_done),
            parser.final_bad.eq(ring.final_bad),
        ]

        # ring <-> tables and buffer
        m.d.comb += [
            tables.en.eq(ring.lookup_en),
            tables.slot.eq(ring.slot),
            ring.symbol.eq(tables.symbol),
            ring.cumulative.eq(tables.cumulative),
            ring.frequency.eq(tables.frequency),
            buf.before_next.eq(ring.before_next),
            buf.load.eq(ring.load),
            buf.take.eq(ring.take),
            ring.enough.eq(buf.enough),
            ring.words.eq(buf.words),
        ]

        # ring and parser -> output
        wiring.connect(m, ring.symbols, output.symbols)
        m.d.comb += [
            output.section.eq(parser.section),
            output.zero_point.eq(parser.zero_point),
            output.single.eq(parser.single),
            output.single_symbol.eq(parser.single_symbol),
        ]
        return m


def port_signals(component: wiring.Component) -> list:
    """The signals of ``component``'s ports, to pass as ``ports=`` when it is converted as the
    top of a design (``verilog.convert``, ``rtlil.convert``).

    Amaranth 0.5 derives a top's ports from its signature itself, but stops at a member whose
    value is a constant (amaranth-lang/amaranth#1574), as ``WeightDecoder.program.ready`` is
    (``always_ready``). The constant is no wire of the design; every other member keeps its
    name (``words__payload``, ``program__valid``, ...) and its direction is inferred.
    """
    signals = []
    for _path, _member, value in component.signature.flatten(component):
        value = Value.cast(value)
        if not isinstance(value, Const):
            signals.append(value)
    return signals
