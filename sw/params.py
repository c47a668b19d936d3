"""The one parameter object shared by the codec, the container and the hardware generator."""

from dataclasses import dataclass

__all__ = ["CodecParams", "add_params_arguments", "params_from"]


@dataclass(frozen=True)
class CodecParams:
    """Parameters of the interleaved rANS code.

    Parameters
    ----------
    precision_bits : int
        ``P``: symbol frequencies are integers summing to ``2**P``; 1 to 15. Hardware table
        builds take about ``2**(P-4)`` cycles per section, so 12 (the default) or less suits it.
    state_count : int
        ``K``: number of interleaved coder states. Symbol ``j`` of a section belongs to state
        ``j % K``. A decoder with ``N`` lanes serves ``K / N`` states per lane, so ``N`` must
        divide ``K``; ``K = 32`` lets 1, 2, 4 and 8 lanes each keep a pipeline of 4 or more
        stages busy.
    state_bits : int
        Width of a coder state. Format versions 1 and 2 fix it at 32.
    word_bits : int
        Width of a renormalisation word. Format versions 1 and 2 fix it at 16.

    Attributes
    ----------
    lower_bound : int
        ``L = 2**(state_bits - word_bits)``: every state lies in ``[L, 2**state_bits)`` between
        symbols. It is also the encoder's initial state, so a correct decode ends with every
        state equal to ``L``.
    total_frequency : int
        ``M = 2**precision_bits``.
    """

    precision_bits: int = 12
    state_count: int = 32
    state_bits: int = 32
    word_bits: int = 16

    def __post_init__(self):
        for name in ("precision_bits", "state_count", "state_bits", "word_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if (self.state_bits, self.word_bits) != (32, 16):
            raise ValueError(
                f"state_bits/word_bits must be 32/16 in format versions 1 and 2, "
                f"not {self.state_bits}/{self.word_bits}")
        # P <= log2(L) keeps one renormalisation word per symbol at most, and P < word_bits
        # lets a one-symbol table's frequency 2**P be stored in a u16.
        if not 1 <= self.precision_bits < self.word_bits:
            raise ValueError(
                f"precision_bits must be in 1..{self.word_bits - 1}, not {self.precision_bits}")
        if not 1 <= self.state_count <= 256:
            raise ValueError(f"state_count must be in 1..256, not {self.state_count}")

    @property
    def lower_bound(self) -> int:
        return 1 << (self.state_bits - self.word_bits)

    @property
    def total_frequency(self) -> int:
        return 1 << self.precision_bits

    def check_lanes(self, lanes: int) -> None:
        """Raise ``ValueError`` unless a decoder with ``lanes`` lanes can decode this code."""
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if self.state_count % lanes:
            raise ValueError(
                f"lanes ({lanes}) must divide state_count ({self.state_count})")


# -- command-line options of every command that takes P and K ----------------------------------

def add_params_arguments(parser) -> None:
    """``--precision-bits P`` and ``--states K`` on an argparse ``parser``."""
    defaults = CodecParams()
    parser.add_argument("--precision-bits", type=int, default=defaults.precision_bits,
                        metavar="P", help="frequencies sum to 2**P (default %(default)s)")
    parser.add_argument("--states", type=int, default=defaults.state_count, metavar="K",
                        help="interleaved rANS states; a decoder's lane count must divide it "
                             "(default %(default)s)")


def params_from(args) -> CodecParams:
    """The :class:`CodecParams` of options added by :func:`add_params_arguments`."""
    return CodecParams(precision_bits=args.precision_bits, state_count=args.states)
