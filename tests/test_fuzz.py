"""Fuzzing the reader and the golden model (issue 16): mutated real containers.

Mutations of a few real containers (random sections, every corner case, a file with a
PROGRAM section lowered by :func:`sw.network.lower.lower`, a version-3 file with MAPPED sections):
single bit flips, random words,
truncations, and extreme values in every header field (:func:`sim.cases.header_fields`),
each with and without its CRC made right again. On every case:

- ``golden_decode`` never raises, and the reader raises nothing but ``ContainerError``;
- they agree as docs/FORMAT.md "Checks" says (the stream's verdict stands), the golden model
  with value tables as the reader has them; without them (the RTL's model) it says the same
  up to the first MAPPED section, where it stops with ``UNSUPPORTED``;
- the streaming readers (``golden_decode(keep_integers=False)``, ``parse(keep_symbols=False)``,
  as ``verify`` reads) stay under :data:`MEMORY_BOUND` of Python-traced allocation
  (``tracemalloc`` peak), whatever the file declares;
- the reader that keeps tensors allocates no more than :func:`sw.io.load.scan_headers` said;
- each case ends within :data:`TIME_BOUND` seconds.

The fast tier runs a few hundred hypothesis cases; ``-m slow`` runs every field x every
extreme x CRC fixed or not on every base file, and thousands of flips, words and cuts.
"""

import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cases import (
    corner_tensors,
    corrupt,
    header_fields,
    mapped_container,
    programmed_container,
    random_container,
    set_field,
)
from sw.codec.container import ContainerError, parse, write_container
from sw.codec.golden import golden_decode
from sw.format import Status
from sw.io.load import scan_headers
from sw.params import CodecParams

PARAMS = CodecParams(state_count=4)
#: Traced allocation of a streaming reader: a few chunks of 2**20 symbols (uint8 symbols, int16
#: integers, the chunk's slot lookups) and the file itself, whatever the file declares.
MEMORY_BOUND = 16 << 20
#: Seconds per case: the longest (2**28 symbols of one level, under tracemalloc) take ~1.5 s.
TIME_BOUND = 10.0
#: What a whole-tensor reader may add to the streaming decoder's OK (FORMAT.md, "Checks").
WHOLE_TENSOR_STATUSES = {Status.BAD_SECTION, Status.BAD_PROGRAM, Status.TRAILING_DATA}
#: A keeping reader runs only on files declaring at most this many values (the suite's
#: memory); above it the lean reader's verdict, the same by construction, stands for it.
KEEP_LIMIT = 1 << 22


def bases():
    return {
        "random": random_container(11, PARAMS, sections=5, max_size=200)[0],
        "corner": write_container(corner_tensors(np.random.default_rng(1), PARAMS), PARAMS),
        "program": programmed_container(PARAMS),
        "k32": random_container(12, CodecParams(), sections=3, max_size=120)[0],
        "mapped": mapped_container(PARAMS),
    }


BASES = bases()
FIELDS = {name: header_fields(data) for name, data in BASES.items()}


def extremes(fmt):
    """Extreme values of a field of this struct format."""
    if fmt == "h":
        return [-32768, -32767, -1, 0, 1, 32766, 32767]
    top = (1 << 8 * struct.calcsize(fmt)) - 1
    values = {0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1}
    if fmt == "I":
        values |= {1 << 28, (1 << 28) + 1, (1 << 28) - 1, 1 << 16, 0xFFFF}
    else:
        values |= {255, 256, 257, 1024, 1025, 8, 9}
    return sorted(values)


def check_case(data: bytes) -> tuple:
    """Run both readers on ``data`` under every assertion of this module; their statuses."""
    start = time.perf_counter()
    tracemalloc.start()
    try:
        golden = golden_decode(data, keep_integers=False, value_tables=True)
        golden_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        try:
            parse(data, keep_symbols=False)
            reader = Status.OK
        except ContainerError as error:
            reader = error.status
        reader_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = MEMORY_BOUND + 4 * len(data)
    assert golden_peak < bound and reader_peak < bound, (golden_peak, reader_peak)
    if golden.status != Status.OK:
        assert reader == golden.status, (reader, golden.status, golden.message)
    else:
        assert reader == Status.OK or reader in WHOLE_TENSOR_STATUSES, reader
    rtl = golden_decode(data, keep_integers=False)
    if rtl.status == Status.UNSUPPORTED:
        assert golden.status == Status.OK or golden.offset >= rtl.offset, (golden, rtl)
    else:
        assert rtl.status == golden.status, (rtl.status, golden.status)
    scan = scan_headers(data)
    if scan.values <= KEEP_LIMIT:
        # The keeping reader: same verdict, and no more symbols than the scan declared.
        tracemalloc.start()
        try:
            try:
                parse(data)
                kept = Status.OK
            except ContainerError as error:
                kept = error.status
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert kept == reader
        assert peak < bound + 8 * scan.values, (peak, scan.values)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND, elapsed
    return reader, golden.status


def field_case(base, index, value, fix_crc):
    fields = FIELDS[base]
    field = fields[index % len(fields)]
    return set_field(BASES[base], field, value, fix_crc)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BASES)), st.data())
def test_fuzz_fast(base, data):
    """Fast tier: hypothesis picks a base file, a mutation and where."""
    original = BASES[base]
    kind = data.draw(st.sampled_from(["field", "flip", "word", "truncate", "flips"]))
    if kind == "field":
        index = data.draw(st.integers(0, len(FIELDS[base]) - 1))
        fmt = FIELDS[base][index].fmt
        value = data.draw(st.sampled_from(extremes(fmt)) | (
            st.integers(-32768, 32767) if fmt == "h"
            else st.integers(0, (1 << 8 * struct.calcsize(fmt)) - 1)))
        mutated = field_case(base, index, value, data.draw(st.booleans()))
    elif kind == "truncate":
        mutated = original[:data.draw(st.integers(0, len(original) - 1))]
    elif kind == "word":
        offset = 2 * data.draw(st.integers(0, len(original) // 2 - 1))
        mutated = (original[:offset] + struct.pack("<H", data.draw(st.integers(0, 0xFFFF)))
                   + original[offset + 2:])
    else:
        mutated = bytearray(original)
        for _ in range(1 if kind == "flip" else data.draw(st.integers(2, 8))):
            bit = data.draw(st.integers(0, 8 * len(original) - 1))
            mutated[bit // 8] ^= 1 << bit % 8
        mutated = bytes(mutated)
    check_case(mutated)


def test_fuzz_fields_with_crc_fixed_reach_past_the_crc():
    """Sanity of the fuzzer: field mutations with the CRC fixed reach every kind of verdict."""
    seen = set()
    for base in ("random", "program"):
        for index, field in enumerate(FIELDS[base]):
            for value in (0, 1):
                seen.add(check_case(field_case(base, index, value, True)))
    statuses = {status for pair in seen for status in pair}
    assert {Status.OK, Status.BAD_SECTION, Status.BAD_LENGTH, Status.BAD_TABLE,
            Status.BAD_PROGRAM, Status.PARAM_MISMATCH}.issubset(statuses), statuses


@pytest.mark.slow
@pytest.mark.parametrize("base", sorted(BASES))
def test_fuzz_every_field_every_extreme(base):
    """Slow tier: every header field x every extreme value x CRC fixed or not."""
    count = 0
    started = time.perf_counter()
    for index, field in enumerate(FIELDS[base]):
        for value in extremes(field.fmt):
            for fix_crc in (False, True):
                check_case(field_case(base, index, value, fix_crc))
                count += 1
    print(f"{base}: {count} field cases in {time.perf_counter() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("base", sorted(BASES))
def test_fuzz_random_damage(base):
    """Slow tier: 600 random flips, words and cuts per base file."""
    rng = np.random.default_rng(len(base))
    original = BASES[base]
    for case in range(600):
        check_case(corrupt(original, rng, ["flip", "word", "truncate"][case % 3]))
