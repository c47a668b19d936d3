"""The program: encoding, every rule of docs/INFERENCE.md, and its checks in both readers."""

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from sw.codec.container import (
    PROGRAM_NAME,
    CodedTensor,
    ContainerError,
    RawTensor,
    read_container,
    write_container,
)
from sw.codec.golden import golden_decode
from sw.codec.program import (
    HEADER_WORDS,
    NO_SKIP,
    OP_WORDS,
    Op,
    Opcode,
    Program,
    ProgramError,
    ValueType,
)
from sw.format import Status
from sw.network.lower import Layer, lower, order_tensors


def small_network(rng=None, skip=True, size=6):
    """A convolution, a residual block with a projection, a pool and a linear layer on
    ``size`` x ``size`` (the block's convolutions at stride 2: half that, rounded up)."""
    rng = rng or np.random.default_rng(3)
    coded = lambda name, shape, levels: CodedTensor(  # noqa: E731
        name, rng.integers(0, levels, shape), levels, levels // 2,
        np.float32(rng.uniform(0.05, 0.3)))
    tensors = [coded("stem.weight", (4, 2, 3, 3), 5), coded("stem.bias", (4,), 31),
               coded("a.weight", (6, 4, 3, 3), 3), coded("a.bias", (6,), 31),
               coded("b.weight", (6, 6, 3, 3), 3), coded("b.bias", (6,), 31),
               coded("sc.weight", (6, 4, 1, 1), 7), coded("sc.bias", (6,), 31),
               coded("fc.weight", (5, 6), 9), coded("fc.bias", (5,), 31)]
    layers = [Layer("conv", "stem.weight", "stem.bias", 1, True, -1),
              Layer("conv", "a.weight", "a.bias", 2, True, 0),
              Layer("conv", "sc.weight", "sc.bias", 2, False, 0),
              Layer("conv", "b.weight", "b.bias", 1, True, 1, 2 if skip else None),
              Layer("pool", input=3),
              Layer("linear", "fc.weight", "fc.bias", input=4)]
    images = rng.random((16, 2, size, size))
    lowered = lower(layers, {t.name: t for t in tensors}, images, 4)
    return lowered, order_tensors(tensors, lowered.tensor_order), images


def test_words_round_trip():
    lowered, _, _ = small_network()
    program = lowered.program
    words = program.to_words()
    assert words.dtype == np.dtype("<u2")
    assert len(words) == HEADER_WORDS + sum(OP_WORDS + len(op.multipliers) for op in program.ops)
    assert Program.from_words(words) == program


def test_layout_of_the_lowered_program():
    lowered, tensors, _ = small_network()
    ops = lowered.program.ops
    assert [op.opcode for op in ops] == [Opcode.CONV] * 4 + [Opcode.POOL, Opcode.LINEAR]
    assert [op.output_type for op in ops] == [ValueType.U8, ValueType.U8, ValueType.S16,
                                              ValueType.U8, ValueType.S16, ValueType.S16]
    assert ops[3].skip_address == ops[2].output_address and ops[3].has_skip
    # the projection runs before the convolution it is added to, and the file says so
    assert lowered.tensor_order == ["stem.bias", "stem.weight", "a.bias", "a.weight",
                                    "sc.bias", "sc.weight", "b.bias", "b.weight", "fc.bias",
                                    "fc.weight"]
    assert [t.name for t in tensors] == lowered.tensor_order
    assert ops[1].output_shape == (6, 3, 3) and ops[4].output_shape == (6, 1, 1)


def test_container_carries_the_program():
    lowered, tensors, _ = small_network()
    data = write_container(tensors + [RawTensor("note", np.arange(3))], program=lowered.program)
    container = read_container(data)
    assert container.program == lowered.program
    assert container.program_section.name == PROGRAM_NAME
    assert [t.name for t in container.tensors] == lowered.tensor_order + ["note"]
    golden = golden_decode(data)
    assert golden.status == Status.OK
    assert np.array_equal(golden.sections[0].words, lowered.program.to_words())
    # weights-only bits per weight leave the program out, the whole-file figure keeps it
    assert container.bits_per_weight() > container.bits_per_weight(weights_only=True)


def test_writer_refuses_tensors_out_of_order():
    lowered, tensors, _ = small_network()
    swapped = [tensors[1], tensors[0]] + tensors[2:]
    with pytest.raises(ValueError, match="op 0's bias has 4 values"):
        write_container(swapped, program=lowered.program)
    with pytest.raises(ValueError, match="ends before op 5's weight"):
        write_container(tensors[:-1], program=lowered.program)


def program_with(program: Program, index: int, **changes) -> Program:
    ops = list(program.ops)
    ops[index] = dataclasses.replace(ops[index], **changes)
    return dataclasses.replace(program, ops=tuple(ops))


def broken_programs():
    lowered, _, _ = small_network()
    p = lowered.program
    conv, pool = p.ops[0], p.ops[4]
    yield "kernel", program_with(p, 0, kernel=5), "kernel 5"
    yield "stride", program_with(p, 0, stride=3), "stride 3"
    yield "shift_0", program_with(p, 0, shift=0), "shift 0"
    yield "shift_46", program_with(p, 0, shift=46), "shift 46"
    yield "multiplier_0", program_with(p, 0, multipliers=(0,)), "multiplier outside"
    yield "multiplier_count", program_with(p, 0, multipliers=(1, 2)), "2 multipliers"
    yield "weight_bound", program_with(p, 0, weight_bound=0), "weight bound 0"
    yield "bias_term", program_with(p, 0, bias_multiplier=(1 << 31) - 1,
                                          bias_bound=32767), \
        "bias term"
    yield "bias_fields", program_with(p, 0, has_bias=False), "bias fields without a bias"
    yield "skip_shift", program_with(p, 3, skip_shift=30), "skip shift 30"
    yield "skip_shape", program_with(p, 3, skip_address=p.ops[0].output_address), \
        "skip of shape"
    yield "input_nowhere", program_with(p, 1, input_address=conv.output_address + 1), \
        "no tensor written before"
    yield "in_place", program_with(p, 1, output_address=conv.output_address), \
        "overlaps a tensor it reads"
    yield "memory", program_with(p, 1, output_address=65535), "do not fit"
    yield "pool_fields", program_with(p, 4, shift=3), "must be zero"
    yield "pool_type", program_with(p, 4, output_type=ValueType.U8), "writes S16"
    yield "last_not_vector", dataclasses.replace(p, ops=p.ops[:4]), "not a vector"
    yield "linear_kernel", program_with(p, 5, kernel=1), "must be zero"
    # op 2 writes over part of op 1's output, which op 3 reads afterwards
    yield "dead_input", program_with(p, 2, output_address=p.ops[1].output_address + 1), \
        "op 3 .* no tensor written before"
    del pool


@pytest.mark.parametrize("name, program, message", list(broken_programs()),
                         ids=[c[0] for c in broken_programs()])
def test_each_rule(name, program, message):
    with pytest.raises(ProgramError, match=message):
        program.check()


def test_accumulator_bound_is_exact():
    """fan_in x weight bound x largest input must stay below 2**31: the first value over fails."""
    # 1152 products (3x3 over 128 channels) of 255 by w: the bound allows w up to 7310.
    limit = ((1 << 31) - 1) // (1152 * 255)
    op = Op(Opcode.CONV, ValueType.S16, 128, 1, 1, 1, 3, 1, 0, 512, weight_bound=limit,
            shift=20, multipliers=(1,))
    Program(128, 1, 1, 0, 0, (op,)).check()
    with pytest.raises(ProgramError, match="overflows 32 bits"):
        Program(128, 1, 1, 0, 0, (dataclasses.replace(op, weight_bound=limit + 1),)).check()
    # after a pool the input range is the sums': 4 x 255
    pool = Op(Opcode.POOL, ValueType.S16, 128, 2, 2, 128, input_address=0, output_address=512)
    limit = ((1 << 31) - 1) // (128 * 1020)
    linear = Op(Opcode.LINEAR, ValueType.S16, 128, 1, 1, 2, input_address=512,
                output_address=640, weight_bound=limit, shift=20, multipliers=(1,))
    Program(128, 2, 2, 0, 0, (pool, linear)).check()
    with pytest.raises(ProgramError, match=f"128 x {limit + 1} x 1020"):
        Program(128, 2, 2, 0, 0, (pool, dataclasses.replace(linear, weight_bound=limit + 1))
                ).check()


def with_program_words(data: bytes, words) -> bytes:
    """``data`` (a programmed container) with the program's words replaced, CRC made right."""
    words = np.asarray(words, "<u2").tobytes()
    kind, name_bytes = struct.unpack_from("<HH", data, 148)
    start = 148 + 4 + name_bytes + (name_bytes & 1)
    ndim = struct.unpack_from("<H", data, start)[0]
    data_bytes_at = start + 2 + 4 * ndim + 2
    old = struct.unpack_from("<I", data, data_bytes_at)[0]
    body_end = data_bytes_at + 4 + old
    body = bytearray(data[148:body_end])
    struct.pack_into("<I", body, start - 148 + 2, len(words) // 2)
    struct.pack_into("<I", body, data_bytes_at - 148, len(words))
    body = bytes(body[:data_bytes_at - 148 + 4]) + words
    return data[:148] + body + struct.pack("<I", zlib.crc32(body)) + data[body_end + 4:]


def damaged_program_files():
    lowered, tensors, _ = small_network()
    data = write_container(tensors, program=lowered.program)
    words = lowered.program.to_words()
    for name, program, _ in broken_programs():
        if name == "last_not_vector":
            continue  # it drops ops, so it also leaves coded sections unused
        yield name, with_program_words(data, program.to_words())
    bad = words.copy()
    bad[0] = 0
    yield "no_ops", with_program_words(data, bad)
    bad = words.copy()
    bad[HEADER_WORDS] = 9
    yield "opcode", with_program_words(data, bad)
    bad = words.copy()
    bad[HEADER_WORDS + 11] = 4
    yield "flags", with_program_words(data, bad)
    yield "short", with_program_words(data, words[:-1])
    yield "long", with_program_words(data, np.append(words, 0))


@pytest.mark.parametrize("name, data", list(damaged_program_files()),
                         ids=[c[0] for c in damaged_program_files()])
def test_damaged_program_fields_same_status_in_both_readers(name, data):
    with pytest.raises(ContainerError) as caught:
        read_container(data)
    assert caught.value.status == Status.BAD_PROGRAM
    assert golden_decode(data).status == Status.BAD_PROGRAM
    # to the weight decoder alone, the program is data it passes on its CRC
    assert golden_decode(data, check_program=False).status == Status.OK


def test_value_beyond_its_bound_is_refused():
    lowered, tensors, _ = small_network()
    # fc.weight has 9 levels (|q| up to 4); a program that promises 3 is broken by the data
    tight = program_with(lowered.program, 5, weight_bound=3)
    tight.check()
    data = with_program_words(write_container(tensors, program=lowered.program),
                              tight.to_words())
    assert golden_decode(data).status == Status.BAD_PROGRAM
    with pytest.raises(ContainerError, match="beyond its bound 3"):
        read_container(data)


def test_program_not_first_is_refused():
    lowered, tensors, _ = small_network()
    data = write_container(tensors, program=lowered.program)
    # put a raw section in front: rebuild the file by hand, sections [raw, program, ...]
    raw = write_container([RawTensor("r", np.arange(2, dtype=np.int16))])
    header = 16 + 4 * 32
    raw_section = raw[header + 4:]
    moved = bytearray(data[:header + 4] + raw_section + data[header + 4:])
    struct.pack_into("<H", moved, 14, struct.unpack_from("<H", data, 14)[0] + 1)
    struct.pack_into("<I", moved, header, zlib.crc32(bytes(moved[:header])))
    assert golden_decode(bytes(moved)).status == Status.BAD_PROGRAM
    with pytest.raises(ContainerError, match="must be the first section"):
        read_container(bytes(moved))


def test_extra_coded_section_is_refused():
    lowered, tensors, _ = small_network()
    extra = CodedTensor("extra", np.zeros(4, np.uint8), 3, 1)
    with pytest.raises(ValueError, match="after the last one the program uses"):
        write_container(tensors + [extra], program=lowered.program)


def test_no_skip_constant_matches_the_encoding():
    lowered, _, _ = small_network(skip=False)
    assert all(op.skip_address == NO_SKIP for op in lowered.program.ops)
    words = lowered.program.to_words()
    assert words[HEADER_WORDS + 10] == 0xFFFF and words[HEADER_WORDS + 11] & 2 == 0
