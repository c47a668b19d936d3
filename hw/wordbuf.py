"""The payload word buffer: one word in per cycle, up to ``lanes`` words out per cycle."""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WordBuffer"]


class WordBuffer(wiring.Component):
    """Circular buffer that hands the lanes needing a word the next words in lane order.

    This is the word-order contract of docs/FORMAT.md: lane ``n`` gets word
    ``head + (number of lanes before n that need one)``. The user gives those counts a cycle
    ahead (``before_next``, taken on ``load``), and the buffer registers each lane's index:
    between the registers and ``words`` there is only the entry multiplexer.

    Parameters
    ----------
    lanes : int
    depth : int, optional
        Entries; a power of two of at least ``lanes`` (default ``2 * lanes`` rounded up).

    Attributes
    ----------
    push : In(stream.Signature(16))
        Payload words in stream order; ``ready`` while not full.
    before_next : In(ArrayLayout(range(lanes + 1), lanes + 1))
        Of the step that comes to the lanes on the next ``load``: ``before_next[n]`` lanes
        below ``n`` need a word, ``before_next[lanes]`` words in all.
    load : In(1)
        That step comes to the lanes at the end of this cycle; the one there leaves.
    take : In(1)
        The step at the lanes takes its ``needed`` words as it leaves (only with ``load``,
        and only when they are held: ``needed <= count``).
    needed : Out(range(lanes + 1))
        Words the step at the lanes needs (0 before the first ``load``).
    count : Out(range(depth + 1))
        Words held (those pushed this cycle are not counted yet).
    enough : Out(1)
        ``count >= needed``: the step at the lanes finds its words. A register, computed a
        cycle ahead for every way the cycle can go.
    words : Out(ArrayLayout(16, lanes))
        ``words[n]`` is the word lane ``n`` of the step at the lanes gets if it needs one.

    There is no clear: a section ends only with the buffer empty (``count == 0``, or the
    decoder stops with ``BAD_LENGTH``), and where an empty buffer's pointers stand does not
    matter.
    """

    @staticmethod
    def checked_depth(lanes: int, depth: int = None) -> int:
        """``depth``, or the default for ``lanes``; ``ValueError`` when it is unusable."""
        if depth is None:
            depth = 2
            while depth < 2 * lanes:
                depth *= 2
        if not isinstance(depth, int) or depth < max(2, lanes) or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two >= max(2, lanes), not {depth!r}")
        return depth

    def __init__(self, lanes: int, depth: int = None):
        depth = self.checked_depth(lanes, depth)
        self._lanes = lanes
        self._depth = depth
        super().__init__({
            "push": In(stream.Signature(16)),
            "before_next": In(data.ArrayLayout(range(lanes + 1), lanes + 1)),
            "load": In(1),
            "take": In(1),
            "needed": Out(range(lanes + 1)),
            "count": Out(range(depth + 1)),
            "enough": Out(1),
            "words": Out(data.ArrayLayout(unsigned(16), lanes)),
        })

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        depth, lanes = self._depth, self._lanes
        bits = (depth - 1).bit_length()
        entries = [Signal(16, name=f"entry{i}", reset_less=True) for i in range(depth)]
        head = Signal(bits)
        tail = Signal(bits)
        # The count is a register of its own, not tail - head: ``spare`` is computed from it,
        # and a subtractor in front would add a carry chain there. Room for a word is a
        # register too: push.ready reaches the decoder's input handshake.
        count = Signal(range(depth + 1))
        room = Signal(init=1)
        m.d.comb += [
            self.count.eq(count),
            self.push.ready.eq(room),
        ]
        # Each lane's index, registered on load: the leaving step's verdict (``take``) comes
        # from the decoder's registers in a LUT level or two, so it picks the new head in
        # front of the add, and between the register and ``words`` is only the entry
        # multiplexer.
        needed = Signal(range(lanes + 1))
        m.d.comb += self.needed.eq(needed)
        with m.If(self.load):
            m.d.sync += needed.eq(self.before_next[lanes])
        next_head = Signal(bits)
        m.d.comb += next_head.eq(Mux(self.take, head + needed, head))
        for n in range(lanes):
            index = Signal(bits, name=f"index{n}")
            with m.If(self.load):
                m.d.sync += index.eq(next_head + self.before_next[n])
            with m.Switch(index):
                for i in range(depth):
                    with m.Case(i):
                        m.d.comb += self.words[n].eq(entries[i])
        pushed = Signal()
        m.d.comb += pushed.eq(self.push.valid & self.push.ready)
        with m.If(pushed):
            m.d.sync += tail.eq(tail + 1)
            with m.Switch(tail):
                for i in range(depth):
                    with m.Case(i):
                        m.d.sync += entries[i].eq(self.push.payload)
        count_next = Signal(range(depth + 1))
        m.d.comb += count_next.eq(count + pushed - Mux(self.take, needed, 0))
        m.d.sync += [count.eq(count_next), room.eq(count_next != depth)]
        # ``enough`` feeds the decoder's commit decision, whose fanout is every write-back and
        # output register. It is the sign of a register, ``spare = count - needed``, kept up
        # to date by one subtract: no compare stands in front of it.
        spare = Signal(signed(bits + 2))
        m.d.comb += self.enough.eq(~spare[-1])
        total = self.before_next[lanes]
        # One subtract: the words the cycle adds (the push) and removes (the next step's
        # total) meet on the narrow side, in parallel with the choice of what they act on.
        acted_on = Mux(self.load & ~self.take, count, spare)
        change = Mux(self.load, total, 0) - pushed
        m.d.sync += spare.eq(acted_on - change)
        m.d.sync += head.eq(next_head)
        return m
