"""CRC-32 (zlib's) over the decoder's output beats of up to ``lanes`` int16 values.

The board system checks the decoded weights with it: the CRC runs over the int16 outputs as
little-endian bytes, in emission order, so ``zlib.crc32(integers.astype("<i2").tobytes())`` in
software gives the same number.

:mod:`hw.crc` (the decoder's) absorbs one 16-bit word per cycle; the decoder emits ``lanes``
values per cycle, so this unit derives the ``16 * lanes``-bit update the same way (running the
bit-serial algorithm symbolically over GF(2)) with the same polynomial.
"""

from amaranth import Cat, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .crc import CRC32_POLY, Crc32Word

__all__ = ["crc32_update_masks", "WeightCRC"]


def crc32_update_masks(data_bits: int) -> list:
    """Masks of the parallel CRC-32 update for ``data_bits`` bits at once.

    Bit ``i`` of the new (un-inverted) state is the XOR of the inputs selected by mask ``i``:
    mask bits ``0..31`` select old state bits and bits ``32..32+data_bits-1`` select data bits.
    Data bit ``0`` enters first, which for little-endian bytes is the value's bit 0 (CRC-32 is
    reflected: each byte enters least significant bit first).
    """
    state = [1 << i for i in range(32)]  # each state bit as the set of inputs it XORs
    for bit in range(data_bits):
        feedback = state[0] ^ (1 << (32 + bit))
        state = state[1:] + [0]
        state = [s ^ (feedback if (CRC32_POLY >> i) & 1 else 0) for i, s in enumerate(state)]
    return state


def _apply(masks, state, data_bits) -> list:
    inputs = Cat(state, data_bits)
    out = []
    for mask in masks:
        selected = [inputs[i] for i in range(mask.bit_length()) if (mask >> i) & 1]
        out.append(Cat(*selected).xor() if selected else 0)
    return out


class WeightCRC(wiring.Component):
    """CRC-32 of a stream of beats of up to ``lanes`` signed 16-bit values.

    With ``wide``, a full beat (``count == lanes``) is absorbed in one cycle and a partial one
    (the last beat of a section) one value per cycle: one ``16 * lanes``-bit XOR network plus
    one 16-bit network instead of one per count. Without it every beat takes one cycle per
    value through :class:`hw.crc.Crc32Word` alone (about a third of the logic at 4 lanes),
    with ``data.ready`` low meanwhile.

    Parameters
    ----------
    lanes : int
        Values per beat.
    wide : bool
        Absorb full beats in one cycle.

    Attributes
    ----------
    data : In(stream.Signature(StructLayout(values, count)))
        ``values[0 .. count-1]`` are absorbed, lane 0 first, each as two little-endian bytes.
    clear : In(1)
        Restart at the empty message (takes priority over ``data``).
    value : Out(32)
        CRC-32 of everything absorbed since reset or ``clear``.
    """

    def __init__(self, lanes: int, wide: bool = True):
        if lanes < 1:
            raise ValueError(f"lanes must be positive, not {lanes}")
        self.lanes = lanes
        self.wide = wide
        self.beat_layout = data.StructLayout({
            "values": data.ArrayLayout(signed(16), lanes),
            "count": range(lanes + 1),
        })
        super().__init__({
            "data": In(stream.Signature(self.beat_layout)),
            "clear": In(1),
            "value": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        if not self.wide and lanes > 1:
            return self._serial(m)
        state = Signal(32, init=0xFFFFFFFF)
        m.d.comb += self.value.eq(~state)

        beat = self.data.payload
        full_next = Cat(*_apply(crc32_update_masks(16 * lanes), state, beat.values.as_value()))

        if lanes == 1:
            with m.If(self.clear):
                m.d.sync += state.eq(0xFFFFFFFF)
            with m.Elif(self.data.valid):
                m.d.comb += self.data.ready.eq(1)
                with m.If(beat.count == 1):
                    m.d.sync += state.eq(full_next)
            return m

        # Partial beat: value ``index`` per cycle; the beat is taken with its last value.
        index = Signal(range(lanes))
        current = Signal(16)
        m.d.comb += current.eq(beat.values.as_value().word_select(index, 16))
        one_next = Cat(*_apply(crc32_update_masks(16), state, current))

        with m.If(self.clear):
            m.d.sync += [state.eq(0xFFFFFFFF), index.eq(0)]
        with m.Elif(self.data.valid):
            with m.If(beat.count == lanes):
                m.d.comb += self.data.ready.eq(1)
                m.d.sync += state.eq(full_next)
            with m.Elif(beat.count == 0):
                m.d.comb += self.data.ready.eq(1)
            with m.Else():
                m.d.sync += state.eq(one_next)
                self._next_value(m, index)
        return m

    def _next_value(self, m, index):
        """Step ``index`` through the beat's values, one a cycle; take the beat with its last."""
        with m.If(index == self.data.payload.count - 1):
            m.d.comb += self.data.ready.eq(1)
            m.d.sync += index.eq(0)
        with m.Else():
            m.d.sync += index.eq(index + 1)

    def _serial(self, m):
        """One value per cycle through the decoder's one-word CRC unit."""
        lanes = self.lanes
        beat = self.data.payload
        m.submodules.word = word = Crc32Word()
        index = Signal(range(lanes))
        m.d.comb += [
            self.value.eq(word.crc),
            word.word.eq(beat.values.as_value().word_select(index, 16)),
            word.restart.eq(self.clear),
        ]
        with m.If(self.clear):
            m.d.sync += index.eq(0)
        with m.Elif(self.data.valid):
            with m.If(beat.count == 0):
                m.d.comb += self.data.ready.eq(1)
            with m.Else():
                m.d.comb += word.en.eq(1)
                self._next_value(m, index)
        return m
