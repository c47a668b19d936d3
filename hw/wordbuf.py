"""The payload word buffer: one word in per cycle, up to ``lanes`` words out per cycle."""

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WordBuffer"]


class WordBuffer(wiring.Component):
    """Circular buffer that hands the lanes needing a word the next words in lane order.

    This is the word-order contract of docs/FORMAT.md: lane ``n`` gets word
    ``head + (number of lanes before n that need one)``. The user gives those counts
    (``before``), from registers: the buffer then adds only a short add and a multiplexer
    between them and ``words``.

    Parameters
    ----------
    lanes : int
    depth : int, optional
        Entries; a power of two of at least ``lanes`` (default ``2 * lanes`` rounded up).

    Attributes
    ----------
    push : In(stream.Signature(16))
        Payload words in stream order; ``ready`` while not full.
    before : In(ArrayLayout(range(lanes + 1), lanes + 1))
        ``before[n]``: lanes below ``n`` that need a word; ``before[lanes]`` is the number
        of words the lanes need in all.
    take : In(1)
        Remove ``before[lanes]`` words this cycle (only when they are held: ``<= count``).
    count : Out(range(depth + 1))
        Words held (those pushed this cycle are not counted yet).
    words : Out(ArrayLayout(16, lanes))
        ``words[n]`` is the word at ``head + before[n]``: the one lane ``n`` gets if it
        needs one.

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
            "before": In(data.ArrayLayout(range(lanes + 1), lanes + 1)),
            "take": In(1),
            "count": Out(range(depth + 1)),
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
        # The count is a register of its own, not tail - head: the decoder's stall decision
        # compares it, and a subtractor in front of that compare costs a carry chain.
        count = Signal(range(depth + 1))
        m.d.comb += [
            self.count.eq(count),
            self.push.ready.eq(count != depth),
        ]
        for n in range(lanes):
            index = Signal(bits, name=f"index{n}")
            m.d.comb += index.eq(head + self.before[n])
            with m.Switch(index):
                for i in range(depth):
                    with m.Case(i):
                        m.d.comb += self.words[n].eq(entries[i])
        taken = self.before[lanes]
        pushed = Signal()
        m.d.comb += pushed.eq(self.push.valid & self.push.ready)
        with m.If(pushed):
            m.d.sync += tail.eq(tail + 1)
            with m.Switch(tail):
                for i in range(depth):
                    with m.Case(i):
                        m.d.sync += entries[i].eq(self.push.payload)
        with m.If(self.take):
            m.d.sync += [head.eq(head + taken), count.eq(count + pushed - taken)]
        with m.Else():
            m.d.sync += count.eq(count + pushed)
        return m
