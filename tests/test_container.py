"""The container: round trips, and every kind of damage found with the right status."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sw.codec.container import (
    CodedTensor,
    ContainerError,
    MappedTensor,
    RawTensor,
    estimated_section_size,
    parse,
    read_container,
    write_container,
)
from sw.codec.golden import golden_decode
from sw.format import MAGIC, SectionKind, Status
from sw.params import CodecParams


def sample_tensors(rng=None):
    rng = rng or np.random.default_rng(0)
    return [
        CodedTensor("conv.weight", rng.choice(3, size=(8, 4, 3, 3), p=[0.1, 0.8, 0.1]), 3, 1,
                    np.float32(0.02)),
        RawTensor("conv.bias", rng.normal(size=8).astype(np.float32)),
        CodedTensor("fc.weight", rng.integers(0, 17, size=(10, 32)), 17, 8,
                    rng.random(10).astype(np.float32)),
        RawTensor("steps", np.array(7, dtype=np.int64)),
        CodedTensor("empty", np.zeros((0, 3), np.uint8), 5, 2),
        CodedTensor("one", np.array([0]), 1, 0),
    ]


def assert_same(tensors, container):
    assert [t.name for t in tensors] == [t.name for t in container.tensors]
    for a, b in zip(tensors, container.tensors):
        if isinstance(a, CodedTensor):
            np.testing.assert_array_equal(a.symbols, b.symbols)
            assert (a.levels, a.zero_point, a.shape) == (b.levels, b.zero_point, b.shape)
            np.testing.assert_array_equal(a.scale, b.scale)
            np.testing.assert_array_equal(a.dequantize(), b.dequantize())
        elif isinstance(a, MappedTensor):
            assert isinstance(b, MappedTensor) and a.shape == b.shape
            assert a.values.dtype == b.values.dtype == b.array().dtype
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.symbols, b.symbols)
            np.testing.assert_array_equal(a.array(), b.array())
        else:
            assert a.data.dtype == b.data.dtype
            np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("fast", [True, False])
def test_round_trip(fast):
    tensors = sample_tensors()
    data = write_container(tensors, fast=fast)
    assert data == write_container(tensors, fast=not fast)
    assert len(data) % 2 == 0
    assert_same(tensors, read_container(data, fast=fast))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8", "uint8", "int16",
                                   "uint16", "int32", "uint32", "int64", "uint64", "bool"])
def test_raw_dtypes(dtype):
    data = (np.arange(7) % 2).astype(dtype).reshape(7, 1)
    assert_same([RawTensor("x", data)], read_container(write_container([RawTensor("x", data)])))


def test_integers_and_dequantize():
    integers = np.array([[-3, 0, 2], [1, 1, -1]])
    tensor = CodedTensor.from_integers("t", integers, scale=[0.5, 2.0])
    back = read_container(write_container([tensor]))["t"]
    np.testing.assert_array_equal(back.integers(), integers)
    np.testing.assert_array_equal(back.dequantize(), integers * np.array([[0.5], [2.0]]))


def test_bits_per_weight_accounting():
    container = read_container(write_container(sample_tensors()))
    raw_bytes = sum(s.size for s in container.sections if s.kind == SectionKind.RAW)
    assert container.weight_count == 8 * 4 * 9 + 320 + 1
    assert container.bits_per_weight() == 8 * container.size / container.weight_count
    assert container.bits_per_weight(weights_only=True) == \
        8 * (container.size - raw_bytes) / container.weight_count


def test_rejects_unrepresentable_tensors():
    with pytest.raises(ValueError):
        CodedTensor("x", np.array([3]), 3)
    with pytest.raises(ValueError):
        CodedTensor("x", np.array([0]), 257)
    with pytest.raises(ValueError):
        CodedTensor.from_integers("x", np.array([0, 300]))
    with pytest.raises(ValueError):
        CodedTensor("x", np.zeros((4, 2), int), 3, 1, scale=np.ones(3))
    with pytest.raises(ValueError):
        RawTensor("x", np.array(["text"]))
    with pytest.raises(ValueError):
        write_container([RawTensor("é" * 600, np.zeros(1))])


def read_status(data, params=None):
    try:
        read_container(data, params)
    except ContainerError as error:
        return error.status
    return Status.OK


@pytest.fixture(scope="module")
def small():
    tensors = [CodedTensor("a", np.random.default_rng(2).choice(3, size=(6, 5), p=[.2, .6, .2]),
                           3, 1),
               RawTensor("b", np.ones(3, np.float16)),
               CodedTensor("c", np.array([[1, 0], [2, 2]]), 3, 1)]
    return write_container(tensors, CodecParams(state_count=4))


def test_every_bit_flip_is_detected_and_golden_agrees(small):
    for bit in range(8 * len(small)):
        damaged = bytearray(small)
        damaged[bit // 8] ^= 1 << bit % 8
        status = read_status(bytes(damaged))
        assert status != Status.OK, f"flip of bit {bit} not detected"
        assert golden_decode(bytes(damaged)).status == status, f"bit {bit}"


def test_every_truncation_fails_cleanly(small):
    for length in range(len(small)):
        assert read_status(small[:length]) == Status.TRUNCATED
        assert golden_decode(small[:length]).status == Status.TRUNCATED


def test_trailing_bytes(small):
    assert read_status(small + b"\0\0") == Status.TRAILING_DATA
    # A streaming decoder stops after the last section and never sees them.
    assert golden_decode(small + b"\0\0").status == Status.OK


def test_decoder_parameters_must_match(small):
    assert read_status(small, CodecParams(state_count=4)) == Status.OK
    assert read_status(small, CodecParams(state_count=8)) == Status.PARAM_MISMATCH
    assert golden_decode(small, CodecParams(precision_bits=11, state_count=4)).status == \
        Status.PARAM_MISMATCH


def rewrite(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """``data`` with a field replaced and every CRC made right again, as a malicious writer
    would."""
    data = bytearray(data)
    struct.pack_into("<" + fmt, data, offset, *values)
    state_count = struct.unpack_from("<H", data, 12)[0]
    header_end = 16 + 4 * min(state_count, 256)
    if offset < header_end:
        struct.pack_into("<I", data, header_end, zlib.crc32(data[:header_end]))
    return bytes(data)


def fix_section_crc(data: bytes, start: int, end: int) -> bytes:
    data = bytearray(data)
    struct.pack_into("<I", data, end, zlib.crc32(data[start:end]))
    return bytes(data)


@pytest.fixture(scope="module")
def single():
    """A container of one coded section, with the byte offsets of its fields."""
    symbols = np.random.default_rng(5).choice(3, size=(4, 25), p=[.25, .5, .25])
    data = write_container([CodedTensor("w", symbols, 3, 1)], CodecParams(state_count=2))
    start = 16 + 8 + 4
    fields = {"kind": start, "name_bytes": start + 2, "ndim": start + 6, "dims": start + 8,
              "levels": start + 16, "zero_point": start + 18, "scale_count": start + 20,
              "symbol_count": start + 26, "frequencies": start + 30, "payload_words": start + 36}
    return data, start, fields


@pytest.mark.parametrize("field, fmt, value, status", [
    ("kind", "H", 7, Status.BAD_SECTION),
    ("name_bytes", "H", 2000, Status.BAD_SECTION),
    ("ndim", "H", 9, Status.BAD_SECTION),
    ("levels", "H", 0, Status.BAD_SECTION),
    ("levels", "H", 257, Status.BAD_SECTION),
    ("zero_point", "h", -32767, Status.BAD_SECTION),
    ("scale_count", "H", 0, Status.BAD_SECTION),
    ("symbol_count", "I", 0xFFFFFFFF, Status.BAD_SECTION),
    ("frequencies", "H", 4000, Status.BAD_TABLE),
    # The symbols end before the (claimed) payload does: known before the input runs out.
    ("payload_words", "I", 0xFFFFFFFF, Status.BAD_LENGTH),
    ("payload_words", "I", 1, Status.BAD_LENGTH),
])
def test_malformed_fields(single, field, fmt, value, status):
    data, start, fields = single
    damaged = rewrite(data, fields[field], fmt, value)
    assert read_status(damaged) == status
    assert golden_decode(damaged).status == status


def test_checks_behind_the_crc(single):
    """Shape, scale count and name are checked after the CRC, so a writer's lie is caught."""
    data, start, fields = single
    end = len(data) - 4
    lying_shape = fix_section_crc(rewrite(data, fields["dims"], "I", 5), start, end)
    assert read_status(lying_shape) == Status.BAD_SECTION
    assert golden_decode(lying_shape).status == Status.OK
    # Four per-channel scales, then the shape claims 2 x 50: same count, wrong channel count.
    channels = np.random.default_rng(6).integers(0, 3, size=(4, 25))
    per_channel = write_container([CodedTensor("w", channels, 3, 1, np.arange(1, 5))],
                                  CodecParams(state_count=2))
    per_channel_end = len(per_channel) - 4
    lying_channels = fix_section_crc(rewrite(rewrite(per_channel, fields["dims"], "I", 2),
                                             fields["dims"] + 4, "I", 50), start, per_channel_end)
    assert read_status(lying_channels) == Status.BAD_SECTION
    assert golden_decode(lying_channels).status == Status.OK
    bad_name = fix_section_crc(rewrite(data, start + 4, "B", 0xFF), start, end)
    assert read_status(bad_name) == Status.BAD_SECTION
    assert golden_decode(bad_name).status == Status.OK


def test_header_checks(single):
    data, _, _ = single
    assert read_status(b"XBIT" + data[4:]) == Status.BAD_MAGIC
    assert read_status(rewrite(data, 4, "H", 4)) == Status.BAD_VERSION
    assert read_status(rewrite(data, 4, "H", 0)) == Status.BAD_VERSION
    assert read_status(rewrite(data, 4, "H", 1)) == Status.OK  # version 1 is still read
    assert read_status(rewrite(data, 4, "H", 3)) == Status.OK  # version 3 adds a kind only
    assert read_status(rewrite(data, 6, "H", 64)) == Status.PARAM_MISMATCH
    assert read_status(rewrite(data, 10, "H", 0)) == Status.PARAM_MISMATCH
    assert read_status(rewrite(data, 12, "H", 0)) == Status.PARAM_MISMATCH
    assert read_status(rewrite(data, 16, "I", 5)) == Status.BAD_STATE
    assert read_status(rewrite(data, 16, "I", 0x7FFFFFFF)) in (Status.BAD_LENGTH,
                                                               Status.STATE_MISMATCH)
    assert read_status(rewrite(data, 14, "H", 2)) == Status.TRUNCATED
    assert data.startswith(MAGIC)


@st.composite
def tensor_lists(draw):
    tensors = []
    for index in range(draw(st.integers(0, 5))):
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        size = int(np.prod(shape, dtype=np.int64))
        kind = draw(st.sampled_from(["coded", "mapped", "raw"]))
        if kind == "mapped":
            dtype = np.dtype(draw(st.sampled_from(["int8", "uint8", "int16", "uint16", "int32",
                                                   "uint32", "int64", "uint64"])))
            limits = np.iinfo(dtype)
            table = draw(st.lists(st.integers(int(limits.min), int(limits.max)), min_size=1,
                                  max_size=min(size, 256) or 1, unique=True))
            values = np.array(sorted(table), dtype)
            symbols = np.array(draw(st.lists(st.integers(0, len(values) - 1), min_size=size,
                                             max_size=size)), np.uint8).reshape(shape)
            tensors.append(MappedTensor(f"m{index}", symbols, values))
        elif kind == "coded":
            levels = draw(st.integers(1, 256))
            symbols = np.array(draw(st.lists(st.integers(0, levels - 1), min_size=size,
                                             max_size=size)), dtype=np.uint8).reshape(shape)
            zero_point = draw(st.integers(levels - 1 - 32767, 32767))
            scale = np.float32(draw(st.floats(-1e3, 1e3, width=32)))
            tensors.append(CodedTensor(f"t{index}", symbols, levels, zero_point, scale))
        else:
            data = np.array(draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=size,
                                          max_size=size)), dtype=np.int32).reshape(shape)
            tensors.append(RawTensor(f"r{index}", data))
    return tensors


@settings(max_examples=80, deadline=None)
@given(tensor_lists(), st.integers(1, 64))
def test_property_round_trip(tensors, state_count):
    params = CodecParams(state_count=state_count)
    data = write_container(tensors, params)
    assert_same(tensors, read_container(data, params))
    golden = golden_decode(data, value_tables=True)
    assert golden.status == Status.OK
    coded = [t for t in tensors if isinstance(t, CodedTensor)]
    np.testing.assert_array_equal(
        golden.integers(),
        np.concatenate([t.integers().ravel() for t in coded]) if coded else np.zeros(0))
    mapped = [t for t in tensors if isinstance(t, MappedTensor)]
    for tensor, section in zip(mapped, [s for s in golden.sections
                                        if s.kind == SectionKind.MAPPED]):
        assert section.values.dtype == tensor.dtype
        np.testing.assert_array_equal(section.values, tensor.array().ravel())
    # Version 3 only when a MAPPED section needs it; the RTL's model stops at the first one.
    assert struct.unpack_from("<H", data, 4)[0] == (3 if mapped else 2)
    rtl = golden_decode(data)
    assert rtl.status == (Status.UNSUPPORTED if mapped else Status.OK)


def test_one_symbol_table_at_highest_precision():
    params = CodecParams(precision_bits=15)
    data = write_container([CodedTensor("x", np.ones(10, np.uint8), 3, 1)], params)
    assert read_container(data).tensors[0].symbols.tolist() == [1] * 10
    assert golden_decode(data).status == Status.OK


# -- the symbol_count rule (docs/FORMAT.md, "Checks") --------------------------------------

#: What a reader that builds whole tensors may add to a streaming decoder's OK.
WHOLE_TENSOR_STATUSES = {Status.BAD_SECTION, Status.BAD_PROGRAM, Status.TRAILING_DATA}


def lean_read_status(data, params=None):
    """read_container's verdict without keeping the symbols (``verify``'s way)."""
    try:
        parse(data, params, keep_symbols=False)
    except ContainerError as error:
        return error.status
    return Status.OK


def assert_rtl_model_agrees(data, params=None, full=None):
    """The golden model without value tables (the RTL's) says what the one with them (``full``,
    its result if already made) says, up to the first MAPPED section's kind word, where it
    stops with UNSUPPORTED (FORMAT.md, "Checks"). Returns its result."""
    if full is None:
        full = golden_decode(data, params, keep_integers=False, value_tables=True)
    rtl = golden_decode(data, params, keep_integers=False)
    if rtl.status == Status.UNSUPPORTED:
        assert full.status == Status.OK or full.offset >= rtl.offset, (full, rtl)
        assert len(rtl.sections) <= len(full.sections)
    else:
        assert rtl.status == full.status, (rtl.status, full.status)
        assert len(rtl.sections) == len(full.sections)
    return rtl


def assert_readers_agree(data, params=None, lean=False):
    """The rule of FORMAT.md: the golden model's verdict stands; the reader's whole-tensor
    checks only speak where the stream is clean. Returns both statuses. ``lean`` reads
    without keeping symbols or integers (same verdicts), for files declaring 2**28 symbols.
    Both with value tables; the RTL's model is held to it by :func:`assert_rtl_model_agrees`."""
    full = golden_decode(data, params, keep_integers=not lean, value_tables=True)
    golden = full.status
    reader = (lean_read_status if lean else read_status)(data, params)
    if golden != Status.OK:
        assert reader == golden, (reader, golden)
    else:
        assert reader == Status.OK or reader in WHOLE_TENSOR_STATUSES, reader
    assert_rtl_model_agrees(data, params, full)
    return reader, golden


def symbol_count_cases():
    from sim.cases import corner_tensors, random_container
    params = CodecParams(state_count=4)
    yield "corner", write_container(corner_tensors(np.random.default_rng(0), params), params)
    for seed in range(4):
        yield f"random{seed}", random_container(seed, params, sections=4)[0]
    from sim.cases import mapped_container, programmed_container
    yield "program", programmed_container(params)
    yield "mapped", mapped_container(params)


@pytest.mark.parametrize("value", [0, 1, "minus", "plus", 1 << 28])
def test_symbol_count_changed_with_crc_readers_agree(value):
    """symbol_count = 0 (or any other value, CRC made right): the stream's verdict stands in
    both readers; BAD_SECTION from the reader only where the stream has nothing to say."""
    from sim.cases import header_fields, set_field
    seen = set()
    for name, data in symbol_count_cases():
        for field in header_fields(data):
            if not field.name.endswith(".symbol_count"):
                continue
            count = struct.unpack_from("<I", data, field.offset)[0]
            new = {"minus": max(count - 1, 0), "plus": count + 1}.get(value, value)
            if new == count:
                continue
            reader, golden = assert_readers_agree(set_field(data, field, new),
                                                  lean=new > 1 << 16)
            seen.add((reader, golden))
    if value == 0:
        # every kind of outcome shows up: the reader's own check, and the stream's
        assert (Status.BAD_SECTION, Status.OK) in seen
        assert any(g == Status.BAD_LENGTH for _, g in seen)
        assert any(g == Status.STATE_MISMATCH for _, g in seen)


def test_symbol_count_zero_of_one_level_section_is_a_whole_tensor_error():
    """One level: no payload and no state change, so the stream is clean and only the
    reader that checks dims says BAD_SECTION; with dims (0,) as well, the file is fine."""
    from sim.cases import header_fields, set_field
    data = write_container([CodedTensor("w", np.zeros((3, 5), np.uint8), 1, 0)])
    fields = {f.name: f for f in header_fields(data)}
    zero = set_field(data, fields["section0.symbol_count"], 0)
    assert golden_decode(zero).status == Status.OK
    assert read_status(zero) == Status.BAD_SECTION
    empty = set_field(zero, fields["section0.dims0"], 0)
    assert golden_decode(empty).status == read_status(empty) == Status.OK
    assert read_container(empty).tensors[0].shape == (0, 5)


# -- MAPPED sections: integers through a value table ------------------------------------------

def mapped_sample(rng=None):
    from sim.cases import mapped_tensors
    rng = rng or np.random.default_rng(4)
    return [CodedTensor("w", rng.integers(0, 3, (5, 6)), 3, 1)] + mapped_tensors(rng) + \
        [RawTensor("b", np.arange(3, dtype=np.float32))]


@pytest.mark.parametrize("fast", [True, False])
def test_mapped_round_trip(fast):
    """Values and dtype come back exactly, whatever their range (int8 .. uint64), through the
    streaming decoder with value tables as through the reader."""
    tensors = mapped_sample()
    data = write_container(tensors, fast=fast)
    assert data == write_container(tensors, fast=not fast)
    assert struct.unpack_from("<H", data, 4)[0] == 3
    container = read_container(data, fast=fast)
    assert_same(tensors, container)
    assert container["two"].array().tolist()[:4] == tensors[1].array().tolist()[:4]
    assert set(container["two"].array().tolist()) == {-200, 200}
    assert container["uint64"].array().max() == (1 << 64) - 1
    assert container["empty"].shape == (0, 3) and container["empty"].levels == 1
    golden = golden_decode(data, fast=fast, value_tables=True)
    assert golden.status == Status.OK
    mapped = [s for s in golden.sections if s.kind == SectionKind.MAPPED]
    for tensor, section in zip([t for t in tensors if isinstance(t, MappedTensor)], mapped):
        assert section.values.dtype == tensor.dtype
        np.testing.assert_array_equal(section.values, tensor.array().ravel())
    assert container.weight_count == sum(t.symbols.size for t in tensors
                                         if not isinstance(t, RawTensor))


def test_mapped_two_values_cost_a_bit_each():
    """The issue's example: -200 and 200 stored raw take 16 bits/value; coded through a table of
    the two, about their entropy (1 bit) plus the section's fixed bytes."""
    values = np.random.default_rng(1).choice(np.array([-200, 200], np.int16), 10_000)
    tensor = MappedTensor.from_array("t", values)
    container = read_container(write_container([tensor]))
    bits = 8 * container.sections[0].size / values.size
    assert 1.0 < bits < 1.03, bits
    raw = read_container(write_container([RawTensor("t", values)]))
    assert 8 * raw.sections[0].size / values.size > 16
    # The estimate the encoder decides by: the ideal code length, of which the final states
    # (up to 4 bytes each) are in the file header, not in the section.
    assert -8 <= estimated_section_size(tensor) - container.sections[0].size <= 4 * 32


def test_mapped_from_array():
    tensor = MappedTensor.from_array("t", np.array([[5, -3], [5, 1 << 40]]))
    assert tensor.values.tolist() == [-3, 5, 1 << 40] and tensor.dtype == np.int64
    assert tensor.symbols.tolist() == [[1, 0], [1, 2]]
    with pytest.raises(ValueError, match="257 distinct values"):
        MappedTensor.from_array("t", np.arange(257))
    with pytest.raises(ValueError, match="float32"):
        MappedTensor.from_array("t", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="strictly increasing"):
        MappedTensor("t", np.zeros(2, np.uint8), np.array([4, 4], np.int16))
    with pytest.raises(ValueError, match="strictly increasing"):
        MappedTensor("t", np.zeros(2, np.uint8), np.array([5, 4], np.uint64))
    with pytest.raises(ValueError, match="symbols must lie"):
        MappedTensor("t", np.array([2]), np.array([4, 5], np.int16))
    with pytest.raises(ValueError, match="1 to 256 entries"):
        MappedTensor("t", np.zeros(2, np.uint8), np.arange(257))
    with pytest.raises(ValueError, match="not of 8-64-bit integers"):
        MappedTensor("t", np.zeros(2, np.uint8), np.array([True]))


@pytest.fixture(scope="module")
def mapped_single():
    """One MAPPED section of three int32 values, with the byte offsets of its fields."""
    symbols = np.random.default_rng(5).choice(3, size=(4, 25), p=[.25, .5, .25])
    tensor = MappedTensor("m", symbols, np.array([-70000, 0, 123456], np.int32))
    data = write_container([tensor], CodecParams(state_count=2))
    start = 16 + 8 + 4
    fields = {"kind": start, "levels": start + 16, "dtype": start + 18, "values": start + 20,
              "symbol_count": start + 32, "frequencies": start + 36}
    return data, start, fields


def test_mapped_fields_as_documented(mapped_single):
    data, start, fields = mapped_single
    assert struct.unpack_from("<HH", data, start) == (SectionKind.MAPPED, 1)
    assert struct.unpack_from("<HH3iI", data, fields["levels"]) == (3, 7, -70000, 0, 123456,
                                                                    100)
    assert sum(struct.unpack_from("<3H", data, fields["frequencies"])) == 4096


@pytest.mark.parametrize("field, fmt, value, status", [
    ("levels", "H", 0, Status.BAD_SECTION),
    ("levels", "H", 257, Status.BAD_SECTION),       # too many entries
    ("dtype", "H", 0, Status.BAD_SECTION),          # float32: not an integer table
    ("dtype", "H", 11, Status.BAD_SECTION),         # bool
    ("dtype", "H", 12, Status.BAD_SECTION),         # no dtype at all
    ("values", "i", 0, Status.BAD_TABLE),           # a duplicate: -70000 -> 0, 0
    ("values", "i", 200000, Status.BAD_TABLE),      # decreasing
    ("symbol_count", "I", 0xFFFFFFFF, Status.BAD_SECTION),
    ("frequencies", "H", 4000, Status.BAD_TABLE),
])
def test_mapped_malformed_fields(mapped_single, field, fmt, value, status):
    """Each bad field of a MAPPED section, its CRC made right or not (the field's check
    comes first in stream order): the readers with value tables give its status, the RTL's
    model refuses the section at its kind word."""
    data, start, fields = mapped_single
    end = len(data) - 4
    for damaged in (rewrite(data, fields[field], fmt, value),
                    fix_section_crc(rewrite(data, fields[field], fmt, value), start, end)):
        assert read_status(damaged) == status
        assert golden_decode(damaged, value_tables=True).status == status
        assert golden_decode(damaged).status == Status.UNSUPPORTED
        assert_rtl_model_agrees(damaged)


def test_mapped_truncated_and_flipped(mapped_single):
    """Every cut of the file is TRUNCATED, up to the kind word for the RTL's model too, and
    every bit flip is found; the RTL's model agrees up to the kind word."""
    data, start, _ = mapped_single
    for length in range(len(data)):
        assert read_status(data[:length]) == Status.TRUNCATED
        rtl = golden_decode(data[:length]).status
        assert rtl == (Status.TRUNCATED if length < start + 2 else Status.UNSUPPORTED)
    for bit in range(8 * len(data)):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << bit % 8
        assert read_status(bytes(damaged)) != Status.OK, f"flip of bit {bit} not detected"
        assert_readers_agree(bytes(damaged))


def test_mapped_needs_version_3(mapped_single):
    """A MAPPED section in a version-1 or 2 file is an unknown kind, for every reader; an
    older reader refuses the version-3 file whole (BAD_VERSION), never misreads it."""
    data, start, fields = mapped_single
    for version in (1, 2):
        old = rewrite(data, 4, "H", version)
        assert read_status(old) == Status.BAD_SECTION
        assert golden_decode(old).status == Status.BAD_SECTION
        assert golden_decode(old, value_tables=True).status == Status.BAD_SECTION
    assert read_status(rewrite(data, 4, "H", 4)) == Status.BAD_VERSION


def test_mapped_refused_by_the_rtl_model_after_the_sections_before():
    from sim.cases import mapped_container
    data = mapped_container()
    rtl = golden_decode(data)
    assert rtl.status == Status.UNSUPPORTED and "MAPPED" in rtl.message
    assert [s.kind for s in rtl.sections] == [SectionKind.CODED, SectionKind.RAW]
    assert len(rtl.integers()) == 16 * 9
    full = golden_decode(data, value_tables=True)
    assert full.status == Status.OK
    np.testing.assert_array_equal(full.integers()[:16 * 9], rtl.integers())
    # ``on_integers`` gets the CODED sections' integers only
    chunks = []
    golden_decode(data, value_tables=True, keep_integers=False,
                  on_integers=lambda index, first, integers: chunks.append(index))
    assert sorted(set(chunks)) == [0, 5]


def test_mapped_is_not_the_programs():
    """A program consumes CODED sections only: a MAPPED section after it is skipped, as a RAW
    one is."""
    from sim.cases import programmed_container
    from sw.codec.program import Program
    data = programmed_container(CodecParams())
    container = read_container(data)
    program = container.program
    tensors = container.tensors[:1] + [MappedTensor.from_array("ids", np.array([7, -9000]))] \
        + container.tensors[1:]
    again = read_container(write_container(tensors, program=program))
    assert isinstance(again.program, Program) and again["ids"].array().tolist() == [7, -9000]
