"""The decoder's container parser (hw.decoder.parser) alone, its neighbours played by the
testbench: what it hands the state ring, the tables and the word buffer, and its statuses."""

import struct

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.decoder import ContainerParser, ProgramWord, SectionDescriptor, StateWord, StatusLayout
from sim.cases import header_fields, program_container
from sim.pysim import words_of
from sw.codec.container import CodedTensor, RawTensor, write_container
from sw.format import Status
from sw.params import CodecParams


def test_parser_signature():
    sig = ContainerParser(CodecParams(), 4, 8).signature
    assert sig.members["words"] == In(stream.Signature(16))
    assert sig.members["status"] == Out(StatusLayout)
    assert sig.members["program"] == Out(stream.Signature(ProgramWord, always_ready=True))
    assert sig.members["states"] == Out(stream.Signature(StateWord(4), always_ready=True))
    assert sig.members["descriptor"] == Out(stream.Signature(SectionDescriptor,
                                                              always_ready=True))
    assert sig.members["payload"] == Out(stream.Signature(16))
    assert sig.members["buffered"] == In(range(9))
    assert sig.members["zero_point"] == Out(signed(16))
    assert sig.members["section"] == Out(unsigned(16))


def expected_of(container: bytes, params: CodecParams):
    """What the parser must hand on: the initial states, and per CODED section its symbol
    count, frequencies and payload words."""
    K = params.state_count
    states = list(struct.unpack_from(f"<{K}I", container, 16))
    fields = {field.name: field for field in header_fields(container)}
    sections = []
    index = 0
    while f"section{index}.kind" in fields:
        if f"section{index}.payload_words" in fields:
            def value(name, index=index):
                field = fields[f"section{index}.{name}"]
                return struct.unpack_from("<" + field.fmt, container, field.offset)[0]
            levels = value("levels")
            freqs = (list(struct.unpack_from(f"<{levels}H", container,
                                             fields[f"section{index}.frequency0"].offset))
                     if levels > 1 else [])
            words = value("payload_words")
            offset = fields[f"section{index}.payload_words"].offset + 4
            sections.append((value("symbol_count"), freqs,
                             list(struct.unpack_from(f"<{words}H", container, offset))))
        index += 1
    return states, sections


def run_parser(container, params, lanes, final_bad=0):
    dut = ContainerParser(params, lanes, 8)
    words = words_of(container)
    got = {"states": [], "counts": [], "freqs": [[]], "payload": [], "program": []}

    async def testbench(ctx):
        ctx.set(dut.final_done, 1)
        ctx.set(dut.final_bad, final_bad)
        ctx.set(dut.freqs.ready, 1)
        ctx.set(dut.payload.ready, 1)
        position = 0
        quiet = 2        # cycles since the last frequency: the tables are busy until 2
        left = None      # cycles before the stand-in ring's last step commits
        for _ in range(20 * len(words) + 100):
            ctx.set(dut.words.valid, position < len(words))
            if position < len(words):
                ctx.set(dut.words.payload, words[position])
            ctx.set(dut.table_idle, quiet >= 2)
            ctx.set(dut.drained, left == 0)
            if position < len(words) and ctx.get(dut.words.ready):
                position += 1
            if ctx.get(dut.states.valid):
                state = ctx.get(dut.states.payload)
                got["states"].append((state.value, state.lane))
            if ctx.get(dut.descriptor.valid):
                left = None
                got["counts"].append(ctx.get(dut.descriptor.payload).symbol_count)
                got["freqs"].append([])     # the next section's
                got["payload"].append([])
            quiet += 1
            if ctx.get(dut.table_start):
                quiet = 0
            if ctx.get(dut.freqs.valid):
                got["freqs"][-1].append(ctx.get(dut.freqs.payload))
                quiet = 0
            if ctx.get(dut.payload.valid):
                got["payload"][-1].append(ctx.get(dut.payload.payload))
            if ctx.get(dut.program.valid):
                got["program"].append(ctx.get(dut.program.payload).word)
            status = ctx.get(dut.status)
            if status.done:
                got["status"] = Status(status.code)
                return
            await ctx.tick()
            # The stand-in ring drains a few cycles after the last payload word is taken, as
            # the real one does (its last step commits after that word is in the buffer).
            if got["payload"] and ctx.get(dut.in_payload) and not ctx.get(dut.payload_more):
                left = 3 if left is None else max(0, left - 1)
        raise AssertionError("the parser never finished")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return got


def small_container(params):
    rng = np.random.default_rng(5)
    return write_container([
        CodedTensor("a", rng.integers(0, 3, size=40), levels=3, zero_point=1),
        RawTensor("bias", np.arange(5, dtype=np.int8)),
        CodedTensor("b", rng.integers(0, 5, size=(3, 7)), levels=5, zero_point=2),
    ], params)


@pytest.mark.parametrize("lanes", [1, 4])
def test_parser_hands_on_states_counts_and_words(lanes):
    params = CodecParams()
    container = small_container(params)
    states, sections = expected_of(container, params)
    got = run_parser(container, params, lanes)
    assert got["status"] == Status.OK
    assert got["states"] == [(state, i % lanes) for i, state in enumerate(states)]
    assert [count for count, _, _ in sections] == got["counts"]
    # a section's frequencies come before its descriptor
    assert [f for _, f, _ in sections] == got["freqs"][:len(sections)]
    assert [p for _, _, p in sections] == got["payload"]


def test_parser_passes_program_words():
    params = CodecParams()
    container = program_container(2, params)
    got = run_parser(container, params, 2)
    assert got["status"] == Status.OK
    assert got["program"]


@pytest.mark.parametrize("damage,status", [
    (lambda c: b"X" + c[1:], Status.BAD_MAGIC),
    (lambda c: c[:20] + bytes([c[20] ^ 1]) + c[21:], Status.CRC_MISMATCH),
])
def test_parser_statuses(damage, status):
    params = CodecParams()
    assert run_parser(damage(small_container(params)), params, 2)["status"] == status


def test_parser_reports_the_rings_final_verdict():
    params = CodecParams()
    container = write_container([], params)
    assert run_parser(container, params, 2)["status"] == Status.OK
    assert run_parser(container, params, 2, final_bad=1)["status"] == Status.STATE_MISMATCH
