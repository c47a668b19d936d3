"""The golden model: what a streaming decoder must output for a container, and its verdict.

It is the executable specification of the hardware decoder. It reads the container in stream
order with the same parser as :func:`sw.codec.container.read_container`, minus the checks
that need a whole tensor in hand (docs/FORMAT.md, "Checks"), and reports the first error as a
:class:`sw.format.Status`, exactly as the RTL's status output does.

The RTL has no value tables: it refuses a MAPPED section with ``UNSUPPORTED`` at its ``kind``
word, and so does the golden model unless ``value_tables=True`` asks for a decoder that has
them (the streaming part of the software readers, which then emit the mapped values).

A system that runs the container's program (docs/INFERENCE.md) also makes the program's checks
(``BAD_PROGRAM``); the weight decoder alone passes the PROGRAM section on its CRC, and
``check_program=False`` models that.

Memory: with ``keep_integers=False`` the golden model holds one chunk of symbols at a time
(:data:`sw.codec.rans.CHUNK_SYMBOLS`), whatever the symbol counts the file declares; its callers
that only count or digest the output (``python -m sw verify``, :func:`sw.board.expected_report`)
use that, through ``on_integers``.
"""

from dataclasses import dataclass

import numpy as np

from sw.codec.container import ContainerError, parse
from sw.format import SectionKind, Status
from sw.params import CodecParams

__all__ = ["GoldenSection", "GoldenResult", "golden_decode"]


@dataclass
class GoldenSection:
    """A section as the decoder emits it."""

    index: int                 #: position among all sections of the container
    kind: SectionKind
    zero_point: int = 0
    integers: np.ndarray = None  #: int16, ``symbol - zero_point``, in stream order (CODED, kept)
    words: np.ndarray = None     #: uint16, the program's words (PROGRAM only)
    count: int = 0               #: integers (CODED) or values (MAPPED) emitted, kept or not
    values: np.ndarray = None    #: ``value_table[symbol]`` in its dtype, in stream order
                                 #: (MAPPED, with value tables, kept)


@dataclass
class GoldenResult:
    status: Status
    message: str
    sections: list  #: every section fully read before the first error, as :class:`GoldenSection`
    offset: int = None  #: the byte at which the error was found (``None`` when ``OK``)

    @property
    def coded(self) -> list:
        return [s for s in self.sections if s.kind == SectionKind.CODED]

    @property
    def weight_count(self) -> int:
        """Integers emitted by the sections fully read."""
        return sum(s.count for s in self.coded)

    def integers(self) -> np.ndarray:
        """All decoded integers of all coded sections, in the order the decoder emits them."""
        if any(s.integers is None for s in self.coded):
            raise ValueError("the integers were not kept (golden_decode(keep_integers=False))")
        parts = [s.integers for s in self.coded]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def golden_decode(data: bytes, params: CodecParams = None, *, fast: bool = True,
                  check_program: bool = True, keep_integers: bool = True,
                  on_integers=None, value_tables: bool = False) -> GoldenResult:
    """Decode ``data`` as the hardware does; never raises on a bad container.

    ``params`` are the decoder's (the generator's); a container made with others is refused
    with ``PARAM_MISMATCH``. ``fast`` chooses the compiled decoder (the tests hold it equal to
    the reference one). ``check_program`` adds the checks of the engine that runs the
    container's program (``BAD_PROGRAM``); the decoder alone makes none.

    ``keep_integers`` keeps every coded section's integers (``GoldenSection.integers``), which
    takes 2 bytes per symbol the file declares (a MAPPED section's values, with
    ``value_tables``, up to 8), allocated as each section starts. Without it
    the result holds only their ``count``, and memory does not grow with the symbol count.
    ``on_integers(index, first, integers)`` gets them chunk by chunk as they are emitted (int16,
    ``integers[i]`` is integer ``first + i`` of section ``index``), before the section's CRC
    has arrived, as the hardware emits them: a section that then fails has had part of its
    output passed on, and is not among ``sections``.

    ``value_tables`` decodes MAPPED sections (``GoldenSection.values``, when kept; they are not
    passed to ``on_integers``) where the RTL, and by default this model, reports
    ``UNSUPPORTED``.
    """
    sections = []
    kept = {}

    def chunk(section, first, symbols):
        if not keep_integers and (on_integers is None or section.kind == SectionKind.MAPPED):
            return   # nobody takes this output: not worth making
        if section.kind == SectionKind.MAPPED:
            output = section.values[symbols]
        else:
            output = symbols.astype(np.int16) - np.int16(section.zero_point)
        if keep_integers:
            if section.index not in kept:
                kept.clear()
                kept[section.index] = np.empty(section.symbol_count, output.dtype)
            kept[section.index][first:first + len(output)] = output
        if on_integers is not None and section.kind == SectionKind.CODED:
            on_integers(section.index, first, output)

    def emitted(section, dtype):
        """The section's output as kept (all of it), or ``None`` when not kept."""
        output = kept.pop(section.index, None) if keep_integers else None
        if keep_integers and output is None:
            output = np.zeros(0, dtype)
        return output

    def emit(section):
        if section.kind == SectionKind.CODED:
            sections.append(GoldenSection(section.index, section.kind, section.zero_point,
                                          emitted(section, np.int16),
                                          count=section.symbol_count))
        elif section.kind == SectionKind.MAPPED:
            sections.append(GoldenSection(section.index, section.kind,
                                          count=section.symbol_count,
                                          values=emitted(section, section.values.dtype)))
        elif section.kind == SectionKind.PROGRAM:
            sections.append(GoldenSection(section.index, section.kind,
                                          words=np.frombuffer(section.data[:len(section.data) & ~1],
                                                              dtype="<u2")))
        else:
            sections.append(GoldenSection(section.index, section.kind))

    try:
        parse(data, params, fast=fast, software_checks=False, check_program=check_program,
              on_section=emit, keep_symbols=False, on_symbols=chunk, value_tables=value_tables)
    except ContainerError as error:
        return GoldenResult(error.status, str(error), sections, error.offset)
    return GoldenResult(Status.OK, "ok", sections)
