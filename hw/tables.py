"""Symbol lookup: slot -> (symbol, cumulative, frequency) at one lookup per lane per cycle.

Structure (docs/HARDWARE.md, "Symbol lookup"). The ``M = 2**P`` slots are cut into buckets of
``2**S`` slots (``S = min(4, P)``). Symbols of non-zero frequency are numbered by *rank* in
symbol order (zero-frequency symbols own no slot and get no rank). Two block RAMs per lane:

* bucket table, ``2**(P-S)`` entries: ``first`` and ``middle`` = ranks of the symbols owning
  the bucket's slots ``0`` and ``H = 2**(S-1)``, ``mask`` = bit ``i`` set when a symbol starts
  at slot ``i > 0`` of the bucket;
* rank table, up to 256 entries: ``symbol``, ``cumulative`` and ``frequency`` (``P`` bits each
  for the last two; a frequency of ``M`` only occurs in one-symbol tables, which the decoder
  handles without the table, so it is stored as 0).

With ``j`` the slot's offset in its bucket, ``rank = first + popcount(mask[1..j])`` for
``j < H`` and ``middle + popcount(mask[H+1..j])`` otherwise: a popcount of ``H - 1`` bits
instead of ``2*H - 1``, for the same two block RAMs (8 + 8 + 16 bits at S = 4). Both
tables are built by one sequential walk while the frequencies arrive: one cycle per frequency
word plus one cycle per bucket written, at most ``levels + 2**(P-S)`` cycles (512 for P = 12).
"""

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.format import MAX_LEVELS
from sw.params import CodecParams

__all__ = ["SymbolTables", "LOOKUP_LATENCY", "YOSYS_TABLE_RAMS", "bucket_shift", "popcount"]

#: Cycles from a slot to its symbol, cumulative and frequency.
LOOKUP_LATENCY = 3

#: Yosys command, to run after reading the design: the table RAMs' read-during-write result is
#: don't-care. The tables are written only between sections, when no lookup in flight is valid,
#: and read for a valid step at least two cycles after the last write; without this Yosys
#: emulates the read port's read-first semantics on iCE40 block RAM (write data delayed a cycle
#: plus a bypass with an address compare on every read bit: ~280 logic cells at 4 lanes, and
#: the bypass's compare was a critical path). Amaranth has no way to say it on the ports.
YOSYS_TABLE_RAMS = ("setparam -set COLLISION_X_MASK 1 "
                    "t:$memrd_v2 r:MEMID=*buckets* r:MEMID=*ranks* %u %i")


def popcount(bits):
    """Sum of one-bit values as a balanced adder tree (``sum()`` makes a chain as deep as
    the list is long: 14 adders in front of the rank RAM at P = 12)."""
    terms = list(bits)
    if not terms:
        return Const(0)
    while len(terms) > 1:
        paired = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = paired + terms[len(terms) & ~1:]
    return terms[0]


def bucket_shift(precision_bits: int) -> int:
    """``S``: log2 of the slots per bucket."""
    return min(4, precision_bits)


class SymbolTables(wiring.Component):
    """Builder and ``lanes`` copies of the two-level symbol lookup.

    Parameters
    ----------
    params : CodecParams
    lanes : int
        Number of independent lookup ports (one table copy each: a block RAM has one read port).

    Attributes
    ----------
    start : In(1)
        Forget the table being built and start a new one (symbol 0, cumulative 0). Takes
        effect on the next cycle, in time for a frequency accepted then.
    freqs : In(stream.Signature(16))
        The frequency words of a table, in symbol order. ``ready`` drops while the walk writes
        buckets a symbol spans.
    idle : Out(1)
        Every accepted frequency has been walked; its last table write lands by the end of
        the next cycle.
    en : In(1)
        Advance the lookup pipeline (read enables: a stalled pipeline keeps its outputs).
    slot : In(ArrayLayout(P, lanes))
        Slots to look up, one per lane.
    symbol, cumulative, frequency : Out(ArrayLayout(..., lanes))
        The answer for the slot given :data:`LOOKUP_LATENCY` advancing cycles before.
    """

    def __init__(self, params: CodecParams, lanes: int):
        self._params = params
        self._lanes = lanes
        p = params.precision_bits
        super().__init__({
            "start": In(1),
            "freqs": In(stream.Signature(16)),
            "idle": Out(1),
            "en": In(1),
            "slot": In(data.ArrayLayout(unsigned(p), lanes)),
            "symbol": Out(data.ArrayLayout(unsigned(8), lanes)),
            "cumulative": Out(data.ArrayLayout(unsigned(p), lanes)),
            "frequency": Out(data.ArrayLayout(unsigned(p), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._params.precision_bits
        s = bucket_shift(p)
        buckets = 1 << (p - s)
        mask_width = 1 << s
        half = mask_width >> 1
        bucket_layout = data.StructLayout({"first": unsigned(8), "middle": unsigned(8),
                                           "mask": unsigned(mask_width)})
        rank_layout = data.StructLayout({"symbol": unsigned(8), "cumulative": unsigned(p),
                                         "frequency": unsigned(p)})

        # -- builder: a walk over the frequencies in symbol order --
        # The walk's registers have no reset: ``start`` sets them before a walk reads them,
        # and on iCE40 a reset on a register with an enable is logic in front of it (the
        # flip-flop's own reset acts only when enabled), on the reset net's long routes.
        cum = Signal(26, reset_less=True)          # 256 words of 16 bits cannot overflow it
        symbol = Signal(9, reset_less=True)
        rank = Signal(9, reset_less=True)
        span_rank = Signal(8, reset_less=True)
        bucket = Signal(p - s + 1, reset_less=True)
        flush_to = Signal(p - s + 1, reset_less=True)
        first = Signal(8, reset_less=True)
        middle = Signal(8, reset_less=True)
        mask = Signal(mask_width, reset_less=True)

        bucket_we = Signal()
        rank_we = Signal()
        bucket_wdata = Signal(bucket_layout)
        rank_wdata = Signal(rank_layout)
        # The walk takes each frequency from a register (``f``, held while ``f_valid``), and
        # ``start`` a cycle late: neither the word handshake nor the parser's state is then
        # in front of the walk's 26-bit add. A register, not bucket < flush_to: ``flushing``
        # drives freqs.ready, hence the parser's words.ready and every enable behind it.
        flushing = Signal()
        f = Signal(16, reset_less=True)
        f_valid = Signal()
        # Zero tests of the frequency, made as it is taken: the walk's decisions then start
        # from flip-flops, not from a 16-bit zero test.
        f_zero = Signal(reset_less=True)          # f == 0: the symbol owns no slot
        f_narrow = Signal(reset_less=True)        # f < 2**s: it may still end in its first bucket
        f_wide = Signal(reset_less=True)          # f >= 2**p: it alone reaches past the end
        restart = Signal()
        walk = Signal()
        m.d.sync += restart.eq(self.start)
        m.d.comb += [
            self.freqs.ready.eq(~f_valid | ~flushing),
            self.idle.eq(~f_valid & ~flushing),
            walk.eq(f_valid & ~flushing & ~restart),
            bucket_wdata.first.eq(first),
            bucket_wdata.middle.eq(middle),
            bucket_wdata.mask.eq(mask),
            bucket_we.eq(flushing),
        ]
        with m.If(self.freqs.valid & self.freqs.ready):
            m.d.sync += [f.eq(self.freqs.payload), f_valid.eq(1),
                         f_zero.eq(self.freqs.payload == 0),
                         f_narrow.eq(self.freqs.payload[s:] == 0),
                         f_wide.eq(self.freqs.payload[p:] != 0)]
        with m.Elif(walk):
            m.d.sync += f_valid.eq(0)
        cum_next = Signal(26)
        low_sum = Signal(p + 1)            # the low P bits of cum + f, and their carry
        m.d.comb += [cum_next.eq(cum + f), low_sum.eq(cum[:p] + f[:p])]
        m.d.comb += [
            rank_wdata.symbol.eq(symbol),
            rank_wdata.cumulative.eq(cum),
            rank_wdata.frequency.eq(f),
        ]
        with m.If(walk):
            m.d.sync += [cum.eq(cum_next), symbol.eq(symbol + 1)]
            with m.If(~f_zero):
                # Ranks past 255 only come from tables that fail the sum check.
                m.d.comb += rank_we.eq(rank < MAX_LEVELS)
                m.d.sync += [rank.eq(rank + 1), span_rank.eq(rank)]
                # Past the table's end exactly when cum + f >= M: when cum or f already is,
                # or the low P bits carry. A P-bit add, not the 26-bit one and a compare.
                with m.If(cum[p:].any() | f_wide | low_sum[p]):
                    m.d.sync += flush_to.eq(buckets)
                with m.Else():
                    m.d.sync += flush_to.eq(low_sum[s:p])
                # The walk's buckets are complete up to the one holding ``cum``, so the symbol
                # makes buckets to write exactly when it reaches past that bucket's end: a
                # short add on the low bits instead of two wide compares. The top bit of
                # ``bucket`` says the table is already past its last bucket (bad sums only).
                crosses = ~f_narrow | ((cum[:s] + f[:s]) >> s != 0)
                m.d.sync += flushing.eq(crosses & ~bucket[-1])
        with m.Elif(flushing):
            m.d.sync += [bucket.eq(bucket + 1), flushing.eq(bucket + 1 != flush_to)]

        # The bucket entry, under one enable two LUT inputs deep (a flush, or a frequency
        # that owns slots), its value chosen by multiplexers: written in the branches above,
        # each bit's enable would also carry the slot tests. A symbol that starts a bucket
        # (cum at its slot 0) owns that bucket's first and middle slots; one that starts in
        # the lower half owns the middle slot; buckets after the first one a symbol spans
        # start inside that symbol.
        starts_bucket = Signal()
        m.d.comb += starts_bucket.eq(cum[:s] == 0)
        with m.If(flushing | (f_valid & ~f_zero)):
            m.d.sync += [
                first.eq(Mux(flushing, span_rank, Mux(starts_bucket, rank, first))),
                middle.eq(Mux(flushing, span_rank, Mux(cum[:s] <= half, rank, middle))),
                mask.eq(Mux(flushing | starts_bucket, 0, mask | (1 << cum[:s]))),
            ]

        # The bucket entry (first, middle, mask), span_rank and flush_to are not cleared, and
        # may even take a stale frequency in the restart cycle: the first symbol that owns a
        # slot starts at cum = 0 and sets them all before anything is flushed. Their enables
        # then leave ``restart`` out; it comes last, so it wins over a walk or a flush for
        # what it clears.
        with m.If(restart):
            m.d.sync += [cum.eq(0), symbol.eq(0), rank.eq(0), bucket.eq(0), flushing.eq(0)]

        # The RAMs are written a cycle after the walk makes an entry, from registers of their
        # own: the lanes' copies lie far apart on the chip, and the walk's registers, which
        # feed back into the walk, then need not be placed near all of them.
        bucket_write = Signal(data.StructLayout({"addr": p - s, "data": bucket_layout,
                                                 "en": 1}))
        rank_write = Signal(data.StructLayout({"addr": 8, "data": rank_layout, "en": 1}))
        m.d.sync += [
            bucket_write.eq(Cat(bucket[:p - s], bucket_wdata, bucket_we)),
            rank_write.eq(Cat(rank[:8], rank_wdata, rank_we)),
        ]

        # -- one copy of both tables per lane --
        for n in range(self._lanes):
            bmem = memory.Memory(shape=bucket_layout, depth=buckets, init=[])
            rmem = memory.Memory(shape=rank_layout, depth=MAX_LEVELS, init=[])
            m.submodules[f"buckets{n}"] = bmem
            m.submodules[f"ranks{n}"] = rmem
            bw = bmem.write_port()
            rw = rmem.write_port()
            m.d.comb += [
                bw.addr.eq(bucket_write.addr), bw.data.eq(bucket_write.data),
                bw.en.eq(bucket_write.en),
                rw.addr.eq(rank_write.addr), rw.data.eq(rank_write.data), rw.en.eq(rank_write.en),
            ]
            br = bmem.read_port(domain="sync")
            rr = rmem.read_port(domain="sync")
            # Cycle 0 reads the bucket and turns the slot's offset in its half into a
            # thermometer code; cycle 1 picks the half's base rank and counts the symbols
            # starting in the half up to the slot; cycle 2 adds the two and reads the rank
            # table. Each step stays a few LUT levels deep: the half select and the mask meet
            # in one LUT per bit, in front of a 7-bit popcount at S = 4.
            upper = Signal(name=f"upper{n}")                  # the slot is in the upper half
            reach = Signal(half - 1, name=f"reach{n}")        # bit i - 1: offset in half >= i
            count = Signal(range(half), name=f"count{n}")
            base_rank = Signal(8, name=f"base_rank{n}")
            offset = self.slot[n][:s - 1]
            m.d.comb += [br.addr.eq(self.slot[n][s:]), br.en.eq(self.en)]
            with m.If(self.en):
                m.d.sync += [
                    upper.eq(self.slot[n][s - 1]),
                    reach.eq(Cat(*[offset >= i for i in range(1, half)])),
                    count.eq(popcount([Mux(upper, br.data.mask[half + i], br.data.mask[i])
                                       & reach[i - 1] for i in range(1, half)])),
                    base_rank.eq(Mux(upper, br.data.middle, br.data.first)),
                ]
            m.d.comb += [rr.addr.eq(base_rank + count), rr.en.eq(self.en)]
            m.d.comb += [
                self.symbol[n].eq(rr.data.symbol),
                self.cumulative[n].eq(rr.data.cumulative),
                self.frequency[n].eq(rr.data.frequency),
            ]
        return m
