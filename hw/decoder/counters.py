"""Counters of the decoder whose carry chains are kept short."""

from amaranth import Cat, Const, Module, Mux, Signal, Value

__all__ = ["CutCounter", "successor"]


class CutCounter:
    """A down-counter cut in two, so that no carry chain spans it: the low ``cut`` bits step,
    and a borrow out of them is taken from the high part a cycle later (``borrowed``). The
    low part is always exact, and so is the whole, ``(high - borrowed) << cut | low``: the
    high part takes a pending borrow on the very next cycle whatever else happens, and a
    borrow comes at most once in ``2**cut / step`` steps. The writes are returned as
    ``(register, value)`` pairs, for the caller's conditions (the parser's
    :meth:`hw.onehot.OneHotMachine.set` or the ring's ``sync``); the high part's catch-up is
    added to ``m`` now, below everything written later.

    Parameters
    ----------
    m : Module
    name : str
        Prefix of its signals' names.
    width : int
        Bits of the whole count.
    cut : int
        Bits of the low part.
    step : int
        What :meth:`stepped` takes off.

    Attributes
    ----------
    low : Signal(cut)
    high : Signal(width - cut)
    borrowed : Signal(1)
        A borrow out of ``low`` that ``high`` takes on the next cycle.
    """

    def __init__(self, m: Module, name: str, width: int, cut: int, step: int = 1):
        assert 2 * step <= 1 << cut < 1 << width
        self.width, self.cut, self.step = width, cut, step
        self.low = Signal(cut, name=f"{name}_low")
        self.high = Signal(width - cut, name=f"{name}_high")
        self.borrowed = Signal(name=f"{name}_borrowed")
        self._stepped = Signal(cut + 1, name=f"{name}_stepped")    # low - step; top bit: borrow
        m.d.comb += self._stepped.eq(self.low - step)
        m.d.sync += [self.high.eq(self.high - self.borrowed), self.borrowed.eq(0)]

    def loaded(self, value):
        value = Value.cast(value)
        value = Cat(value, Const(0, max(0, self.width - len(value))))
        return [(self.low, value[:self.cut]), (self.high, value[self.cut:self.width]),
                (self.borrowed, 0)]

    def copied(self, other: "CutCounter"):
        return [(self.low, other.low), (self.high, other.high), (self.borrowed, other.borrowed)]

    def stepped(self):
        """The counter less ``step``."""
        return [(self.low, self._stepped[:self.cut]), (self.borrowed, self._stepped[-1])]

    def high_zero(self) -> Value:
        return Mux(self.borrowed, self.high == 1, self.high == 0)

    def below(self, bound: int) -> Value:
        """The counter < ``bound``, a power of two of at most ``2**cut``."""
        return (self.low >> (bound.bit_length() - 1) == 0) & self.high_zero()

    def equals(self, value: int) -> Value:
        """The counter == ``value``, below ``2**cut``."""
        return (self.low == value) & self.high_zero()


def successor(value, modulus):
    """``value + 1 mod modulus``, for counters that wrap at a bound not a power of two."""
    return Mux(value == modulus - 1, 0, value + 1)
