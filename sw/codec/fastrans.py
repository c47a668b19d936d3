"""The fast path of :mod:`sw.codec.rans`: the same code, compiled with numba.

Every function here returns exactly what its reference twin in :mod:`sw.codec.rans` returns; the
tests compare them on random and corner-case input. Tables are flattened into arrays so the
compiled loops see nothing but integers.

numba is imported and the loops compiled (or loaded from numba's cache) on the first call of
:func:`encode` or :func:`decode_section`, not on import: importing numba pulls in scipy and
costs about half a second, which ``python -m sw verify`` of a small file should not pay when
it decodes with the reference coder (:mod:`sw.cli.files`).
"""

import functools

import numpy as np

from sw.codec.rans import FrequencyTable, PayloadExhausted
from sw.params import CodecParams

__all__ = ["encode", "decode_section", "slot_symbols"]


def slot_symbols(table: FrequencyTable) -> np.ndarray:
    """Symbol owning each of the ``2**P`` slots: the decoder's lookup table."""
    return np.repeat(np.arange(table.levels, dtype=np.uint8), table.frequencies)


def _encode_section(states, symbols, frequencies, cumulative, precision, state_bits, words):
    """Encode one section backwards; returns how many words were appended to ``words``."""
    state_count = states.shape[0]
    shift = state_bits - precision
    emitted = 0
    k = (symbols.shape[0] - 1) % state_count
    for j in range(symbols.shape[0] - 1, -1, -1):
        symbol = symbols[j]
        # States stay below 2**32 between symbols: 32-bit division is what makes this fast.
        frequency = np.uint32(frequencies[symbol])
        x = np.uint32(states[k])
        if np.uint64(x) >= np.uint64(frequency) << np.uint64(shift):
            words[emitted] = x & np.uint32(0xFFFF)
            emitted += 1
            x >>= np.uint32(16)
        quotient = x // frequency
        states[k] = (np.uint64(quotient) << np.uint64(precision)) \
            + np.uint64(x - quotient * frequency) + np.uint64(cumulative[symbol])
        k = k - 1 if k else state_count - 1
    return emitted


def _decode_section(states, symbol_count, slot_symbol, frequencies, cumulative, precision,
                    lower_bound, payload, symbols, k):
    """Decode one section (or a chunk of it, its first symbol of state ``k``); returns the words
    read, or -1 when the payload ran out."""
    state_count = states.shape[0]
    slot_mask = np.uint64((1 << precision) - 1)
    position = 0
    for j in range(symbol_count):
        x = np.uint64(states[k])
        slot = x & slot_mask
        symbol = slot_symbol[slot]
        x = np.uint64(frequencies[symbol]) * (x >> np.uint64(precision)) + slot \
            - np.uint64(cumulative[symbol])
        if x < lower_bound:
            if position == payload.shape[0]:
                return -1
            x = (x << np.uint64(16)) | np.uint64(payload[position])
            position += 1
        states[k] = x
        symbols[j] = symbol
        k = k + 1 if k + 1 < state_count else 0
    return position


@functools.cache
def _compiled():
    """The two loops compiled with numba, built on first use: ``(encode, decode)``.

    ``cache=True`` keeps numba's on-disk cache working as with a decorator: it is keyed by the
    Python function's file and qualified name, which are the same here.
    """
    import numba
    jit = numba.njit(cache=True, nogil=True)
    return jit(_encode_section), jit(_decode_section)


def encode(sections, params: CodecParams) -> tuple[np.ndarray, list[np.ndarray]]:
    """Same as :func:`sw.codec.rans.encode_reference`; states as ``uint64``, payloads as
    ``uint16``."""
    states = np.full(params.state_count, params.lower_bound, dtype=np.uint64)
    payloads = []
    for symbols, table in reversed(sections):
        symbols = np.ascontiguousarray(symbols).ravel()
        if len(symbols) and (table.frequencies[symbols] == 0).any():
            raise ValueError("a symbol of frequency 0 cannot be coded")
        # At most one word per symbol.
        words = np.empty(len(symbols), dtype=np.uint16)
        emitted = _compiled()[0](states, symbols, table.frequencies, table.cumulative,
                                 params.precision_bits, params.state_bits, words)
        payloads.append(words[:emitted][::-1].copy())
    payloads.reverse()
    return states, payloads


def decode_section(states: np.ndarray, symbol_count: int, table: FrequencyTable, payload,
                   params: CodecParams, first: int = 0) -> tuple[np.ndarray, int]:
    """Same as :func:`sw.codec.rans.decode_section_reference`; ``states`` is a ``uint64`` array."""
    symbols = np.empty(symbol_count, dtype=np.uint8)
    used = _compiled()[1](states, symbol_count, slot_symbols(table), table.frequencies,
                          table.cumulative, params.precision_bits, np.uint64(params.lower_bound),
                          np.asarray(payload, dtype=np.uint16), symbols,
                          first % params.state_count)
    if used < 0:
        raise PayloadExhausted
    return symbols, used
