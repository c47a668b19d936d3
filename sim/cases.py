"""Containers for the decoder tests: real-ish quantized weights and the corner cases.

Everything is generated from a seed with :mod:`sw.codec.container`; nothing is stored.
"""

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sw.codec.container import CodedTensor, MappedTensor, RawTensor, write_container
from sw.codec.rans import FrequencyTable
from sw.format import RawDtype, SectionKind, header_crc_offset
from sw.params import CodecParams

__all__ = ["quantized", "skewed", "uniform", "corner_tensors", "random_container", "corrupt",
           "program_container", "programmed_container", "mapped_tensors", "mapped_container",
           "Field", "header_fields", "set_field"]


def quantized(rng, name, shape, levels, sigma=0.6):
    """Gaussian-ish weights rounded to ``levels`` levels around a central zero point."""
    zero_point = (levels - 1) // 2
    values = np.rint(rng.normal(0, sigma, size=shape)).astype(np.int64) + zero_point
    symbols = np.clip(values, 0, levels - 1)
    scale = rng.uniform(0.001, 0.1, size=shape[:1] if len(shape) and rng.random() < 0.5
                        else 1).astype(np.float32)
    return CodedTensor(name, symbols, levels, zero_point, scale)


def skewed(rng, name, size, p_zero=0.9999, levels=3):
    """Nearly all zeros: sub-bit coding's home ground."""
    symbols = np.where(rng.random(size) < p_zero, levels // 2,
                       rng.integers(0, levels, size))
    return CodedTensor(name, symbols.astype(np.int64), levels, levels // 2)


def uniform(rng, name, size, levels):
    return CodedTensor(name, rng.integers(0, levels, size), levels, int(rng.integers(0, levels)))


def corner_tensors(rng, params: CodecParams):
    """One of each shape of section the decoder must get right."""
    return [
        uniform(rng, "all256", 700, 256),
        CodedTensor("one_level", np.zeros(50, np.int64), 1, 0),
        CodedTensor("one_symbol_of_many", np.full(40, 3), 8, 2),
        CodedTensor("empty", np.zeros((0, 4), np.int64), 5, 2),
        CodedTensor("single", np.array([1]), 2, 0),
        RawTensor("bias", rng.normal(size=7).astype(np.float32)),
        RawTensor("odd_bytes", np.arange(5, dtype=np.uint8)),
        CodedTensor("sparse_table", np.array([0, 9, 0, 9, 200, 0] * 11), 256, 0),
        skewed(rng, "skewed", 3000),
        quantized(rng, "layer", (16, 9), 4),
        CodedTensor("two", rng.integers(0, 2, 33), 2, 1, table=FrequencyTable(
            np.array([1, params.total_frequency - 1]), params.precision_bits)),
    ]


def mapped_tensors(rng):
    """Integer tensors that only a value table codes (MAPPED sections), one of each kind: two
    values far apart, an odd count of int8 values (the table's pad byte), uint64 values past
    int64, int32 values of skewed frequencies, one value, no value at all."""
    return [
        MappedTensor.from_array("two", rng.choice(np.array([-200, 200], np.int16), 500)),
        MappedTensor.from_array("int8_odd", rng.choice(np.array([-128, -1, 127], np.int8),
                                                       (7, 11))),
        MappedTensor.from_array("uint64", rng.choice(
            np.array([0, 1 << 40, (1 << 64) - 1], np.uint64), 90)),
        MappedTensor.from_array("skewed", rng.choice(np.array([-70000, 5, 123456], np.int32),
                                                     (30, 40), p=[0.05, 0.9, 0.05])),
        MappedTensor.from_array("constant", np.full(60, 1000, np.int16)),
        MappedTensor.from_array("empty", np.zeros((0, 3), np.int32)),
    ]


def mapped_container(params: CodecParams = CodecParams(), seed: int = 3) -> bytes:
    """A version-3 container: a CODED and a RAW section, then the MAPPED sections of
    :func:`mapped_tensors`, a CODED one between them. A decoder without value tables (the
    RTL) decodes the first section and refuses the third (UNSUPPORTED)."""
    rng = np.random.default_rng(seed)
    mapped = mapped_tensors(rng)
    return write_container([quantized(rng, "layer", (16, 9), 4),
                            RawTensor("bias", rng.normal(size=7).astype(np.float32)),
                            *mapped[:3], skewed(rng, "skewed_coded", 400), *mapped[3:]],
                           params)


def random_container(seed: int, params: CodecParams, sections: int = 4, max_size: int = 300):
    """A container of a few random sections; returns ``(bytes, tensors)``."""
    rng = np.random.default_rng(seed)
    tensors = []
    for i in range(sections):
        kind = rng.integers(0, 6)
        size = int(rng.integers(0, max_size))
        levels = int(rng.choice([1, 2, 3, 5, 16, 100, 256]))
        if kind == 0:
            tensors.append(RawTensor(f"raw{i}", rng.normal(size=size % 17).astype(np.float16)))
        elif kind == 1:
            tensors.append(skewed(rng, f"skew{i}", size, p_zero=0.99, levels=max(levels, 2)))
        elif kind == 2:
            tensors.append(uniform(rng, f"uni{i}", size, levels))
        else:
            tensors.append(quantized(rng, f"q{i}", (size // 8 + 1, 8), max(levels, 2),
                                     sigma=float(rng.uniform(0.2, 20))))
    return write_container(tensors, params), tensors


def program_container(seed: int, params: CodecParams) -> bytes:
    """A container with a program (docs/INFERENCE.md): three linear layers of random weights
    with per-channel multipliers, lowered by :mod:`sw.network.lower` (116 program words), and a RAW
    section between the program and the coded sections it consumes."""
    from sw.network.lower import lower, mlp_layers, order_tensors
    rng = np.random.default_rng(seed)

    def coded(name, shape, levels, per_channel):
        scale = rng.uniform(0.01, 0.2, shape[0] if per_channel else 1).astype(np.float32)
        return CodedTensor(name, rng.integers(0, levels, shape), levels, levels // 2, scale)

    tensors = [coded("fc1.weight", (24, 16), 5, True), coded("fc1.bias", (24,), 31, False),
               coded("fc2.weight", (16, 24), 3, True), coded("fc2.bias", (16,), 31, False),
               coded("fc3.weight", (10, 16), 7, True)]
    layers = mlp_layers([("fc1.weight", "fc1.bias"), ("fc2.weight", "fc2.bias"),
                         ("fc3.weight", None)])
    lowered = lower(layers, {t.name: t for t in tensors}, rng.random((8, 16, 1, 1)))
    raw = RawTensor("norm", rng.normal(size=5).astype(np.float32))
    return write_container([raw] + order_tensors(tensors, lowered.tensor_order), params,
                           program=lowered.program)


def programmed_container(params: CodecParams = CodecParams(), seed: int = 7) -> bytes:
    """A container with a program (docs/INFERENCE.md): a convolution, a pool and a linear
    layer on 4x4 images, lowered by :func:`sw.network.lower.lower`."""
    from sw.network.lower import Layer, lower, order_tensors
    rng = np.random.default_rng(seed)
    tensors = [CodedTensor("conv.weight", rng.integers(0, 3, (4, 1, 3, 3)), 3, 1,
                           np.float32(0.2)),
               CodedTensor("conv.bias", rng.integers(0, 31, 4), 31, 15, np.float32(0.01)),
               CodedTensor("fc.weight", rng.integers(0, 5, (3, 4)), 5, 2, np.float32(0.1))]
    layers = [Layer("conv", "conv.weight", "conv.bias", 1, True),
              Layer("pool", input=0), Layer("linear", "fc.weight", input=1)]
    lowered = lower(layers, {t.name: t for t in tensors}, rng.random((8, 1, 4, 4)), 4)
    return write_container(order_tensors(tensors, lowered.tensor_order), params,
                           program=lowered.program)


def corrupt(data: bytes, rng, mode: str) -> bytes:
    """A damaged copy: ``flip`` one bit, ``truncate`` at a random even length, ``word`` one
    random 16-bit word."""
    data = bytearray(data)
    if mode == "flip":
        bit = int(rng.integers(0, 8 * len(data)))
        data[bit // 8] ^= 1 << (bit % 8)
    elif mode == "truncate":
        return bytes(data[:2 * int(rng.integers(0, len(data) // 2))])
    elif mode == "word":
        i = 2 * int(rng.integers(0, len(data) // 2))
        data[i:i + 2] = rng.integers(0, 256, 2, dtype=np.uint8).tobytes()
    else:
        raise ValueError(mode)
    return bytes(data)


@dataclass(frozen=True)
class Field:
    """One header field of a container: where it lies and the span its CRC covers."""

    name: str          #: ``file.<field>`` or ``section<i>.<field>``
    offset: int
    fmt: str           #: struct format of the field, little-endian
    crc_start: int     #: first byte its CRC covers
    crc_offset: int    #: where that CRC lies


def header_fields(data: bytes) -> list:
    """Every header field of a well-formed container (docs/FORMAT.md), in file order.

    The file header's fields, then each section's: kind, name_bytes, ndim, dims, and the
    coded (levels, zero_point, scale_count, symbol_count, the first frequency, payload_words),
    mapped (levels, dtype, the first value's low word, symbol_count, the first frequency,
    payload_words) or raw (dtype, data_bytes) fields.
    """
    fields = []
    state_count = struct.unpack_from("<H", data, 12)[0]
    header_end = header_crc_offset(state_count)
    for name, offset, fmt in [("magic", 0, "I"), ("version", 4, "H"), ("state_bits", 6, "H"),
                              ("word_bits", 8, "H"), ("precision_bits", 10, "H"),
                              ("state_count", 12, "H"), ("section_count", 14, "H"),
                              ("initial_state", 16, "I"), ("last_state", header_end - 4, "I")]:
        fields.append(Field(f"file.{name}", offset, fmt, 0, header_end))
    position = header_end + 4
    for index in range(struct.unpack_from("<H", data, 14)[0]):
        start, section = position, []

        def add(name, fmt):
            nonlocal position
            section.append((f"section{index}.{name}", position, fmt))
            value = struct.unpack_from("<" + fmt, data, position)[0]
            position += struct.calcsize("<" + fmt)
            return value

        kind = add("kind", "H")
        name_bytes = add("name_bytes", "H")
        position += name_bytes + (name_bytes & 1)
        ndim = add("ndim", "H")
        for d in range(ndim):
            add(f"dims{d}", "I")
        if kind in (SectionKind.CODED, SectionKind.MAPPED):
            levels = add("levels", "H")
            if kind == SectionKind.CODED:
                add("zero_point", "h")
                scale_count = add("scale_count", "H")
                position += 4 * scale_count
            else:
                values_bytes = levels * RawDtype(add("dtype", "H")).numpy.itemsize
                end = position + values_bytes + (values_bytes & 1)
                add("value0", "H")
                position = end
            add("symbol_count", "I")
            if levels > 1:
                add("frequency0", "H")
                position += 2 * (levels - 1)
            payload_words = add("payload_words", "I")
            position += 2 * payload_words
        else:
            add("dtype", "H")
            data_bytes = add("data_bytes", "I")
            position += data_bytes + (data_bytes & 1)
        fields += [Field(name, offset, fmt, start, position) for name, offset, fmt in section]
        position += 4
    return fields


def set_field(data: bytes, field: Field, value, fix_crc: bool = True) -> bytes:
    """``data`` with ``field`` set to ``value`` and, with ``fix_crc``, the CRC that covers it
    made right again (as a malicious or buggy writer would)."""
    data = bytearray(data)
    struct.pack_into("<" + field.fmt, data, field.offset, value)
    if fix_crc and field.crc_offset + 4 <= len(data):
        struct.pack_into("<I", data, field.crc_offset,
                         zlib.crc32(data[field.crc_start:field.crc_offset]))
    return bytes(data)
