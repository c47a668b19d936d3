"""The state ring: the ``K`` coder states of a section, the state recurrence and replay."""

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw.params import CodecParams

from ..tables import LOOKUP_LATENCY, popcount
from .counters import CutCounter, successor
from .layouts import SectionDescriptor, StateWord, SymbolBatch

__all__ = ["StateRing", "PIPELINE_DEPTH", "MULTIPLY", "ADD", "OFFSETS", "RENORMALISE",
           "issue_bits"]

#: Stages of the state recurrence, each a few LUT levels deep (iCE40 at 48 MHz allows about
#: seven): 0-2 the symbol lookup (:class:`hw.tables.SymbolTables`, three cycles), then
#: multiply, add, the word offsets, and renormalise. A lane needs ``K/N >= PIPELINE_DEPTH``
#: states to run at full rate; with fewer, the ring carries bubbles.
MULTIPLY, ADD, OFFSETS, RENORMALISE = (LOOKUP_LATENCY + i for i in range(4))
PIPELINE_DEPTH = RENORMALISE + 1


def issue_bits(lanes: int) -> int:
    """Low bits of the ring's symbol counts on which ``issue_last`` (at most ``lanes`` left)
    is decided. The rest is tested a cycle stale (``narrow``), which is exact enough: one issue
    takes ``lanes``, so a count that had high bits a cycle ago is still above twice that."""
    return (3 * lanes).bit_length()


class StateRing(wiring.Component):
    """The coder states of ``lanes`` lanes, each lane's recurrence pipelined ``D`` deep.

    A ring of ``R = max(K/N, D)`` slots per lane holds the ``K`` states (in block RAM when
    ``R > D``), so each lane's state recurrence (slot -> symbol lookup -> multiply -> add ->
    word offsets -> renormalise, ``D = PIPELINE_DEPTH`` stages) has ``K/N`` cycles to come
    round. The word buffer (:class:`hw.wordbuf.WordBuffer`) hands the lanes that renormalise
    their words; a step short of words is replayed rather than stalling the ring. The ring
    counts the section's symbols itself, from a :data:`SectionDescriptor` loaded as the
    payload starts, and checks the final states after the last section.

    Parameters
    ----------
    params : CodecParams
    lanes : int
        ``N``; divides ``params.state_count``.

    Attributes
    ----------
    descriptor : In(stream.Signature(SectionDescriptor, always_ready=True))
        A CODED section's symbol count, taken (``valid``) on the cycle before its payload
        starts; resets the counters and the verdicts.
    states : In(stream.Signature(StateWord(lanes), always_ready=True))
        The header's ``initial_states`` in file order, one per ``valid``, while ``in_header``.
    in_header : In(1)
        The parser is in the header: the ring advances only when a row of states (one per
        lane) is complete.
    in_payload : In(1)
        The parser is in a CODED section's payload: steps are issued.
    in_final : In(1)
        The parser has passed the last section: the final states are checked.
    payload_more : In(1)
        Payload words remain unread by the parser (a step short of words past the payload's
        end is ``past_end``, not a replay).
    single : In(1)
        The section has a single symbol: no lane renormalises.
    lookup_en, slot : Out(1), Out(ArrayLayout(unsigned(P), lanes))
        To :class:`hw.tables.SymbolTables` (``en``, ``slot``).
    symbol, cumulative, frequency : In(ArrayLayout(...))
        From :class:`hw.tables.SymbolTables`, ``LOOKUP_LATENCY`` advances after the slot.
    before_next, load, take : Out(...)
        To :class:`hw.wordbuf.WordBuffer` (same names).
    enough, words : In(1), In(ArrayLayout(unsigned(16), lanes))
        From :class:`hw.wordbuf.WordBuffer` (same names).
    symbols : Out(stream.Signature(SymbolBatch(lanes)))
        The committed steps; ``valid`` is the commit, raised only while ``ready``: the ring
        holds while its consumer is not ready, and ``ready`` must be a flip-flop.
    past_end : Out(1)
        A step needed a word past the payload (``BAD_LENGTH``). A register.
    drained : Out(1)
        The section's last step committed (a cycle ago: the parser's check of unread words
        then sees the buffer as the step left it). A register.
    final_done : Out(1)
        In ``in_final``, every state has been sampled. A register.
    final_bad : Out(1)
        ... and some state was not ``L`` (``STATE_MISMATCH``). A register.
    """

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 1):
        params.check_lanes(lanes)
        self.params = params
        self.lanes = lanes
        #: ``D``, stages of the state recurrence: each lane serves ``K/N`` states in turn,
        #: and when ``K/N < D`` the ring carries bubbles (rate ``K/N / D``).
        self.depth = PIPELINE_DEPTH
        #: Slots of the state ring per lane: ``K/N`` states and ``max(0, D - K/N)`` bubbles.
        self.ring = max(params.state_count // lanes, PIPELINE_DEPTH)
        P = params.precision_bits
        super().__init__({
            "descriptor": In(stream.Signature(SectionDescriptor, always_ready=True)),
            "states": In(stream.Signature(StateWord(lanes), always_ready=True)),
            "in_header": In(1),
            "in_payload": In(1),
            "in_final": In(1),
            "payload_more": In(1),
            "single": In(1),
            "lookup_en": Out(1),
            "slot": Out(data.ArrayLayout(unsigned(P), lanes)),
            "symbol": In(data.ArrayLayout(unsigned(8), lanes)),
            "cumulative": In(data.ArrayLayout(unsigned(P), lanes)),
            "frequency": In(data.ArrayLayout(unsigned(P), lanes)),
            "before_next": Out(data.ArrayLayout(range(lanes + 1), lanes + 1)),
            "load": Out(1),
            "take": Out(1),
            "enough": In(1),
            "words": In(data.ArrayLayout(unsigned(16), lanes)),
            "symbols": Out(stream.Signature(SymbolBatch(lanes))),
            "past_end": Out(1),
            "drained": Out(1),
            "final_done": Out(1),
            "final_bad": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        params, N = self.params, self.lanes
        P, K = params.precision_bits, params.state_count
        L = params.lower_bound
        G = K // N
        R = self.ring
        D = self.depth
        Z = RENORMALISE
        cut_bits = issue_bits(N)
        in_header, single = self.in_header, self.single

        phase = Signal(range(R), init=R - 1)
        next_index = Signal(range(G))
        # Symbols of the section not yet issued, and not yet committed (a replay restarts
        # issue from the latter), each cut at bit 15 (no carry chain longer than 16 bits). The
        # decisions read only registered flags of them.
        to_issue = CutCounter(m, "to_issue", 29, 15, step=N)
        to_commit = CutCounter(m, "to_commit", 29, 15, step=N)
        issue_more = Signal()            # to_issue != 0
        issue_last = Signal()            # to_issue <= N: the next step is the section's last
        drained = Signal()               # the section's last step has committed
        # to_issue, to_commit < 2**issue_bits, as of the cycle before; issue_narrow is exact
        # after a load or a replay, which set it (no commit precedes a replay directly).
        issue_narrow = Signal()
        commit_narrow = Signal()
        first_pending = Signal()
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
            # A row (state index i of every lane) enters the ring head when complete.
            row = [Signal(32, name=f"row{n}", reset_less=True) for n in range(N)]
            for n in range(N):
                with m.If(self.states.valid & (self.states.payload.lane == n)):
                    m.d.sync += row[n].eq(self.states.payload.value)
        row_full = Signal()
        m.d.sync += row_full.eq(self.states.valid & (self.states.payload.lane == N - 1))
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
        m.d.comb += [self.before_next[n].eq(popcount(need_early[:n])) for n in range(N + 1)]
        m.d.comb += self.load.eq(adv)
        # Whether the step at Z finds its words is a register of the buffer (``enough``): the
        # commit, whose fanout is every write-back and output register, starts from it.
        short = Signal()
        m.d.comb += short.eq(~self.enough)
        m.d.comb += adv.eq(row_full | (~in_header & ~(ctrl[Z].valid & ~self.symbols.ready)))
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
        m.d.comb += self.take.eq(commit)
        # State index of the step at Z: phase - Z mod R, as a register.
        back_phase = Signal(range(R), init=R - D)
        # State index of the step at MULTIPLY: phase - MULTIPLY mod R.
        mul_phase = Signal(range(R), init=R - 1 - MULTIPLY)
        # The phase counters step together; next_phase and next_mul_phase are also the RAMs'
        # read addresses.
        next_phase = Signal(range(R))
        next_mul_phase = Signal(range(R))
        m.d.comb += [next_phase.eq(successor(phase, R)),
                     next_mul_phase.eq(successor(mul_phase, R))]
        with m.If(adv):
            m.d.sync += [phase.eq(next_phase), mul_phase.eq(next_mul_phase),
                         back_phase.eq(successor(back_phase, R))]
        m.d.sync += replay_index.eq(back_phase)

        # A step issued while a replay is decided is squashed with the rest, and one due in
        # the restoring cycle is dropped: the restore takes priority over everything the
        # issue writes, so issue need not wait for it.
        issue = Signal()
        m.d.comb += issue.eq(self.in_payload & issue_more & (phase == next_index))
        issue_count = Signal(range(N + 1))
        m.d.comb += issue_count.eq(Mux(issue_last, to_issue.low, N))
        # Every step but the last has N symbols, and to_commit is read only by a replay,
        # which never follows the last step's commit: a constant decrement, with no carry
        # chain behind the step's count.
        with m.If(commit):
            m.d.sync += [register.eq(value) for register, value in to_commit.stepped()]
            with m.If(ctrl[Z].last):
                m.d.sync += drained.eq(1)

        m.d.comb += self.lookup_en.eq(adv)
        for n in range(N):
            m.d.comb += self.slot[n].eq(slot_head[n])

        # RENORMALISE (Z): a lane that needs a word has x' < 2**16: its word goes in below.
        renormed = [Signal(32, name=f"renormed{n}") for n in range(N)]
        for n in range(N):
            m.d.comb += renormed[n].eq(Mux(lane_need[n], Cat(self.words[n], decoded[n][:16]),
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
            header_low = self.states.payload.value[:16]
            header_high = self.states.payload.value[16:]
            for n in range(N):
                # Mux(in_header, state, renormed), arranged so that the buffer's word, the
                # latest input (index register, entry multiplexer), meets one LUT.
                state_data = Signal(32, name=f"state_data{n}")
                use_word = lane_need[n] & ~in_header
                m.d.comb += state_data.eq(Cat(
                    Mux(use_word, self.words[n], Mux(in_header, header_low, decoded[n][:16])),
                    Mux(in_header, header_high,
                        Mux(lane_need[n], decoded[n][:16], decoded[n][16:]))))
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
                        wr.en.eq(Mux(in_header,
                                     self.states.valid & (self.states.payload.lane == n),
                                     written[n])),
                    ]
        m.d.sync += [issue_narrow.eq(to_issue.below(1 << cut_bits)),
                     commit_narrow.eq(to_commit.below(1 << cut_bits))]
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
                    issue_last.eq(issue_narrow & (to_issue.low[:cut_bits] <= 2 * N)),
                    next_index.eq(successor(next_index, G)),
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
                    product_low[n].eq(self.frequency[n] * state[P:P + 16]),
                    product_high[0][n].eq(self.frequency[n] * state[P + 16:]
                                          if high_bits else 0),
                    difference[n].eq(state[:P] - self.cumulative[n]),
                    sym4[n].eq(self.symbol[n]),
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

        step = self.symbols.payload
        m.d.comb += [
            self.symbols.valid.eq(commit),
            step.count.eq(ctrl[Z].count),
            step.first.eq(ctrl[Z].first),
            step.last.eq(ctrl[Z].last),
        ]
        for n in range(N):
            m.d.comb += step.symbols[n].eq(sym6[n])

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
        m.d.sync += sampled.eq(self.in_final & adv & (final_count != R) & (mul_phase < G))
        with m.If(self.in_final):
            with m.If(adv & (final_count != R)):
                m.d.sync += final_count.eq(final_count + 1)
            m.d.sync += final_bad.eq(final_bad | (sampled & lanes_off.any()))
        m.d.comb += [self.final_done.eq(counted), self.final_bad.eq(final_bad)]

        # Verdicts on the payload, registered: the parser's state logic then reads
        # flip-flops only. Each is a cycle late, which the parser waits for: a section ends on
        # ``drained`` a cycle after the last commit (nothing is taken once drained), and the
        # step that finds the payload exhausted is squashed.
        past_end = Signal()
        drained_seen = Signal()
        m.d.sync += [
            past_end.eq(ctrl[Z].valid & short & ~self.payload_more & ~replaying),
            drained_seen.eq(drained),
        ]
        m.d.comb += [self.past_end.eq(past_end), self.drained.eq(drained_seen)]

        # A section's counts load last: they take priority over everything the ring writes
        # to the same registers (no step is in flight then).
        section = self.descriptor.payload
        with m.If(self.descriptor.valid):
            m.d.sync += [
                *[register.eq(value) for register, value in to_issue.loaded(section.symbol_count)],
                *[register.eq(value) for register, value
                  in to_commit.loaded(section.symbol_count)],
                issue_more.eq(~section.empty),
                issue_last.eq(section.small),
                issue_narrow.eq(section.narrow),
                drained.eq(section.empty),
                drained_seen.eq(0),
                past_end.eq(0),
                next_index.eq(0),
                first_pending.eq(1),
            ]
        return m
