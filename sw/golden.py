"""The golden model: what a streaming decoder must output for a container, and its verdict.

It is the executable specification of the hardware decoder. It reads the container in stream
order with the same parser as :func:`sw.container.read_container`, minus the checks that need a
whole tensor in hand (docs/FORMAT.md, "Checks"), and reports the first error as a
:class:`sw.format.Status`, exactly as the RTL's status output does.

A system that runs the container's program (docs/INFERENCE.md) also makes the program's checks
(``BAD_PROGRAM``); the weight decoder alone passes the PROGRAM section on its CRC, and
``check_program=False`` models that.
"""

from dataclasses import dataclass

import numpy as np

from .container import ContainerError, parse
from .format import SectionKind, Status
from .params import CodecParams

__all__ = ["GoldenSection", "GoldenResult", "golden_decode"]


@dataclass
class GoldenSection:
    """A section as the decoder emits it."""

    index: int                 #: position among all sections of the container
    kind: SectionKind
    zero_point: int = 0
    integers: np.ndarray = None  #: int16, ``symbol - zero_point``, in stream order (CODED only)
    words: np.ndarray = None     #: uint16, the program's words (PROGRAM only)


@dataclass
class GoldenResult:
    status: Status
    message: str
    sections: list  #: every section fully read before the first error, as :class:`GoldenSection`

    @property
    def coded(self) -> list:
        return [s for s in self.sections if s.kind == SectionKind.CODED]

    def integers(self) -> np.ndarray:
        """All decoded integers of all coded sections, in the order the decoder emits them."""
        parts = [s.integers for s in self.coded]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def golden_decode(data: bytes, params: CodecParams = None, *, fast: bool = True,
                  check_program: bool = True) -> GoldenResult:
    """Decode ``data`` as the hardware does; never raises on a bad container.

    ``params`` are the decoder's (the generator's); a container made with others is refused
    with ``PARAM_MISMATCH``. ``fast`` chooses the compiled decoder (the tests hold it equal to
    the reference one). ``check_program`` adds the checks of the engine that runs the
    container's program (``BAD_PROGRAM``); the decoder alone makes none.
    """
    sections = []

    def emit(section):
        if section.kind == SectionKind.CODED:
            integers = section.symbols.astype(np.int16) - np.int16(section.zero_point)
            sections.append(GoldenSection(section.index, section.kind, section.zero_point,
                                          integers))
        elif section.kind == SectionKind.PROGRAM:
            sections.append(GoldenSection(section.index, section.kind,
                                          words=np.frombuffer(section.data[:len(section.data) & ~1],
                                                              dtype="<u2")))
        else:
            sections.append(GoldenSection(section.index, section.kind))

    try:
        parse(data, params, fast=fast, software_checks=False, check_program=check_program,
              on_section=emit)
    except ContainerError as error:
        return GoldenResult(error.status, str(error), sections)
    return GoldenResult(Status.OK, "ok", sections)
