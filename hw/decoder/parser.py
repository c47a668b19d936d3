"""The container parser: the input register, every check of docs/FORMAT.md, the CRCs."""

from amaranth import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import stream, wiring
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

from ..crc import Crc32Word
from ..onehot import OneHotMachine
from .counters import CutCounter
from .layouts import ProgramWord, SectionDescriptor, StateWord, StatusLayout
from .ring import issue_bits

__all__ = ["ContainerParser"]


class ContainerParser(wiring.Component):
    """Walks a subbit container word by word and checks every field, in the order of
    :func:`sw.codec.container.parse`; passes the payload on to the state ring and the word buffer.

    The parser works on a registered copy of each input word, with the constant comparisons
    the format asks for made as the word arrives; its states are a one-hot machine
    (:class:`hw.onehot.OneHotMachine`), and it keeps the running CRC (:class:`hw.crc.Crc32Word`)
    of the header and of each section. Everything it hands the other components is a register
    of it, but for the strobes that act in the cycle a word is taken (``states.valid``,
    ``descriptor.valid``, ``freqs.valid``, ``payload.valid``, ``table_start``): each is an AND
    of its state's flip-flop, the input register's ``valid`` and at most one more flip-flop.

    Parameters
    ----------
    params : CodecParams
        The code the decoder is built for; a container made with others is refused with
        ``PARAM_MISMATCH``.
    lanes : int
        ``N``: the ring's lanes (``initial_states`` are dealt out to them in turn).
    buffer_depth : int
        Entries of the word buffer (the width of ``buffered``).

    Attributes
    ----------
    words : In(stream.Signature(16))
        The container (:attr:`hw.decoder.WeightDecoder.words`).
    status : Out(StatusLayout)
        As :attr:`hw.decoder.WeightDecoder.status`.
    program : Out(stream.Signature(ProgramWord, always_ready=True))
        As :attr:`hw.decoder.WeightDecoder.program`.
    table_start, freqs : Out(1), Out(stream.Signature(16))
        A CODED section's ``frequencies``, to :class:`hw.tables.SymbolTables` (``start``
        at its ``symbol_count``, then ``freqs``).
    table_idle : In(1)
        The tables are built (``idle``): the parser then judges the frequency sum.
    payload : Out(stream.Signature(16))
        The section's ``payload_words``, to :class:`hw.wordbuf.WordBuffer` (``push``).
    buffered : In(range(buffer_depth + 1))
        Words in the buffer (its ``count``): any left when the symbols end is ``BAD_LENGTH``.
    states : Out(stream.Signature(StateWord(lanes), always_ready=True))
        The header's ``initial_states``, to the state ring, each as its high word is taken.
    descriptor : Out(stream.Signature(SectionDescriptor, always_ready=True))
        A CODED section's symbol count, to the state ring, as the payload starts.
    in_header, in_payload, in_final : Out(1)
        The parser is in the header, in a CODED section's payload, past the last section.
    payload_more : Out(1)
        Payload words remain unread.
    section : Out(unsigned(16))
        Index of the current section.
    zero_point : Out(signed(16))
        The current CODED section's ``zero_point``.
    single, single_symbol : Out(1), Out(unsigned(8))
        The section has one symbol (``levels == 1``, or one frequency equal to ``M``), and
        which.
    past_end, drained, final_done, final_bad : In(1)
        The state ring's verdicts (:class:`hw.decoder.ring.StateRing`).
    """

    def __init__(self, params: CodecParams = CodecParams(), lanes: int = 1,
                 buffer_depth: int = 2):
        params.check_lanes(lanes)
        self.params = params
        self.lanes = lanes
        self.buffer_depth = buffer_depth
        super().__init__({
            "words": In(stream.Signature(16)),
            "status": Out(StatusLayout),
            "program": Out(stream.Signature(ProgramWord, always_ready=True)),
            "table_start": Out(1),
            "freqs": Out(stream.Signature(16)),
            "table_idle": In(1),
            "payload": Out(stream.Signature(16)),
            "buffered": In(range(buffer_depth + 1)),
            "states": Out(stream.Signature(StateWord(lanes), always_ready=True)),
            "descriptor": Out(stream.Signature(SectionDescriptor, always_ready=True)),
            "in_header": Out(1),
            "in_payload": Out(1),
            "in_final": Out(1),
            "payload_more": Out(1),
            "section": Out(unsigned(16)),
            "zero_point": Out(signed(16)),
            "single": Out(1),
            "single_symbol": Out(unsigned(8)),
            "past_end": In(1),
            "drained": In(1),
            "final_done": In(1),
            "final_bad": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        params, N = self.params, self.lanes
        P, K = params.precision_bits, params.state_count
        M = params.total_frequency

        m.submodules.crc = crc = Crc32Word()

        # The parser works on a registered copy of each input word, ``w``, with every
        # comparison against a constant that the format asks for made as the word arrives
        # (``check``): a field's verdict is then a flip-flop, not a compare in front of the
        # parser's state logic.
        cut_bits = issue_bits(N)
        magic = int.from_bytes(MAGIC, "little")
        limit = MAX_SECTION_SYMBOLS
        assert limit & 0xFFFF == 0
        constant_checks = {
            "zero": lambda v: v == 0,
            "one": lambda v: v == 1,
            "one_or_two": lambda v: (v == 1) | (v == 2),
            "at_most_lanes": lambda v: v <= N,
            "issue_narrow": lambda v: v >> cut_bits == 0,     # of a count's low word
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
        low_narrow = Signal()            # ... is below 2**issue_bits(N)
        # A CRC field's verdict, made as its high word is taken (its low word waits in
        # ``low``): the transitions out of HEADER_CRC/SECTION_CRC, which reach the parser's
        # flags, then read one flip-flop.
        crc_good = Signal()
        levels_bad = Signal()            # levels == 0 or > MAX_LEVELS
        left_one = Signal()              # one word left: left == 1, or left == 0 with left_odd
        left_odd = Signal()              # a byte count was odd: one word more than left says
        no_sections = Signal()           # section_count == 0
        param_bad = Signal()
        last_index = Signal(16)          # section_count - 1
        section = Signal(16)
        m.d.comb += self.section.eq(section)
        # Words left in the field being skipped or read, and in the payload, cut at bit 16.
        left = CutCounter(m, "left", 32, 16)
        state_lane = Signal(range(N))
        state_high = Signal()
        state_bad = Signal()
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
        payload_left = CutCounter(m, "payload_left", 32, 16)
        payload_more = Signal()          # payload_left != 0, as a register (it gates ready)
        # symbol_count == 0, <= N, < 2**issue_bits(N): the descriptor's verdicts
        count_zero = Signal()
        count_small = Signal()
        count_narrow = Signal()
        m.d.comb += [
            self.zero_point.eq(zero_point),
            self.single.eq(single),
            self.single_symbol.eq(single_symbol),
            self.payload_more.eq(payload_more),
            self.descriptor.payload.symbol_count.eq(symbol_count),
            self.descriptor.payload.empty.eq(count_zero),
            self.descriptor.payload.small.eq(count_small),
            self.descriptor.payload.narrow.eq(count_narrow),
        ]

        # Verdicts on the payload and the frequency sum, registered: the parser's state
        # logic then reads flip-flops only. Each is a cycle late, which the parser waits
        # for: the table walk takes at least a cycle after the last frequency, a section
        # ends on the ring's ``drained`` (its last step committed a cycle ago, when
        # ``leftover`` was sampled; nothing is taken once drained), and the step that finds
        # the payload exhausted is squashed (the ring's ``past_end``).
        sum_bad = Signal()
        leftover = Signal()
        past_end, drained_seen = self.past_end, self.drained
        m.d.sync += [
            sum_bad.eq(freq_sum != M),
            leftover.eq(payload_more | (self.buffered != 0)),
        ]
        # The parser is a one-hot machine (hw.onehot): each state a flip-flop, each register
        # it writes an AND-OR multiplexer over (state, condition) terms. words.ready, the CRC
        # enable and the ring's header mode are flags of their own, written only on the
        # transitions that change them (the source state is known when a transition is
        # written): ready gates every register behind the word handshake, so it must be a
        # shallow function of flip-flops, and a flag written on every transition would have
        # the whole next-state logic in its enable.
        p = OneHotMachine(m, [
            "MAGIC0", "MAGIC1", "VERSION", "STATE_BITS", "WORD_BITS", "PRECISION_BITS",
            "STATE_COUNT", "SECTION_COUNT", "INITIAL_STATES", "HEADER_CRC0", "HEADER_CRC1",
            "HEADER_CRC", "KIND", "NAME_BYTES", "NAME", "NDIM", "DIMS", "LEVELS", "ZERO_POINT",
            "SCALE_COUNT", "SCALES", "SYMBOL_COUNT0", "SYMBOL_COUNT1", "FREQUENCIES",
            "FREQUENCIES_END", "PAYLOAD_WORDS0", "PAYLOAD_WORDS1", "PAYLOAD", "DTYPE",
            "DATA_BYTES0", "DATA_BYTES1", "DATA", "SECTION_CRC0", "SECTION_CRC1", "SECTION_CRC",
            "MAPPED", "FINAL", "DONE", "ERROR"])
        header_states = {"MAGIC0", "MAGIC1", "VERSION", "STATE_BITS", "WORD_BITS",
                         "PRECISION_BITS", "STATE_COUNT", "SECTION_COUNT", "INITIAL_STATES"}
        header_flag = Signal(init=1)
        m.d.comb += [self.in_payload.eq(p.ongoing("PAYLOAD")), self.in_header.eq(header_flag),
                     self.in_final.eq(p.ongoing("FINAL"))]

        # States that take a word whenever one is there, as a flag of its own.
        takes_words = Signal(init=1)
        not_taking = {"FREQUENCIES", "FREQUENCIES_END", "PAYLOAD", "HEADER_CRC", "SECTION_CRC",
                      "MAPPED", "FINAL", "DONE", "ERROR"}

        # Every word the parser takes goes into the running CRC except the CRC fields
        # themselves (a flag of its own); a section's CRC starts at its KIND word (that
        # state's flip-flop).
        crc_on = Signal(init=1)
        crc_off = {"HEADER_CRC0", "HEADER_CRC1", "HEADER_CRC", "SECTION_CRC0", "SECTION_CRC1",
                   "SECTION_CRC", "FREQUENCIES_END", "FINAL", "DONE", "ERROR"}
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
            | (p.ongoing("FREQUENCIES") & self.freqs.ready)
            | (p.ongoing("PAYLOAD") & self.payload.ready & payload_more))
        m.d.comb += [
            self.freqs.valid.eq(w_valid & p.ongoing("FREQUENCIES")),
            self.freqs.payload.eq(w),
            self.payload.valid.eq(w_valid & p.ongoing("PAYLOAD") & payload_more),
            self.payload.payload.eq(w),
            self.status.done.eq(p.ongoing("DONE") | p.ongoing("ERROR")),
            self.status.error.eq(p.ongoing("ERROR")),
        ]

        def taken():
            """The parser takes ``w`` this cycle, in the state being written: ``acc`` less what
            the state makes constant (``takes_words`` is 1 in all but two of the states that
            take words), so most guards start from ``w_valid`` alone, not from the ready
            logic whose fanout is every register of the parser."""
            if p.current == "FREQUENCIES":
                return w_valid & self.freqs.ready
            if p.current == "PAYLOAD":
                return w_valid & self.payload.ready & payload_more
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
                    go("STATE_BITS")
        parameters = ["STATE_BITS", "WORD_BITS", "PRECISION_BITS", "STATE_COUNT"]
        for i, name in enumerate(parameters):
            with p.state(name):
                with p.If(taken()):
                    bad = param_bad | ~check["params"][i]
                    if i < 3:
                        p.set(param_bad, bad)
                        go(parameters[i + 1])
                    else:
                        # All four are read before any is judged, as the golden model does.
                        with p.If(bad):
                            fail(Status.PARAM_MISMATCH)
                        with p.Else():
                            go("SECTION_COUNT")
        with p.state("SECTION_COUNT"):
            with p.If(taken()):
                p.set(last_index, w - 1)
                p.set(no_sections, check["zero"])
                load_left(2 * K, 2 * K == 1)
                go("INITIAL_STATES")
        # The state ring takes each state as its high word arrives.
        m.d.comb += [self.states.payload.value.eq(Cat(low, w)),
                     self.states.payload.lane.eq(state_lane)]
        with p.state("INITIAL_STATES"):
            with p.If(taken()):
                count_down()
                p.set(state_high, ~state_high)
                with p.If(~state_high):
                    p.set(low, w)
                    p.set(low_zero, check["zero"])
                with p.Else():
                    p.pulse(self.states.valid)
                    with p.If(state_lane == N - 1):
                        p.set(state_lane, 0)
                    with p.Else():
                        p.set(state_lane, state_lane + 1)
                bad = state_bad | (state_high & check["zero"])
                p.set(state_bad, bad)
                with p.If(left_one):
                    with p.If(bad):
                        fail(Status.BAD_STATE)
                    with p.Else():
                        go("HEADER_CRC0")
        crc_half("HEADER_CRC0", 0, "HEADER_CRC1")
        crc_half("HEADER_CRC1", 1, "HEADER_CRC")
        with p.state("HEADER_CRC"):
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
                skip(check["zero"], "SCALES", lambda: go("SYMBOL_COUNT0"))
        field("SCALE_COUNT", scale_count)
        skipping("SCALES", lambda: go("SYMBOL_COUNT0"))

        def symbol_count0():
            p.set(low, w)
            p.set(low_zero, check["zero"])
            p.set(low_at_most_lanes, check["at_most_lanes"])
            p.set(low_narrow, check["issue_narrow"])
            go("SYMBOL_COUNT1")
        field("SYMBOL_COUNT0", symbol_count0)

        def symbol_count1():
            p.set(symbol_count, Cat(low, w))
            p.set(count_zero, low_zero & check["zero"])
            p.set(count_small, low_at_most_lanes & check["zero"])
            p.set(count_narrow, low_narrow & check["zero"])
            p.set(freq_sum, 0)
            p.set(freq_index, 0)
            p.set(single_symbol, 0)
            load_left(levels, single)     # single is still levels == 1 here
            p.pulse(self.table_start)
            with p.If(check["count_over"] | (check["count_at"] & ~low_zero)):
                fail(Status.BAD_SECTION)
            with p.Elif(single):
                go("PAYLOAD_WORDS0")
            with p.Else():
                go("FREQUENCIES")
        field("SYMBOL_COUNT1", symbol_count1)

        with p.state("FREQUENCIES"):
            with p.If(taken()):
                p.set(freq_sum, freq_sum + w)
                p.set(freq_index, freq_index + 1)
                count_down()
                if M < 1 << 16:
                    with p.If(check["whole"]):
                        p.set(single, 1)
                        p.set(single_symbol, freq_index)
                with p.If(left_one):
                    go("FREQUENCIES_END")
        with p.state("FREQUENCIES_END"):
            with p.If(self.table_idle):
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
                    (payload_more, Cat(low, w) != 0)]:
                p.set(register, value)
            # The ring loads its counts, and clears its verdicts, as the payload starts.
            p.pulse(self.descriptor.valid)
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
                    go("SECTION_CRC0")

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
            skip(low_zero & check["zero"], "DATA", lambda: go("SECTION_CRC0"))
        field("DATA_BYTES1", data_bytes1)
        skipping("DATA", lambda: go("SECTION_CRC0"))

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

        crc_half("SECTION_CRC0", 0, "SECTION_CRC1")
        crc_half("SECTION_CRC1", 1, "SECTION_CRC")
        with p.state("SECTION_CRC"):
            with p.If(~crc_good):
                fail(Status.CRC_MISMATCH)
            with p.Else():
                after_section()

        # The ring checks the final states while the parser waits in FINAL.
        with p.state("FINAL"):
            with p.If(self.final_done):
                with p.If(self.final_bad):
                    fail(Status.STATE_MISMATCH)
                with p.Else():
                    go("DONE")
        p.build()
        with m.If(~p.ongoing("ERROR")):
            m.d.sync += code.eq(
                Cat(*[Cat(*[p.ongoing(name) for name, status in failing.items()
                            if status >> bit & 1]).any() for bit in range(len(code))]))
        return m
