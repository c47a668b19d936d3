"""Interleaved rANS: the frequency model and the reference coder (the specification in code).

The functions here are the executable form of docs/FORMAT.md section "The code". They are short
and slow on purpose; :mod:`sw.codec.fastrans` does the same work at speed and the tests hold the two
to the same output, bit for bit.

A *section* here is one coded tensor: its symbols and its :class:`FrequencyTable`. The ``K``
coder states run through all sections of a container in order, so they are stored once per file.
"""

from bisect import bisect_right
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sw.params import CodecParams

__all__ = [
    "FrequencyTable", "DecodeError", "PayloadExhausted", "encode_reference",
    "decode_section_reference", "decode_section_chunked", "CHUNK_SYMBOLS", "decode_reference",
    "entropy_bits",
]


class DecodeError(ValueError):
    """The coded data is inconsistent; ``status`` is the :class:`sw.format.Status` it earns."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, eq=False)
class FrequencyTable:
    """A categorical model over symbols ``0 .. levels-1`` with integer frequencies.

    Parameters
    ----------
    frequencies : array of int
        One non-negative frequency per symbol, summing to ``2**precision_bits``. A symbol of
        frequency zero cannot be coded.
    precision_bits : int
    """

    frequencies: np.ndarray
    precision_bits: int

    def __post_init__(self):
        frequencies = np.asarray(self.frequencies, dtype=np.int64)
        if frequencies.ndim != 1 or len(frequencies) == 0:
            raise ValueError("a frequency table needs at least one symbol")
        if (frequencies < 0).any() or frequencies.sum() != 1 << self.precision_bits:
            raise ValueError(
                f"frequencies must be non-negative and sum to 2**{self.precision_bits}")
        frequencies.setflags(write=False)
        object.__setattr__(self, "frequencies", frequencies)

    @classmethod
    def from_counts(cls, counts, precision_bits: int) -> "FrequencyTable":
        """The table that codes symbols with these counts in the fewest bits.

        Every symbol that occurs gets a frequency of at least 1. The cost
        ``-sum(count[s] * log2(freq[s] / 2**P))`` is separable and convex in the frequencies, so
        moving single units to where they save the most, until no move saves anything, reaches
        the optimum. A table with no counts at all puts the whole mass on symbol 0.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 1 or len(counts) == 0 or (counts < 0).any():
            raise ValueError("counts must be a non-empty 1-d array of non-negative integers")
        total_frequency = 1 << precision_bits
        occurring = counts > 0
        if occurring.sum() > total_frequency:
            raise ValueError(
                f"{occurring.sum()} distinct symbols do not fit in 2**{precision_bits} slots")
        frequencies = np.zeros(len(counts), dtype=np.int64)
        if not occurring.any():
            frequencies[0] = total_frequency
            return cls(frequencies, precision_bits)
        frequencies[occurring] = np.maximum(
            1, counts[occurring] * total_frequency // counts.sum())

        weight = counts.astype(np.float64)

        def gain_of_increment():
            with np.errstate(divide="ignore"):
                gain = weight * np.log2((frequencies + 1) / np.maximum(frequencies, 1))
            gain[~occurring] = -np.inf
            return gain

        def loss_of_decrement():
            with np.errstate(divide="ignore", invalid="ignore"):
                loss = weight * np.log2(frequencies / np.maximum(frequencies - 1, 1))
            loss[frequencies <= 1] = np.inf
            return loss

        while frequencies.sum() < total_frequency:
            frequencies[np.argmax(gain_of_increment())] += 1
        while frequencies.sum() > total_frequency:
            frequencies[np.argmin(loss_of_decrement())] -= 1
        while True:
            gain, loss = gain_of_increment(), loss_of_decrement()
            up, down = int(np.argmax(gain)), int(np.argmin(loss))
            if up == down or gain[up] - loss[down] <= 1e-9 * max(1.0, gain[up]):
                break
            frequencies[up] += 1
            frequencies[down] -= 1
        return cls(frequencies, precision_bits)

    @property
    def levels(self) -> int:
        return len(self.frequencies)

    @property
    def cumulative(self) -> np.ndarray:
        """``levels + 1`` entries: symbol ``s`` owns slots ``cumulative[s]`` to
        ``cumulative[s+1]-1``."""
        return np.concatenate([[0], np.cumsum(self.frequencies)])

    def cost_bits(self, counts) -> float:
        """Ideal coded size in bits of symbols with these counts under this table."""
        counts = np.asarray(counts, dtype=np.int64)
        used = counts > 0
        if (self.frequencies[used] == 0).any():
            return float("inf")
        return float(-(counts[used] * np.log2(
            self.frequencies[used] / (1 << self.precision_bits))).sum())


def encode_reference(sections: Sequence[tuple[np.ndarray, FrequencyTable]],
                     params: CodecParams) -> tuple[list[int], list[list[int]]]:
    """Code the symbols of every section with ``K`` interleaved rANS states.

    Returns the ``K`` states the decoder starts from and, per section, its payload words in the
    order the decoder reads them. The encoder walks the sections and symbols backwards, from the
    initial state ``L``, so that the decoder can walk them forwards.
    """
    precision, word_bits = params.precision_bits, params.word_bits
    word_mask = (1 << word_bits) - 1
    states = [params.lower_bound] * params.state_count
    payloads = []
    for symbols, table in reversed(sections):
        frequencies = [int(f) for f in table.frequencies]
        cumulative = [int(c) for c in table.cumulative]
        words = []
        for j in reversed(range(len(symbols))):
            k = j % params.state_count
            symbol = int(symbols[j])
            frequency = frequencies[symbol]
            if frequency == 0:
                raise ValueError(f"symbol {symbol} has frequency 0 and cannot be coded")
            x = states[k]
            # Leave room so that the state after coding stays below 2**state_bits.
            if x >= frequency << (params.state_bits - precision):
                words.append(x & word_mask)
                x >>= word_bits
            states[k] = ((x // frequency) << precision) + x % frequency + cumulative[symbol]
        payloads.append(words[::-1])
    payloads.reverse()
    return states, payloads


class PayloadExhausted(Exception):
    """The decoder needed a payload word beyond the ones it was given."""


def decode_section_reference(states: list[int], symbol_count: int, table: FrequencyTable,
                             payload: Sequence[int], params: CodecParams,
                             first: int = 0) -> tuple[np.ndarray, int]:
    """Decode one section's ``symbol_count`` symbols, updating ``states`` in place.

    Returns the symbols and the number of payload words read. Raises :class:`PayloadExhausted`
    when a renormalisation needs a word past the end of ``payload``. ``first`` is the index
    ``j`` in its section of the first symbol decoded, so that a section can be decoded in
    chunks (:func:`decode_section_chunked`): symbol ``j`` belongs to state ``j mod K``.
    """
    precision, word_bits = params.precision_bits, params.word_bits
    slot_mask = (1 << precision) - 1
    frequencies = [int(f) for f in table.frequencies]
    cumulative = [int(c) for c in table.cumulative]
    symbols = np.empty(symbol_count, dtype=np.uint8)
    position = 0
    for j in range(symbol_count):
        k = (first + j) % params.state_count
        x = states[k]
        slot = x & slot_mask
        # The last symbol whose range starts at or before the slot; zero-frequency symbols own
        # no slots and are passed over.
        symbol = bisect_right(cumulative, slot) - 1
        x = frequencies[symbol] * (x >> precision) + slot - cumulative[symbol]
        if x < params.lower_bound:
            if position == len(payload):
                raise PayloadExhausted
            x = (x << word_bits) | int(payload[position])
            position += 1
        states[k] = x
        symbols[j] = symbol
    return symbols, position


#: Symbols decoded at a time by :func:`decode_section_chunked`: 1 MiB of symbols, so that what a
#: streaming reader holds does not grow with a section's ``symbol_count`` (up to ``2**28``).
CHUNK_SYMBOLS = 1 << 20


def decode_section_chunked(states, symbol_count: int, table: FrequencyTable, payload,
                           params: CodecParams, on_chunk, *, fast: bool = True,
                           chunk_symbols: int = CHUNK_SYMBOLS) -> int:
    """Decode one section ``chunk_symbols`` symbols at a time; returns the payload words read.

    The same coder as :func:`decode_section_reference` (``fast=False``, ``states`` a list of
    int) or :func:`sw.codec.fastrans.decode_section` (``fast=True``, ``states`` a ``uint64`` array),
    run over consecutive chunks with the states and the payload position carried from one to
    the next, so the symbols, the states and the words read are those of one call over the
    whole section. ``on_chunk(first, symbols)`` gets each chunk (``uint8``, ``symbols[i]`` is
    symbol ``first + i``) as soon as it is decoded; a chunk in which the payload runs out is
    not passed on, and :class:`PayloadExhausted` is raised.

    A table in which one symbol owns all ``M`` slots (every one-level section) decodes that
    symbol without touching the state or the payload (``x = M * (x >> P) + x mod M``, which
    stays ``>= L``), so such chunks are made without running the coder: a section declaring
    ``2**28`` symbols of one value costs what writing them out costs, not a decode.
    """
    if fast:
        from sw.codec import fastrans
        decode = fastrans.decode_section
    else:
        decode = decode_section_reference
    if chunk_symbols < 1:
        raise ValueError("chunk_symbols must be positive")
    whole = np.flatnonzero(table.frequencies == 1 << table.precision_bits)
    position = 0
    for first in range(0, symbol_count, chunk_symbols):
        count = min(chunk_symbols, symbol_count - first)
        if len(whole):
            symbols, used = np.full(count, whole[0], dtype=np.uint8), 0
        else:
            symbols, used = decode(states, count, table, payload[position:], params, first)
        position += used
        on_chunk(first, symbols)
    return position


def decode_reference(states: Sequence[int],
                     sections: Sequence[tuple[int, FrequencyTable, Sequence[int]]],
                     params: CodecParams) -> list[np.ndarray]:
    """Decode ``(symbol_count, table, payload_words)`` sections starting from ``states``.

    Raises :class:`DecodeError` when a payload runs out, has words left over, or the final
    states are not ``L``: the checks the hardware makes too.
    """
    from sw.format import Status

    states = [int(x) for x in states]
    if len(states) != params.state_count:
        raise ValueError(f"{len(states)} states given for state_count {params.state_count}")
    decoded = []
    for index, (symbol_count, table, payload) in enumerate(sections):
        try:
            symbols, used = decode_section_reference(states, symbol_count, table, payload, params)
        except PayloadExhausted:
            raise DecodeError(f"section {index}: payload ends before its symbols",
                              Status.BAD_LENGTH) from None
        if used != len(payload):
            raise DecodeError(f"section {index}: {len(payload) - used} payload words left over",
                              Status.BAD_LENGTH)
        decoded.append(symbols)
    if any(x != params.lower_bound for x in states):
        raise DecodeError("final coder states are not the initial state L",
                          Status.STATE_MISMATCH)
    return decoded


def entropy_bits(counts) -> float:
    """Empirical entropy of a histogram, in bits per symbol, times its total: the fewest bits
    any code of these symbols under one fixed model could take.

    The one entropy of the project: ``inspect``, the benchmarks and the quantizers' rate
    (:meth:`sw.quant.qat.ZeroPointQuantizer.hard_bits`) all call it.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(float(-(p * np.log2(p)).sum()) * total)
