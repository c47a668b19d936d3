"""cocotb/Icarus tests of the generated decoder Verilog against the golden model.

Each test runs a batch of containers in one simulation (sim/testbench.py): the harness feeds
the words with random stalls, checks every output value, section index and first/last flag,
and every program word, against ``golden_decode`` and counts cycles; the test compares the
status.
"""

import time

import numpy as np
import pytest

from hw.decoder import PIPELINE_DEPTH
from sim.cases import (
    corner_tensors,
    corrupt,
    mapped_container,
    program_container,
    quantized,
    random_container,
    skewed,
    uniform,
)
from sim.testbench import Case, run_cases
from sw.codec.container import RawTensor, write_container
from sw.codec.golden import golden_decode
from sw.format import Status
from sw.params import CodecParams

# simulations of the decoder's Verilog: the slow tier
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]


def model(rng, params, weights, layers=4, levels=3, sigma=0.35):
    """A real-ish quantized model: a few layers of one shape family, biases stored raw."""
    tensors = []
    per_layer = weights // layers
    for i in range(layers):
        tensors.append(quantized(rng, f"layer{i}.weight", (per_layer // 64, 64), levels, sigma))
        tensors.append(RawTensor(f"layer{i}.bias", rng.normal(size=per_layer // 64)
                                 .astype(np.float32)))
    return write_container(tensors, params)


def assert_all_agree(results):
    problems = {r.name: r.problems() for r in results if r.problems()}
    assert not problems, problems


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_rtl_matches_golden(lanes):
    params = CodecParams()
    rng = np.random.default_rng(lanes)
    corner = write_container(corner_tensors(rng, params), params)
    programmed = program_container(lanes, params)
    damaged_program = bytearray(programmed)
    damaged_program[180] ^= 0x10     # in the program's data (from byte 172)
    cases = [
        Case("corner", corner),
        Case("corner_stalls", corner, 0.3, 0.5, seed=lanes),
        Case("model", model(rng, params, 20_000)),
        Case("skew_0.9999", write_container([skewed(rng, "w", 30_000, 0.9999)], params),
             0.1, 0.1),
        Case("levels_256", write_container([uniform(rng, "w", 3000, 256)], params), 0.2, 0.6),
        Case("empty", write_container([], params)),
        Case("raw_only", write_container([RawTensor("r", np.arange(9, dtype=np.int8))], params)),
        Case("program", programmed, 0.2, 0.3, seed=lanes),
        # a bit of the program's data flipped: its words leave, then its CRC fails
        Case("program_crc", bytes(damaged_program)),
        # a CODED and a RAW section, then a MAPPED one: refused at its kind word
        Case("mapped", mapped_container(params, seed=lanes), 0.2, 0.3, seed=lanes),
    ]
    for seed in range(6):
        container, _ = random_container(1000 * lanes + seed, params, sections=4)
        for mode in ("flip", "word", "truncate"):
            cases.append(Case(f"{mode}{seed}", corrupt(container, rng, mode), 0.2, 0.2,
                              seed=seed + 1))
    results = run_cases(params, lanes, cases)
    assert_all_agree(results)
    statuses = {r.golden_status for r in results}
    # The damaged ones must have exercised the error paths, not only OK.
    assert Status.CRC_MISMATCH in statuses and Status.TRUNCATED in statuses
    assert results[0].status == Status.OK and results[0].values > 4000
    program, program_crc = (next(r for r in results if r.name == name)
                            for name in ("program", "program_crc"))
    assert program.status == Status.OK and program.program_words == 116
    assert program_crc.status == Status.CRC_MISMATCH and program_crc.program_words == 116
    assert program_crc.golden_program_words == 0
    mapped = next(r for r in results if r.name == "mapped")
    assert mapped.status == Status.UNSUPPORTED and mapped.values == 16 * 9


def test_ice40_netlist_matches_golden():
    """The decoder as the iCE40 build synthesizes it (Yosys ``synth_ice40 -dsp`` with the
    build's script, the table RAMs' read-during-write marked don't-care), simulated cell by
    cell with Yosys' iCE40 models of the block RAMs, DSPs, LUTs, carries and flip-flops: the
    same values and status as the golden model, under stalls and on a damaged file."""
    params = CodecParams()
    rng = np.random.default_rng(40)
    corner = write_container(corner_tensors(rng, params), params)
    container, _ = random_container(7, params, sections=3, max_size=300)
    cases = [Case("corner_stalls", corner, 0.2, 0.3, seed=1),
             Case("random", container),
             Case("flip", corrupt(container, rng, "flip"), 0.1, 0.1, seed=2),
             Case("program", program_container(40, params), 0.2, 0.2, seed=3),
             Case("mapped", mapped_container(params), 0.2, 0.2, seed=4)]
    results = run_cases(params, 4, cases, netlist=True)
    assert_all_agree(results)
    assert results[0].status == Status.OK and results[0].values > 4000
    assert results[2].golden_status != Status.OK
    assert results[3].status == Status.OK and results[3].program_words == 116
    assert results[4].status == Status.UNSUPPORTED and results[4].values == 16 * 9


def test_counts_past_sixteen_bits():
    """Fields and payloads over 65,535 words, past the 16 bits of one field word: a raw
    section of 140,001 bytes (an odd count: one word more than half, ``left_odd``) and a
    coded one of about 75,000 payload words and 150,000 symbols."""
    params = CodecParams()
    rng = np.random.default_rng(16)
    container = write_container([
        RawTensor("long_raw", rng.integers(-128, 128, 140_001).astype(np.int8)),
        uniform(rng, "long_payload", 150_000, 256),
    ], params)
    golden = golden_decode(container, params)
    assert golden.status == Status.OK
    assert_all_agree(run_cases(params, 4, [Case("long", container, 0.1, 0.1, seed=3)]))


@pytest.mark.parametrize("precision, states, lanes", [(12, 16, 4), (8, 1, 1), (15, 8, 2),
                                                       (11, 24, 3), (12, 8, 8)])
def test_rtl_parameter_variants(precision, states, lanes):
    params = CodecParams(precision_bits=precision, state_count=states)
    rng = np.random.default_rng(precision + states)
    cases = []
    for seed in range(3):
        container, _ = random_container(seed + 50, params, sections=4, max_size=400)
        cases.append(Case(f"random{seed}", container, 0.2, 0.3, seed=seed + 1))
    cases.append(Case("flip", corrupt(container, rng, "flip")))
    other = CodecParams(precision_bits=precision, state_count=256 if states != 256 else 1)
    cases.append(Case("other_params", write_container([uniform(rng, "w", 10, 2)], other)))
    results = run_cases(params, lanes, cases)
    assert_all_agree(results)
    assert results[-1].status == Status.PARAM_MISMATCH


def throughput(lanes, weights, params=CodecParams()):
    container = model(np.random.default_rng(3), params, weights)
    result, = run_cases(params, lanes, [Case("model", container)])
    assert not result.problems(), result.problems()
    return result


@pytest.mark.parametrize("lanes", [4, pytest.param(1, marks=pytest.mark.slow),
                                   pytest.param(2, marks=pytest.mark.slow),
                                   pytest.param(8, marks=pytest.mark.slow)])
def test_sustained_throughput(lanes):
    """>= 0.95 N values per cycle inside sections on a 100k-weight model, no stalls.

    Full rate needs K/N >= PIPELINE_DEPTH states per lane: 8 lanes run on K = 64."""
    params = CodecParams(state_count=64 if lanes * PIPELINE_DEPTH > 32 else 32)
    result = throughput(lanes, 100_000, params)
    assert result.values >= 99_000
    assert result.values / result.section_cycles >= 0.95 * lanes


@pytest.mark.slow
def test_million_symbols():
    """A 1M-symbol model in one simulation, checked value by value (takes ~1-2 minutes)."""
    started = time.perf_counter()
    result = throughput(4, 1_000_000)
    assert result.values >= 990_000
    assert result.values / result.section_cycles >= 0.95 * 4
    assert time.perf_counter() - started < 600
