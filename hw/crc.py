"""CRC-32 (zlib, reflected 0xEDB88320) over the 16-bit little-endian words of the container."""

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CRC32_POLY", "crc32_word", "crc32_word_terms", "Crc32Word"]

CRC32_POLY = 0xEDB88320


def crc32_word(crc: int, word: int) -> int:
    """One word of the running (not yet inverted) CRC: low byte first, each byte LSB first."""
    crc ^= word & 0xFFFF
    for _ in range(16):
        crc = (crc >> 1) ^ (CRC32_POLY if crc & 1 else 0)
    return crc


def crc32_word_terms() -> list:
    """For each next-state bit, the set of inputs it is the XOR of.

    Inputs are numbered 0..31 for the CRC bits and 32..47 for the word bits. The update is
    linear over GF(2), so unrolling it symbolically gives a flat XOR per bit: two byte steps in
    one cycle without a 16-deep chain of dependent shifts.
    """
    crc = [frozenset([i]) for i in range(32)]
    for i in range(16):
        crc[i] = crc[i] ^ frozenset([32 + i])
    for _ in range(16):
        feedback = crc[0]
        crc = crc[1:] + [frozenset()]
        for bit in range(32):
            if CRC32_POLY >> bit & 1:
                crc[bit] = crc[bit] ^ feedback
    return crc


class Crc32Word(wiring.Component):
    """Running CRC-32 register fed one 16-bit word per cycle.

    Attributes
    ----------
    word : In(16)
        The word to add when ``en``.
    en : In(1)
        Add ``word`` this cycle.
    restart : In(1)
        Start a new CRC: with ``en``, the word is the first of the new range; alone, the CRC
        returns to its initial value.
    crc : Out(32)
        CRC-32 of the words added since the last restart (final XOR applied), as zlib gives it.
    """

    word: In(16)
    en: In(1)
    restart: In(1)
    crc: Out(32)

    def elaborate(self, platform):
        m = Module()
        state = Signal(32, init=0xFFFFFFFF)
        base = Signal(32)
        m.d.comb += base.eq(state | self.restart.replicate(32))
        inputs = Cat(base, self.word)
        nxt = Cat(*[_xor_of(inputs, terms) for terms in crc32_word_terms()])
        with m.If(self.en):
            m.d.sync += state.eq(nxt)
        with m.Elif(self.restart):
            m.d.sync += state.eq(0xFFFFFFFF)
        m.d.comb += self.crc.eq(~state)
        return m


def _xor_of(inputs, terms):
    bits = [inputs[i] for i in sorted(terms)]
    result = bits[0]
    for bit in bits[1:]:
        result = result ^ bit
    return result
