"""The payload word buffer: one word in per cycle, up to ``lanes`` words out per cycle."""

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WordBuffer"]


class WordBuffer(wiring.Component):
    """Circular buffer that hands the lanes needing a word the next words in lane order.

    This is the word-order contract of docs/FORMAT.md: lane ``n`` gets word
    ``head + (number of lanes before n that need one)``.

    Parameters
    ----------
    lanes : int
    depth : int, optional
        Entries; a power of two of at least ``lanes`` (default ``2 * lanes`` rounded up).

    Attributes
    ----------
    push : In(stream.Signature(16))
        Payload words in stream order; ``ready`` while not full.
    need : In(lanes)
        Lanes that need a word.
    take : In(1)
        Remove the words handed to ``need`` this cycle (only when ``need_count <= count``).
    need_count : Out(range(lanes + 1))
    count : Out(range(depth + 1))
        Words held (those pushed this cycle are not counted yet).
    words : Out(ArrayLayout(16, lanes))
        The word each needing lane gets.
    clear : In(1)
        Empty the buffer.
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
            "need": In(lanes),
            "take": In(1),
            "need_count": Out(range(lanes + 1)),
            "count": Out(range(depth + 1)),
            "words": Out(data.ArrayLayout(unsigned(16), lanes)),
            "clear": In(1),
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
        prefix = 0
        for n in range(lanes):
            index = Signal(bits, name=f"index{n}")
            m.d.comb += index.eq(head + prefix)
            with m.Switch(index):
                for i in range(depth):
                    with m.Case(i):
                        m.d.comb += self.words[n].eq(entries[i])
            prefix = prefix + self.need[n]
        m.d.comb += self.need_count.eq(prefix)
        pushed = Signal()
        m.d.comb += pushed.eq(self.push.valid & self.push.ready)
        with m.If(self.clear):
            m.d.sync += [head.eq(0), tail.eq(0), count.eq(0)]
        with m.Else():
            with m.If(pushed):
                m.d.sync += tail.eq(tail + 1)
                with m.Switch(tail):
                    for i in range(depth):
                        with m.Case(i):
                            m.d.sync += entries[i].eq(self.push.payload)
            with m.If(self.take):
                m.d.sync += [head.eq(head + self.need_count),
                             count.eq(count + pushed - self.need_count)]
            with m.Else():
                m.d.sync += count.eq(count + pushed)
        return m
