"""UART transmitter, 8N1, fixed baud rate."""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTTransmitter"]


class UARTTransmitter(wiring.Component):
    """Sends each byte of ``data`` as start bit, 8 data bits LSB first, stop bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit: ``round(clock_frequency / baud_rate)``. At 48 MHz and 115200 baud
        that is 417, 0.08 % fast, well inside the +-2 % a receiver tolerates.

    Attributes
    ----------
    data : In(stream.Signature(8))
    tx : Out(1)
        The line, high when idle.
    busy : Out(1)
        A byte is on the line.
    """

    data: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, divisor: int):
        if divisor < 2:
            raise ValueError(f"divisor must be at least 2, not {divisor}")
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shift = Signal(10)          # stop bit, 8 data bits, start bit; LSB goes out first
        bits_left = Signal(range(11))
        m.d.comb += self.busy.eq(bits_left != 0)

        with m.If(bits_left == 0):
            m.d.comb += self.data.ready.eq(1)
            with m.If(self.data.valid):
                m.d.sync += [
                    shift.eq((1 << 9) | (self.data.payload << 1)),
                    bits_left.eq(10),
                    timer.eq(0),
                ]
        with m.Else():
            with m.If(timer == 0):
                m.d.sync += [self.tx.eq(shift[0]), shift.eq(shift >> 1)]
            with m.If(timer == self.divisor - 1):
                m.d.sync += [timer.eq(0), bits_left.eq(bits_left - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer + 1)
        return m
