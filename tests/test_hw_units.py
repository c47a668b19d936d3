"""Amaranth-simulator tests of each decoder component, and of the decoder on small containers.

Every expected value comes from the software side: zlib, a Python queue, ``bisect`` over the
cumulative table, and :func:`sw.codec.golden.golden_decode`.
"""

import random
import zlib
from bisect import bisect_right
from collections import deque

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.crc import Crc32Word, crc32_word
from hw.decoder import WeightDecoder
from hw.onehot import OneHotMachine
from hw.tables import LOOKUP_LATENCY, SymbolTables, bucket_shift, popcount
from hw.wordbuf import WordBuffer
from sim.cases import (
    corner_tensors,
    corrupt,
    mapped_container,
    program_container,
    programmed_container,
    random_container,
    uniform,
)
from sim.pysim import run_pysim, words_of
from sw.codec.container import CodedTensor, RawTensor, write_container
from sw.codec.golden import golden_decode
from sw.codec.rans import FrequencyTable
from sw.format import RawDtype, SectionKind, Status, file_header_bytes, header_crc_offset
from sw.params import CodecParams


def simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


# -- one-hot state machine --

class Counter3(wiring.Component):
    """A small machine with every construct of OneHotMachine: a register written in two states
    with different values, If/Elif/Else, a pulse, and a move back to the first state."""

    step: In(1)
    value: Out(4)
    pulsed: Out(1)

    def elaborate(self, platform):
        m = Module()
        p = OneHotMachine(m, ["A", "B", "C"])
        self.ongoing = {name: p.ongoing(name) for name in "ABC"}
        with p.state("A"):
            with p.If(self.step):
                p.set(self.value, self.value + 1)
                p.go("B")
        with p.state("B"):
            with p.If(~self.step):
                p.pulse(self.pulsed)
            with p.Elif(self.value == 5):
                p.set(self.value, 0)
                p.go("C")
            with p.Else():
                p.set(self.value, self.value + 2)
                p.go("A")
        with p.state("C"):
            p.go("A")
        p.build()
        return m


def counter3_model(steps):
    state, value, trace = "A", 0, []
    for step in steps:
        pulsed = state == "B" and not step
        trace.append((state, value, pulsed))
        if state == "A" and step:
            value, state = (value + 1) & 15, "B"
        elif state == "B" and step:
            if value == 5:
                value, state = 0, "C"
            else:
                value, state = (value + 2) & 15, "A"
        elif state == "C":
            state = "A"
    return trace


def test_one_hot_machine_matches_its_model():
    rng = random.Random(3)
    steps = [rng.random() < 0.7 for _ in range(200)]
    dut = Counter3()
    seen = []

    async def testbench(ctx):
        for step in steps:
            ctx.set(dut.step, step)
            state = [name for name in "ABC" if ctx.get(dut.ongoing[name])]
            assert len(state) == 1, state
            seen.append((state[0], ctx.get(dut.value), bool(ctx.get(dut.pulsed))))
            await ctx.tick()

    simulate(dut, testbench)
    assert seen == counter3_model(steps)
    assert {state for state, _, _ in seen} == {"A", "B", "C"}


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_one_hot_machine_refuses_misuse():
    with pytest.raises(ValueError, match="distinct"):
        OneHotMachine(Module(), ["A", "A"])
    p = OneHotMachine(Module(), ["A", "B"])
    with pytest.raises(ValueError, match="outside any state"):
        p.go("B")
    with pytest.raises(KeyError):
        with p.state("A"):
            p.go("Z")
    with pytest.raises(ValueError, match="Else without If"):
        with p.state("B"):
            with p.Else():
                pass


# -- CRC --

@pytest.mark.parametrize("width", [1, 3, 4, 5, 7, 8])
def test_popcount_every_pattern(width):
    """Table-counted groups of four and the adder tree behind them, over every input."""
    bits, count = Signal(width), Signal(4)
    m = Module()
    m.d.comb += count.eq(popcount(list(bits)))

    async def testbench(ctx):
        for pattern in range(1 << width):
            ctx.set(bits, pattern)
            assert ctx.get(count) == bin(pattern).count("1"), pattern

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()


def test_crc32_word_function_is_zlib():
    rng = random.Random(1)
    for length in (0, 2, 10, 64):
        data = bytes(rng.randrange(256) for _ in range(length))
        crc = 0xFFFFFFFF
        for i in range(0, length, 2):
            crc = crc32_word(crc, data[i] | data[i + 1] << 8)
        assert crc ^ 0xFFFFFFFF == zlib.crc32(data)


def test_crc32_component():
    dut = Crc32Word()
    rng = random.Random(2)
    blocks = [bytes(rng.randrange(256) for _ in range(2 * n)) for n in (5, 1, 17)]
    blocks.insert(0, b"123456789\0")

    async def testbench(ctx):
        for block in blocks:
            for i in range(0, len(block), 2):
                ctx.set(dut.restart, i == 0)
                # Idle cycles in between must not change the CRC.
                ctx.set(dut.en, 0)
                await ctx.tick()
                ctx.set(dut.restart, i == 0)
                ctx.set(dut.en, 1)
                ctx.set(dut.word, block[i] | block[i + 1] << 8)
                await ctx.tick()
                ctx.set(dut.restart, 0)
            ctx.set(dut.en, 0)
            assert ctx.get(dut.crc) == zlib.crc32(block)
        assert zlib.crc32(b"123456789") == 0xCBF43926

    simulate(dut, testbench)


# -- word buffer --

@pytest.mark.parametrize("lanes", [1, 3, 4, 8])
def test_word_buffer_hands_words_in_lane_order(lanes):
    dut = WordBuffer(lanes)
    rng = random.Random(lanes)
    queue = deque()
    pushed = 0

    async def testbench(ctx):
        nonlocal pushed
        needing = []            # lanes of the step at the lanes that need a word
        takes = 0
        for _ in range(600):
            offer = rng.random() < 0.6
            ctx.set(dut.push.valid, offer)
            ctx.set(dut.push.payload, pushed & 0xFFFF)
            need = rng.getrandbits(lanes) if rng.random() < 0.7 else 0
            needing_next = [n for n in range(lanes) if need >> n & 1]
            for n in range(lanes + 1):
                ctx.set(dut.before_next[n], sum(1 for k in needing_next if k < n))
            load = rng.random() < 0.8
            ctx.set(dut.load, load)
            count = ctx.get(dut.count)
            assert count == len(queue)
            assert ctx.get(dut.needed) == len(needing)
            assert ctx.get(dut.push.ready) == (count < dut.depth)
            assert ctx.get(dut.enough) == (len(needing) <= count)
            take = load and len(needing) <= count
            ctx.set(dut.take, take)
            if take:
                takes += bool(needing)
                for k, n in enumerate(needing):
                    assert ctx.get(dut.words[n]) == queue[k]
            fire = offer and ctx.get(dut.push.ready)
            await ctx.tick()
            if take:
                for _ in needing:
                    queue.popleft()
            if load:
                needing = needing_next
            if fire:
                queue.append(pushed & 0xFFFF)
                pushed += 1
        assert pushed > 100 and takes > 100

    simulate(dut, testbench)


# -- symbol tables --

def table_cases():
    rng = np.random.default_rng(5)
    yield 4, np.array([2, 13, 1])                       # FORMAT.md worked example
    yield 12, FrequencyTable.from_counts(rng.integers(0, 50, 256), 12).frequencies
    yield 12, np.array([0, 4096, 0])                    # one symbol among zeros
    yield 12, np.array([1] * 255 + [4096 - 255])
    sparse = np.zeros(200, np.int64)
    sparse[[0, 7, 8, 199]] = [1, 3000, 1094, 1]
    yield 12, sparse
    yield 8, FrequencyTable.from_counts(rng.integers(0, 3, 256), 8).frequencies
    yield 3, np.array([0, 3, 0, 5])
    yield 14, FrequencyTable.from_counts(rng.integers(1, 9, 37), 14).frequencies


@pytest.mark.parametrize("precision, frequencies", list(table_cases()))
def test_symbol_tables_lookup_every_slot(precision, frequencies):
    params = CodecParams(precision_bits=precision)
    lanes = 2
    dut = SymbolTables(params, lanes)
    total = 1 << precision
    cumulative = np.concatenate([[0], np.cumsum(frequencies)])
    slots = list(range(total)) if total <= 4096 else \
        list(np.random.default_rng(1).integers(0, total, 3000))
    bound = len(frequencies) + (1 << (precision - bucket_shift(precision))) + 2

    async def testbench(ctx):
        # A stale table first: the start pulse must forget it.
        for table in (np.array([total]), frequencies):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 0
            for f in table:
                ctx.set(dut.freqs.valid, 1)
                ctx.set(dut.freqs.payload, int(f) & 0xFFFF)
                while not ctx.get(dut.freqs.ready):
                    await ctx.tick()
                    cycles += 1
                await ctx.tick()
                cycles += 1
            ctx.set(dut.freqs.valid, 0)
            while not ctx.get(dut.idle):
                await ctx.tick()
                cycles += 1
            assert cycles <= bound
        ctx.set(dut.en, 1)
        pending = deque()
        for i in range(0, len(slots) + LOOKUP_LATENCY * lanes, lanes):
            batch = slots[i:i + lanes]
            for n, slot in enumerate(batch):
                ctx.set(dut.slot[n], int(slot))
            await ctx.tick()
            pending.append(batch)
            if len(pending) == LOOKUP_LATENCY + 1:
                pending.popleft()
            if len(pending) == LOOKUP_LATENCY:
                for n, slot in enumerate(pending[0]):
                    symbol = bisect_right(cumulative, int(slot)) - 1
                    assert ctx.get(dut.symbol[n]) == symbol, slot
                    assert ctx.get(dut.cumulative[n]) == cumulative[symbol] % total
                    assert ctx.get(dut.frequency[n]) == frequencies[symbol] % total
        # A stalled lookup keeps its answer.
        ctx.set(dut.en, 0)
        held = [ctx.get(dut.symbol[n]) for n in range(lanes)]
        ctx.set(dut.slot[0], 0)
        await ctx.tick()
        await ctx.tick()
        assert [ctx.get(dut.symbol[n]) for n in range(lanes)] == held

    simulate(dut, testbench)


# -- the decoder --

def check_against_golden(container, params, lanes, **kwargs):
    golden = golden_decode(container, params, check_program=False)
    result = run_pysim(container, params, lanes, **kwargs)
    expected = golden.integers()
    if golden.status == Status.TRUNCATED:
        assert not result.done and not result.error
    else:
        assert result.done and result.status == golden.status, (result.status, golden.status)
    got = result.integers()
    assert np.array_equal(got[:len(expected)], expected)
    if golden.status == Status.OK:
        assert len(got) == len(expected)
        # Section indices and first/last flags, transfer by transfer.
        sections = iter([s for s in golden.coded if len(s.integers)])
        position = 0
        for section, first, last, values in result.transfers:
            if first:
                current = next(sections)
                position = 0
            assert section == current.index
            assert 1 <= len(values) <= lanes
            position += len(values)
            assert last == (position == len(current.integers))
            assert last or len(values) == lanes
    check_program_words(golden, result)
    return result


def check_program_words(golden, result):
    """The words on ``program`` against the golden model's PROGRAM sections: the same words,
    ``last`` on each section's final one, none for any other kind of section. A final word
    with ``partial`` (data_bytes odd) has no counterpart there (the golden model keeps whole
    words only), so it is set aside here, and its flags are checked."""
    assert all(last for _, last, partial in result.program if partial)
    got = []
    for section in result.programs():
        words = [word for word, partial in section if not partial]
        if words:
            got.append(words)
    expected = [[int(word) for word in s.words] for s in golden.sections
                if s.kind == SectionKind.PROGRAM and len(s.words)]
    if golden.status == Status.OK:
        assert got == expected
    else:
        # Words of a section that the error cut short, or whose CRC failed, may follow.
        assert got[:len(expected)] == expected


def worked_example():
    params = CodecParams(precision_bits=4, state_count=2)
    tensor = CodedTensor("w", np.array([2, 0, 1, 2, 0, 1, 1, 2, 0, 2, 1, 0]), levels=3,
                         zero_point=1, table=FrequencyTable(np.array([2, 13, 1]), 4))
    return params, write_container([tensor], params)


@pytest.mark.parametrize("lanes", [1, 2])
def test_worked_example(lanes):
    params, container = worked_example()
    result = check_against_golden(container, params, lanes)
    assert result.status == Status.OK
    assert result.transfers[0] == (0, 1, 0, [1, -1][:lanes])
    assert len(result.transfers) == 12 // lanes


@pytest.mark.slow
@pytest.mark.parametrize("lanes, stall", [(1, 0.0), (4, 0.3), (8, 0.5)])
def test_corner_sections(lanes, stall):
    params = CodecParams()
    container = write_container(corner_tensors(np.random.default_rng(lanes), params), params)
    check_against_golden(container, params, lanes, stall_in=stall, stall_out=stall, seed=lanes)


@pytest.mark.parametrize("precision, states, lanes", [(12, 24, 3), (8, 1, 1), (15, 8, 2),
                                                       (8, 16, 4), (11, 4, 4)])
@pytest.mark.slow
def test_parameter_variants(precision, states, lanes):
    params = CodecParams(precision_bits=precision, state_count=states)
    container, _ = random_container(precision * states, params, sections=3, max_size=150)
    check_against_golden(container, params, lanes, stall_in=0.2, stall_out=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [2, 4])
def test_starved_input_replays(lanes):
    """A source that delivers a word one cycle in eight leaves steps short of words at the
    renormalising stage all the time: each is replayed (squashed with the steps behind it and
    reissued a ring turn later), and the output must still be the golden model's."""
    params = CodecParams()
    tensors = [uniform(np.random.default_rng(lanes), "dense", 2000, 15),
               CodedTensor("sparse", np.random.default_rng(9).choice(3, 1500, p=[.05, .9, .05]),
                           3, 1)]
    container = write_container(tensors, params)
    check_against_golden(container, params, lanes, stall_in=0.875, stall_out=0.3, seed=lanes,
                         max_cycles=200_000)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_damaged_containers(seed):
    rng = np.random.default_rng(100 + seed)
    params = CodecParams()
    container, _ = random_container(seed, params, sections=3, max_size=120)
    damaged = corrupt(container, rng, ["flip", "word", "truncate", "flip"][seed % 4])
    check_against_golden(damaged, params, 4, stall_in=0.1, stall_out=0.2, seed=seed)


def test_parameter_mismatch():
    params = CodecParams()
    container = write_container([CodedTensor("w", np.array([0, 1, 1]), 2, 0)],
                                CodecParams(state_count=16))
    result = check_against_golden(container, params, 2)
    assert result.status == Status.PARAM_MISMATCH


@pytest.mark.slow
def test_after_error_input_drains_and_after_done_it_stops():
    params = CodecParams()
    good = write_container([CodedTensor("w", np.arange(40) % 3, 3, 1)], params)
    bad = b"SBIX" + good[4:]
    for container, status in ((good, Status.OK), (bad, Status.BAD_MAGIC)):
        dut = WeightDecoder(params, 2)
        words = words_of(container) + [0x1234] * 20

        async def testbench(ctx):
            ctx.set(dut.weights.ready, 1)
            ctx.set(dut.words.valid, 1)
            position = 0
            for _ in range(3000):
                ctx.set(dut.words.payload, words[position])
                if ctx.get(dut.status.done):
                    break
                fire = ctx.get(dut.words.ready)
                await ctx.tick()
                position += fire
            assert ctx.get(dut.status.code) == status
            assert ctx.get(dut.status.error) == (status != Status.OK)
            for _ in range(20):
                # Sticky status; drained input after an error, none taken after success.
                assert ctx.get(dut.words.ready) == (status != Status.OK)
                assert ctx.get(dut.status.done) and ctx.get(dut.status.code) == status
                await ctx.tick()

        simulate(dut, testbench)


def patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    import struct
    data = bytearray(data)
    struct.pack_into("<" + fmt, data, offset, value)
    return bytes(data)


def field_cases():
    params = CodecParams()
    coded = write_container([CodedTensor("w", np.arange(3000) % 3, 3, 1)], params)
    raw = write_container([RawTensor("r", np.arange(4, dtype=np.int16))], params)
    # Offsets for K = 32: file header 148 bytes, then kind, name_bytes, "w\0", ndim, dims[0].
    yield "magic", patched(coded, 0, "B", ord("X")), Status.BAD_MAGIC
    yield "version_0", with_header_crc(patched(coded, 4, "H", 0)), Status.BAD_VERSION
    yield "version_4", with_header_crc(patched(coded, 4, "H", 4)), Status.BAD_VERSION
    # version 3 adds the MAPPED kind only: a version-2 layout reads as it always did
    yield "version_3", with_header_crc(patched(coded, 4, "H", 3)), Status.OK
    # version 1 has no PROGRAM sections, and is read as it always was
    yield "version_1", with_header_crc(patched(coded, 4, "H", 1)), Status.OK
    yield "state_bits", patched(coded, 6, "H", 31), Status.PARAM_MISMATCH
    yield "word_bits", patched(coded, 8, "H", 8), Status.PARAM_MISMATCH
    yield "precision", patched(coded, 10, "H", 11), Status.PARAM_MISMATCH
    yield "state_count", patched(coded, 12, "H", 0), Status.PARAM_MISMATCH
    yield "state", patched(coded, 16 + 4 * 7, "I", 0xFFFF), Status.BAD_STATE
    yield "header_crc", patched(coded, 144, "B", coded[144] ^ 1), Status.CRC_MISMATCH
    yield "kind", patched(coded, 148, "H", 4), Status.BAD_SECTION
    # MAPPED (3) in a version-2 file is an unknown kind; in a version-3 one this decoder, which
    # has no value tables, refuses it (UNSUPPORTED) at the kind word, whatever follows
    yield "kind_mapped_version_2", patched(coded, 148, "H", 3), Status.BAD_SECTION
    yield "kind_mapped_version_3", with_header_crc(patched(patched(coded, 148, "H", 3), 4, "H",
                                                           3)), Status.UNSUPPORTED
    yield "name_bytes", patched(coded, 150, "H", 1025), Status.BAD_SECTION
    yield "ndim", patched(coded, 154, "H", 9), Status.BAD_SECTION
    yield "levels_0", patched(coded, 160, "H", 0), Status.BAD_SECTION
    yield "levels_257", patched(coded, 160, "H", 257), Status.BAD_SECTION
    yield "zero_point", patched(coded, 162, "h", -32768), Status.BAD_SECTION
    # levels - 1 - zero_point must fit int16: -32765 is the last that does for 3 levels (the
    # check passes and the patched section fails its CRC), -32766 the first that does not.
    yield "zero_point_last_ok", patched(coded, 162, "h", -32765), Status.CRC_MISMATCH
    yield "zero_point_first_bad", patched(coded, 162, "h", -32766), Status.BAD_SECTION
    yield "scale_count", patched(coded, 164, "H", 0), Status.BAD_SECTION
    yield "symbol_count", patched(coded, 170, "I", (1 << 28) + 1), Status.BAD_SECTION
    yield "table_sum", patched(coded, 174, "H", 1), Status.BAD_TABLE
    words = int.from_bytes(coded[180:184], "little")
    yield "payload_short", patched(coded, 180, "I", words - 1), Status.BAD_LENGTH
    yield "payload_long", patched(coded, 180, "I", words + 1), Status.BAD_LENGTH
    yield "section_crc", patched(coded, len(coded) - 1, "B", coded[-1] ^ 0x80), \
        Status.CRC_MISMATCH
    yield "dtype", patched(raw, 160, "H", 12), Status.BAD_SECTION
    yield "raw_crc", patched(raw, len(raw) - 4, "B", raw[-4] ^ 1), Status.CRC_MISMATCH
    # A PROGRAM section is passed on its CRC (at 148: kind, name_bytes, "program\0", ndim,
    # dims[0], then dtype at 166 and data_bytes, the words from 172); its rules are the
    # engine's, not the decoder's.
    programmed = programmed_container(params)
    yield "program", programmed, Status.OK
    yield "program_dtype", patched(programmed, 166, "H", RawDtype.INT16), Status.BAD_SECTION
    yield "program_crc", patched(programmed, 175, "B", programmed[175] ^ 4), Status.CRC_MISMATCH
    yield "program_in_version_1", with_header_crc(patched(programmed, 4, "H", 1)), \
        Status.BAD_SECTION
    # A MAPPED section after a CODED and a RAW one: their output, then UNSUPPORTED; the same
    # file made version 2 is BAD_SECTION there.
    mapped = mapped_container(params)
    yield "mapped", mapped, Status.UNSUPPORTED
    yield "mapped_in_version_2", with_header_crc(patched(mapped, 4, "H", 2)), Status.BAD_SECTION


def with_header_crc(data: bytes, state_count: int = 32) -> bytes:
    import struct
    import zlib
    data = bytearray(data)
    end = header_crc_offset(state_count)
    struct.pack_into("<I", data, end, zlib.crc32(data[:end]))
    return bytes(data)


@pytest.mark.parametrize("name, data, status", list(field_cases()),
                         ids=[c[0] for c in field_cases()])
@pytest.mark.slow
def test_each_check(name, data, status):
    params = CodecParams()
    assert golden_decode(data, params).status == status
    check_against_golden(data, params, 2)


def test_stream_helpers_on_the_worked_example():
    """Words in with stream_put, transfers out with stream_get, in separate testbenches."""
    from sim.pysim import stream_get, stream_put
    params, container = worked_example()
    dut = WeightDecoder(params, 2)
    golden = golden_decode(container, params).integers()
    got = []

    async def producer(ctx):
        for word in words_of(container):
            await stream_put(ctx, dut.words, word)

    async def consumer(ctx):
        for _ in range(6):
            batch = await stream_get(ctx, dut.weights)
            got.extend(batch.values[n] for n in range(batch.count))
        await ctx.tick().until(dut.status.done)
        assert ctx.get(dut.status.code) == Status.OK and not ctx.get(dut.status.error)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    assert got == list(golden)


# -- the program's words --

def program_section(data: bytes, data_bytes: int = None, name: bytes = b"program") -> bytes:
    """A PROGRAM section made by hand, so that ``data_bytes`` may be anything (odd, 0)."""
    import struct
    data_bytes = len(data) if data_bytes is None else data_bytes
    body = struct.pack("<HH", SectionKind.PROGRAM, len(name)) + name + b"\0" * (len(name) & 1)
    body += struct.pack("<HIHI", 1, (data_bytes + 1) // 2, RawDtype.UINT16, data_bytes)
    body += data + b"\0" * (len(data) & 1)
    return body + struct.pack("<I", zlib.crc32(body))


def with_section(container: bytes, section: bytes, index: int, params=CodecParams()) -> bytes:
    """``container`` with ``section`` inserted as section ``index``: section_count and the
    header CRC follow."""
    import struct

    from sw.codec.container import parse
    start = file_header_bytes(params.state_count)
    start += sum(info.size for info in parse(container, params).sections[:index])
    count = struct.unpack_from("<H", container, 14)[0]
    data = patched(container[:start] + section + container[start:], 14, "H", count + 1)
    return with_header_crc(data, params.state_count)


def golden_program(container, params):
    golden = golden_decode(container, params, check_program=False)
    assert golden.status == Status.OK
    return [int(word) for word in golden.sections[0].words]


@pytest.mark.parametrize("which, lanes, stall", [("small", 2, 0.0), ("small", 4, 0.4),
                                                 ("mlp", 4, 0.3), ("mlp", 1, 0.6)])
@pytest.mark.slow
def test_program_words(which, lanes, stall):
    """Every data word of the PROGRAM section leaves on ``program``, once, in order, with
    ``last`` on the final one only, under stalls of the input and of ``weights.ready``; the
    RAW section's data (mlp) give none."""
    params = CodecParams()
    container = programmed_container(params) if which == "small" else \
        program_container(11, params)
    expected = golden_program(container, params)
    result = check_against_golden(container, params, lanes, stall_in=stall, stall_out=stall,
                                  seed=lanes)
    assert result.status == Status.OK
    assert [word for word, _, _ in result.program] == expected
    assert [last for _, last, _ in result.program] == [0] * (len(expected) - 1) + [1]
    assert not any(partial for _, _, partial in result.program)
    assert len(expected) == {"small": 6 + 3 * 20 + 1 + 1, "mlp": 116}[which]


@pytest.mark.slow
def test_program_word_latency():
    """A program word leaves two cycles after its input handshake (it is taken from the input
    register a cycle later, and registered), valid for that one cycle, and its payload is the
    file's word; no word of any other section comes out."""
    params = CodecParams()
    container = program_container(11, params)
    words = words_of(container)
    expected = golden_program(container, params)
    first = (20 + 4 * params.state_count + 2 + 2 + 8 + 2 + 4 + 2 + 4) // 2  # data of "program"
    assert words[first:first + len(expected)] == expected
    dut = WeightDecoder(params, 4)
    rng = random.Random(5)
    fired, emitted = {}, []

    async def testbench(ctx):
        position = 0
        ctx.set(dut.weights.ready, 1)
        for cycle in range(6000):
            offer = position < len(words) and rng.random() < 0.6
            ctx.set(dut.words.valid, offer)
            ctx.set(dut.words.payload, words[position] if offer else 0)
            if ctx.get(dut.program.valid):
                emitted.append((cycle, ctx.get(dut.program.payload.word)))
            if ctx.get(dut.status.done):
                break
            fire = offer and ctx.get(dut.words.ready)
            if fire:
                fired[position] = cycle
            await ctx.tick()
            position += fire
        assert ctx.get(dut.status.done) and not ctx.get(dut.status.error)

    simulate(dut, testbench)
    assert [word for _, word in emitted] == expected
    assert [cycle for cycle, _ in emitted] == \
        [fired[first + j] + 2 for j in range(len(expected))]


@pytest.mark.parametrize("data_bytes", [1, 5, 2 * 57 - 1])
def test_program_odd_length_is_partial(data_bytes):
    """data_bytes odd: the last word holds one byte (its high byte is the pad) and says so
    with ``partial``; the decoder passes the section on its CRC as the golden model does."""
    params = CodecParams()
    data = bytes(np.random.default_rng(data_bytes).integers(0, 256, data_bytes, np.uint8))
    container = with_section(write_container([CodedTensor("w", np.arange(60) % 3, 3, 1)],
                                             params), program_section(data), 0)
    result = check_against_golden(container, params, 2, stall_in=0.3, stall_out=0.3)
    assert result.status == Status.OK
    padded = data + b"\0"
    words = [padded[i] | padded[i + 1] << 8 for i in range(0, data_bytes, 2)]
    assert result.program == [(word, j == len(words) - 1, j == len(words) - 1)
                              for j, word in enumerate(words)]


def test_program_odd_length_patched():
    """The same on a lowered program, its data_bytes made odd by hand (field and CRC): the
    last word's high byte becomes the pad."""
    params = CodecParams()
    container = programmed_container(params)
    words = golden_program(container, params)
    end = 172 + 2 * len(words)          # the section CRC (docs/FORMAT.md; see field_cases)
    damaged = patched(patched(container, 168, "I", 2 * len(words) - 1), end - 1, "B", 0)
    damaged = patched(damaged, end, "I", zlib.crc32(damaged[148:end]))
    result = check_against_golden(damaged, params, 4, stall_in=0.2, stall_out=0.5)
    assert result.status == Status.OK
    assert result.program[:-1] == [(word, 0, 0) for word in words[:-1]]
    assert result.program[-1] == (words[-1] & 0xFF, 1, 1)


@pytest.mark.slow
def test_empty_program_and_program_elsewhere():
    """A PROGRAM section with data_bytes = 0 gives no word; one that is not the first section
    (a rule of the engine, docs/INFERENCE.md, not of the decoder) gives its words all the
    same, and a RAW section of uint16 data with the same bytes gives none."""
    params = CodecParams()
    base = write_container([CodedTensor("w", np.arange(60) % 3, 3, 1),
                            RawTensor("r", np.arange(7, dtype=np.uint16))], params)
    empty = with_section(base, program_section(b""), 0)
    result = check_against_golden(empty, params, 2)
    assert result.status == Status.OK and result.program == []
    later = with_section(base, program_section(bytes(range(6))), 2)
    assert golden_decode(later, params, check_program=False).sections[2].kind == \
        SectionKind.PROGRAM
    result = check_against_golden(later, params, 2, stall_in=0.2)
    assert result.status == Status.OK
    assert result.program == [(0x0100, 0, 0), (0x0302, 0, 0), (0x0504, 1, 0)]


def test_program_words_leave_before_the_crc_verdict():
    """The words of a PROGRAM section whose CRC is wrong have left by the time the decoder
    reports CRC_MISMATCH: the consumer must wait for the section's CRC (docs/HARDWARE.md)."""
    params = CodecParams()
    container = programmed_container(params)
    words = golden_program(container, params)
    damaged = patched(container, 175, "B", container[175] ^ 4)
    result = check_against_golden(damaged, params, 2)
    assert result.status == Status.CRC_MISMATCH
    assert len(result.program) == len(words) and result.program[-1][1] == 1
    assert result.transfers == []
