"""A container's sizes before decoding it, and the public API to load one into torch.

:func:`scan_headers` reads only the fields that size a container (shapes, symbol counts,
payload and data lengths) and skips payloads and data, so a caller can say what decoding will
allocate, and refuse it, before anything is allocated: a coded section of one level carries no
payload, so a file of a few hundred bytes can declare ``2**28`` symbols.

:func:`load_state_dict` is what a torch user calls::

    from sw.io.load import load_state_dict
    model.load_state_dict(load_state_dict("model.sbit"))
"""

import struct
from dataclasses import dataclass, field

import numpy as np

from sw.format import (
    FIRST_VERSION,
    MAGIC,
    MAX_LEVELS,
    MAX_NAME_BYTES,
    MAX_NDIM,
    MAX_SECTION_SYMBOLS,
    READABLE_VERSIONS,
    VALUE_DTYPES,
    RawDtype,
    SectionKind,
)
from sw.params import CodecParams

__all__ = ["DEFAULT_MAX_VALUES", "SectionHeader", "HeaderScan", "scan_headers", "check_size",
           "byte_size",
           "decoded_arrays", "load_arrays", "load_state_dict"]

#: Values a decode may produce unless the caller raises the limit: 2**28, the most one coded
#: section may hold (docs/FORMAT.md), which is 512 MiB as int16 and 1 GiB as float32.
DEFAULT_MAX_VALUES = 1 << 28


@dataclass
class SectionHeader:
    """The sizing fields of one section, as declared by its header (not checked by CRC)."""

    index: int
    kind: SectionKind
    offset: int                 #: byte offset of its ``kind`` field
    dims: tuple = ()
    symbol_count: int = 0       #: CODED, MAPPED: symbols the decoder will produce
    levels: int = 0             #: CODED, MAPPED
    payload_words: int = 0      #: CODED, MAPPED: 16-bit payload words
    dtype: RawDtype = None      #: RAW, and MAPPED (its value table's, so its tensor's)
    data_bytes: int = 0         #: RAW

    @property
    def values(self) -> int:
        """Values decoding this section produces: its symbols, or its raw elements."""
        if self.kind in (SectionKind.CODED, SectionKind.MAPPED):
            return self.symbol_count
        if self.kind == SectionKind.PROGRAM:
            return 0   # the program is no tensor: decode does not output it
        return self.data_bytes // self.dtype.numpy.itemsize if self.dtype is not None else 0


@dataclass
class HeaderScan:
    """What :func:`scan_headers` found.

    ``complete`` is false when the scan stopped early, at the first field that is missing or
    that a reader refuses (:mod:`sw.codec.container` then stops at the same place or before it, e.g.
    at a CRC this scan does not check); ``sections`` then holds what was read up to there, the
    section it stopped in included once its symbol count was read.
    """

    params: CodecParams = None
    section_count: int = 0       #: as the file header declares it
    header_bytes: int = 0        #: file header, CRC included
    sections: list = field(default_factory=list)
    complete: bool = False
    problem: str = ""            #: why the scan stopped, when not ``complete``

    @property
    def values(self) -> int:
        """Values all scanned sections decode to (coded symbols and raw elements)."""
        return sum(s.values for s in self.sections)

    @property
    def symbols(self) -> int:
        """Coded symbols of all scanned sections."""
        return sum(s.symbol_count for s in self.sections)


class _Short(Exception):
    """The scan cannot go on: truncated, or a field a reader refuses."""


def scan_headers(data: bytes) -> HeaderScan:
    """Read the sizing fields of every section of a container, without decoding it.

    Never raises on a damaged container: the result says how far it got. Makes the range
    checks of :func:`sw.codec.container.parse` that bound sizes (kind, name length, ``ndim``,
    levels, scale count, ``symbol_count``, dtype) but no CRC, table or payload check.

    Parameters
    ----------
    data : bytes
        The container, or as much of it as there is.

    Returns
    -------
    HeaderScan
    """
    scan = HeaderScan()
    view = memoryview(data)
    position = 0

    def take(fmt):
        nonlocal position
        size = struct.calcsize("<" + fmt)
        if position + size > len(view):
            raise _Short("the container ends early")
        values = struct.unpack_from("<" + fmt, view, position)
        position += size
        return values if len(values) > 1 else values[0]

    def skip(size):
        nonlocal position
        if position + size > len(view):
            raise _Short("the container ends early")
        position += size

    try:
        if bytes(view[:4]) != MAGIC:
            raise _Short("not a subbit container (bad magic)")
        position = 4
        version = take("H")
        if version not in READABLE_VERSIONS:
            raise _Short(f"container version {version}, this scanner knows "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
        state_bits, word_bits, precision_bits, state_count = take("4H")
        try:
            scan.params = CodecParams(precision_bits=precision_bits, state_count=state_count,
                                      state_bits=state_bits, word_bits=word_bits)
        except ValueError as error:
            raise _Short(str(error)) from None
        scan.section_count = take("H")
        skip(4 * state_count + 4)
        scan.header_bytes = position
        for index in range(scan.section_count):
            offset = position
            kind = take("H")
            if kind not in tuple(SectionKind) or version < FIRST_VERSION[SectionKind(kind)]:
                raise _Short(f"section {index}: unknown kind {kind}")
            name_bytes = take("H")
            if name_bytes > MAX_NAME_BYTES:
                raise _Short(f"section {index}: name of {name_bytes} bytes")
            skip(name_bytes + (name_bytes & 1))
            ndim = take("H")
            if ndim > MAX_NDIM:
                raise _Short(f"section {index}: {ndim} dimensions")
            dims = tuple(np.atleast_1d(take(f"{ndim}I")).tolist()) if ndim else ()
            section = SectionHeader(index, SectionKind(kind), offset, dims)
            if section.kind == SectionKind.CODED:
                levels, zero_point, scale_count = take("HhH")
                if not 1 <= levels <= MAX_LEVELS or levels - 1 - zero_point > 32767 \
                        or scale_count == 0:
                    raise _Short(f"section {index}: bad levels, zero point or scale count")
                skip(4 * scale_count)
            if section.kind == SectionKind.MAPPED:
                levels, dtype = take("HH")
                if not 1 <= levels <= MAX_LEVELS or dtype not in VALUE_DTYPES:
                    raise _Short(f"section {index}: bad levels or value dtype")
                section.dtype = RawDtype(dtype)
                values_bytes = levels * section.dtype.numpy.itemsize
                skip(values_bytes + (values_bytes & 1))
            if section.kind in (SectionKind.CODED, SectionKind.MAPPED):
                symbol_count = take("I")
                if symbol_count > MAX_SECTION_SYMBOLS:
                    raise _Short(f"section {index}: {symbol_count} symbols")
                section.levels, section.symbol_count = levels, symbol_count
                # From here a reader allocates this section's symbols: count it even if the
                # rest is missing.
                scan.sections.append(section)
                if levels > 1:
                    skip(2 * levels)
                section.payload_words = take("I")
                skip(2 * section.payload_words)
            else:   # RAW, and PROGRAM laid out as one
                dtype = take("H")
                if dtype not in tuple(RawDtype) or \
                        (section.kind == SectionKind.PROGRAM and dtype != RawDtype.UINT16):
                    raise _Short(f"section {index}: unknown dtype {dtype}")
                section.dtype = RawDtype(dtype)
                section.data_bytes = take("I")
                skip(section.data_bytes + (section.data_bytes & 1))
                scan.sections.append(section)
            skip(4)   # section_crc
        scan.complete = True
    except _Short as stop:
        scan.problem = str(stop)
    return scan


def check_size(scan: HeaderScan, max_values: int, source) -> None:
    """Refuse to decode more than ``max_values`` values.

    Parameters
    ----------
    scan : HeaderScan
    max_values : int
    source : str or Path
        Named in the message.

    Raises
    ------
    ValueError
        One line: how many values the file declares, what they take, and how to allow them.
    """
    values = scan.values
    if values > max_values:
        raise ValueError(f"{source}: declares {values:,} values ({byte_size(2 * values)} as "
                         f"int16, {byte_size(4 * values)} as float32), above the limit of "
                         f"{max_values:,}; raise it with --max-values if this is expected")


def byte_size(size: int) -> str:
    """``size`` bytes for people: ``"512 B"``, ``"1.5 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024


def decoded_arrays(container, dequantize: bool) -> dict:
    """Named numpy arrays of a read :class:`sw.codec.container.Container`.

    Parameters
    ----------
    container : sw.codec.container.Container
    dequantize : bool
        Coded tensors as float32 (``integer * scale``) instead of their int16 integers.

    Returns
    -------
    dict of str to numpy.ndarray
        Raw tensors as stored (copies, so they are writable), MAPPED ones in their dtype
        (they have no scale: ``dequantize`` leaves them as they are).
    """
    from sw.codec.container import CodedTensor, MappedTensor
    arrays = {}
    for tensor in container.tensors:
        if isinstance(tensor, CodedTensor):
            arrays[tensor.name] = tensor.dequantize() if dequantize else tensor.integers()
        elif isinstance(tensor, MappedTensor):
            arrays[tensor.name] = tensor.array()
        else:
            arrays[tensor.name] = tensor.data.copy()
    return arrays


def load_arrays(path, *, dequantize: bool = True,
                max_values: int = DEFAULT_MAX_VALUES) -> dict:
    """Decode a container file into named numpy arrays.

    Parameters
    ----------
    path : str or Path
    dequantize : bool, default True
        Coded tensors as float32 (``integer * scale``); otherwise their int16 integers.
    max_values : int, default :data:`DEFAULT_MAX_VALUES`
        Refuse a file that declares more values than this, before decoding it.

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    OSError
        The file is missing or a directory.
    ValueError
        The container is damaged (:class:`sw.codec.container.ContainerError`) or too large.
    """
    from sw.codec.container import read_container
    from sw.io.tensors import checked_input
    path = checked_input(path)
    data = path.read_bytes()
    check_size(scan_headers(data), max_values, path)
    return decoded_arrays(read_container(data), dequantize)


def load_state_dict(path, *, max_values: int = DEFAULT_MAX_VALUES) -> dict:
    """A container as a torch state dict: ``model.load_state_dict(load_state_dict(path))``.

    Coded tensors come back dequantized to float32 (``(symbol - zero_point) * scale``, per
    tensor or per output channel); raw tensors as they were stored (a bfloat16 tensor was
    widened to float32 by ``encode``). torch is imported here only.

    Parameters
    ----------
    path : str or Path
        A ``.sbit`` container.
    max_values : int, default :data:`DEFAULT_MAX_VALUES`
        Refuse a file that declares more values than this, before decoding it.

    Returns
    -------
    dict of str to torch.Tensor
        In the container's order, on the CPU.

    Raises
    ------
    OSError
        The file is missing or a directory.
    ValueError
        The container is damaged or too large.
    """
    import torch
    return {name: torch.from_numpy(array)
            for name, array in load_arrays(path, max_values=max_values).items()}
