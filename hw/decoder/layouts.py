"""Payloads of the decoder's ports and of the streams between its components."""

from amaranth import signed, unsigned
from amaranth.lib import data

__all__ = ["WeightBatch", "StatusLayout", "ProgramWord", "SectionDescriptor", "StateWord",
           "SymbolBatch"]


class WeightBatch(data.StructLayout):
    """Payload of the ``weights`` stream: up to ``lanes`` decoded integers of one section.

    Parameters
    ----------
    lanes : int

    Attributes
    ----------
    values : ArrayLayout(signed(16), lanes)
        ``q = symbol - zero_point``; lane ``n`` is the ``n``-th symbol of this transfer.
    count : range(lanes + 1)
        Valid values, from lane 0; below ``lanes`` only on a section's last transfer.
    section : unsigned(16)
        Index of the section among all sections of the container (raw ones included).
    first, last : 1
        First and last transfer of that coded section.
    """

    def __init__(self, lanes: int):
        super().__init__({
            "values": data.ArrayLayout(signed(16), lanes),
            "count": range(lanes + 1),
            "section": unsigned(16),
            "first": 1,
            "last": 1,
        })


#: The ``status`` output: ``code`` is a :class:`sw.format.Status`, sticky until reset.
StatusLayout = data.StructLayout({"done": 1, "error": 1, "code": 4})

#: Payload of the ``program`` stream: one data word of a PROGRAM section. ``word`` is the
#: little-endian u16 as the file holds it; ``last`` marks the section's final data word, and
#: ``partial`` that this final word holds one byte only (``data_bytes`` odd: its high byte is
#: the pad), which no valid program has (docs/INFERENCE.md).
ProgramWord = data.StructLayout({"word": unsigned(16), "last": 1, "partial": 1})

#: What the parser tells the state ring of a CODED section as its payload starts: its
#: ``symbol_count``, and three verdicts on it made as its words arrived (so that the ring's
#: counters load from flip-flops): ``empty`` (0 symbols), ``small`` (at most ``lanes``: one
#: step) and ``narrow`` (below ``2**issue_bits``, :func:`hw.decoder.ring.issue_bits`).
SectionDescriptor = data.StructLayout({"symbol_count": unsigned(32), "empty": 1, "small": 1,
                                       "narrow": 1})


class StateWord(data.StructLayout):
    """One of the header's ``initial_states``, as the parser hands it to the state ring.

    Parameters
    ----------
    lanes : int

    Attributes
    ----------
    value : unsigned(32)
        The state.
    lane : range(lanes)
        Its lane: state ``i`` of the file is state ``i // lanes`` of lane ``i % lanes``.
    """

    def __init__(self, lanes: int):
        super().__init__({"value": unsigned(32), "lane": range(lanes)})


class SymbolBatch(data.StructLayout):
    """A committed step of the state ring: the symbols it decoded, before the zero point.

    Parameters
    ----------
    lanes : int

    Attributes
    ----------
    symbols : ArrayLayout(unsigned(8), lanes)
        Lane ``n``'s symbol (meaningless when the section has a single symbol: the output
        stage puts that in).
    count : range(lanes + 1)
    first, last : 1
        As in :class:`WeightBatch`.
    """

    def __init__(self, lanes: int):
        super().__init__({
            "symbols": data.ArrayLayout(unsigned(8), lanes),
            "count": range(lanes + 1),
            "first": 1,
            "last": 1,
        })
