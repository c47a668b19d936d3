"""The container: a whole model in one file that the hardware parses from the stream alone.

docs/FORMAT.md is the byte-by-byte specification; this module writes it and reads it. Reading is
one pass in stream order, checking every field as it arrives, so the first error found is the
one a streaming decoder (the hardware) finds too: :mod:`sw.codec.golden` runs the same parser.
"""

import struct
import zlib
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from sw.codec import fastrans, rans
from sw.codec.program import Program, ProgramError
from sw.codec.rans import FrequencyTable, PayloadExhausted
from sw.format import (
    BASE_VERSION,
    FIRST_VERSION,
    MAGIC,
    MAX_LEVELS,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_SECTION_SYMBOLS,
    MAX_SECTIONS,
    READABLE_VERSIONS,
    VALUE_DTYPES,
    VERSION,
    RawDtype,
    SectionKind,
    Status,
)
from sw.params import CodecParams

__all__ = [
    "CodedTensor", "MappedTensor", "RawTensor", "Tensor", "estimated_section_size", "Container",
    "SectionInfo", "ContainerError", "StreamSection", "ProgramCheck", "PROGRAM_NAME",
    "program_section_size", "write_container",
    "read_container",
    "parse",
]

#: The name the writer gives the PROGRAM section (readers accept any).
PROGRAM_NAME = "program"


class ContainerError(ValueError):
    """A container that cannot be read; ``status`` says why, ``offset`` where (in bytes)."""

    def __init__(self, status: Status, message: str, offset: int):
        super().__init__(f"{message} (at byte {offset})")
        self.status = Status(status)
        self.offset = offset


class _SymbolCoded:
    """What a CODED and a MAPPED tensor share: symbols ``0 .. levels-1``, coded with rANS."""

    @property
    def shape(self) -> tuple:
        return self.symbols.shape

    def counts(self) -> np.ndarray:
        return np.bincount(self.symbols.ravel(), minlength=self.levels)[:self.levels]

    def coding_table(self, params: CodecParams) -> FrequencyTable:
        if self.table is not None:
            return self.table
        return FrequencyTable.from_counts(self.counts(), params.precision_bits)

    def _check_symbols(self):
        if self.symbols.size and (self.symbols.min() < 0 or self.symbols.max() >= self.levels):
            raise ValueError(f"{self.name}: symbols must lie in 0..{self.levels - 1}")
        if self.symbols.size > MAX_SECTION_SYMBOLS:
            raise ValueError(f"{self.name}: more than {MAX_SECTION_SYMBOLS} values in one tensor")
        if self.table is not None and self.table.levels != self.levels:
            raise ValueError(f"{self.name}: table has {self.table.levels} levels, "
                             f"not {self.levels}")


@dataclass(eq=False)
class CodedTensor(_SymbolCoded):
    """A zero-point quantized tensor: ``integer = symbol - zero_point``,
    ``float = integer * scale``.

    Parameters
    ----------
    name : str
    symbols : array of int
        Shaped like the tensor, every value in ``0 .. levels-1``.
    levels : int
        Alphabet size, 1 to 256.
    zero_point : int
        The symbol that stands for the integer 0 (it need not lie inside the alphabet).
    scale : array of float32
        One value (per tensor) or ``shape[0]`` values (per output channel).
    table : FrequencyTable, optional
        The model to code with; by default the one that codes ``symbols`` smallest.
    """

    name: str
    symbols: np.ndarray
    levels: int
    zero_point: int = 0
    scale: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    table: FrequencyTable = None

    def __post_init__(self):
        self.symbols = np.asarray(self.symbols)
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"{self.name}: levels must be in 1..{MAX_LEVELS}, not {self.levels}")
        if not -32768 <= self.zero_point <= 32767 or self.levels - 1 - self.zero_point > 32767:
            raise ValueError(f"{self.name}: zero point {self.zero_point} with {self.levels} "
                             f"levels does not fit int16")
        self._check_symbols()
        if self.scale.ndim != 1 or len(self.scale) not in {1, *self.symbols.shape[:1]}:
            raise ValueError(f"{self.name}: scale must have 1 or shape[0] values")

    @classmethod
    def from_integers(cls, name: str, integers, scale=1.0) -> "CodedTensor":
        """Code integers losslessly: the alphabet spans their range, whether it holds 0 or not."""
        integers = np.asarray(integers)
        low = int(integers.min()) if integers.size else 0
        high = int(integers.max()) if integers.size else 0
        if high - low >= MAX_LEVELS:
            raise ValueError(f"{name}: range {low}..{high} spans more than {MAX_LEVELS} levels")
        symbols = (integers.astype(np.int64) - low).astype(np.uint8)
        return cls(name, symbols, levels=high - low + 1, zero_point=-low, scale=scale)

    @classmethod
    def symmetric(cls, name: str, values, levels: int) -> "CodedTensor":
        """Float ``values`` rounded on ``levels`` (odd) levels around zero, one scale at the peak.

        The biases' quantizer, the one of the project (QAT's export, PTQ, the default model):
        ``q = clamp(round(v / s), -k, k)`` with ``k = levels // 2`` and ``s = max|v| / k`` (1 for
        an all-zero tensor). QAT's forward pass applies the same rule in torch
        (:meth:`sw.quant.qat.QLinear.quantized_bias`).
        """
        values = np.asarray(values, np.float32)
        half = levels // 2
        peak = float(np.abs(values).max()) if values.size else 0.0
        scale = np.float32(peak / half if peak > 0 else 1.0)
        q = np.clip(np.rint(values / scale), -half, half).astype(np.int64)
        return cls(name, (q + half).astype(np.uint8), levels, half, np.array([scale]))

    def integers(self) -> np.ndarray:
        return self.symbols.astype(np.int16) - np.int16(self.zero_point) \
            if self.symbols.size else np.zeros(self.shape, np.int16)

    def dequantize(self) -> np.ndarray:
        scale = self.scale.reshape((-1,) + (1,) * (self.symbols.ndim - 1)) \
            if len(self.scale) > 1 else self.scale[0]
        return (self.integers().astype(np.float32) * scale).astype(np.float32)


@dataclass(eq=False)
class MappedTensor(_SymbolCoded):
    """An integer tensor of at most 256 distinct values, whatever their range: symbol ``s``
    stands for ``values[s]`` (a MAPPED section, docs/FORMAT.md).

    Parameters
    ----------
    name : str
    symbols : array of int
        Shaped like the tensor, every value in ``0 .. len(values)-1``.
    values : 1-d array of an integer dtype
        The value table: 1 to 256 entries, strictly increasing. Its dtype is the tensor's.
    table : FrequencyTable, optional
        The model to code with; by default the one that codes ``symbols`` smallest.
    """

    name: str
    symbols: np.ndarray
    values: np.ndarray
    table: FrequencyTable = None

    def __post_init__(self):
        self.symbols = np.asarray(self.symbols)
        self.values = np.asarray(self.values)
        # numpy's integer dtypes are 8 to 64 bits wide: each is one of VALUE_DTYPES
        if self.values.dtype.kind not in "iu":
            raise ValueError(f"{self.name}: a value table of {self.values.dtype}, not of 8-64-bit "
                             f"integers")
        if self.values.ndim != 1 or not 1 <= len(self.values) <= MAX_LEVELS:
            raise ValueError(f"{self.name}: a value table needs 1 to {MAX_LEVELS} entries")
        if (self.values[1:] <= self.values[:-1]).any():
            raise ValueError(f"{self.name}: the value table must be strictly increasing")
        self._check_symbols()

    @classmethod
    def from_array(cls, name: str, array) -> "MappedTensor":
        """Code an integer array losslessly through the table of its distinct values."""
        array = np.asarray(array)
        if array.dtype.kind not in "iu":
            raise ValueError(f"{name}: a {array.dtype} tensor has no value table")
        values, symbols = np.unique(array, return_inverse=True)
        if len(values) > MAX_LEVELS:
            raise ValueError(f"{name}: {len(values)} distinct values, more than {MAX_LEVELS}")
        if not len(values):   # an empty tensor: one level, no symbol
            values = np.zeros(1, array.dtype)
        return cls(name, symbols.reshape(array.shape).astype(np.uint8), values)

    @property
    def levels(self) -> int:
        return len(self.values)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def array(self) -> np.ndarray:
        """The tensor's values, in its dtype."""
        return self.values[self.symbols]


@dataclass(eq=False)
class RawTensor:
    """A tensor stored as it is (biases, norms, anything not coded)."""

    name: str
    data: np.ndarray

    def __post_init__(self):
        self.data = np.asarray(self.data)
        RawDtype.of(self.data.dtype)

    @property
    def shape(self) -> tuple:
        return self.data.shape


Tensor = Union[CodedTensor, MappedTensor, RawTensor]

#: Tensors whose symbols are rANS coded.
_CODED_TENSORS = (CodedTensor, MappedTensor)


@dataclass
class SectionInfo:
    """Where a section lies in the file and what its bytes are spent on."""

    kind: SectionKind
    name: str
    offset: int
    size: int           #: all bytes of the section, CRC included
    payload_bytes: int  #: coded payload (CODED, MAPPED) or tensor data (RAW)
    table_bytes: int    #: frequency table, and value table (MAPPED)
    header_bytes: int   #: everything else: kind, name, shape, levels, scales, lengths, CRC
    symbol_count: int = 0  #: symbols decoded (CODED, MAPPED)


@dataclass
class Container:
    params: CodecParams
    tensors: list       #: every CODED, MAPPED and RAW section's tensor, in file order (unless
                        #: not kept)
    sections: list      #: one :class:`SectionInfo` per tensor
    file_header_bytes: int
    size: int
    version: int = VERSION
    program: Program = None  #: the integer network (docs/INFERENCE.md), if the file has one
    program_section: SectionInfo = None  #: where the PROGRAM section lies, if there is one

    @property
    def weight_count(self) -> int:
        """Number of coded values (the weights: CODED and MAPPED sections); known also when the
        tensors were not kept."""
        return sum(s.symbol_count for s in self.sections
                   if s.kind in (SectionKind.CODED, SectionKind.MAPPED))

    @property
    def parameter_count(self) -> int:
        """Number of values of every tensor, coded or raw."""
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.tensors)

    def bits_per_weight(self, weights_only: bool = False) -> float:
        """Bits per coded weight.

        The whole-model figure divides every byte of the file (header, raw tensors, CRCs
        included) by the number of weights; ``weights_only`` counts the file header and the
        coded sections but not the raw ones nor the program.
        """
        size = self.size
        if weights_only:
            size -= sum(s.size for s in self.sections if s.kind == SectionKind.RAW)
            size -= self.program_section.size if self.program_section else 0
        return 8 * size / self.weight_count if self.weight_count else float("nan")

    def __getitem__(self, name: str) -> Tensor:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise KeyError(name)


# -- writing -----------------------------------------------------------------------------------

def _pad_even(data: bytes) -> bytes:
    return data + b"\0" * (len(data) & 1)


def _section_head(kind: SectionKind, name: str, shape: tuple) -> bytes:
    name_bytes = name.encode()
    if len(name_bytes) > MAX_NAME_BYTES:
        raise ValueError(f"name longer than {MAX_NAME_BYTES} bytes: {name[:40]}...")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"{name}: more than {MAX_NDIM} dimensions")
    return (struct.pack("<HH", kind, len(name_bytes)) + _pad_even(name_bytes)
            + struct.pack(f"<H{len(shape)}I", len(shape), *shape))


def program_section_size(word_count: int, name: str = PROGRAM_NAME) -> int:
    """Bytes of a PROGRAM section of ``word_count`` words: head, dtype, length, words, CRC."""
    name_bytes = len(name.encode())
    return 2 + 2 + name_bytes + (name_bytes & 1) + 2 + 4 + 2 + 4 + 2 * word_count + 4


def estimated_section_size(tensor: Tensor, params: CodecParams = CodecParams()) -> int:
    """Bytes of ``tensor``'s section: exact for a RAW one; for a coded one (CODED, MAPPED) the
    payload is estimated from the ideal code length under its table (the coder's payload
    stays within a few words of it, docs/FORMAT.md)."""
    head = len(_section_head(SectionKind.RAW, tensor.name, tensor.shape)) + 4   # and CRC
    if isinstance(tensor, RawTensor):
        return head + 2 + 4 + tensor.data.nbytes + (tensor.data.nbytes & 1)
    if isinstance(tensor, CodedTensor):
        fields = 2 + 2 + 2 + 4 * len(tensor.scale)
    else:
        fields = 2 + 2 + tensor.values.nbytes + (tensor.values.nbytes & 1)
    table = tensor.coding_table(params)
    payload = 2 * -(-int(np.ceil(table.cost_bits(tensor.counts()))) // 16)
    frequencies = 2 * tensor.levels if tensor.levels > 1 else 0
    return head + fields + 4 + frequencies + 4 + payload


def write_container(tensors: Sequence[Tensor], params: CodecParams = CodecParams(), *,
                    program: Program = None, fast: bool = True) -> bytes:
    """The container holding ``tensors`` in this order (docs/FORMAT.md).

    With a ``program`` it comes first, as the PROGRAM section, and the coded tensors must
    follow it as it consumes them (docs/INFERENCE.md; :func:`sw.network.lower.order_tensors`
    puts them so): a mismatch raises ``ValueError`` here rather than ``BAD_PROGRAM`` in every
    reader.

    The file's version is :data:`~sw.format.BASE_VERSION` unless a :class:`MappedTensor` needs
    version 3: a file without one stays readable by version-2 readers.
    """
    if len(tensors) + (program is not None) > MAX_SECTIONS:
        raise ValueError(f"more than {MAX_SECTIONS} sections")
    if program is not None:
        program.check()
        check = ProgramCheck(program)
        for tensor in tensors:
            if isinstance(tensor, CodedTensor):
                check.coded_section(tensor.name, tensor.symbols.size, tensor.shape,
                                    tensor.integers())
        check.finish()
    coded = [t for t in tensors if isinstance(t, _CODED_TENSORS)]
    version = max([BASE_VERSION] + [FIRST_VERSION[SectionKind.MAPPED]
                                    for t in coded if isinstance(t, MappedTensor)])
    tables = [t.coding_table(params) for t in coded]
    sections = [(t.symbols.ravel(), table) for t, table in zip(coded, tables)]
    if fast:
        initial_states, payloads = fastrans.encode(sections, params)
    else:
        initial_states, payloads = rans.encode_reference(sections, params)
    payloads = iter(payloads)
    tables = iter(tables)

    out = bytearray(MAGIC + struct.pack("<6H", version, params.state_bits, params.word_bits,
                                        params.precision_bits, params.state_count,
                                        len(tensors) + (program is not None)))
    out += struct.pack(f"<{params.state_count}I", *(int(x) for x in initial_states))
    out += struct.pack("<I", zlib.crc32(out))
    if program is not None:
        words = program.to_words()
        body = _section_head(SectionKind.PROGRAM, PROGRAM_NAME, (len(words),))
        body += struct.pack("<HI", RawDtype.UINT16, 2 * len(words)) + words.tobytes()
        out += body + struct.pack("<I", zlib.crc32(body))
    for tensor in tensors:
        if isinstance(tensor, _CODED_TENSORS):
            table, payload = next(tables), np.asarray(next(payloads), dtype="<u2")
            if isinstance(tensor, CodedTensor):
                body = _section_head(SectionKind.CODED, tensor.name, tensor.shape)
                body += struct.pack("<HhH", tensor.levels, tensor.zero_point, len(tensor.scale))
                body += tensor.scale.astype("<f4").tobytes()
            else:
                dtype = RawDtype.of(tensor.dtype)
                body = _section_head(SectionKind.MAPPED, tensor.name, tensor.shape)
                body += struct.pack("<HH", tensor.levels, dtype)
                body += _pad_even(tensor.values.astype(dtype.numpy).tobytes())
            body += struct.pack("<I", tensor.symbols.size)
            if tensor.levels > 1:
                body += table.frequencies.astype("<u2").tobytes()
            body += struct.pack("<I", len(payload)) + payload.tobytes()
        else:
            data = np.ascontiguousarray(tensor.data)
            body = _section_head(SectionKind.RAW, tensor.name, tensor.shape)
            body += struct.pack("<HI", RawDtype.of(data.dtype), data.nbytes)
            body += _pad_even(data.astype(RawDtype.of(data.dtype).numpy, copy=False).tobytes())
        out += body + struct.pack("<I", zlib.crc32(body))
    return bytes(out)


# -- reading -----------------------------------------------------------------------------------

class _Stream:
    """Little-endian reads that fail as TRUNCATED when the bytes run out."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.position = 0

    def fail(self, status: Status, message: str):
        raise ContainerError(status, message, self.position)

    def take(self, size: int) -> memoryview:
        if size > len(self.data) - self.position:
            self.position = len(self.data)
            self.fail(Status.TRUNCATED, "the container ends early")
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def unpack(self, fmt: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values if len(values) > 1 else values[0]


def parse(data: bytes, params: CodecParams = None, *, fast: bool = True,
          software_checks: bool = True, check_program: bool = True,
          on_section=None, keep_symbols: bool = True, on_symbols=None,
          value_tables: bool = True) -> Container:
    """Read a container in stream order; raise :class:`ContainerError` at the first problem.

    ``params``, when given, is the decoder's: a container with other parameters is refused.
    ``software_checks`` adds the checks of a reader that builds whole tensors (shape against
    count, scale count, text of names, shapes a program expects, trailing bytes); a streaming
    decoder makes only the others, so the golden model turns them off, and then ``tensors`` of
    the result stays empty. Their verdict waits for the stream's own (docs/FORMAT.md,
    "Checks"): the first of them to fail is raised only once the last section has passed every
    stream check, so on every file where a streaming decoder finds an error the reader
    finds the same one.
    ``check_program`` makes the checks of docs/INFERENCE.md on a PROGRAM section and on the
    coded sections after it (``BAD_PROGRAM``): those of whatever runs the program. Without
    them the program is data like a RAW section's, as it is to the weight decoder alone.
    ``on_section(section)`` is called with each :class:`StreamSection` as it is read.
    ``value_tables`` false reads as a decoder built without them (the RTL): a MAPPED section is
    refused with ``UNSUPPORTED`` at its ``kind`` word (docs/FORMAT.md, "Checks").

    Coded sections are decoded :data:`sw.codec.rans.CHUNK_SYMBOLS` symbols at a time;
    ``on_symbols(section, first, symbols)`` gets each chunk as it is decoded, before the
    section's CRC has been checked (as the hardware emits them). With ``keep_symbols`` false
    the chunks are not kept: ``section.symbols`` stays ``None``, ``tensors`` stays empty, and
    the memory used does not grow with the symbol count a section declares. With it, each
    section's symbols are gathered whole: a caller that reads untrusted files sizes them first
    (:func:`sw.io.load.scan_headers`, :func:`sw.io.load.check_size`).
    """
    stream = _Stream(data)
    if bytes(stream.take(len(MAGIC))) != MAGIC:
        stream.fail(Status.BAD_MAGIC, "not a subbit container (bad magic)")
    version = stream.unpack("H")
    if version not in READABLE_VERSIONS:
        stream.fail(Status.BAD_VERSION, f"container version {version}, this reader knows "
                    f"{', '.join(map(str, READABLE_VERSIONS))}")
    state_bits, word_bits, precision_bits, state_count = stream.unpack("4H")
    try:
        found = CodecParams(precision_bits=precision_bits, state_count=state_count,
                            state_bits=state_bits, word_bits=word_bits)
    except ValueError as error:
        stream.fail(Status.PARAM_MISMATCH, str(error))
    if params is not None and found != params:
        stream.fail(Status.PARAM_MISMATCH, f"container has {found}, decoder has {params}")
    params = found
    section_count = stream.unpack("H")
    initial_states = np.array(stream.unpack(f"{state_count}I"), dtype=np.uint64).reshape(-1)
    if (initial_states < params.lower_bound).any():
        stream.fail(Status.BAD_STATE, f"an initial state is below L = {params.lower_bound}")
    header_end = stream.position
    if stream.unpack("I") != zlib.crc32(stream.data[:header_end]):
        stream.fail(Status.CRC_MISMATCH, "file header CRC mismatch")
    file_header_bytes = stream.position

    coder_states = initial_states.copy() if fast else [int(x) for x in initial_states]
    tensors, sections = [], []
    check = program_section = None  # the program's check of the coded sections, and its place
    deferred = []  # the first failure of a software check, raised after the stream's verdict

    def software(check_section, *args):
        """Run a software check; keep its failure for the end instead of raising it."""
        if deferred:
            return None
        try:
            return check_section(*args)
        except ContainerError as error:
            deferred.append(error)
            return None

    for index in range(section_count):
        section, info = _parse_section(stream, index, params, coder_states, fast, version,
                                       keep_symbols, on_symbols, value_tables)
        if section.kind == SectionKind.PROGRAM:
            program_section = info
        else:
            sections.append(info)
        # Program checks follow the section's CRC, like the software checks below.
        try:
            if section.kind == SectionKind.PROGRAM and check_program:
                if software_checks:
                    software(_program_shape, stream, section)
                check = ProgramCheck(_program_of(section))
            elif section.kind == SectionKind.CODED and check is not None:
                check.coded_section(f"section {index}", section.symbol_count, None,
                                    peak=section.peak)
                if software_checks:
                    software(_expected_shape, stream, check, index, section.dims)
        except ProgramError as error:
            stream.fail(Status.BAD_PROGRAM, str(error))
        if software_checks and section.kind != SectionKind.PROGRAM:
            tensor = software(_tensor_of, stream, section, keep_symbols)
            if tensor is not None:
                tensors.append(tensor)
        if on_section is not None:
            on_section(section)
    if any(int(x) != params.lower_bound for x in coder_states):
        stream.fail(Status.STATE_MISMATCH, "final coder states are not the initial state L")
    if check is not None:
        try:
            check.finish()
        except ProgramError as error:
            stream.fail(Status.BAD_PROGRAM, str(error))
    if deferred:
        raise deferred[0]
    if software_checks and stream.position != len(data):
        stream.fail(Status.TRAILING_DATA,
                    f"{len(data) - stream.position} bytes after the last section")
    return Container(params, tensors, sections, file_header_bytes, stream.position, version,
                     check.program if check is not None else None, program_section)


class ProgramCheck:
    """The program's rules on the coded sections that follow it (docs/INFERENCE.md, "Rules").

    Each coded section must be the next tensor the program consumes: as many integers, none
    beyond its bound (and, for software readers that know the shape, that shape); no coded
    section may come after the last, and none may be missing at the end.
    """

    def __init__(self, program: Program):
        self.program = program
        self.expected = program.expected_tensors()
        self.position = 0

    def coded_section(self, where: str, count: int, shape, integers=None, *,
                      peak: int = None) -> None:
        """Check the next coded section: ``count`` integers, ``shape`` (``None``: unknown), and
        either the ``integers`` themselves or their largest magnitude ``peak``."""
        if self.position == len(self.expected):
            raise ProgramError(f"{where}: a coded section after the last one the program uses")
        expected = self.expected[self.position]
        self.position += 1
        what = f"{where}: op {expected.op_index}'s {expected.role}"
        if count != expected.count:
            raise ProgramError(f"{what} has {expected.count} values, the section {count}")
        if shape is not None and tuple(shape) != tuple(expected.shape):
            raise ProgramError(f"{what} is shaped {expected.shape}, the section {tuple(shape)}")
        if peak is None and count:
            peak = int(np.abs(np.asarray(integers, dtype=np.int64)).max())
        if count and peak > expected.bound:
            raise ProgramError(f"{what} has a value beyond its bound {expected.bound}")

    def shape_mismatch(self, shape) -> str:
        """Why ``shape`` is not that of the section last checked, or ``""``."""
        expected = self.expected[self.position - 1]
        if tuple(shape) == tuple(expected.shape):
            return ""
        return (f"op {expected.op_index}'s {expected.role} is shaped {expected.shape}, "
                f"the section {tuple(shape)}")

    def finish(self) -> None:
        if self.position != len(self.expected):
            missing = self.expected[self.position]
            raise ProgramError(f"the file ends before op {missing.op_index}'s {missing.role}")


def _program_of(section: "StreamSection") -> Program:
    """The program of a PROGRAM section (its CRC already checked)."""
    where = f"section {section.index}"
    if section.index != 0:
        raise ProgramError(f"{where}: the program must be the first section")
    if len(section.data) % 2:
        raise ProgramError(f"{where}: a program of {len(section.data)} bytes is not whole words")
    return Program.from_words(np.frombuffer(section.data, dtype="<u2"))


def _program_shape(stream: "_Stream", section: "StreamSection") -> None:
    """The software checks of a PROGRAM section: UTF-8 name, shape of its words."""
    where = f"section {section.index}"
    _checked_name(stream, section.raw_name, where)
    if section.dims != (len(section.data) // 2,) or len(section.data) % 2:
        stream.fail(Status.BAD_SECTION, f"{where}: shape {section.dims} does not hold "
                    f"{len(section.data) // 2} program words")


def _expected_shape(stream: "_Stream", check: ProgramCheck, index: int, shape) -> None:
    """A software check: a coded section has the shape its program expects."""
    problem = check.shape_mismatch(shape)
    if problem:
        stream.fail(Status.BAD_PROGRAM, f"section {index}: {problem}")


@dataclass
class StreamSection:
    """One section as a streaming decoder sees it, before any whole-tensor check."""

    index: int
    kind: SectionKind
    raw_name: bytes             #: ``name``, ``name_bytes`` long, not yet checked as UTF-8
    dims: tuple
    levels: int = 0             #: CODED, MAPPED
    zero_point: int = 0         #: CODED
    scales: np.ndarray = None   #: CODED
    symbols: np.ndarray = None  #: flat, in stream order (CODED, MAPPED, when kept)
    symbol_count: int = 0       #: CODED, MAPPED
    peak: int = 0               #: CODED: the largest ``|symbol - zero_point|`` decoded
    dtype: RawDtype = None      #: of the data (RAW, PROGRAM) or of the value table (MAPPED)
    data: bytes = None          #: the tensor's bytes (RAW), or the program's (PROGRAM)
    values: np.ndarray = None   #: the value table (MAPPED)


def _parse_section(stream: _Stream, index: int, params: CodecParams, coder_states, fast: bool,
                   version: int, keep_symbols: bool = True, on_symbols=None,
                   value_tables: bool = True):
    """Read one section up to and including its CRC; returns it and its byte accounting."""
    start = stream.position
    where = f"section {index}"
    kind = stream.unpack("H")
    if kind not in tuple(SectionKind) or version < FIRST_VERSION[SectionKind(kind)]:
        stream.fail(Status.BAD_SECTION, f"{where}: unknown kind {kind} in a version {version} "
                    f"file")
    kind = SectionKind(kind)
    if kind == SectionKind.MAPPED and not value_tables:
        stream.fail(Status.UNSUPPORTED, f"{where}: a MAPPED section (value table), which this "
                    f"decoder does not implement")
    name_bytes = stream.unpack("H")
    if name_bytes > MAX_NAME_BYTES:
        stream.fail(Status.BAD_SECTION, f"{where}: name of {name_bytes} bytes")
    raw_name = bytes(stream.take(name_bytes + (name_bytes & 1)))[:name_bytes]
    ndim = stream.unpack("H")
    if ndim > MAX_NDIM:
        stream.fail(Status.BAD_SECTION, f"{where}: {ndim} dimensions")
    dims = tuple(int(d) for d in np.atleast_1d(stream.unpack(f"{ndim}I"))) if ndim else ()
    section = StreamSection(index, kind, raw_name, dims)
    table_bytes = 0

    if kind in (SectionKind.CODED, SectionKind.MAPPED):
        zero_point, scales = 0, None
        if kind == SectionKind.CODED:
            levels, zero_point, scale_count = stream.unpack("HhH")
            if not 1 <= levels <= MAX_LEVELS:
                stream.fail(Status.BAD_SECTION, f"{where}: {levels} levels")
            if levels - 1 - zero_point > 32767:
                stream.fail(Status.BAD_SECTION, f"{where}: zero point {zero_point} overflows int16")
            if scale_count == 0:
                stream.fail(Status.BAD_SECTION, f"{where}: no scale")
            scales = np.frombuffer(stream.take(4 * scale_count), dtype="<f4").astype(np.float32)
        else:
            levels, dtype = stream.unpack("HH")
            if not 1 <= levels <= MAX_LEVELS:
                stream.fail(Status.BAD_SECTION, f"{where}: {levels} levels")
            if dtype not in VALUE_DTYPES:
                stream.fail(Status.BAD_SECTION, f"{where}: a value table of dtype {dtype}, not "
                            f"of an integer one")
            section.dtype = RawDtype(dtype)
            values_bytes = levels * section.dtype.numpy.itemsize
            table_bytes += values_bytes + (values_bytes & 1)
            section.values = np.frombuffer(stream.take(values_bytes + (values_bytes & 1)),
                                           dtype=section.dtype.numpy, count=levels)
            if (section.values[1:] <= section.values[:-1]).any():
                stream.fail(Status.BAD_TABLE, f"{where}: the value table is not strictly "
                            f"increasing")
        symbol_count = stream.unpack("I")
        if symbol_count > MAX_SECTION_SYMBOLS:
            stream.fail(Status.BAD_SECTION, f"{where}: {symbol_count} symbols")
        if levels > 1:
            table_start = stream.position
            frequencies = np.frombuffer(stream.take(2 * levels), dtype="<u2").astype(np.int64)
            table_bytes += stream.position - table_start
            if frequencies.sum() != params.total_frequency:
                stream.fail(Status.BAD_TABLE, f"{where}: frequencies sum to {frequencies.sum()}, "
                            f"not {params.total_frequency}")
        else:
            frequencies = np.array([params.total_frequency])
        table = FrequencyTable(frequencies, params.precision_bits)
        payload_words = stream.unpack("I")
        payload_start = stream.position
        available = min(payload_words, (len(stream.data) - payload_start) // 2)
        payload = np.frombuffer(stream.data[payload_start:payload_start + 2 * available],
                                dtype="<u2")
        section.levels, section.zero_point, section.scales = levels, zero_point, scales
        section.symbol_count = symbol_count
        kept = np.empty(symbol_count, np.uint8) if keep_symbols else None
        # The largest |integer| is that of the smallest or the largest symbol decoded.
        seen = [levels, -1]

        def chunk(first, symbols):
            if len(symbols):
                seen[0] = min(seen[0], int(symbols.min()))
                seen[1] = max(seen[1], int(symbols.max()))
            if kept is not None:
                kept[first:first + len(symbols)] = symbols
            if on_symbols is not None:
                on_symbols(section, first, symbols)

        try:
            used = rans.decode_section_chunked(coder_states, symbol_count, table, payload,
                                                params, chunk, fast=fast)
        except PayloadExhausted:
            stream.position = payload_start + 2 * available
            if available < payload_words:
                stream.fail(Status.TRUNCATED, f"{where}: the container ends inside the payload")
            stream.fail(Status.BAD_LENGTH, f"{where}: payload ends before its symbols")
        if used != payload_words:
            stream.position = payload_start + 2 * used
            stream.fail(Status.BAD_LENGTH,
                        f"{where}: {payload_words - used} payload words left over")
        stream.take(2 * payload_words)
        payload_bytes = 2 * payload_words
        section.symbols = kept
        if symbol_count and kind == SectionKind.CODED:
            section.peak = max(abs(seen[0] - zero_point), abs(seen[1] - zero_point))
    else:
        # RAW and PROGRAM: a PROGRAM section's data are u16 words
        dtype = stream.unpack("H")
        if dtype not in tuple(RawDtype):
            stream.fail(Status.BAD_SECTION, f"{where}: unknown dtype {dtype}")
        if kind == SectionKind.PROGRAM and dtype != RawDtype.UINT16:
            stream.fail(Status.BAD_SECTION, f"{where}: a program of dtype {dtype}, not uint16")
        data_bytes = stream.unpack("I")
        section.dtype = RawDtype(dtype)
        section.data = bytes(stream.take(data_bytes + (data_bytes & 1)))[:data_bytes]
        payload_bytes = data_bytes

    body_crc = zlib.crc32(stream.data[start:stream.position])
    if stream.unpack("I") != body_crc:
        stream.fail(Status.CRC_MISMATCH, f"{where}: CRC mismatch")
    size = stream.position - start
    info = SectionInfo(kind, raw_name.decode("utf-8", errors="replace"), start, size,
                       payload_bytes, table_bytes, size - table_bytes - payload_bytes,
                       section.symbol_count)
    return section, info


def _tensor_of(stream: _Stream, section: StreamSection, build: bool = True) -> Tensor:
    """The tensor a section holds, after the software checks (FORMAT.md, "Checks"); ``None``
    when not ``build``: the checks need only the section's counts, not its symbols."""
    where = f"section {section.index}"
    name = _checked_name(stream, section.raw_name, where)
    shape = section.dims
    # Python ints: a product of eight u32 dims overflows int64.
    element_count = 1
    for dim in shape:
        element_count *= dim
    if section.kind in (SectionKind.CODED, SectionKind.MAPPED):
        if element_count != section.symbol_count:
            stream.fail(Status.BAD_SECTION, f"{where}: shape {shape} does not hold "
                        f"{section.symbol_count} values")
        if section.kind == SectionKind.MAPPED:
            return MappedTensor(name, section.symbols.reshape(shape), section.values) \
                if build else None
        if len(section.scales) not in {1, *shape[:1]}:
            stream.fail(Status.BAD_SECTION,
                        f"{where}: {len(section.scales)} scales for shape {shape}")
        return CodedTensor(name, section.symbols.reshape(shape), section.levels,
                           section.zero_point, section.scales) if build else None
    itemsize = section.dtype.numpy.itemsize
    if len(section.data) != element_count * itemsize:
        stream.fail(Status.BAD_SECTION, f"{where}: {len(section.data)} bytes do not hold shape "
                    f"{shape} of {section.dtype.name.lower()}")
    return RawTensor(name, np.frombuffer(section.data, dtype=section.dtype.numpy)
                     .reshape(shape)) if build else None


def _checked_name(stream: _Stream, raw_name: bytes, where: str) -> str:
    try:
        return raw_name.decode("utf-8")
    except UnicodeDecodeError:
        stream.fail(Status.BAD_SECTION, f"{where}: name is not UTF-8")


def read_container(data: bytes, params: CodecParams = None, *, fast: bool = True) -> Container:
    """Read and fully check a container (see :func:`parse`)."""
    return parse(data, params, fast=fast, software_checks=True)
