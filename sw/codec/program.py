"""The integer program: what an inference engine runs, as it travels in the container.

docs/INFERENCE.md is the specification; this module holds its data structure, its encoding as
16-bit words (the data of the container's ``PROGRAM`` section, docs/FORMAT.md) and every check
the specification makes on it. No torch and no numpy arithmetic beyond encoding: the engine
that runs a program is :mod:`sw.network.engine`, and the code that builds one from a trained
network is :mod:`sw.network.lower`.

A program is a list of operations over one flat activation memory of 16-bit values. Each
operation reads one tensor (and optionally a second, the ``skip`` operand of a residual add)
and writes one, at word addresses the program gives, in C order (channel, row, column).
Weights are not in the program: a ``CONV`` or ``LINEAR`` consumes the container's coded
sections in order, its bias (when it has one) first, then its weights.
"""

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Opcode", "ValueType", "Op", "Program", "ProgramError", "ExpectedTensor",
    "HEADER_WORDS", "OP_WORDS", "MEMORY_WORDS", "MAX_OPS", "ACCUMULATOR_BITS", "SUM_BITS",
    "BIAS_TERM_LIMIT", "MAX_SHIFT", "MAX_SKIP_SHIFT",
    "NO_SKIP",
]

#: Words of the program header: op_count, input_channels, input_height, input_width,
#: input_exponent, input_address.
HEADER_WORDS = 6
#: Words of an operation before its multipliers.
OP_WORDS = 20
#: The activation memory: every address is a u16, so it holds at most 65,536 values (all of
#: the iCE40UP5K's SPRAM at 16 bits a value).
MEMORY_WORDS = 1 << 16
MAX_OPS = 255
#: Products of weights and activations are summed exactly in a signed accumulator of this width.
ACCUMULATOR_BITS = 32
#: The requantization sum ``acc*multiplier + bias*bias_multiplier + skip<<skip_shift + round``
#: is exact in a signed integer of this width: the terms stay below 2**46, 2**45, 2**44 and
#: 2**44 in magnitude (accumulator < 2**31 times multiplier < 2**15; the bias term by the rule
#: below; skip < 2**15 shifted by at most 29; the rounding constant 2**(shift-1) with shift at
#: most 45), so the sum stays below 2**47.
SUM_BITS = 48
#: ``bias_bound * |bias_multiplier|`` stays below this.
BIAS_TERM_LIMIT = 1 << 45
MAX_SHIFT = 45
MAX_SKIP_SHIFT = 29
#: ``skip_address`` of an operation without a skip operand.
NO_SKIP = 0xFFFF


class ProgramError(ValueError):
    """A program that breaks a rule of docs/INFERENCE.md (status ``BAD_PROGRAM``)."""


class Opcode(enum.IntEnum):
    """What an operation computes (docs/INFERENCE.md, "Operations")."""
    CONV = 1    #: 2-D convolution, kernel 1 or 3, stride 1 or 2, zero padding kernel // 2
    LINEAR = 2  #: fully connected over the whole input tensor, flattened in C order
    POOL = 3    #: global sum over rows and columns, per channel (average pooling's numerator)


class ValueType(enum.IntEnum):
    """The range an operation saturates its output to; ``U8`` is ReLU as well."""
    U8 = 0   #: 0 .. 255
    S8 = 1   #: -128 .. 127
    S16 = 2  #: -32768 .. 32767

    @property
    def low(self) -> int:
        return {ValueType.U8: 0, ValueType.S8: -128, ValueType.S16: -32768}[self]

    @property
    def high(self) -> int:
        return {ValueType.U8: 255, ValueType.S8: 127, ValueType.S16: 32767}[self]


@dataclass(frozen=True)
class ExpectedTensor:
    """A coded section an operation consumes: its place, element count and value bound."""

    op_index: int
    role: str         #: ``"bias"`` or ``"weight"``
    shape: tuple
    bound: int        #: every integer ``q`` of the section has ``|q| <= bound``

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Op:
    """One operation of a program; the fields of docs/INFERENCE.md, "Operation record".

    ``multipliers`` holds one value per output channel or a single one shared by all; a
    ``POOL`` has none, and its requantization fields are zero.
    """

    opcode: Opcode
    output_type: ValueType
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel: int = 0
    stride: int = 0
    input_address: int = 0
    output_address: int = 0
    skip_address: int = NO_SKIP
    has_bias: bool = False
    weight_bound: int = 0
    bias_bound: int = 0
    shift: int = 0
    skip_shift: int = 0
    bias_multiplier: int = 0
    output_exponent: int = 0
    multipliers: tuple = field(default_factory=tuple)

    @property
    def has_skip(self) -> bool:
        return self.skip_address != NO_SKIP

    @property
    def out_height(self) -> int:
        return (self.in_height - 1) // self.stride + 1 if self.opcode == Opcode.CONV else 1

    @property
    def out_width(self) -> int:
        return (self.in_width - 1) // self.stride + 1 if self.opcode == Opcode.CONV else 1

    @property
    def input_shape(self) -> tuple:
        return (self.in_channels, self.in_height, self.in_width)

    @property
    def output_shape(self) -> tuple:
        return (self.out_channels, self.out_height, self.out_width)

    @property
    def input_size(self) -> int:
        return self.in_channels * self.in_height * self.in_width

    @property
    def output_size(self) -> int:
        return self.out_channels * self.out_height * self.out_width

    @property
    def fan_in(self) -> int:
        """Products summed into one accumulator."""
        if self.opcode == Opcode.CONV:
            return self.in_channels * self.kernel * self.kernel
        return self.input_size if self.opcode == Opcode.LINEAR else 0

    @property
    def weight_shape(self) -> tuple:
        if self.opcode == Opcode.CONV:
            return (self.out_channels, self.in_channels, self.kernel, self.kernel)
        if self.opcode == Opcode.LINEAR:
            return (self.out_channels, self.input_size)
        return ()

    def multiplier(self, channel: int) -> int:
        return self.multipliers[channel if len(self.multipliers) > 1 else 0]


@dataclass(frozen=True)
class Program:
    """A whole integer network: where its input goes and the operations that follow.

    The input image is quantized to ``U8`` as ``clamp(floor(x * 2**input_exponent + 1/2), 0,
    255)`` and written at ``input_address``; the prediction is the argmax of the last
    operation's output (the first index among equals).
    """

    input_channels: int
    input_height: int
    input_width: int
    input_exponent: int
    input_address: int
    ops: tuple

    @property
    def input_shape(self) -> tuple:
        return (self.input_channels, self.input_height, self.input_width)

    @property
    def input_size(self) -> int:
        return self.input_channels * self.input_height * self.input_width

    @property
    def classes(self) -> int:
        return self.ops[-1].out_channels

    @property
    def memory_words(self) -> int:
        """Activation memory the program touches: one past its highest address."""
        ends = [self.input_address + self.input_size]
        ends += [op.output_address + op.output_size for op in self.ops]
        return max(ends)

    # -- encoding --------------------------------------------------------------------------------

    def to_words(self) -> np.ndarray:
        """The ``PROGRAM`` section's data: little-endian u16 words (docs/INFERENCE.md)."""
        words = [len(self.ops), self.input_channels, self.input_height, self.input_width,
                 self.input_exponent & 0xFFFF, self.input_address]
        for op in self.ops:
            flags = int(op.has_bias) | int(op.has_skip) << 1
            bias_multiplier = op.bias_multiplier & 0xFFFFFFFF
            words += [op.opcode, op.output_type, op.in_channels, op.in_height, op.in_width,
                      op.out_channels, op.kernel, op.stride, op.input_address,
                      op.output_address, op.skip_address, flags, op.weight_bound,
                      op.bias_bound, op.shift, op.skip_shift, bias_multiplier & 0xFFFF,
                      bias_multiplier >> 16, op.output_exponent & 0xFFFF, len(op.multipliers)]
            words += list(op.multipliers)
        for word in words:
            if not 0 <= word <= 0xFFFF:
                raise ProgramError(f"program field {word} does not fit a u16")
        return np.array(words, dtype="<u2")

    @classmethod
    def from_words(cls, words) -> "Program":
        """Decode and check a program; :class:`ProgramError` names the first broken rule."""
        words = [int(w) for w in np.asarray(words, dtype=np.uint16).reshape(-1)]
        if len(words) < HEADER_WORDS:
            raise ProgramError(f"program of {len(words)} words has no room for its header")
        op_count = words[0]
        if not 1 <= op_count <= MAX_OPS:
            raise ProgramError(f"program has {op_count} operations (1..{MAX_OPS})")
        position = HEADER_WORDS
        ops = []
        for index in range(op_count):
            if position + OP_WORDS > len(words):
                raise ProgramError(f"op {index}: the program ends inside its record")
            record = words[position:position + OP_WORDS]
            position += OP_WORDS
            count = record[19]
            if position + count > len(words):
                raise ProgramError(f"op {index}: the program ends inside its multipliers")
            opcode, output_type = record[0], record[1]
            if opcode not in tuple(Opcode):
                raise ProgramError(f"op {index}: unknown opcode {opcode}")
            if output_type not in tuple(ValueType):
                raise ProgramError(f"op {index}: unknown output type {output_type}")
            flags = record[11]
            if flags & ~3:
                raise ProgramError(f"op {index}: unknown flags {flags:#x}")
            skip_address = record[10]
            if bool(flags & 2) != (skip_address != NO_SKIP):
                raise ProgramError(f"op {index}: skip flag and skip address disagree")
            ops.append(Op(
                Opcode(opcode), ValueType(output_type), *record[2:10], skip_address,
                bool(flags & 1), record[12], record[13], record[14], record[15],
                _signed(record[16] | record[17] << 16, 32), _signed(record[18], 16),
                tuple(words[position:position + count])))
            position += count
        if position != len(words):
            raise ProgramError(f"{len(words) - position} words after the last operation")
        program = cls(words[1], words[2], words[3], _signed(words[4], 16), words[5], tuple(ops))
        program.check()
        return program

    # -- rules -----------------------------------------------------------------------------------

    def check(self) -> None:
        """Every rule of docs/INFERENCE.md, "Rules"; :class:`ProgramError` on the first broken.

        Tracks which tensors are live in memory and their value range: an operation reads only
        whole tensors written before and not overwritten since, and its accumulator bound is
        proven from the range of what it reads.
        """
        if not 1 <= len(self.ops) <= MAX_OPS:
            raise ProgramError(f"program has {len(self.ops)} operations (1..{MAX_OPS})")
        if min(self.input_shape) < 1:
            raise ProgramError(f"input shape {self.input_shape} is empty")
        _check_region("input", self.input_address, self.input_size)
        # address -> (shape, low, high) of every live tensor
        live = {self.input_address: (self.input_shape, 0, 255)}
        for index, op in enumerate(self.ops):
            where = f"op {index} ({op.opcode.name})"
            source = _live_tensor(live, op.input_address, op.input_shape, where, "input")
            _check_op_fields(op, where)
            _check_region(f"{where} output", op.output_address, op.output_size)
            regions = [(op.input_address, op.input_size)]
            if op.has_skip:
                _live_tensor(live, op.skip_address, op.output_shape, where, "skip")
                regions.append((op.skip_address, op.output_size))
            for start, size in regions:
                if _overlap(start, size, op.output_address, op.output_size):
                    raise ProgramError(f"{where}: output overlaps a tensor it reads")
            _, low, high = source
            largest_input = max(abs(low), abs(high))
            if op.opcode == Opcode.POOL:
                count = op.in_height * op.in_width
                low, high = count * low, count * high
                if low < ValueType.S16.low or high > ValueType.S16.high:
                    raise ProgramError(f"{where}: sums of {count} values of {source[1]}.."
                                       f"{source[2]} overflow S16")
            else:
                bound = op.fan_in * op.weight_bound * largest_input
                if bound >= 1 << (ACCUMULATOR_BITS - 1):
                    raise ProgramError(f"{where}: accumulator bound {op.fan_in} x "
                                       f"{op.weight_bound} x {largest_input} = {bound} "
                                       f"overflows {ACCUMULATOR_BITS} bits")
                low, high = op.output_type.low, op.output_type.high
            for address in [a for a, (shape, _, _) in live.items()
                            if _overlap(a, int(np.prod(shape)), op.output_address,
                                        op.output_size)]:
                del live[address]
            live[op.output_address] = (op.output_shape, low, high)
        last = self.ops[-1]
        if last.out_height != 1 or last.out_width != 1:
            raise ProgramError(f"the last operation's output {last.output_shape} is not a vector "
                               f"of class scores")

    def expected_tensors(self) -> list:
        """The coded sections the operations consume, in the order they must come."""
        expected = []
        for index, op in enumerate(self.ops):
            if op.opcode == Opcode.POOL:
                continue
            if op.has_bias:
                expected.append(ExpectedTensor(index, "bias", (op.out_channels,), op.bias_bound))
            expected.append(ExpectedTensor(index, "weight", op.weight_shape, op.weight_bound))
        return expected

    @property
    def multiply_accumulates(self) -> int:
        """Weight-by-activation products one image takes."""
        return sum(op.output_size * op.fan_in for op in self.ops)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def _overlap(a: int, a_size: int, b: int, b_size: int) -> bool:
    return a < b + b_size and b < a + a_size


def _check_region(what: str, address: int, size: int) -> None:
    if size < 1 or address + size > MEMORY_WORDS:
        raise ProgramError(f"{what}: {size} values at {address} do not fit the "
                           f"{MEMORY_WORDS}-value memory")


def _live_tensor(live: dict, address: int, shape: tuple, where: str, what: str):
    found = live.get(address)
    if found is None:
        raise ProgramError(f"{where}: {what} at {address} is no tensor written before")
    if int(np.prod(found[0])) != int(np.prod(shape)) or \
            (what == "skip" and tuple(found[0]) != tuple(shape)):
        raise ProgramError(f"{where}: {what} of shape {tuple(shape)} but the tensor at "
                           f"{address} is {tuple(found[0])}")
    return found


def _check_op_fields(op: Op, where: str) -> None:
    if min(op.in_channels, op.in_height, op.in_width, op.out_channels) < 1:
        raise ProgramError(f"{where}: empty shape")
    if op.opcode == Opcode.POOL:
        if op.out_channels != op.in_channels or op.output_type != ValueType.S16:
            raise ProgramError(f"{where}: a pool keeps its channels and writes S16")
        if (op.kernel, op.stride, op.has_bias, op.has_skip, op.weight_bound, op.bias_bound,
                op.shift, op.skip_shift, op.bias_multiplier, len(op.multipliers)) != \
                (0, 0, False, False, 0, 0, 0, 0, 0, 0):
            raise ProgramError(f"{where}: a pool's kernel, stride, bias, skip and "
                               f"requantization fields must be zero")
        return
    if op.opcode == Opcode.CONV:
        if op.kernel not in (1, 3) or op.stride not in (1, 2):
            raise ProgramError(f"{where}: kernel {op.kernel} stride {op.stride} (kernel 1 or "
                               f"3, stride 1 or 2)")
    elif (op.kernel, op.stride) != (0, 0):
        raise ProgramError(f"{where}: a linear layer's kernel and stride must be zero")
    if not 1 <= op.weight_bound <= 32767:
        raise ProgramError(f"{where}: weight bound {op.weight_bound} (1..32767)")
    if len(op.multipliers) not in (1, op.out_channels):
        raise ProgramError(f"{where}: {len(op.multipliers)} multipliers for "
                           f"{op.out_channels} channels")
    if any(not 1 <= a <= 32767 for a in op.multipliers):
        raise ProgramError(f"{where}: a multiplier outside 1..32767")
    if not 1 <= op.shift <= MAX_SHIFT:
        raise ProgramError(f"{where}: shift {op.shift} (1..{MAX_SHIFT})")
    if op.has_bias:
        if not 1 <= op.bias_bound <= 32767:
            raise ProgramError(f"{where}: bias bound {op.bias_bound} (1..32767)")
        if op.bias_bound * abs(op.bias_multiplier) >= BIAS_TERM_LIMIT:
            raise ProgramError(f"{where}: bias term {op.bias_bound} x {op.bias_multiplier} "
                               f"reaches 2**45")
    elif op.bias_bound or op.bias_multiplier:
        raise ProgramError(f"{where}: bias fields without a bias")
    if op.has_skip:
        if not 0 <= op.skip_shift <= MAX_SKIP_SHIFT:
            raise ProgramError(f"{where}: skip shift {op.skip_shift} (0..{MAX_SKIP_SHIFT})")
    elif op.skip_shift:
        raise ProgramError(f"{where}: skip shift without a skip operand")
