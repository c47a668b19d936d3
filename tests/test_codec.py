"""The interleaved rANS coder: reference against fast path, round trips, rate."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sw.codec import fastrans
from sw.codec.rans import (
    DecodeError,
    FrequencyTable,
    decode_reference,
    encode_reference,
    entropy_bits,
)
from sw.format import Status
from sw.params import CodecParams


def round_trip(sections, params):
    """Encode with both coders, check they agree, decode with both, return the fast payloads."""
    tables = [(s, FrequencyTable.from_counts(np.bincount(s, minlength=levels),
                                             params.precision_bits))
              for s, levels in sections]
    states, payloads = encode_reference(tables, params)
    fast_states, fast_payloads = fastrans.encode(tables, params)
    assert [int(x) for x in fast_states] == states
    assert [list(map(int, p)) for p in fast_payloads] == payloads
    decoded = decode_reference(states, [(len(s), t, p) for (s, t), p in zip(tables, payloads)],
                               params)
    coder_states = np.array(states, dtype=np.uint64)
    for (symbols, table), payload, reference in zip(tables, fast_payloads, decoded):
        fast, used = fastrans.decode_section(coder_states, len(symbols), table, payload, params)
        assert used == len(payload)
        np.testing.assert_array_equal(reference, symbols)
        np.testing.assert_array_equal(fast, symbols)
    assert (coder_states == params.lower_bound).all()
    return states, payloads


@pytest.mark.parametrize("levels", range(1, 257))
def test_every_alphabet_size(levels):
    rng = np.random.default_rng(levels)
    symbols = rng.integers(0, levels, size=200)
    round_trip([(symbols, levels)], CodecParams())


@pytest.mark.parametrize("p_zero", [0.5, 0.9, 0.99, 0.999, 0.9999])
def test_skew(p_zero):
    rng = np.random.default_rng(1)
    symbols = np.where(rng.random(20000) < p_zero, 1, rng.choice([0, 2], size=20000))
    round_trip([(symbols, 3)], CodecParams())


@pytest.mark.parametrize("state_count", list(range(1, 17)) + [31, 32, 33, 48, 63, 64])
def test_state_counts(state_count):
    rng = np.random.default_rng(state_count)
    sections = [(rng.integers(0, 5, size=n), 5) for n in (0, 1, state_count - 1, 1000)]
    round_trip(sections, CodecParams(state_count=state_count))


def test_empty_and_single_element_sections():
    params = CodecParams()
    states, payloads = round_trip([(np.zeros(0, int), 3), (np.array([2]), 3), (np.array([0]), 1)],
                                  params)
    assert payloads[0] == [] and payloads[2] == []


def test_one_value_codes_to_nothing():
    states, payloads = round_trip([(np.full(10000, 4), 9)], CodecParams())
    assert payloads == [[]]
    assert states == [CodecParams().lower_bound] * 32


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_round_trip(data):
    precision = data.draw(st.integers(8, 15), label="precision_bits")
    params = CodecParams(precision_bits=precision, state_count=data.draw(st.integers(1, 64)))
    sections = []
    for _ in range(data.draw(st.integers(1, 4))):
        levels = data.draw(st.integers(1, 256))
        symbols = data.draw(st.lists(st.integers(0, levels - 1), max_size=400))
        sections.append((np.array(symbols, dtype=np.int64), levels))
    round_trip(sections, params)


def test_decoder_reports_short_and_long_payloads():
    params = CodecParams(state_count=4)
    symbols = np.random.default_rng(0).integers(0, 7, size=500)
    table = FrequencyTable.from_counts(np.bincount(symbols, minlength=7), 12)
    states, (payload,) = encode_reference([(symbols, table)], params)
    with pytest.raises(DecodeError) as short:
        decode_reference(states, [(len(symbols), table, payload[:-1])], params)
    with pytest.raises(DecodeError) as long:
        decode_reference(states, [(len(symbols), table, payload + [0])], params)
    with pytest.raises(DecodeError) as wrong:
        decode_reference(states, [(len(symbols) - 1, table, payload)], params)
    assert short.value.status == long.value.status == Status.BAD_LENGTH
    assert wrong.value.status in (Status.BAD_LENGTH, Status.STATE_MISMATCH)


class TestFrequencyTable:
    def test_sums_and_keeps_every_occurring_symbol(self):
        counts = np.array([1, 0, 10**6, 3, 0, 1])
        table = FrequencyTable.from_counts(counts, 12)
        assert table.frequencies.sum() == 4096
        assert (table.frequencies[counts > 0] >= 1).all()
        assert (table.frequencies[counts == 0] == 0).all()

    @pytest.mark.parametrize("counts", [[1, 1, 1], [5, 1, 0, 2], [100, 3, 7], [1, 60, 2, 2, 9]])
    def test_optimal_against_exhaustive_search(self, counts):
        precision = 4
        counts = np.array(counts)
        occurring = np.flatnonzero(counts)
        best = min(
            (cost for cost in (
                FrequencyTable(np.bincount(occurring, weights=f, minlength=len(counts)).astype(int),
                               precision).cost_bits(counts)
                for f in itertools.product(range(1, 17), repeat=len(occurring))
                if sum(f) == 16)))
        assert FrequencyTable.from_counts(counts, precision).cost_bits(counts) == \
            pytest.approx(best, abs=1e-9)

    def test_never_worse_than_naive_rounding(self):
        rng = np.random.default_rng(3)
        better = 0
        for _ in range(50):
            counts = rng.geometric(0.02, size=rng.integers(2, 40)) ** 2
            optimal = FrequencyTable.from_counts(counts, 8).cost_bits(counts)
            naive = np.maximum(1, np.round(counts * 256 / counts.sum())).astype(int)
            naive[np.argmax(naive)] -= naive.sum() - 256
            naive_cost = FrequencyTable(naive, 8).cost_bits(counts)
            assert optimal <= naive_cost + 1e-9
            better += optimal < naive_cost - 1e-9
        assert better > 0

    def test_rejects_bad_tables(self):
        with pytest.raises(ValueError):
            FrequencyTable(np.array([1, 2]), 12)
        with pytest.raises(ValueError):
            FrequencyTable(np.array([4097, -1]), 12)
        with pytest.raises(ValueError):
            FrequencyTable.from_counts(np.ones(20), 4)


def test_rate_within_a_thousandth_of_entropy():
    rng = np.random.default_rng(7)
    params = CodecParams()
    symbols = rng.choice(7, size=400_000, p=[0.01, 0.04, 0.1, 0.7, 0.1, 0.04, 0.01])
    table = FrequencyTable.from_counts(np.bincount(symbols, minlength=7), params.precision_bits)
    states, payloads = fastrans.encode([(symbols, table)], params)
    entropy = entropy_bits(np.bincount(symbols))
    payload_bits = 16 * len(payloads[0])
    assert payload_bits <= 1.001 * entropy
    # The final states carry the rest: at most their own width on top of the entropy.
    assert entropy - 32 * params.state_count < payload_bits


def test_params_validation():
    with pytest.raises(ValueError):
        CodecParams(state_count=0)
    with pytest.raises(ValueError):
        CodecParams(precision_bits=16)  # a one-symbol table's 2**16 would not fit its u16
    with pytest.raises(ValueError):
        CodecParams(state_bits=64, word_bits=32)
    with pytest.raises(TypeError):
        CodecParams(state_count=4.0)
    params = CodecParams(state_count=32)
    params.check_lanes(8)
    with pytest.raises(ValueError):
        params.check_lanes(3)
