"""Constants of the container format (docs/FORMAT.md); the RTL generator imports the same names."""

import enum

import numpy as np

__all__ = [
    "MAGIC", "VERSION", "READABLE_VERSIONS", "BASE_VERSION", "FIRST_VERSION", "MAX_LEVELS",
    "MAX_NDIM", "MAX_NAME_BYTES", "MAX_SECTIONS", "MAX_SECTION_SYMBOLS", "INITIAL_STATES_OFFSET",
    "header_crc_offset", "file_header_bytes",
    "SectionKind", "RawDtype", "VALUE_DTYPES", "Status",
]

MAGIC = b"SBIT"
#: The newest version, the one docs/FORMAT.md describes. Version 2 added the PROGRAM section,
#: version 3 the MAPPED one; older files are still read.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: The version written into a file that needs no newer one: a file without MAPPED sections
#: stays readable by version-2 readers (and by decoders built before version 3).
BASE_VERSION = 2
MAX_LEVELS = 256
MAX_NDIM = 8
MAX_NAME_BYTES = 1024
MAX_SECTIONS = 0xFFFF
#: Bounds what a reader allocates for one section before its CRC is checked (256 MiB).
MAX_SECTION_SYMBOLS = 1 << 28
#: Byte offset of ``initial_states`` in the file header: after ``magic``, ``version``, the four
#: parameters and ``section_count`` (docs/FORMAT.md, "File header").
INITIAL_STATES_OFFSET = 16


def header_crc_offset(state_count: int) -> int:
    """Byte offset of ``header_crc``: the end of the ``state_count`` initial states."""
    return INITIAL_STATES_OFFSET + 4 * state_count


def file_header_bytes(state_count: int) -> int:
    """Bytes of the file header, ``header_crc`` included: where the first section starts."""
    return header_crc_offset(state_count) + 4


class SectionKind(enum.IntEnum):
    """The ``kind`` word that opens every section."""
    CODED = 0  #: integer symbols, rANS coded; the decoder expands them
    RAW = 1    #: any other tensor (bias, norm, ...), stored as plain little-endian bytes
    PROGRAM = 2  #: the integer network an inference engine runs (docs/INFERENCE.md); version 2
    MAPPED = 3   #: integer symbols, rANS coded, each standing for an entry of a value table;
                 #: version 3


#: The first version in which each kind may appear; in an older file it is BAD_SECTION.
FIRST_VERSION = {SectionKind.CODED: 1, SectionKind.RAW: 1, SectionKind.PROGRAM: 2,
                 SectionKind.MAPPED: 3}


class RawDtype(enum.IntEnum):
    """The ``dtype`` word of a RAW section."""
    FLOAT32 = 0
    FLOAT16 = 1
    FLOAT64 = 2
    INT8 = 3
    UINT8 = 4
    INT16 = 5
    UINT16 = 6
    INT32 = 7
    UINT32 = 8
    INT64 = 9
    UINT64 = 10
    BOOL = 11

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(_NUMPY_NAMES[self]).newbyteorder("<")

    @classmethod
    def of(cls, dtype) -> "RawDtype":
        name = np.dtype(dtype).name
        for code, numpy_name in _NUMPY_NAMES.items():
            if numpy_name == name:
                return code
        raise ValueError(f"dtype {name} cannot be stored in a container")


#: The ``dtype`` codes a MAPPED section's value table may have: the integer ones.
VALUE_DTYPES = (RawDtype.INT8, RawDtype.UINT8, RawDtype.INT16, RawDtype.UINT16, RawDtype.INT32,
                RawDtype.UINT32, RawDtype.INT64, RawDtype.UINT64)

_NUMPY_NAMES = {
    RawDtype.FLOAT32: "float32", RawDtype.FLOAT16: "float16", RawDtype.FLOAT64: "float64",
    RawDtype.INT8: "int8", RawDtype.UINT8: "uint8", RawDtype.INT16: "int16",
    RawDtype.UINT16: "uint16", RawDtype.INT32: "int32", RawDtype.UINT32: "uint32",
    RawDtype.INT64: "int64", RawDtype.UINT64: "uint64", RawDtype.BOOL: "bool",
}


class Status(enum.IntEnum):
    """Outcome of decoding a container: the golden model's verdict and the RTL's status code.

    The RTL reports the first error it meets and keeps it (sticky) until reset.
    """
    OK = 0
    BAD_MAGIC = 1        #: the first four bytes are not ``MAGIC``
    BAD_VERSION = 2      #: ``version`` is not one of ``READABLE_VERSIONS``
    PARAM_MISMATCH = 3   #: state_bits/word_bits/precision_bits/state_count unusable or not
                         #: the decoder's
    BAD_STATE = 4        #: an initial state outside ``[L, 2**state_bits)``
    BAD_SECTION = 5      #: unknown kind, dtype, name length, ndim, levels or scale count
    BAD_TABLE = 6        #: frequencies do not sum to ``2**precision_bits``, or a value table
                         #: is not strictly increasing
    BAD_LENGTH = 7       #: payload ended before or after the symbols it codes
    CRC_MISMATCH = 8     #: a header or section CRC-32 does not match
    STATE_MISMATCH = 9   #: after the last section a state is not ``L``
    TRUNCATED = 10       #: the input ended early (reported by whatever feeds the decoder)
    TRAILING_DATA = 11   #: bytes after the last section
    BAD_PROGRAM = 12     #: the program breaks a rule of docs/INFERENCE.md, or the coded sections
                         #: do not follow it (made by whatever runs the program: the engine)
    UNSUPPORTED = 13     #: a MAPPED section met by a decoder built without value tables (the
                         #: RTL, docs/HARDWARE.md); software readers decode it
    BAD_IMAGES = 14      #: the board's image set is missing or malformed, or its images are not
                         #: the program's input (made by the inference system, docs/BOARD.md)
