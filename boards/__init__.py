"""Board systems: the tops that put the board-independent gateware of :mod:`hw` on a board.

:mod:`boards.icebreaker` (iCEBreaker, iCE40UP5K: SPI flash -> decoder -> check -> UART/LEDs)
and :mod:`boards.ulx3s` (ULX3S, ECP5 LFE5U-85F) each add the board's PLL, reset and pins to
:class:`hw.system.BoardSystem`, and a harness that measures the decoder alone.
``python -m hw.build`` builds them (docs/BOARD.md).
"""
