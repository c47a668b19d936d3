"""The weight decoder: container words in, dequantized weights out, ``lanes`` per cycle.

docs/HARDWARE.md describes the microarchitecture; docs/FORMAT.md is the specification it
implements. In short: a word-level parser walks the container and checks every field in the
order of :func:`sw.container.parse`; a ring of ``R = max(K/N, D)`` slots per lane holds the
``K`` coder states (in block RAM when ``R > D``), so each lane's state recurrence (slot ->
symbol lookup -> multiply -> add -> word offsets -> renormalise, ``D = 7`` stages) has ``K/N``
cycles to come round; a word buffer hands the lanes that renormalise the next payload words in
lane order, and a step short of words is replayed rather than stalling the ring.
"""

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw.format import (
    FIRST_VERSION,
    MAGIC,
    MAX_LEVELS,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_SECTION_SYMBOLS,
    READABLE_VERSIONS,
    RawDtype,
    SectionKind,
    Status,
)
from sw.params import CodecParams

from .crc import Crc32Word
from .onehot import OneHotMachine
from .tables import LOOKUP_LATENCY, SymbolTables, popcount
from .wordbuf import WordBuffer

__all__ = ["WeightBatch", "StatusLayout", "ProgramWord", "WeightDecoder", "PIPELINE_DEPTH",
           "port_signals"]

#: Stages of the state recurrence, each a few LUT levels deep (iCE40 at 48 MHz allows about
#: seven): 0-2 the symbol lookup (:class:`hw.tables.SymbolTables`, three cycles), then
#: multiply, add, the word offsets, and renormalise. A lane needs ``K/N >= PIPELINE_DEPTH``
#: states to run at full rate; with fewer, the ring carries bubbles.
MULTIPLY, ADD, OFFSETS, RENORMALISE = (LOOKUP_LATENCY + i for i in range(4))
PIPELINE_DEPTH = RENORMALISE + 1


class WeightBatch(data.StructLayout):
    """Payload of the ``weights`` stream: up to ``lanes`` decoded integers of one section.

    Parameters
    ----------
    lanes : int

    Attributes
    ----------
    values : ArrayLayout(signed(16), lanes)
        ``q = symbol - zero_point``; lane ``n`` is the ``n``-th symbol of this transfer.
    count : range(lanes + 1)
        Valid values, from lane 0; below ``lanes`` only on a section's last transfer.
    section : unsigned(16)
        Index of the section among all sections of the container (raw ones included).
    first, last : 1
        First and last transfer of that coded section.
    """

    def __init__(self, lanes: int):
        super().__init__({
            "values": data.ArrayLayout(signed(16), lanes),
            "count": range(lanes + 1),
            "section": unsigned(16),
            "first": 1,
            "last": 1,
        })


#: The ``status`` output: ``code`` is a :class:`sw.format.Status`, sticky until reset.
StatusLayout = data.StructLayout({"done": 1, "error": 1, "code": 4})

#: Payload of the ``program`` stream: one data word of a PROGRAM section. ``word`` is the
#: little-endian u16 as the file holds it; ``last`` marks the section's final data word, and
#: ``partial`` that this final word holds one byte only (``data_bytes`` odd: its high byte is
#: the pad), which no valid program has (docs/INFERENCE.md).
ProgramWord = data.StructLayout({"word": unsigned(16), "last": 1, "partial": 1})


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
        #: ``D``, stages of the state recurrence: each lane serves ``K/N`` states in turn,
        #: and when ``K/N < D`` the ring carries bubbles (rate ``K/N / D``).
        self.depth = PIPELINE_DEPTH
        #: Slots of the state ring per lane: ``K/N`` states and ``max(0, D - K/N)`` bubbles.
        self.ring = max(params.state_count // lanes, PIPELINE_DEPTH)
        super().__init__({
            "words": In(stream.Signature(16)),
            "weights": Out(stream.Signature(WeightBatch(lanes))),
            "status": Out(StatusLayout),
            "program": Out(stream.Signature(ProgramWord, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        params, N = self.params, self.lanes
        P, K = params.precision_bits, params.state_count
        L = params.lower_bound
        M = params.total_frequency
        G = K // N
        R = self.ring
        D = self.depth
        Z = RENORMALISE

        m.submodules.crc = crc = Crc32Word()
        m.submodules.tables = tables = SymbolTables(params, N)
        m.submodules.buffer = buf = WordBuffer(N, self.buffer_depth)

        # ``issue_last`` (to_issue <= N) is decided on the low ``issue_bits`` of to_issue;
        # the rest is tested a cycle stale (``issue_narrow``), which is exact enough: one issue
        # takes N, so a count that had high bits a cycle ago is still above 2N.
        issue_bits = (3 * N).bit_length()

        # The parser works on a registered copy of each input word, ``w``, with every
        # comparison against a constant that the format asks for made as the word arrives
        # (``check``): a field's verdict is then a flip-flop, not a compare in front of the
        # parser's state logic.
        magic = int.from_bytes(MAGIC, "little")
        limit = MAX_SECTION_SYMBOLS
        assert limit & 0xFFFF == 0
        constant_checks = {
            "zero": lambda v: v == 0,
            "one": lambda v: v == 1,
            "one_or_two": lambda v: (v == 1) | (v == 2),
            "at_most_lanes": lambda v: v <= N,
            "issue_narrow": lambda v: v >> issue_bits == 0,   # of a count's low word
            "magic_low": lambda v: v == magic & 0xFFFF,
            "magic_high": lambda v: v == magic >> 16,
            "version": lambda v: Cat(*[v == x for x in READABLE_VERSIONS]).any(),
            # PROGRAM sections exist from version 2 on, MAPPED ones from version 3
            "version_programs": lambda v: v >= FIRST_VERSION[SectionKind.PROGRAM],
            "version_mapped": lambda v: v >= FIRST_VERSION[SectionKind.MAPPED],
            "params": lambda v: Cat(v == params.state_bits, v == params.word_bits,
                                    v == P, v == K),
            "kind_bad": lambda v: v > max(SectionKind),
            # A PROGRAM section is laid out like a RAW one (docs/FORMAT.md); the decoder passes
            # its words on its CRC, as it does a raw tensor's: checking the program is the
            # engine's part.
            "kind_raw": lambda v: (v == SectionKind.RAW) | (v == SectionKind.PROGRAM),
            "kind_program": lambda v: v == SectionKind.PROGRAM,
            # This decoder has no value tables: a MAPPED section is refused (UNSUPPORTED).
            "kind_mapped": lambda v: v == SectionKind.MAPPED,
            "name_bad": lambda v: v > MAX_NAME_BYTES,
            "ndim_bad": lambda v: v > MAX_NDIM,
            "dtype_bad": lambda v: v > max(RawDtype),
            "dtype_not_u16": lambda v: v != RawDtype.UINT16,
            "levels_bad": lambda v: (v == 0) | (v > MAX_LEVELS),
            "count_over": lambda v: v > limit >> 16,
            "count_at": lambda v: v == limit >> 16,
            "whole": lambda v: v == M,
        }
        w = Signal(16)
        w_valid = Signal()
        check = {name: Signal(len(Value.cast(f(w))), name=f"check_{name}")
                 for name, f in constant_checks.items()}
        acc = Signal()                   # the parser takes w this cycle
        parser_ready = Signal()
        stopped = Signal()               # after the last section or an error: take no more
        m.d.comb += [acc.eq(w_valid & parser_ready),
                     self.words.ready.eq((~w_valid & ~stopped) | parser_ready)]
        with m.If(self.words.valid & self.words.ready):
            m.d.sync += w.eq(self.words.payload)
            m.d.sync += [check[name].eq(f(self.words.payload))
                         for name, f in constant_checks.items()]
        # Written as one expression, not as If/Elif: Yosys then builds no enable for it, and
        # the ready logic meets the handshake once, not in both the enable and the data.
        m.d.sync += w_valid.eq((w_valid & ~parser_ready) | (self.words.valid & self.words.ready))

        code = Signal(4)
        m.d.comb += self.status.code.eq(Mux(self.status.error, code, Status.OK))

        # -- parser registers --
        low = Signal(16)                 # low word of a u32 field
        low_ok = Signal()                # the magic's low half matched
        low_zero = Signal()              # low word of a u32 field is 0
        low_one_or_two = Signal()        # ... is 1 or 2
        low_at_most_lanes = Signal()     # ... is N or less
        low_narrow = Signal()            # ... is below 2**issue_bits
        # A CRC field's verdict, made as its high word is taken (its low word waits in
        # ``low``): the transitions out of HCRC/SCRC, which reach the parser's flags, then
        # read one flip-flop.
        crc_good = Signal()
        levels_bad = Signal()            # levels == 0 or > MAX_LEVELS
        left_one = Signal()              # one word left: left == 1, or left == 0 with left_odd
        left_odd = Signal()              # a byte count was odd: one word more than left says
        no_sections = Signal()           # section_count == 0
        param_bad = Signal()
        last_index = Signal(16)          # section_count - 1
        section = Signal(16)
        # Words left in the field being skipped or read, and in the payload, cut at bit 16.
        left = _CutCounter(m, "left", 32, 16)
        state_lane = Signal(range(N))
        state_high = Signal()
        state_bad = Signal()
        row = [Signal(32, name=f"row{n}", reset_less=True) for n in range(N)]
        row_full = Signal()
        raw = Signal()                   # a RAW or PROGRAM section
        is_program = Signal()            # a PROGRAM section: uint16 only; its words leave
        programs_allowed = Signal()      # the file's version has PROGRAM sections
        mapped_allowed = Signal()        # ... and MAPPED ones
        levels = Signal(16)
        zero_point = Signal(signed(16))
        symbol_count = Signal(32)
        freq_sum = Signal(26)
        freq_index = Signal(9)
        single = Signal()
        single_symbol = Signal(8)
        payload_left = _CutCounter(m, "payload_left", 32, 16)
        payload_more = Signal()          # payload_left != 0, as a register (it gates ready)

        # -- core registers --
        phase = Signal(range(R), init=R - 1)
        next_index = Signal(range(G))
        # Symbols of the section not yet issued, and not yet committed (a replay restarts
        # issue from the latter), each cut at bit 15 (no carry chain longer than 16 bits). The
        # decisions read only registered flags of them.
        to_issue = _CutCounter(m, "to_issue", 29, 15, step=N)
        to_commit = _CutCounter(m, "to_commit", 29, 15, step=N)
        issue_more = Signal()            # to_issue != 0
        issue_last = Signal()            # to_issue <= N: the next step is the section's last
        drained = Signal()               # the section's last step has committed
        count_zero = Signal()            # symbol_count == 0
        count_small = Signal()           # symbol_count <= N
        count_narrow = Signal()          # symbol_count < 2**issue_bits
        # to_issue, to_commit < 2**issue_bits, as of the cycle before; issue_narrow is exact
        # after a load or a replay, which set it (no commit precedes a replay directly).
        issue_narrow = Signal()
        commit_narrow = Signal()
        first_pending = Signal()
        in_payload = Signal()
        in_header = Signal()
        adv = Signal()

        # Datapath registers have no reset: a reset term would sit in front of every
        # enable of the ring (the states are loaded from the header before use anyway).
        # With R > D the states of each lane live in block RAM (depth R, addressed by state
        # index), and nothing of them is carried down the pipeline: a slot RAM holding each
        # state's low P bits is read for the lookup at stage 0, and the state RAM is read
        # again, three cycles later, for the multiply (as flip-flops, the states would cost
        # N * (R - D) * 32 logic cells, and carrying them to the multiply N * 3 * 32 more).
        # With R == D nothing is parked: the ring x is registers, and the state is carried to
        # Z, to be put back by idle or squashed steps.
        parked = R > D
        if parked:
            slot_head = [Signal(P, name=f"slot_head{n}") for n in range(N)]
            mul_state = [Signal(32, name=f"mul_state{n}") for n in range(N)]
        else:
            x = [[Signal(32, name=f"x{i}_{n}", reset_less=True) for n in range(N)]
                 for i in range(R)]
            slot_head = [x[0][n][:P] for n in range(N)]
            mul_state = [x[MULTIPLY][n] for n in range(N)]
        # Stage 4: the product split at bit 16 of x >> P (one 16-bit DSP multiply for the low
        # part), and slot - cumulative, which lies in [0, frequency) for every table that
        # passed the sum check. Stage 5: low product + difference, and the high product.
        # Stage 6: x' whole (the high product joins the upper half), and the word offsets.
        high_bits = max(0, 32 - P - 16)
        product_low = [Signal(P + 16, name=f"product_low{n}", reset_less=True) for n in range(N)]
        product_high = [[Signal(P + high_bits, name=f"product_high{i}_{n}", reset_less=True)
                         for n in range(N)] for i in (0, 1)]
        difference = [Signal(P, name=f"difference{n}", reset_less=True) for n in range(N)]
        partial = [Signal(32, name=f"partial{n}", reset_less=True) for n in range(N)]
        sym4 = [Signal(8, name=f"sym4_{n}", reset_less=True) for n in range(N)]
        sym5 = [Signal(8, name=f"sym5_{n}", reset_less=True) for n in range(N)]
        decoded = [Signal(32, name=f"decoded{n}", reset_less=True) for n in range(N)]
        sym6 = [Signal(8, name=f"sym6_{n}", reset_less=True) for n in range(N)]
        ctrl_layout = data.StructLayout({"valid": 1, "count": range(N + 1), "first": 1,
                                         "last": 1})
        ctrl = [Signal(ctrl_layout, name=f"ctrl{i}") for i in range(D)]  # ctrl[0] unused

        out_valid = Signal()
        out = Signal(WeightBatch(N), reset_less=True)
        skid_valid = Signal()
        skid = Signal(WeightBatch(N), reset_less=True)
        m.d.comb += [self.weights.valid.eq(out_valid), self.weights.payload.eq(out)]

        # -- the ring --
        # The ring never waits for words. A step that reaches the renormalising stage and
        # finds too few buffered words is *replayed*: it and every step behind it are squashed
        # before they write anything back, and issue restarts from its state when the phase
        # comes round again (R cycles later). The buffer count therefore reaches no ring
        # enable; it only decides whether the step at Z commits. The ring does hold while the
        # output skid register is full (a replay per output stall would cost R cycles each),
        # but that decision is a function of flip-flops: weights.ready reaches no ring enable.
        # Which lanes renormalise is decided two stages early (ADD) and registered, and the
        # word offsets they make are counted in a stage of their own (OFFSETS), so the replay
        # decision starts from flip-flops, not from the adder or the popcount.
        need_early = Signal(N, reset_less=True)     # at OFFSETS
        active_early = Signal(N, reset_less=True)
        lane_need = Signal(N, reset_less=True)      # at Z
        lane_active = Signal(N, reset_less=True)    # lanes with a symbol in the step at Z
        # The word buffer takes the offsets of the step at OFFSETS (lanes below n that need a
        # word, and the words the step needs) as it moves to Z, and registers them.
        m.d.comb += [buf.before_next[n].eq(popcount(need_early[:n])) for n in range(N + 1)]
        m.d.comb += buf.load.eq(adv)
        # Whether the step at Z finds its words is a register of the buffer (``enough``): the
        # commit, whose fanout is every write-back and output register, starts from it.
        short = Signal()
        m.d.comb += short.eq(~buf.enough)
        m.d.comb += adv.eq(row_full | (~in_header & ~(ctrl[Z].valid & skid_valid)))
        # The replay acts a cycle after the decision, from a register (``replaying``): the
        # decision then reaches one flip-flop, not the ~80 it restores. In that cycle the step
        # that followed the replayed one to Z neither commits nor replays, and every step in
        # flight is squashed; the replayed step's index and first and last flags are sampled
        # on every cycle so that nothing but ``replaying`` waits on the decision.
        replay = Signal()
        replaying = Signal()
        replay_index = Signal(range(R), reset_less=True)
        replay_first = Signal(reset_less=True)
        replay_last = Signal(reset_less=True)
        m.d.comb += replay.eq(ctrl[Z].valid & adv & short & ~replaying)
        m.d.sync += [replaying.eq(replay), replay_first.eq(ctrl[Z].first),
                     replay_last.eq(ctrl[Z].last)]
        commit = Signal()
        m.d.comb += commit.eq(ctrl[Z].valid & adv & ~short & ~replaying)
        m.d.comb += buf.take.eq(commit)
        # State index of the step at Z: phase - Z mod R, as a register.
        back_phase = Signal(range(R), init=R - D)
        # State index of the step at MULTIPLY: phase - MULTIPLY mod R.
        mul_phase = Signal(range(R), init=R - 1 - MULTIPLY)
        # The phase counters step together; next_phase and next_mul_phase are also the RAMs'
        # read addresses.
        next_phase = Signal(range(R))
        next_mul_phase = Signal(range(R))
        m.d.comb += [next_phase.eq(_successor(phase, R)),
                     next_mul_phase.eq(_successor(mul_phase, R))]
        with m.If(adv):
            m.d.sync += [phase.eq(next_phase), mul_phase.eq(next_mul_phase),
                         back_phase.eq(_successor(back_phase, R))]
        m.d.sync += replay_index.eq(back_phase)

        # A step issued while a replay is decided is squashed with the rest, and one due in
        # the restoring cycle is dropped: the restore takes priority over everything the
        # issue writes, so issue need not wait for it.
        issue = Signal()
        m.d.comb += issue.eq(in_payload & issue_more & (phase == next_index))
        issue_count = Signal(range(N + 1))
        m.d.comb += issue_count.eq(Mux(issue_last, to_issue.low, N))
        # Every step but the last has N symbols, and to_commit is read only by a replay,
        # which never follows the last step's commit: a constant decrement, with no carry
        # chain behind the step's count.
        with m.If(commit):
            m.d.sync += [register.eq(value) for register, value in to_commit.stepped()]
            with m.If(ctrl[Z].last):
                m.d.sync += drained.eq(1)

        m.d.comb += tables.en.eq(adv)
        for n in range(N):
            m.d.comb += tables.slot[n].eq(slot_head[n])

        # RENORMALISE (Z): a lane that needs a word has x' < 2**16: its word goes in below.
        renormed = [Signal(32, name=f"renormed{n}") for n in range(N)]
        for n in range(N):
            m.d.comb += renormed[n].eq(Mux(lane_need[n], Cat(buf.words[n], decoded[n][:16]),
                                           decoded[n]))
        written = [Signal(name=f"written{n}") for n in range(N)]
        for n in range(N):
            m.d.comb += written[n].eq(commit & lane_active[n])

        if parked:
            # Addresses are state indices. An advance reads the low bits of the state that
            # becomes the head, index phase + 1, from the slot RAM, and the state that reaches
            # the multiply, index mul_phase + 1, from the state RAM (read data are the stage
            # registers: the ports' enable is adv, so a stall holds them). A committed step
            # writes its renormalised states back to both, at back_phase: they left the head
            # Z advances ago. A state is read again R - D >= 1 advances after its write, so no
            # read-during-write transparency is needed. A squashed or idle slot writes
            # nothing: the RAMs keep the state as it was before the step.
            # Header: a state is written straight into its slot when its high word arrives,
            # at index phase + 1 (the row's row_full advance, one cycle later, moves the phase
            # on; the next high word is at least two cycles later, so the phase is always up
            # to date). Nothing is committed meanwhile.
            header_word = Signal()
            for n in range(N):
                # Mux(in_header, Cat(low, w), renormed), arranged so that the buffer's word,
                # the latest input (index register, entry multiplexer), meets one LUT.
                state_data = Signal(32, name=f"state_data{n}")
                use_word = lane_need[n] & ~in_header
                m.d.comb += state_data.eq(Cat(
                    Mux(use_word, buf.words[n], Mux(in_header, low, decoded[n][:16])),
                    Mux(in_header, w, Mux(lane_need[n], decoded[n][:16], decoded[n][16:]))))
                for ram_name, width, read_addr, read_data in (
                        ("slots", P, next_phase, slot_head[n]),
                        ("states", 32, next_mul_phase, mul_state[n])):
                    ram = Memory(shape=width, depth=R, init=[])
                    m.submodules[f"{ram_name}{n}"] = ram
                    rd = ram.read_port(domain="sync")
                    wr = ram.write_port(domain="sync")
                    m.d.comb += [
                        rd.addr.eq(read_addr),
                        rd.en.eq(adv),
                        read_data.eq(rd.data),
                        wr.addr.eq(Mux(in_header, next_phase, back_phase)),
                        wr.data.eq(state_data[:width]),
                        wr.en.eq(Mux(in_header, header_word & (state_lane == n), written[n])),
                    ]
        m.d.sync += [issue_narrow.eq(to_issue.below(1 << issue_bits)),
                     commit_narrow.eq(to_commit.below(1 << issue_bits))]
        with m.If(replaying):
            m.d.sync += [
                *[register.eq(value) for register, value in to_issue.copied(to_commit)],
                issue_more.eq(1),
                issue_last.eq(replay_last),
                issue_narrow.eq(commit_narrow),
                next_index.eq(replay_index),
                first_pending.eq(replay_first),
            ]
            for i in range(1, D):
                m.d.sync += ctrl[i].valid.eq(0)
        with m.Elif(adv):
            with m.If(issue):
                m.d.sync += [
                    *[register.eq(value) for register, value in to_issue.stepped()],
                    issue_more.eq(~issue_last),
                    issue_last.eq(issue_narrow & (to_issue.low[:issue_bits] <= 2 * N)),
                    next_index.eq(_successor(next_index, G)),
                    first_pending.eq(0),
                ]
            m.d.sync += [
                ctrl[1].valid.eq(issue),
                ctrl[1].count.eq(issue_count),
                ctrl[1].first.eq(first_pending),
                ctrl[1].last.eq(issue_last),
            ]
            for i in range(2, D):
                m.d.sync += ctrl[i].eq(ctrl[i - 1])

        with m.If(adv):
            needs, actives = [], []
            for n in range(N):
                if not parked:
                    for i in range(1, R):
                        m.d.sync += x[i][n].eq(x[i - 1][n])
                # MULTIPLY: the table's answer for the slot the state had three stages ago.
                state = mul_state[n]
                m.d.sync += [
                    product_low[n].eq(tables.frequency[n] * state[P:P + 16]),
                    product_high[0][n].eq(tables.frequency[n] * state[P + 16:]
                                          if high_bits else 0),
                    difference[n].eq(state[:P] - tables.cumulative[n]),
                    sym4[n].eq(tables.symbol[n]),
                ]
                # ADD: x' = product + difference, kept as low product + difference plus the
                # high product at bit 16. x' < 2**16 (renormalise) exactly when the high
                # product, the low product's bits 16 and up and the carry out of bit 15 are
                # all zero: a 16-bit carry chain and two zero tests, in parallel with the add.
                low_sum = Signal(17, name=f"low_sum{n}")
                m.d.comb += low_sum.eq(product_low[n][:16] + difference[n])
                active = ctrl[ADD].valid & (ctrl[ADD].count > n) & ~single
                need = Signal(name=f"need{n}")
                m.d.comb += need.eq(active & ~low_sum[16] & (product_low[n][16:] == 0)
                                    & (product_high[0][n] == 0))
                m.d.sync += [
                    partial[n].eq(product_low[n] + difference[n]),
                    product_high[1][n].eq(product_high[0][n]),
                    sym5[n].eq(sym4[n]),
                ]
                # OFFSETS: x' whole.
                high_half = partial[n][16:] + product_high[1][n]
                m.d.sync += [
                    decoded[n].eq(Cat(partial[n][:16], high_half[:16])),
                    sym6[n].eq(sym5[n]),
                ]
                needs.append(need)
                actives.append(active)
                if not parked:
                    m.d.sync += x[0][n].eq(Mux(row_full, row[n],
                                               Mux(written[n], renormed[n], x[Z][n])))
            m.d.sync += [need_early.eq(Cat(*needs)), active_early.eq(Cat(*actives)),
                         lane_need.eq(need_early), lane_active.eq(active_early)]
        m.d.sync += row_full.eq(0)

        # -- output: a register and a skid register behind it --
        # A step commits only while the skid register is empty; one that finds the output
        # register still held waits in the skid register.
        produced = Signal(WeightBatch(N))
        m.d.comb += [
            produced.count.eq(ctrl[Z].count),
            produced.first.eq(ctrl[Z].first),
            produced.last.eq(ctrl[Z].last),
            produced.section.eq(section),
        ]
        for n in range(N):
            m.d.comb += produced.values[n].eq(Mux(single, single_symbol, sym6[n])
                                              - zero_point)
        push = Signal()
        m.d.comb += push.eq(commit)
        taken = Signal()
        m.d.comb += taken.eq(out_valid & self.weights.ready)
        with m.If(skid_valid):
            with m.If(taken):
                m.d.sync += [out.eq(skid), skid_valid.eq(0)]
        with m.Elif(push):
            with m.If(out_valid & ~taken):
                m.d.sync += [skid.eq(produced), skid_valid.eq(1)]
            with m.Else():
                m.d.sync += [out.eq(produced), out_valid.eq(1)]
        with m.Elif(taken):
            m.d.sync += out_valid.eq(0)

        # -- final-state check: every state passes the multiply stage once in R cycles --
        # Sampled on each of the first R advances in FINAL and registered (the compare is
        # behind the state RAM's read port); the verdict waits a cycle for the last sample.
        final_count = Signal(range(R + 1))
        final_bad = Signal()
        sampled = Signal()               # the states at MULTIPLY are a sample to check
        lanes_off = Signal(N)            # ... and these lanes' states are not L
        counted = Signal()               # final_count reached R a cycle ago
        m.d.sync += [counted.eq(final_count == R),
                     lanes_off.eq(Cat(*[mul_state[n] != L for n in range(N)]))]

        # -- parser --
        # Verdicts on the payload and the frequency sum, registered: the parser's state
        # logic then reads flip-flops only. Each is a cycle late, which the parser waits
        # for: the table walk takes at least a cycle after the last frequency, a section
        # ends on drained_seen (drained a cycle ago, when ``leftover`` was sampled; nothing
        # is taken once drained), and the step that finds the payload exhausted is squashed.
        sum_bad = Signal()
        past_end = Signal()
        drained_seen = Signal()
        leftover = Signal()
        m.d.sync += [
            sum_bad.eq(freq_sum != M),
            past_end.eq(ctrl[Z].valid & short & ~payload_more & ~replaying),
            drained_seen.eq(drained),
            leftover.eq(payload_more | (buf.count != 0)),
        ]
        # The parser is a one-hot machine (hw.onehot): each state a flip-flop, each register
        # it writes an AND-OR multiplexer over (state, condition) terms. words.ready, the CRC
        # enable and the ring's header mode are flags of their own, written only on the
        # transitions that change them (the source state is known when a transition is
        # written): ready gates every register behind the word handshake, so it must be a
        # shallow function of flip-flops, and a flag written on every transition would have
        # the whole next-state logic in its enable.
        p = OneHotMachine(m, [
            "MAGIC0", "MAGIC1", "VERSION", "PARAM0", "PARAM1", "PARAM2", "PARAM3", "SECTIONS",
            "STATES", "HCRC0", "HCRC1", "HCRC", "KIND", "NAME_BYTES", "NAME", "NDIM", "DIMS",
            "LEVELS", "ZERO_POINT", "SCALE_COUNT", "SCALES", "COUNT0", "COUNT1", "FREQ",
            "FREQ_END", "PAYLOAD_WORDS0", "PAYLOAD_WORDS1", "PAYLOAD", "DTYPE", "DATA_BYTES0",
            "DATA_BYTES1", "DATA", "SCRC0", "SCRC1", "SCRC", "MAPPED", "FINAL", "DONE",
            "ERROR"])
        header_states = {"MAGIC0", "MAGIC1", "VERSION", "PARAM0", "PARAM1", "PARAM2", "PARAM3",
                         "SECTIONS", "STATES"}
        header_flag = Signal(init=1)
        m.d.comb += in_payload.eq(p.ongoing("PAYLOAD"))
        m.d.comb += in_header.eq(header_flag)

        # States that take a word whenever one is there, as a flag of its own.
        takes_words = Signal(init=1)
        not_taking = {"FREQ", "FREQ_END", "PAYLOAD", "HCRC", "SCRC", "MAPPED", "FINAL", "DONE",
                      "ERROR"}

        # Every word the parser takes goes into the running CRC except the CRC fields
        # themselves (a flag of its own); a section's CRC starts at its KIND word (that
        # state's flip-flop).
        crc_on = Signal(init=1)
        crc_off = {"HCRC0", "HCRC1", "HCRC", "SCRC0", "SCRC1", "SCRC", "FREQ_END", "FINAL",
                   "DONE", "ERROR"}
        in_kind = p.ongoing("KIND")
        # The CRC takes each word a cycle after the parser does, from registers: its enable
        # then reaches its 32 flip-flops from a flip-flop, not through the ready logic. Every
        # word before a CRC field is in by the time the field's high word is taken.
        crc_word = Signal(16, reset_less=True)
        crc_take = Signal()
        crc_restart = Signal(reset_less=True)
        m.d.sync += [crc_word.eq(w), crc_take.eq(acc & crc_on), crc_restart.eq(in_kind)]
        m.d.comb += [crc.word.eq(crc_word), crc.en.eq(crc_take), crc.restart.eq(crc_restart)]

        # Each flag, and which states it is set in.
        state_flags = [
            (takes_words, lambda name: name not in not_taking),
            (crc_on, lambda name: name not in crc_off),
            (header_flag, lambda name: name in header_states),
        ]

        def go(name):
            p.go(name)
            if name == "ERROR":
                # No flag is written on the way to ERROR, so the many failing conditions stay
                # out of the flags' enables: ERROR's readiness is its own state flip-flop, and
                # after an error neither the CRC nor the ring's header mode matters. ERROR has
                # no way out, so its entries in the flags' state sets are never read.
                return
            for flag, is_set in state_flags:
                if is_set(name) != is_set(p.current):
                    p.set(flag, is_set(name))

        m.d.comb += stopped.eq(p.ongoing("FINAL") | p.ongoing("DONE"))
        m.d.comb += parser_ready.eq(
            takes_words
            | p.ongoing("ERROR")
            | (p.ongoing("FREQ") & tables.freqs.ready)
            | (p.ongoing("PAYLOAD") & buf.push.ready & payload_more))
        m.d.comb += [
            tables.freqs.valid.eq(w_valid & p.ongoing("FREQ")),
            tables.freqs.payload.eq(w),
            buf.push.valid.eq(w_valid & p.ongoing("PAYLOAD") & payload_more),
            buf.push.payload.eq(w),
            self.status.done.eq(p.ongoing("DONE") | p.ongoing("ERROR")),
            self.status.error.eq(p.ongoing("ERROR")),
        ]

        def taken():
            """The parser takes ``w`` this cycle, in the state being written: ``acc`` less what
            the state makes constant (``takes_words`` is 1 in all but two of the states that
            take words), so most guards start from ``w_valid`` alone, not from the ready
            logic whose fanout is every register of the parser."""
            if p.current == "FREQ":
                return w_valid & tables.freqs.ready
            if p.current == "PAYLOAD":
                return w_valid & buf.push.ready & payload_more
            assert p.current not in not_taking, p.current
            return w_valid

        # Each state can fail with one status only. ``code`` follows the status of the state
        # the parser is in (an OR of state flip-flops, not of the failing condition) and
        # freezes in ERROR: the verdict's depth stays out of the code register's enable.
        failing = {}

        def fail(status):
            assert failing.setdefault(p.current, status) == status, p.current
            go("ERROR")

        def skip(empty, state, after):
            """Go to ``state`` to pass over the words :func:`load_left` loaded, then do
            ``after()``; ``empty`` (no words) is taken from the field itself."""
            with p.If(empty):
                after()
            with p.Else():
                go(state)

        def load_left(count, one, odd=0):
            """Load the skip counter with ``count`` words, plus one if ``odd``: a byte count
            ``b`` loads ``b >> 1`` and its low bit, not ``(b + 1) >> 1``, so no adder stands in
            front of ``left``. ``one`` says the field is one word long, taken from the field
            itself. A field's handler loads it whatever its verdict: ``left`` is read only in
            the states a load enters, so a load on the way to ERROR or past an empty field is
            harmless, and its enable is then the state and the handshake alone, not the field
            checks."""
            for register, value in left.loaded(count):
                p.set(register, value)
            p.set(left_one, one)
            p.set(left_odd, odd)

        def count_down():
            for register, value in left.stepped():
                p.set(register, value)
            p.set(left_one, Mux(left_odd, left.equals(1), left.equals(2)))

        def skipping(state, after):
            with p.state(state):
                with p.If(taken()):
                    count_down()
                    with p.If(left_one):
                        after()

        def field(state, then):
            """A one-word field: accept it into the CRC, then ``then()``."""
            with p.state(state):
                with p.If(taken()):
                    then()

        def crc_half(state, half, after):
            """Half of a CRC field: the low one is kept, and with the high one compared a byte
            at a time (8-bit compares, two LUTs deep); the verdict comes a cycle later."""
            with p.state(state):
                with p.If(taken()):
                    if half == 0:
                        p.set(low, w)
                    else:
                        received = Cat(low, w)
                        p.set(crc_good, Cat(*[received.word_select(byte, 8)
                                              == crc.crc.word_select(byte, 8)
                                              for byte in range(4)]).all())
                    go(after)

        # Registered: the section index changes only on the CRC word it is consulted on.
        last_section = Signal()
        m.d.sync += last_section.eq(section == last_index)

        def after_section():
            with p.If(last_section):
                go("FINAL")
            with p.Else():
                p.set(section, section + 1)
                go("KIND")

        def after_dims():
            with p.If(raw):
                go("DTYPE")
            with p.Else():
                go("LEVELS")

        with p.state("MAGIC0"):
            with p.If(taken()):
                p.set(low_ok, check["magic_low"])
                go("MAGIC1")
        with p.state("MAGIC1"):
            with p.If(taken()):
                with p.If(~low_ok | ~check["magic_high"]):
                    fail(Status.BAD_MAGIC)
                with p.Else():
                    go("VERSION")
        with p.state("VERSION"):
            with p.If(taken()):
                p.set(programs_allowed, check["version_programs"])
                p.set(mapped_allowed, check["version_mapped"])
                with p.If(~check["version"]):
                    fail(Status.BAD_VERSION)
                with p.Else():
                    go("PARAM0")
        for i in range(4):
            with p.state(f"PARAM{i}"):
                with p.If(taken()):
                    bad = param_bad | ~check["params"][i]
                    if i < 3:
                        p.set(param_bad, bad)
                        go(f"PARAM{i + 1}")
                    else:
                        # All four are read before any is judged, as the golden model does.
                        with p.If(bad):
                            fail(Status.PARAM_MISMATCH)
                        with p.Else():
                            go("SECTIONS")
        with p.state("SECTIONS"):
            with p.If(taken()):
                p.set(last_index, w - 1)
                p.set(no_sections, check["zero"])
                load_left(2 * K, 2 * K == 1)
                go("STATES")
        with p.state("STATES"):
            # A row (state index i of every lane) enters the ring head when complete.
            with p.If(taken()):
                count_down()
                p.set(state_high, ~state_high)
                with p.If(~state_high):
                    p.set(low, w)
                    p.set(low_zero, check["zero"])
                with p.Else():
                    if parked:
                        p.pulse(header_word)
                    else:
                        for n in range(N):
                            with p.If(state_lane == n):
                                p.set(row[n], Cat(low, w))
                    with p.If(state_lane == N - 1):
                        p.set(state_lane, 0)
                        p.set(row_full, 1)
                    with p.Else():
                        p.set(state_lane, state_lane + 1)
                bad = state_bad | (state_high & check["zero"])
                p.set(state_bad, bad)
                with p.If(left_one):
                    with p.If(bad):
                        fail(Status.BAD_STATE)
                    with p.Else():
                        go("HCRC0")
        crc_half("HCRC0", 0, "HCRC1")
        crc_half("HCRC1", 1, "HCRC")
        with p.state("HCRC"):
            with p.If(~crc_good):
                fail(Status.CRC_MISMATCH)
            with p.Elif(no_sections):
                go("FINAL")
            with p.Else():
                go("KIND")

        with p.state("KIND"):
            with p.If(taken()):
                p.set(raw, check["kind_raw"])
                p.set(is_program, check["kind_program"])
                with p.If(check["kind_bad"] | (check["kind_program"] & ~programs_allowed)
                          | (check["kind_mapped"] & ~mapped_allowed)):
                    fail(Status.BAD_SECTION)
                with p.Elif(check["kind_mapped"]):
                    go("MAPPED")
                with p.Else():
                    go("NAME_BYTES")
        # A MAPPED section's symbols stand for the entries of a value table of up to 64-bit
        # integers, which the 16-bit ``weights`` output cannot carry and a table RAM per lane
        # would cost: the decoder refuses the section at its kind word, with a status of its
        # own (a state of its own: each state fails with one status) rather than BAD_SECTION,
        # so that a sound file is not reported as a damaged one.
        with p.state("MAPPED"):
            fail(Status.UNSUPPORTED)

        def name_bytes():
            load_left(w >> 1, check["one_or_two"], w[0])
            with p.If(check["name_bad"]):
                fail(Status.BAD_SECTION)
            with p.Else():
                skip(check["zero"], "NAME", lambda: go("NDIM"))
        field("NAME_BYTES", name_bytes)
        skipping("NAME", lambda: go("NDIM"))

        def ndim():
            load_left(w << 1, 0)
            with p.If(check["ndim_bad"]):
                fail(Status.BAD_SECTION)
            with p.Else():
                skip(check["zero"], "DIMS", after_dims)
        field("NDIM", ndim)
        skipping("DIMS", after_dims)

        # CODED
        def got_levels():
            p.set(levels, w)
            p.set(levels_bad, check["levels_bad"])
            p.set(single, check["one"])
            go("ZERO_POINT")
        field("LEVELS", got_levels)

        # The zero point's range check, levels - 1 - zero_point > 32767, is made as the word
        # arrives, like the constant checks. It is zero_point < levels - 32768, and that bound
        # is ``levels`` with its top bit flipped, read as signed: one compare, no subtract.
        # The parser may be taking ``levels`` from ``w`` in that same cycle.
        zero_point_bad = Signal()
        zero_point_over = Signal()
        levels_now = Mux(p.ongoing("LEVELS"), w, levels)
        with m.If(self.words.valid & self.words.ready):
            m.d.sync += zero_point_over.eq(
                self.words.payload.as_signed() < (levels_now ^ 0x8000).as_signed())

        def got_zero_point():
            # Judged with the scale count, as the golden model does.
            p.set(zero_point, w)
            p.set(zero_point_bad, zero_point_over)
            go("SCALE_COUNT")
        field("ZERO_POINT", got_zero_point)

        def scale_count():
            load_left(w << 1, 0)
            with p.If(levels_bad | zero_point_bad | check["zero"]):
                fail(Status.BAD_SECTION)
            with p.Else():
                skip(check["zero"], "SCALES", lambda: go("COUNT0"))
        field("SCALE_COUNT", scale_count)
        skipping("SCALES", lambda: go("COUNT0"))

        def count0():
            p.set(low, w)
            p.set(low_zero, check["zero"])
            p.set(low_at_most_lanes, check["at_most_lanes"])
            p.set(low_narrow, check["issue_narrow"])
            go("COUNT1")
        field("COUNT0", count0)

        def count1():
            p.set(symbol_count, Cat(low, w))
            p.set(count_zero, low_zero & check["zero"])
            p.set(count_small, low_at_most_lanes & check["zero"])
            p.set(count_narrow, low_narrow & check["zero"])
            p.set(freq_sum, 0)
            p.set(freq_index, 0)
            p.set(single_symbol, 0)
            load_left(levels, single)     # single is still levels == 1 here
            p.pulse(tables.start)
            with p.If(check["count_over"] | (check["count_at"] & ~low_zero)):
                fail(Status.BAD_SECTION)
            with p.Elif(single):
                go("PAYLOAD_WORDS0")
            with p.Else():
                go("FREQ")
        field("COUNT1", count1)

        with p.state("FREQ"):
            with p.If(taken()):
                p.set(freq_sum, freq_sum + w)
                p.set(freq_index, freq_index + 1)
                count_down()
                if M < 1 << 16:
                    with p.If(check["whole"]):
                        p.set(single, 1)
                        p.set(single_symbol, freq_index)
                with p.If(left_one):
                    go("FREQ_END")
        with p.state("FREQ_END"):
            with p.If(tables.idle):
                with p.If(sum_bad):
                    fail(Status.BAD_TABLE)
                with p.Else():
                    go("PAYLOAD_WORDS0")

        def payload_words0():
            p.set(low, w)
            p.set(low_zero, check["zero"])
            go("PAYLOAD_WORDS1")
        field("PAYLOAD_WORDS0", payload_words0)

        def payload_words1():
            for register, value in [
                    *payload_left.loaded(Cat(low, w)),
                    (payload_more, Cat(low, w) != 0),
                    *to_issue.loaded(symbol_count),
                    *to_commit.loaded(symbol_count),
                    (issue_more, ~count_zero),
                    (issue_last, count_small),
                    (issue_narrow, count_narrow),
                    (drained, count_zero),
                    (drained_seen, 0),
                    (past_end, 0),
                    (next_index, 0),
                    (first_pending, 1)]:
                p.set(register, value)
            go("PAYLOAD")
        field("PAYLOAD_WORDS1", payload_words1)

        with p.state("PAYLOAD"):
            with p.If(taken()):
                for register, value in payload_left.stepped():
                    p.set(register, value)
                p.set(payload_more, ~payload_left.equals(1))
            with p.If(past_end):
                fail(Status.BAD_LENGTH)   # a symbol needs a word past payload_words
            with p.Elif(drained_seen):
                with p.If(leftover):
                    fail(Status.BAD_LENGTH)   # the symbols end with words unread
                with p.Else():
                    go("SCRC0")

        # RAW
        def dtype():
            with p.If(check["dtype_bad"] | (is_program & check["dtype_not_u16"])):
                fail(Status.BAD_SECTION)
            with p.Else():
                go("DATA_BYTES0")
        field("DTYPE", dtype)

        def data_bytes0():
            p.set(low, w)
            p.set(low_zero, check["zero"])
            p.set(low_one_or_two, check["one_or_two"])
            go("DATA_BYTES1")
        field("DATA_BYTES0", data_bytes0)

        def data_bytes1():
            load_left(Cat(low, w) >> 1, low_one_or_two & check["zero"], low[0])
            skip(low_zero & check["zero"], "DATA", lambda: go("SCRC0"))
        field("DATA_BYTES1", data_bytes1)
        skipping("DATA", lambda: go("SCRC0"))

        # The program's words leave from flip-flops that read flip-flops only, and nothing
        # here reaches words.ready or the parser's next state: in DATA the parser takes every
        # word there is (``taken()`` is ``w_valid`` there), so a word taken is ``w_valid`` and
        # the state's own flip-flop, and the word is the input register ``w``. On the word
        # taken, ``left_one`` says it is the section's last and ``left_odd`` (data_bytes odd,
        # as loaded) that it holds one byte. The payload has neither enable nor reset (it
        # matters only while valid, for one cycle): 18 flip-flops, one LUT for ``partial``
        # and one for ``valid``.
        program_word = Signal(ProgramWord, reset_less=True)
        m.d.sync += [
            self.program.valid.eq(p.ongoing("DATA") & w_valid & is_program),
            program_word.word.eq(w),
            program_word.last.eq(left_one),
            program_word.partial.eq(left_one & left_odd),
        ]
        m.d.comb += self.program.payload.eq(program_word)

        crc_half("SCRC0", 0, "SCRC1")
        crc_half("SCRC1", 1, "SCRC")
        with p.state("SCRC"):
            with p.If(~crc_good):
                fail(Status.CRC_MISMATCH)
            with p.Else():
                after_section()

        m.d.sync += sampled.eq(p.ongoing("FINAL") & adv & (final_count != R) & (mul_phase < G))
        with p.state("FINAL"):
            with p.If(adv & (final_count != R)):
                p.set(final_count, final_count + 1)
            p.set(final_bad, final_bad | (sampled & lanes_off.any()))
            with p.If(counted):
                with p.If(final_bad):
                    fail(Status.STATE_MISMATCH)
                with p.Else():
                    go("DONE")
        p.build()
        with m.If(~p.ongoing("ERROR")):
            m.d.sync += code.eq(
                Cat(*[Cat(*[p.ongoing(name) for name, status in failing.items()
                            if status >> bit & 1]).any() for bit in range(len(code))]))
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


class _CutCounter:
    """A down-counter cut in two, so that no carry chain spans it: the low ``cut`` bits step,
    and a borrow out of them is taken from the high part a cycle later (``borrowed``). The
    low part is always exact, and so is the whole, ``(high - borrowed) << cut | low``: the
    high part takes a pending borrow on the very next cycle whatever else happens, and a
    borrow comes at most once in ``2**cut / step`` steps. The writes are returned as
    ``(register, value)`` pairs, for the caller's conditions (the parser's
    :meth:`OneHotMachine.set` or the core's ``sync``); the high part's catch-up is added to
    ``m`` now, below everything written later.
    """

    def __init__(self, m: Module, name: str, width: int, cut: int, step: int = 1):
        assert 2 * step <= 1 << cut < 1 << width
        self.width, self.cut, self.step = width, cut, step
        self.low = Signal(cut, name=f"{name}_low")
        self.high = Signal(width - cut, name=f"{name}_high")
        self.borrowed = Signal(name=f"{name}_borrowed")
        self._stepped = Signal(cut + 1, name=f"{name}_stepped")    # low - step; top bit: borrow
        m.d.comb += self._stepped.eq(self.low - step)
        m.d.sync += [self.high.eq(self.high - self.borrowed), self.borrowed.eq(0)]

    def loaded(self, value):
        value = Value.cast(value)
        value = Cat(value, Const(0, max(0, self.width - len(value))))
        return [(self.low, value[:self.cut]), (self.high, value[self.cut:self.width]),
                (self.borrowed, 0)]

    def copied(self, other: "_CutCounter"):
        return [(self.low, other.low), (self.high, other.high), (self.borrowed, other.borrowed)]

    def stepped(self):
        """The counter less ``step``."""
        return [(self.low, self._stepped[:self.cut]), (self.borrowed, self._stepped[-1])]

    def high_zero(self) -> Value:
        return Mux(self.borrowed, self.high == 1, self.high == 0)

    def below(self, bound: int) -> Value:
        """The counter < ``bound``, a power of two of at most ``2**cut``."""
        return (self.low >> (bound.bit_length() - 1) == 0) & self.high_zero()

    def equals(self, value: int) -> Value:
        """The counter == ``value``, below ``2**cut``."""
        return (self.low == value) & self.high_zero()


def _successor(value, modulus):
    """``value + 1 mod modulus``, for counters that wrap at a bound not a power of two."""
    return Mux(value == modulus - 1, 0, value + 1)
