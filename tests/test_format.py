"""docs/FORMAT.md and the code say the same thing."""

import re
import struct
import zlib
from pathlib import Path

import numpy as np

from sw.codec.container import CodedTensor, write_container
from sw.codec.rans import FrequencyTable, decode_section_reference, encode_reference
from sw.format import Status
from sw.params import CodecParams

FORMAT = (Path(__file__).parent.parent / "docs" / "FORMAT.md").read_text()


def test_worked_example():
    params = CodecParams(precision_bits=4, state_count=2)
    table = FrequencyTable(np.array([2, 13, 1]), 4)
    symbols = np.array([2, 0, 1, 2, 0, 1, 1, 2, 0, 2, 1, 0])
    states, (payload,) = encode_reference([(symbols, table)], params)
    assert states == [0x07751ecf, 0x0004ec41] and payload == [0xec5f]

    rows = re.findall(r"^\| (\d+) \| (\d) \| (0x[0-9a-f]+) \| (\d+) \| (\d) \| (0x[0-9a-f]+) \| "
                      r"(0x[0-9a-f]+|-) \| (0x[0-9a-f]+) \|$", FORMAT, re.M)
    assert len(rows) == len(symbols)
    coder_states = list(states)
    for j, k, before, slot, symbol, _, word, after in rows:
        j, k = int(j), int(k)
        assert k == j % 2 and int(before, 16) == coder_states[k]
        assert int(slot) == coder_states[k] % 16
        # One step of state k alone: a one-state coder over a one-symbol section.
        state = [coder_states[k]]
        decoded, used = decode_section_reference(
            state, 1, table, [] if word == "-" else [int(word, 16)],
            CodecParams(precision_bits=4, state_count=1))
        coder_states[k] = state[0]
        assert decoded[0] == int(symbol) == symbols[j]
        assert int(after, 16) == coder_states[k] and used == (word != "-")
    assert coder_states == [params.lower_bound] * 2


def test_status_table_matches_enum():
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| (\d+) \|", FORMAT, re.M))
    assert {name: int(value) for name, value in rows.items()} == \
        {status.name: status.value for status in Status}


def test_crc_check_value():
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert "0xCBF43926" in FORMAT


def test_header_layout_and_overhead():
    params = CodecParams()
    data = write_container([CodedTensor("ab", np.ones((3, 4), np.uint8), 3, 1)], params)
    magic, version, state_bits, word_bits, precision, state_count, sections = \
        struct.unpack_from("<4s6H", data)
    assert (magic, version, state_bits, word_bits, precision, state_count, sections) == \
        (b"SBIT", 2, 32, 16, 12, 32, 1)
    header = 20 + 4 * params.state_count
    assert struct.unpack_from("<I", data, header - 4)[0] == zlib.crc32(data[:header - 4])
    # FORMAT.md "Overhead": 24 + name + 4 ndim + 4 scale_count + 2 levels around the payload.
    assert len(data) == header + 24 + 2 + 4 * 2 + 4 + 2 * 3


def test_mapped_example_bytes():
    """FORMAT.md's MAPPED example is what the writer writes, up to the payload."""
    from sw.codec.container import MappedTensor
    block = FORMAT[FORMAT.index("Example: an int16 tensor"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    lines = block.strip().splitlines()
    expected = bytes.fromhex(lines[0].replace("|", "") + lines[2].split("|")[0])
    data = write_container([MappedTensor.from_array("t", np.array([-200, 200, 200], np.int16))])
    section = data[20 + 4 * 32:]
    assert section[:len(expected)] == expected
    assert struct.unpack_from("<H", data, 4)[0] == 3
    # FORMAT.md "Overhead": 22 + name + 4 ndim + values + 2 levels around the payload.
    payload_words = struct.unpack_from("<I", section, len(expected))[0]
    assert len(section) == 22 + 2 + 4 + 4 + 2 * 2 + 2 * payload_words
