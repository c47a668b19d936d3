"""The inference engine: runs a container's integer program on the weights as they are decoded.

docs/INFERENCE.md is the specification and :mod:`sw.network.engine` its reference; this is the same
arithmetic in gates. The engine takes the program's words, then one image's pixels, then the
decoder's weight stream, and emits the predicted class. It keeps no decompressed weights: a
convolution takes each weight once, as it arrives, and applies it to every output position of
its channel before taking the next one (the loop over positions is the innermost), so the
decoder's backpressure paces it; only the accumulators of one output channel, the biases of
one layer and the activations are stored.

The engine applies a weight to ``columns`` output positions a cycle (neighbouring columns of a
row, or whole rows of a narrow output), each reading its input from its own copy of the
activation memory: a digits-ResNet image is 3.17 M cycles at one column, 0.90 M at four. On
the UP5K (the board's memories, one column) it takes about 2,300 logic cells, 4 block RAMs, 1
SPRAM and 4 SB_MAC16 (the MAC, the sizes, the requantization's terms, the cycle counter),
about 33 MHz alone (docs/INFERENCE.md).
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw.codec.program import HEADER_WORDS, OP_WORDS, Opcode, ValueType
from sw.format import Status

from .decoder import ProgramWord, WeightBatch
from .dsp import Counter32
from .spram import SinglePortRam

__all__ = ["ActivationWrite", "EngineStatus", "EngineActivity", "Prediction", "InferenceEngine",
           "COLUMNS", "check_columns", "engine_cycles"]


#: An activation the engine writes (pixels and every operation's outputs), for observers.
ActivationWrite = data.StructLayout({"address": unsigned(16), "value": signed(16)})

#: ``busy`` while an image is in flight; ``error`` and ``code`` (a :class:`sw.format.Status`)
#: when the engine refused the program or the weights that follow it. Sticky until reset.
EngineStatus = data.StructLayout({"busy": 1, "error": 1, "code": 4})

#: What the engine is doing, for observers (profiles): the running operation's
#: :class:`sw.codec.program.Opcode` (0 before the first), and ``waiting``: it needs a weight or a
#: bias the decoder has not delivered.
EngineActivity = data.StructLayout({"opcode": 2, "waiting": 1})

#: The engine's answer for one image: the predicted class and the cycles it took.
Prediction = data.StructLayout({"label": unsigned(16), "cycles": unsigned(32)})

#: Words of an operation record the engine keeps in registers (the multipliers stay in RAM).
_RECORD = {
    "opcode": 0, "output_type": 1, "in_channels": 2, "in_height": 3, "in_width": 4,
    "out_channels": 5, "kernel": 6, "stride": 7, "input_address": 8, "output_address": 9,
    "skip_address": 10, "flags": 11, "weight_bound": 12, "bias_bound": 13, "shift": 14,
    "skip_shift": 15, "bias_low": 16, "bias_high": 17, "multiplier_count": 19,
}


def _above(x, bound: int):
    """``x > bound`` for an unsigned ``x`` and a constant: some bit of ``x`` is 1 where the
    bound's is 0, and the bits above it are equal. Yosys makes a carry chain of a comparison
    with a constant (a logic cell a bit with its LUT unused); this is LUTs only."""
    if bound < 0:
        return Const(1, 1)
    terms = [x[i] & (x[i + 1:] == (bound >> (i + 1)))
             for i in range(len(x)) if not (bound >> i) & 1]
    if bound >> len(x):
        return Const(0, 1)
    return Cat(*terms).any() if terms else Const(0, 1)


#: The engine's possible ``columns``: a power of two, so that a column's place in its group is
#: bits of its index.
COLUMNS = (1, 2, 4, 8, 16)


def check_columns(columns) -> None:
    """Raise ``ValueError`` unless ``columns`` is one of :data:`COLUMNS`."""
    if columns not in COLUMNS:
        raise ValueError(f"columns must be {', '.join(map(str, COLUMNS[:-1]))} or "
                         f"{COLUMNS[-1]}, not {columns}")


def engine_cycles(program, columns: int = 1) -> int:
    """The ``cycles`` an :class:`InferenceEngine` of ``columns`` reports for one image of
    ``program`` (a :class:`sw.codec.program.Program`) when the pixels and the weights are never
    late:
    the cycles from the program's last word to the answer, as the state machine below spends
    them.

    The engine takes a weight or bias the cycle it needs it, whatever the decoder's lanes (it
    takes the next transfer in the cycle it takes a transfer's last value), so when the decoder
    keeps up, the count depends on the program alone.
    """
    cycles = 11 + program.input_size           # HEADER (fetch 0..10), a pixel a cycle
    for op in program.ops:
        cycles += 21 + 7                       # FETCH (fetch 0..20), DECODE (fetch 0..6)
        if op.opcode == Opcode.POOL:
            cycles += op.out_channels * (op.in_height * op.in_width + 2) + 1   # ..., NEXT
            continue
        if op.has_bias:                        # BIAS: a value a cycle
            cycles += op.out_channels
        positions = op.out_height * op.out_width
        # MAC cycles of a weight: groups of `columns` columns of a row, or of whole rows when
        # the output is narrower than a group and its width a power of two
        width = op.out_width
        if width < columns and columns % width == 0:
            groups = -(-op.out_height // (columns // width))
        else:
            groups = op.out_height * -(-width // columns)
        # WEIGHT takes a channel's first weight in its first cycle; MAC a position a cycle,
        # and the next weight on a weight's last position; then the requantization, and one
        # cycle to the next channel
        if columns == 1:
            # RQ (8 steps, the shifts, + 1) and RQ_WRITE a position
            requantization = positions * (10 + (op.shift - 1) // 16 + (op.shift - 1) % 16)
        else:
            requantization = _streamed_requantization(positions, op.has_skip)
        per_channel = op.fan_in * groups + requantization + 1
        cycles += op.out_channels * per_channel + 1    # ..., NEXT
    return cycles + program.classes + 1        # ARGMAX


def _streamed_requantization(values: int, skip: bool) -> int:
    """RQ's and RQ_DRAIN's cycles for a channel of ``values`` at more than one column.

    RQ issues a value a cycle, each written 7 cycles later; with a skip input it issues none
    in a cycle that writes (the skip value's read needs the memory's port). RQ_DRAIN ends as
    the last value is written.
    """
    issued = -1
    writes = set()
    for _ in range(values):
        issued += 1
        while skip and issued in writes:
            issued += 1
        writes.add(issued + 7)
    return issued + 8


class InferenceEngine(wiring.Component):
    """Runs the integer program of docs/INFERENCE.md, ``columns`` products per cycle.

    Parameters
    ----------
    lanes : int
        Of the decoder whose ``weights`` stream this engine takes.
    columns : int
        Output columns of a convolution a weight is applied to each cycle (1, 2, 4, 8 or 16):
        that many multipliers and copies of the activation memory (they read the inputs of
        neighbouring columns at once), accumulators in rows of ``columns``. A channel's
        positions take ``H' x ceil(W' / columns)`` cycles a weight. Above 1 the
        requantization is a pipeline that takes a value a cycle (three more multipliers and a
        barrel shifter), at 1 a serial unit that takes 10 cycles or more (the UP5K's size).
    memory_words : int
        Activation memory (values of 16 bits): one SB_SPRAM256KA (16K words) on iCE40.
        A program with a tensor past it is refused with ``BAD_PROGRAM``.
    program_words : int
        Program RAM; a longer program is refused with ``BAD_PROGRAM``. The defaults of this
        and the next two take 8 block RAMs (512 x 16: 2, 512 x 16: 2, 512 x 32: 4); the board
        builds 256, 128 and 64 (:data:`sw.board.ENGINE_MEMORIES`, 4 block RAMs and ~50 logic
        cells fewer): the digits ResNet needs 237 program words, 128 channels and 64
        positions.
    max_channels : int
        Output channels of one operation (its biases are kept); more are ``BAD_PROGRAM``.
    max_positions : int
        Output positions of one channel (its accumulators are kept, in rows of ``columns``);
        more likewise.
    spram : bool or None
        Activation memory as ``SB_SPRAM256KA`` blocks: ``None`` on an iCE40 platform only
        (:class:`hw.spram.SinglePortRam`).

    Attributes
    ----------
    program : In(stream.Signature(ProgramWord, always_ready=True))
        The PROGRAM section's words, once per image, before the image's weights.
    pixels : In(stream.Signature(unsigned(8)))
        The image, already ``U8`` (docs/INFERENCE.md, "Values"), in C order.
    weights : In(stream.Signature(WeightBatch(lanes)))
        The decoder's output: the coded sections the program consumes, in order.
    prediction : Out(stream.Signature(Prediction))
        One per image.
    activations : Out(stream.Signature(ActivationWrite, always_ready=True))
        Every activation written, for testbenches and debugging (unused in a build, it costs
        nothing).
    status : Out(EngineStatus)
    activity : Out(EngineActivity)
        For observers, as ``activations`` (unused in a build, it costs nothing).
    """

    def __init__(self, lanes: int = 1, *, columns: int = 1, memory_words: int = 8192,
                 program_words: int = 512, max_channels: int = 512, max_positions: int = 512,
                 spram: bool = None):
        check_columns(columns)
        self.lanes = lanes
        self.columns = columns
        self.memory_words = memory_words
        self.program_words = program_words
        self.max_channels = max_channels
        self.max_positions = max_positions
        self.spram = spram
        super().__init__({
            "program": In(stream.Signature(ProgramWord, always_ready=True)),
            "pixels": In(stream.Signature(unsigned(8))),
            "weights": In(stream.Signature(WeightBatch(lanes))),
            "prediction": Out(stream.Signature(Prediction)),
            "activations": Out(stream.Signature(ActivationWrite, always_ready=True)),
            "status": Out(EngineStatus),
            "activity": Out(EngineActivity),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        C = self.columns
        # Widths from the parameters: an address, a size up to the memory, a channel, an
        # accumulator position (or a pool's plane, at most 256 values), an output row/column.
        AW = max(1, (self.memory_words - 1).bit_length())
        SZ = self.memory_words.bit_length()
        CW = max(1, (self.max_channels - 1).bit_length())
        PW = max(8, (self.max_positions - 1).bit_length())
        XW = max(1, (self.max_positions - 1).bit_length())

        # -- memories ------------------------------------------------------------------------
        m.submodules.program_ram = program_ram = Memory(
            shape=unsigned(16), depth=self.program_words, init=[])
        program_write = program_ram.write_port()
        program_read = program_ram.read_port()
        # Activations: one address for reads and writes, so that on iCE40 they sit in the
        # UP5K's single-port SPRAM (hw/spram.py), not in block RAM the decoder needs.
        m.submodules.activation_ram = activation_ram = SinglePortRam(
            self.memory_words, spram=self.spram)
        activation_read_data = Signal(signed(16))
        activation_write_data = Signal(signed(16))
        activation_write_en = Signal()
        m.d.comb += [activation_read_data.eq(activation_ram.read_data),
                     activation_ram.write_data.eq(activation_write_data),
                     activation_ram.write_enable.eq(activation_write_en)]
        m.submodules.bias_ram = bias_ram = Memory(
            shape=signed(16), depth=self.max_channels, init=[])
        bias_write = bias_ram.write_port()
        bias_read = bias_ram.read_port()
        # a row of C accumulators a word: a channel's positions in rows of C columns, each row
        # of the output starting a word (groups of a row never mix two rows). As many words
        # as positions: a channel of width 1 takes a word a position.
        m.submodules.accumulator_ram = accumulator_ram = Memory(
            shape=data.ArrayLayout(signed(32), C), depth=self.max_positions, init=[])
        accumulator_write = accumulator_ram.write_port()
        # transparent: the MAC loop reads a position the cycle its last sum is written when a
        # channel has a single output position, and so does the requantization's first read
        accumulator_read = accumulator_ram.read_port(transparent_for=(accumulator_write,))
        # MAC and RQ read the position's sum; other states do not care what it reads, so the
        # address is the position always (behind the state's decoding it was critical: 34.8 MHz)

        address = Signal(AW)             # the activation memory's one address
        cursor = Signal(AW)              # ... when a loop walks it; states override it
        m.d.comb += [address.eq(cursor),
                     activation_ram.addr.eq(address),
                     self.activations.payload.address.eq(address),
                     self.activations.payload.value.eq(activation_write_data),
                     self.activations.valid.eq(activation_write_en)]

        # -- status --------------------------------------------------------------------------
        error = Signal()
        code = Signal(4)
        busy = Signal()
        m.d.comb += [self.status.error.eq(error), self.status.code.eq(code),
                     self.status.busy.eq(busy & ~error)]
        # also the answer's count: it stops with busy, so the prediction needs no copy. In an
        # SB_MAC16 on iCE40 (hw/dsp.py): in logic it took ~33 logic cells. Cleared in PROGRAM.
        m.submodules.cycle_counter = cycle_counter = Counter32()
        cycles = cycle_counter.count
        m.d.comb += cycle_counter.enable.eq(busy)

        # -- the weight stream, one value at a time ------------------------------------------
        batch = Signal(WeightBatch(N))
        batch_index = Signal(range(N + 1))
        batch_full = Signal()
        value = Signal(signed(16))
        value_valid = Signal()
        value_first = Signal()           # the first value of its section
        value_last = Signal()            # the last value of its section
        take_value = Signal()
        # The value taken is always lane 0 (the batch shifts down a lane per value), and its
        # first/last flags are registers: a lane multiplexer and the index comparisons in
        # front of the checks and the FSM were the critical path (24 MHz).
        batch_end = Signal()             # the value is its batch's last
        m.d.comb += [
            value.eq(batch.values[0]),
            value_valid.eq(batch_full),
            # the next transfer is taken the cycle the batch's last value is: a linear layer
            # then takes a weight a cycle (waiting for an empty batch made it two)
            self.weights.ready.eq(~batch_full | (take_value & batch_end) | error),
        ]
        with m.If(self.weights.valid & self.weights.ready):
            payload = self.weights.payload
            m.d.sync += [batch.eq(payload), batch_index.eq(0),
                         batch_full.eq(~error & (payload.count != 0)),
                         value_first.eq(payload.first), batch_end.eq(payload.count == 1),
                         value_last.eq(payload.last & (payload.count == 1))]
        with m.Elif(take_value):
            with m.If(batch_end):
                m.d.sync += batch_full.eq(0)
            with m.Else():
                following = batch_index + 1 == batch.count - 1
                m.d.sync += [batch_index.eq(batch_index + 1), value_first.eq(0),
                             batch_end.eq(following), value_last.eq(batch.last & following)]
                m.d.sync += [batch.values[i].eq(batch.values[i + 1]) for i in range(N - 1)]

        # The bound of the section being consumed: a section that ends early
        # or late, or holds a value beyond its bound, is refused (docs/INFERENCE.md, rule 6).
        # |value| > bound as one 16-bit comparison: with x = value ^ sign (|value| - 1 when
        # negative, 15 bits), |value| > bound is x >= bound when negative and x > bound when
        # not, i.e. 2x + sign > 2 bound. (Two signed comparisons and a negated bound register
        # cost ~110 LC; a negation in front of the comparison was on the critical path.)
        bound = Signal(15)
        out_of_bound = Signal()
        value_sign = value[15]
        m.d.comb += out_of_bound.eq(
            Cat(value_sign, value[:15] ^ value_sign.replicate(15)) > Cat(Const(0, 1), bound))

        # -- the program and the current operation -------------------------------------------
        program_count = Signal(range(self.program_words + 1))
        # operations still to run, this one included: counting down, no index beside a bound
        # (the op count modulo 256, as an index against op_count - 1 was)
        ops_left = Signal(8)
        # The program RAM's read address, a counter: the header and a record are read word
        # after word, then it stays on the current channel's multiplier (A is read from the
        # RAM, not kept), stepping a word a channel when each channel has its own.
        program_cursor = Signal(range(self.program_words + 1))
        m.d.comb += program_read.addr.eq(program_cursor)
        # one adder steps it: by 1, or in NEXT by 0 or 1 (two adders cost ~8 LC)
        program_increment = Signal(init=1)
        program_next = program_cursor + program_increment
        word = program_read.data
        fetch = Signal(range(OP_WORDS + 1))

        # Record fields, each narrowed to what it can hold in this engine's memories, and
        # fields used only through a derived value kept as that value (decoded as the word
        # arrives). Wider values in a program wrap; docs/INFERENCE.md says which are checked.
        is_conv = Signal()
        is_linear = Signal()
        is_pool = Signal()
        type_u8 = Signal()
        type_s8 = Signal()
        stride2 = Signal()
        single_multiplier = Signal()
        has_bias = Signal()
        has_skip = Signal()
        in_channels = Signal(SZ)
        height = Signal(SZ)              # the input's height and width (a linear layer's
        width = Signal(SZ)               # positions are 0 only: H and W never exclude them)
        kernel = Signal(2)               # 1 for a linear layer: a 1x1 conv over C*H*W channels
        last_out_channel = Signal(CW)
        # the input's address is loaded into the cursor (FETCH leaves it alone; DECODE keeps it
        # for a pool's first plane), and what the channels need of it is kept as weight_origin:
        # a register of its own, fed from the RAM, took a logic cell a bit
        # input_address - (pad * width + pad): (0, 0) of a plane's first weight; -(width + 1)
        # is ~width, no adder (as a register of its own it cost ~20 LC)
        weight_origin = Signal(AW)
        output_address = Signal(AW + 1)  # output address of the next value written
        skip_cursor = Signal(AW)         # skip address of the value being requantized
        weight_bound = Signal(15)
        shift = Signal(6)                # S - 1
        skip_shift = Signal(5)
        # bias_multiplier B stays in the program RAM, read as A is (two words here cost 32
        # flip-flops fed from the RAM, a logic cell each, and a wider operand multiplexer)
        b_address = Signal(range(self.program_words + 1))   # of its low word

        # Loop bounds of the current operation, made ready in DECODE, and the counters. Each
        # loop's end is a flag set with its counter (on_last_*), so that no comparison of a
        # counter with a bound sits in front of the FSM's decisions. Counters count down to a
        # constant, and a bound's test for zero is a reduction: Yosys' opt_share merged
        # `x + 1 == last` and `last == 0` into one comparator behind the FSM's multiplexers
        # (21-26 MHz).
        channel_stride = Signal(AW)      # H*W: words from one input channel to the next
        last_channel = Signal(AW)        # inner-product channels - 1: C - 1, or C*H*W - 1
        last_position = Signal(PW)       # H'*W' - 1, or a pool's H*W - 1
        last_ox = Signal(XW)
        last_oy = Signal(XW)
        out_channel = Signal(CW)
        # inner-product channels still to take after the current one: counting down, its end
        # is a comparison with a constant (as an up-counter's `+ 1 == last` it shared an
        # adder behind the FSM's multiplexers: 21 MHz)
        channels_left = Signal(AW)
        first_in_channel = Signal()
        ky = Signal(2)
        kx = Signal(2)
        oy_left = Signal(XW)             # output rows and columns still to go after this one
        ox_left = Signal(XW)
        position = Signal(PW)
        on_last_ox = Signal()
        on_last_oy = Signal()
        out_left = Signal(CW)            # output channels still to go after this one
        on_last_out_channel = Signal()
        on_last_channel = Signal()
        # The read address of output (0, 0) for the next weight: kept as a running value,
        # stepped as (kx, ky, channel) advance by per-operation constants. Addresses are
        # modulo the memory: what wraps below 0 is padding, never read.
        weight_start = Signal(AW)
        row_back = Signal(AW)            # width - (kernel - 1): kx back to 0, ky + 1
        kernel_span = Signal(AW)         # (kernel - 1) * (width + 1)
        channel_step = Signal(AW)        # channel_stride - kernel_span: the next plane
        # input row of (oy, ky) and column of (ox, kx): from -1 to 2 H' - 1 at most (stride 2,
        # kernel 3), and H' <= max_positions where a MAC runs (DECODE refuses more): as wide as
        # that needs, not as the memory (15 bits a register and an adder cost ~20 LC)
        RW = min(SZ + 1, (2 * self.max_positions).bit_length() + 1)
        row = Signal(signed(RW))
        column = Signal(signed(RW))
        column_start = Signal(signed(2))  # kx - pad of the weight being applied
        row_address = Signal(AW)         # where the current output row's reads start
        # The checks of a value BIAS or WEIGHT takes, acted on the next cycle: between the
        # decoder's value and the FSM they were the critical path. A bad section still stops
        # the engine with BAD_PROGRAM, a cycle later; what it wrote meanwhile is internal.
        fault = Signal()
        weight = Signal(signed(16))
        weight_first = Signal()          # the weight being applied is its channel's first
        weight_last = Signal()           # ... its channel's last

        # MAC pipeline: stage 1 holds the position whose input and accumulator are being read.
        # The weight is zeroed there for a padding position, so that the SPRAM's data goes
        # straight into the multiplier.
        s1_valid = Signal()
        s1_position = Signal(PW)
        s1_first = Signal()
        s1_weights = Signal(data.ArrayLayout(signed(16), C))   # a column's, or 0
        # Columns 1 .. C-1 read their inputs from copies of the activation memory, each written
        # as the memory is: in MAC, column i's input is i (2i at stride 2) words past column
        # 0's, the cursor.
        #
        # Where column i of a group lies, set in DECODE for the operation: its output row and
        # column after the group's first (`lane_row`, `lane_column`), the same in input rows
        # and columns (times the stride), and its input's address after column 0's. A group
        # is C columns of one row, or, when the output is narrower than C and its width a
        # power of two, C / W' whole rows (the digits ResNet's 4 x 4 and 2 x 2 layers would
        # otherwise leave columns idle).
        # (column 0 is the group's first: the cursor, row and column themselves)
        lane_row = {i: Signal(range(C), name=f"lane_row_{i}") for i in range(1, C)}
        lane_column = {i: Signal(range(C), name=f"lane_column_{i}") for i in range(1, C)}
        lane_input_row = {i: Signal(range(2 * C), name=f"lane_input_row_{i}")
                          for i in range(1, C)}
        lane_input_column = {i: Signal(range(2 * C), name=f"lane_input_column_{i}")
                             for i in range(1, C)}
        lane_offset = {i: Signal(AW, name=f"lane_offset_{i}") for i in range(1, C)}
        group_rows = Signal(range(C + 1), init=1)    # output rows a group spans
        group_row_step = Signal(range(2 * C + 1))    # ... in input rows
        group_row_stride = Signal(AW)                # ... in input words
        row_group = Signal()             # the operation's groups span whole rows
        column_data = [activation_read_data]
        for i in range(1, C):
            copy = SinglePortRam(self.memory_words, spram=self.spram)
            m.submodules[f"activation_copy_{i}"] = copy
            copy_data = Signal(signed(16), name=f"column_data_{i}")
            m.d.comb += [
                copy.addr.eq(address + Mux(activation_write_en, 0, lane_offset[i])),
                copy.write_data.eq(activation_write_data),
                copy.write_enable.eq(activation_write_en),
                copy_data.eq(copy.read_data)]
            column_data.append(copy_data)
        if C == 1:
            # stage 1 adds: the memory's output, the multiplier and the adder in one cycle
            m.d.comb += accumulator_read.addr.eq(position)
            add_valid, add_position, add_first, add_weights = \
                s1_valid, s1_position, s1_first, s1_weights
            add_data = column_data
        else:
            # Several columns: the copies spread over the die, and their outputs went through
            # the multiplier and the adder into the accumulators in one cycle (46.6 MHz on the
            # ECP5 at 4 columns). Stage 2 registers the inputs and adds; the accumulators are
            # read a cycle later for it (s1_position follows position in every state, so RQ
            # reads the position it issues a cycle later too).
            add_valid = Signal()
            add_position = Signal(PW)
            add_first = Signal()
            add_weights = Signal.like(s1_weights)
            add_data = [Signal(signed(16), name=f"stage2_data_{i}") for i in range(C)]
            m.d.sync += [add_valid.eq(s1_valid), add_position.eq(s1_position),
                         add_first.eq(s1_first), add_weights.eq(s1_weights),
                         s1_position.eq(position)]
            m.d.sync += [add_data[i].eq(column_data[i]) for i in range(C)]
            m.d.comb += accumulator_read.addr.eq(s1_position)
        with m.If(add_valid):
            m.d.comb += [accumulator_write.addr.eq(add_position), accumulator_write.en.eq(1)]
            for i in range(C):
                product = Signal(signed(32), name=f"product_{i}")
                m.d.comb += [product.eq(add_weights[i] * add_data[i]),
                             accumulator_write.data[i].eq(
                                 Mux(add_first, 0, accumulator_read.data[i]) + product)]
        m.d.sync += s1_valid.eq(0)

        # -- the sizes' 16x16 unsigned multiplier (another SB_MAC16) -------------------------
        # The header's C*H and C*H*W, DECODE's H*W, H'*W' and C*H*W: the operands are chosen
        # by `fetch` alone (below the FSM), registered, registered again in the DSP, and the
        # product is the DSP's output register: three cycles, as the other's. Sharing one
        # multiplier with the requantization made its operands 8-way multiplexers behind the
        # states' decoding (~300 LUTs); a DSP of the UP5K's 8 costs no logic cell.
        size_a_src = Signal(16)
        size_b_src = Signal(16)
        size_a = Signal(16)
        size_b = Signal(16)
        size_a_dsp = Signal(16, reset_less=True)   # no reset: the DSP's input registers
        size_b_dsp = Signal(16, reset_less=True)
        sizes = Signal(32, reset_less=True)
        m.d.sync += [size_a.eq(size_a_src), size_b.eq(size_b_src),
                     size_a_dsp.eq(size_a), size_b_dsp.eq(size_b),
                     sizes.eq(size_a_dsp * size_b_dsp)]


        # -- requantization, of a channel's accumulators once its last weight is applied --
        # (the value RQ makes or PIXELS takes is written the cycle after, from pending_value)
        rq_step = Signal(8)              # one-hot: the term step of RQ (empty: shifting)
        pending_value = Signal(16)       # the value RQ_WRITE made or PIXELS took, written the
                                         # next cycle
        write_pending = Signal()         # ... at output_address, which then steps
        m.d.sync += write_pending.eq(0)
        # the requantization walks a row column by column (C > 1: a lane of the group's word)
        rq_lane = Signal(range(C))
        # the output type's range, which the clamp saturates to
        high = Mux(type_u8, 255, Mux(type_s8, 127, 32767))
        low = Mux(type_u8, 0, Mux(type_s8, -128, -32768))
        if C == 1:
            # -- the requantization's 16x16 unsigned multiplier (one SB_MAC16) -------------------
            # Its terms are each a 16x16 product of magnitudes with a sign and an offset of 0 or 16
            # bits. What RQ's step names (a_src, b_src) is registered every cycle, then its
            # magnitude (when *_signed), then the product: three cycles. (The magnitude's carry
            # chain right behind the state's multiplexer made 30 MHz.)
            a_src = Signal(16)
            a_signed = Signal()
            b_src = Signal(16)
            b_signed = Signal()
            a_reg = Signal(16)
            b_reg = Signal(16)
            a_negative = Signal()
            b_negative = Signal()
            op_a = Signal(16)
            op_b = Signal(16)
            # no reset (it is a product every cycle): Yosys then keeps it in the SB_MAC16's output
            # register, not in 32 flip-flops of their own (fed from the DSP, each took a logic cell)
            multiplied = Signal(32, reset_less=True)
            negative_2 = Signal()            # the sign of the product in op_a x op_b
            negative_3 = Signal()            # ... of the product in `multiplied`
            m.d.sync += [a_reg.eq(a_src), a_negative.eq(a_signed & a_src[15]),
                         b_reg.eq(b_src), b_negative.eq(b_signed & b_src[15]),
                         op_a.eq(Mux(a_negative, -a_reg, a_reg)),
                         op_b.eq(Mux(b_negative, -b_reg, b_reg)),
                         negative_2.eq(a_negative ^ b_negative),
                         multiplied.eq(op_a * op_b), negative_3.eq(negative_2)]

            # -- requantization: one accumulating adder ------------------------------------------
            # total = acc*A + bias*B + skip*2**T, term by term (acc and B as a signed high and an
            # unsigned low half: every piece's magnitude fits 16 bits), then shifted right in
            # place (16 or 1 bit a cycle) by S - 1, plus 1, and once more: the rounding
            # floor((x + 2**(S-1)) / 2**S) = floor((floor(x / 2**(S-1)) + 1) / 2), without a
            # rounding term or a barrel shifter. |total| < 2**47 (docs/INFERENCE.md, "Bounds").
            # Everything the adder takes is a register (the terms' tags travel with their
            # operands): a state decoded in front of its 48-bit carry chain made 25 MHz.
            total = Signal(signed(48))
            add_term = Signal()              # the state loads the operands of a term...
            term_high = Signal()             # ... whose offset is 16 bits
            term_1 = Signal()
            high_1 = Signal()
            term_2 = Signal()
            high_2 = Signal()
            term_3 = Signal()                # `multiplied` is a term to add
            high_3 = Signal()
            add_one = Signal()               # the rounding's + 1, this cycle
            m.d.sync += [term_1.eq(add_term), high_1.eq(term_high),
                         term_2.eq(term_1), high_2.eq(high_1),
                         term_3.eq(term_2), high_3.eq(high_2)]
            shift_count = Signal(6)
            shifting = Signal()
            rq_last = Signal()               # the position requantized is the channel's last
            placed = Signal(48)
            m.d.comb += placed.eq(Mux(high_3, multiplied << 16, multiplied))
            # When add_one is set no term is in flight: `multiplied` is 0 (RQ's steps 5-7 and the
            # shifts set no operands) and negative_3 is 0, so the +1 is the carry-in alone (gating
            # the addend with add_one made 5-input functions: 2 LUTs a bit)
            addend = Mux(negative_3, ~placed, placed)
            carry_in = add_one | negative_3
            # the carry-in as a low bit of both operands: one adder for +-placed and +1
            summed = (Cat(Const(1, 1), total) + Cat(carry_in, addend))[1:49]
            with m.If(term_3 | add_one):
                m.d.sync += total.eq(summed)

            # clamp(total >> 1): its bits from k up (k = 8 for U8, 7 for S8, 15 for S16) must all
            # copy the sign, else it saturates
            result = total >> 1
            sign = total[47]
            type_s16 = ~type_u8 & ~type_s8
            high_any = result[15:].any() | (~type_s16 & result[8:15].any()) | (type_s8 & result[7])
            high_all = result[15:].all() & (type_s16 | result[8:15].all()) & (~type_s8 | result[7])
            over = ~sign & high_any
            under = sign & (type_u8 | ~high_all)
            clamped = Mux(over, high, Mux(under, low, result[:16]))
        else:
            # -- requantization: a value a cycle (columns > 1) ------------------------------
            # A wide engine makes its products so fast that the serial unit (10 and more
            # cycles a value) would take a quarter of a 16-column engine's image; the ECP5
            # that builds one has the multipliers and logic for a pipeline. A value issued in
            # RQ at cycle t reads its skip value at t (on the memory's output at t + 1) and
            # its accumulator from t + 1 (s1_position); then acc x A at t + 3, the sum at
            # t + 4, the shift at t + 5, the clamp at t + 6, and the write at t + 7
            # (write_pending). A and B are latched at RQ's first steps, before the product
            # and the sum need them.
            a_value = Signal(16)
            b_value = Signal(signed(32))
            rq_issue = Signal()
            rq_flight = Signal(6)            # bit k: a value was issued k + 1 cycles ago
            lane_1 = Signal(range(C))
            lane_2 = Signal(range(C))
            skip_2 = Signal(signed(16))
            skip_3 = Signal(signed(16))
            accumulator_3 = Signal(signed(32))
            product_4 = Signal(signed(48))
            skip_term_4 = Signal(signed(48))
            bias_term = Signal(signed(48))   # bias x B: the same through a channel
            sum_5 = Signal(signed(48))       # |sum| < 2**47 (docs/INFERENCE.md, "Bounds")
            shifted_6 = Signal(signed(48))
            m.d.sync += [
                rq_flight.eq(Cat(rq_issue, rq_flight[:-1])),
                lane_1.eq(rq_lane), lane_2.eq(lane_1),
                skip_2.eq(activation_read_data), skip_3.eq(skip_2),
                accumulator_3.eq(accumulator_read.data[lane_2]),
                product_4.eq(accumulator_3 * a_value),
                skip_term_4.eq(skip_3 << skip_shift),
                bias_term.eq(bias_read.data * b_value),
                sum_5.eq(product_4 + Mux(has_bias, bias_term, 0) + Mux(has_skip, skip_term_4, 0)
                         + (Const(1, 48) << shift)[:48]),     # + 2**(S-1)
                shifted_6.eq(sum_5 >> (shift + 1)),           # floor(sum / 2**S)
            ]
            with m.If(rq_step[0]):
                m.d.sync += b_value[:16].eq(word)
            with m.If(rq_step[1]):
                m.d.sync += b_value[16:].eq(word)
            with m.If(rq_step[2]):
                m.d.sync += a_value.eq(word)
            with m.If(rq_flight[5]):
                m.d.sync += [pending_value.eq(Mux(shifted_6 > high, high, Mux(
                                 shifted_6 < low, low, shifted_6[:16]))),
                             write_pending.eq(1)]

        pool_sum = Signal(signed(16))    # fits S16 (docs/INFERENCE.md, "Bounds")
        pool_end = Signal()
        best_value = Signal(signed(16))
        best_label = Signal(CW)
        argmax_label = Signal(CW)        # index of the value arriving this cycle
        argmax_valid = Signal()
        argmax_end = Signal()
        m.d.comb += [self.prediction.payload.label.eq(best_label),
                     self.prediction.payload.cycles.eq(cycles)]

        def first_out_channel():
            m.d.sync += [out_channel.eq(0), out_left.eq(last_out_channel),
                         on_last_out_channel.eq(~last_out_channel.any())]

        def next_out_channel():
            m.d.sync += [out_channel.eq(out_channel + 1), out_left.eq(out_left - 1),
                         on_last_out_channel.eq(out_left == 1)]

        def start_channel():
            # the first weight of an output channel is (kx, ky, channel) = (0, 0, 0)
            m.d.sync += [channels_left.eq(last_channel), first_in_channel.eq(1),
                         on_last_channel.eq(~last_channel.any()),
                         ky.eq(0), kx.eq(0), bound.eq(weight_bound),
                         weight_start.eq(weight_origin)]

        def end_channel():
            # the channel is requantized: the next one (with its A, when each has one), or
            # the next operation
            next_out_channel()
            with m.If(~single_multiplier):
                m.d.sync += program_cursor.eq(program_next)   # the next A
            with m.If(on_last_out_channel):
                m.next = "NEXT"
            with m.Else():
                start_channel()
                m.next = "WEIGHT"

        # Capacity (docs/INFERENCE.md, "The engine in hardware"): a tensor beyond memory_words,
        # more than max_channels output channels or max_positions output positions, or a field
        # wider than its register, sets `refused` as the header or record is read; the engine
        # then stops with BAD_PROGRAM the next cycle, outside the FSM's decisions.
        refused = Signal()

        def check(condition):
            with m.If(condition):
                m.d.sync += refused.eq(1)

        # The comparisons are registered every cycle, whatever the state, and tested a fetch
        # later: `word` straight from the program RAM into `refused` was critical (32.4 MHz).
        word_wide = Signal()             # the word does not fit a size register
        word_beyond = Signal()           # ... is not an address of the memory
        word_over_channels = Signal()
        product_wide = Signal()          # `sizes` >= 2**16 (C*H in the header)
        positions_over = Signal()        # `sizes` > max_positions (H'*W' in DECODE)
        image_beyond = Signal()          # the image's end, cursor + C*H*W, beyond the memory
        m.d.sync += [
            word_wide.eq(word[SZ:].any()), word_beyond.eq(_above(word, self.memory_words - 1)),
            word_over_channels.eq(_above(word, self.max_channels)),
            product_wide.eq(sizes[16:].any()),
            positions_over.eq(_above(sizes, self.max_positions)),
            image_beyond.eq(sizes[SZ:].any() |
                            _above(cursor + sizes[:SZ], self.memory_words)),
        ]
        # An output is checked as it is written: its address has a bit more than the memory's,
        # and a write at or beyond memory_words is refused (a product of the output's size at
        # the record cost 110 LCs).
        output_beyond = Signal()
        m.d.sync += output_beyond.eq(_above(output_address, self.memory_words - 1))

        def fail(status):
            m.d.sync += [error.eq(1), code.eq(status)]
            m.next = "ERROR"

        load_weight = Signal()
        pad = kernel >> 1
        # MAC walks a row C columns at a time: ox_left counts the columns after the group's
        # first, and the group is the row's last when fewer than C follow it
        group_bits = C.bit_length() - 1

        def last_group(columns_left):
            return ~columns_left[group_bits:].any()

        m.d.comb += bias_read.addr.eq(out_channel)
        # One adder steps the cursor in MAC, POOL and ARGMAX: stride2 is 0 but in a
        # convolution's MAC (NEXT clears it, and a pool's record sets it to 0). Apart, the
        # MAC's `+ step` and the others' `+ 1` were two adders (~13 LC).
        cursor_step = cursor + Mux(stride2, 2, 1)
        out_height = Mux(is_conv, Mux(stride2, (height + 1) >> 1, height), 1)
        out_width = Mux(is_conv, Mux(stride2, (width + 1) >> 1, width), 1)

        with m.FSM() as fsm:
            # ---- the program ----
            with m.State("PROGRAM"):
                m.d.comb += program_write.addr.eq(program_count)
                # unconditional: behind the word's tests they were a long enable chain
                m.d.sync += [fetch.eq(0), program_cursor.eq(0)]
                m.d.comb += cycle_counter.clear.eq(1)
                with m.If(value_valid):
                    # a coded section before the program: the program is not the first
                    # section (docs/INFERENCE.md, rule 5)
                    fail(Status.BAD_PROGRAM)
                with m.Elif(self.program.valid):
                    m.d.comb += [program_write.data.eq(self.program.payload.word),
                                 program_write.en.eq(
                                     ~_above(program_count, self.program_words - 1))]
                    m.d.sync += program_count.eq(program_count + 1)
                    with m.If(program_count == self.program_words):
                        fail(Status.BAD_PROGRAM)   # longer than this engine holds
                    with m.Elif(self.program.payload.last):
                        with m.If(self.program.payload.partial):
                            fail(Status.BAD_PROGRAM)
                        with m.Else():
                            m.d.sync += busy.eq(1)
                            m.next = "HEADER"
            with m.State("HEADER"):
                # word f - 1 of the header is read at fetch f; C*H*W on the multiplier
                m.d.sync += [fetch.eq(fetch + 1), program_cursor.eq(program_next)]
                with m.Switch(fetch):
                    with m.Case(1):
                        m.d.sync += ops_left.eq(word[:8])
                    with m.Case(2):
                        m.d.sync += in_channels.eq(word)
                    with m.Case(3):
                        check(word_wide)                      # C
                    with m.Case(4):
                        m.d.sync += width.eq(word)
                    with m.Case(5):
                        check(word_wide)                      # W
                    with m.Case(6):
                        # C*H is ready; its low 16 bits times W give C*H*W's low 16 bits.
                        # The image is written where the program puts it, as an output is.
                        m.d.sync += output_address.eq(word)
                    with m.Case(7):
                        check(word_beyond | product_wide)     # the address; C*H
                    with m.Case(9):
                        # C*H*W modulo 2**AW (AW <= 16: bits from 16 up, where C*H's 17th
                        # bit would carry, do not reach the register), less 1 at the next
                        # step with the pixels' decrement (an adder of its own cost ~13 LC)
                        m.d.sync += channels_left.eq(sizes[:AW])
                    with m.Case(10):
                        m.d.sync += channels_left.eq(channels_left - 1)
                        check(image_beyond)
                        m.next = "PIXELS"
            # ---- the image ----
            with m.State("PIXELS"):
                # A pixel is written the cycle after it is taken, as a requantized value is:
                # from a register, since at several columns the payload's path to every copy
                # of the activation memory was the critical one (46.8 MHz at 16 columns).
                m.d.comb += self.pixels.ready.eq(1)
                with m.If(self.pixels.valid):
                    m.d.sync += [pending_value.eq(self.pixels.payload), write_pending.eq(1),
                                 channels_left.eq(channels_left - 1)]
                    with m.If(channels_left == 0):
                        m.d.sync += [fetch.eq(0),
                                     program_cursor.eq(HEADER_WORDS)]
                        m.next = "FETCH"
            # ---- the next operation's record: word f - 1 at fetch f ----
            with m.State("FETCH"):
                # the cursor stops on the record's first multiplier
                with m.If(~_above(fetch, OP_WORDS - 1)):
                    m.d.sync += program_cursor.eq(program_next)
                m.d.sync += fetch.eq(fetch + 1)
                with m.Switch(fetch):
                    with m.Case(1):
                        m.d.sync += [is_conv.eq(word == Opcode.CONV),
                                     is_linear.eq(word == Opcode.LINEAR),
                                     is_pool.eq(word == Opcode.POOL)]
                    with m.Case(2):
                        m.d.sync += [type_u8.eq(word == ValueType.U8),
                                     type_s8.eq(word == ValueType.S8)]
                    with m.Case(3):
                        m.d.sync += in_channels.eq(word)
                    with m.Case(4):
                        m.d.sync += height.eq(word)
                        check(word_wide)                      # C
                    with m.Case(5):
                        m.d.sync += width.eq(word)
                        check(word_wide)                      # H
                    with m.Case(6):
                        m.d.sync += last_out_channel.eq(word - 1)
                        check(word_wide)                      # W
                    with m.Case(7):
                        m.d.sync += kernel.eq(Mux(is_conv, word, 1))
                        check(word_over_channels)
                    with m.Case(8):
                        m.d.sync += stride2.eq(is_conv & (word == 2))
                    with m.Case(9):
                        m.d.sync += cursor.eq(word)               # input_address
                    with m.Case(10):
                        m.d.sync += output_address.eq(word)
                    with m.Case(11):
                        m.d.sync += skip_cursor.eq(word)
                        check(word_beyond)                    # the output's address
                    with m.Case(12):
                        m.d.sync += [has_bias.eq(word[0]), has_skip.eq(word[1])]
                    with m.Case(13):
                        m.d.sync += weight_bound.eq(word)
                    with m.Case(14):
                        # the bias bound, for the section taken first
                        m.d.sync += bound.eq(word)
                    with m.Case(15):
                        m.d.sync += shift.eq(word - 1)            # S - 1, the shifts
                    with m.Case(16):
                        # the cursor stands on B's low word (record word 16)
                        m.d.sync += [skip_shift.eq(word), b_address.eq(program_cursor)]
                    with m.Case(OP_WORDS):
                        m.d.sync += [single_multiplier.eq(word == 1), fetch.eq(0)]
                        m.next = "DECODE"
            with m.State("DECODE"):
                # H*W, H'*W' and C*H*W on the multiplier, three cycles each, overlapped;
                # fetch counts the steps
                # the cursor stays on the input (FETCH loaded it): a pool's first plane
                m.d.sync += [fetch.eq(fetch + 1), pool_sum.eq(0)]
                with m.Switch(fetch):
                    with m.Case(0):
                        m.d.sync += [
                            row_back.eq(width - (kernel - 1)),
                            kernel_span.eq(Mux(kernel == 3, (width + 1) << 1, 0)),
                            last_ox.eq(out_width - 1), last_oy.eq(out_height - 1),
                            position.eq(0),
                        ]
                        first_out_channel()
                    with m.Case(1):
                        m.d.sync += weight_origin.eq(cursor + Mux(pad, ~width[:AW], 0))
                    with m.Case(3):
                        m.d.sync += channel_stride.eq(Mux(is_linear, 1, sizes))
                    with m.Case(4):
                        m.d.sync += [
                            last_position.eq(Mux(is_pool, channel_stride, sizes) - 1),
                            channel_step.eq(channel_stride - kernel_span),
                        ]
                    with m.Case(5):
                        check(positions_over)                 # H'*W'
                if C > 1:
                    # the lanes' geometry: whole rows when W' is a power of two below C
                    narrow_bits = Signal(range(group_bits + 1))  # log2(W') then
                    with m.If(fetch == 0):
                        m.d.sync += row_group.eq(0)
                        for bits in range(group_bits):
                            with m.If(out_width == 1 << bits):
                                m.d.sync += [row_group.eq(1), narrow_bits.eq(bits)]
                    with m.If(fetch == 1):
                        m.d.sync += group_rows.eq(1)
                        m.d.sync += [lane_row[i].eq(0) for i in range(1, C)]
                        m.d.sync += [lane_column[i].eq(i) for i in range(1, C)]
                        with m.If(row_group):
                            with m.Switch(narrow_bits):
                                for bits in range(group_bits):
                                    with m.Case(bits):
                                        m.d.sync += group_rows.eq(C >> bits)
                                        m.d.sync += [lane_row[i].eq(i >> bits)
                                                     for i in range(1, C)]
                                        m.d.sync += [lane_column[i].eq(i & ((1 << bits) - 1))
                                                     for i in range(1, C)]
                    with m.If(fetch == 2):
                        # the stride's factor; a lane's rows of input words as shifted widths
                        m.d.sync += [group_row_step.eq(group_rows << stride2),
                                     group_row_stride.eq(sum(
                                         Mux(group_rows[b], width << b, 0)
                                         for b in range(len(group_rows))) << stride2)]
                        for i in range(1, C):
                            rows_words = sum(Mux(lane_row[i][b], width << b, 0)
                                             for b in range(len(lane_row[i])))
                            m.d.sync += [
                                lane_input_row[i].eq(lane_row[i] << stride2),
                                lane_input_column[i].eq(lane_column[i] << stride2),
                                lane_offset[i].eq((rows_words + lane_column[i]) << stride2)]
                with m.If(fetch == 6):
                    m.d.sync += last_channel.eq(Mux(is_linear, sizes, in_channels) - 1)
                    with m.If(is_pool):
                        m.next = "POOL"
                    with m.Elif(has_bias):
                        m.next = "BIAS"
                    with m.Else():
                        start_channel()
                        m.next = "WEIGHT"
            # ---- a layer's biases, before its weights ----
            with m.State("BIAS"):
                # out_channel counts them, and is 0 again for the first channel
                m.d.comb += [bias_write.addr.eq(out_channel), bias_write.data.eq(value)]
                with m.If(value_valid):
                    m.d.comb += [take_value.eq(1), bias_write.en.eq(1)]
                    m.d.sync += fault.eq((value_first != ~out_channel.any()) |
                                         (value_last != on_last_out_channel) | out_of_bound)
                    next_out_channel()
                    with m.If(on_last_out_channel):
                        first_out_channel()
                        start_channel()
                        m.next = "WEIGHT"
                with m.If(fault):
                    fail(Status.BAD_PROGRAM)
            # ---- one output channel: every weight over every position, then requantize ----
            with m.State("WEIGHT"):
                with m.If(value_valid):
                    m.d.comb += load_weight.eq(1)
                    m.next = "MAC"
                with m.If(fault):          # the layer's last bias
                    fail(Status.BAD_PROGRAM)
            with m.State("MAC"):
                # issue the read of position (oy, ox) for this weight; stage 1 adds it
                # row and column run from -pad to at most H and W (kernel 1 or 3, stride 1 or
                # 2): beyond the input is -1, H or W, tests of a sign and of equality instead of
                # two carry chains (~45 LC)
                row_inside = ~row[-1] & (row != height)
                inside = row_inside & ~column[-1] & (column != width)
                m.d.sync += [s1_valid.eq(1), s1_position.eq(position), s1_first.eq(weight_first),
                             s1_weights[0].eq(Mux(inside, weight, 0))]
                for i in range(1, C):
                    # a column past the output's last row or column multiplies by 0, and its
                    # accumulator is never read
                    row_i = row + lane_input_row[i]
                    column_i = column + lane_input_column[i]
                    inside_i = (~row_i[-1] & (row_i != height) & ~column_i[-1] &
                                (column_i != width) & (lane_column[i] <= ox_left) &
                                (lane_row[i] <= oy_left))
                    m.d.sync += s1_weights[i].eq(Mux(inside_i, weight, 0))
                step = Mux(stride2, 2, 1)
                m.d.sync += position.eq(position + 1)
                with m.If(on_last_ox):
                    if C == 1:
                        next_row = row_address + Mux(stride2, width << 1, width)
                        m.d.sync += [oy_left.eq(oy_left - 1), on_last_oy.eq(oy_left == 1),
                                     row.eq(row + step)]
                    else:
                        # the next group's rows; it is the last when fewer than two groups'
                        # rows are left
                        next_row = row_address + group_row_stride
                        m.d.sync += [oy_left.eq(oy_left - group_rows),
                                     on_last_oy.eq(oy_left < (group_rows << 1)),
                                     row.eq(row + group_row_step)]
                    m.d.sync += [ox_left.eq(last_ox), column.eq(column_start),
                                 on_last_ox.eq(last_group(last_ox)),
                                 row_address.eq(next_row), cursor.eq(next_row)]
                    with m.If(on_last_oy):
                        # this weight is done: the next one, or the channel's requantization
                        with m.If(weight_last):
                            m.d.sync += [position.eq(0), rq_step.eq(1)]
                            if C > 1:   # RQ walks the columns and rows one by one
                                m.d.sync += [rq_lane.eq(0),
                                             ox_left.eq(last_ox), on_last_ox.eq(~last_ox.any()),
                                             oy_left.eq(last_oy), on_last_oy.eq(~last_oy.any())]
                            m.next = "RQ"
                        with m.Elif(value_valid):
                            m.d.comb += load_weight.eq(1)
                        with m.Else():
                            m.next = "WEIGHT"
                with m.Else():
                    if C == 1:
                        m.d.sync += [ox_left.eq(ox_left - 1), column.eq(column + step),
                                     on_last_ox.eq(ox_left == 1),
                                     cursor.eq(cursor_step)]
                    else:
                        # the next group is the row's last when fewer than 2C columns follow
                        group_step = Mux(stride2, 2 * C, C)
                        m.d.sync += [ox_left.eq(ox_left - C), column.eq(column + group_step),
                                     on_last_ox.eq(~ox_left[group_bits + 1:].any()),
                                     cursor.eq(cursor + group_step)]
                with m.If(fault):   # last, so that it decides the next state
                    fail(Status.BAD_PROGRAM)
            # ---- requantize the channel's accumulators: at one column a value at a time
            # (RQ, RQ_WRITE), at more a value a cycle (RQ issues, RQ_DRAIN waits) ----
            if C == 1:
                # The accumulator and the skip value are read in RQ0 and stay on the RAMs'
                # outputs; each term's operands are set three cycles before it is added.
                # Without a bias or a skip input their terms are not added (add_term), rather than
                # zeroed in the operand's multiplexer (~20 LUTs)
                bias_value = bias_read.data
                accumulator = accumulator_read.data[0]
                with m.State("RQ"):
                    # rq_step (one-hot, one bit a cycle) names the term whose operands are set;
                    # each is added three cycles later. Then, with rq_step empty, the shift.
                    m.d.comb += address.eq(skip_cursor)
                    m.d.sync += [rq_step.eq(rq_step << 1),
                                 rq_last.eq(position == last_position)]
                    # B's low word is on the program RAM's output at step 0, its high word at
                    # step 1, A from step 2 (the address, below the FSM)
                    with m.If(rq_step[0]):
                        m.d.comb += [a_src.eq(bias_value), a_signed.eq(1), b_src.eq(word),
                                     add_term.eq(has_bias)]
                        m.d.sync += [total.eq(0), shift_count.eq(shift)]
                    with m.If(rq_step[1]):
                        m.d.comb += [a_src.eq(bias_value), a_signed.eq(1),
                                     b_src.eq(word), b_signed.eq(1), add_term.eq(has_bias),
                                     term_high.eq(1)]
                    with m.If(rq_step[2]):
                        m.d.comb += [a_src.eq(accumulator[:16]), b_src.eq(word), add_term.eq(1)]
                    with m.If(rq_step[3]):
                        m.d.comb += [a_src.eq(accumulator[16:]), a_signed.eq(1), b_src.eq(word),
                                     add_term.eq(1), term_high.eq(1)]
                    with m.If(rq_step[4]):
                        m.d.comb += [a_src.eq(activation_read_data),
                                     a_signed.eq(1), b_src.eq(Const(1, 16) << skip_shift[:4]),
                                     add_term.eq(has_skip), term_high.eq(skip_shift[4])]
                    with m.If(rq_step[7]):
                        # the last term is added this cycle
                        m.d.sync += [add_one.eq(shift_count == 0), shifting.eq(1)]
                    # add_one is set for the cycle after the last shift
                    with m.If(shifting):
                        with m.If(add_one):
                            m.d.sync += [add_one.eq(0), shifting.eq(0)]
                            m.next = "RQ_WRITE"
                        with m.Elif(shift_count[4:].any()):
                            m.d.sync += [total.eq(total >> 16), shift_count.eq(shift_count - 16),
                                         add_one.eq(shift_count == 16)]
                        with m.Else():
                            m.d.sync += [total.eq(total >> 1), shift_count.eq(shift_count - 1),
                                         add_one.eq(shift_count == 1)]
                with m.State("RQ_WRITE"):
                    check(output_beyond)
                    # the value is clamped into a register and written the next cycle, whatever
                    # the state then (RQ's first step, WEIGHT or NEXT: none uses the memory in its
                    # first cycle). The output and the skip tensor are walked in address order,
                    # channel after channel: two counters instead of sums of addresses.
                    m.d.sync += [pending_value.eq(clamped), write_pending.eq(1),
                                 skip_cursor.eq(skip_cursor + 1)]
                    m.d.sync += position.eq(position + 1)
                    with m.If(rq_last):
                        end_channel()
                    with m.Else():
                        m.d.sync += rq_step.eq(1)
                        m.next = "RQ"
            else:
                with m.State("RQ"):
                    # a value a cycle, in C order: the group's lanes, then the next group. A
                    # layer with a skip input issues none while a value is written (its read
                    # of the skip value needs the memory's one port).
                    m.d.comb += address.eq(skip_cursor)
                    m.d.sync += rq_step.eq(rq_step << 1)
                    with m.If(~(has_skip & write_pending)):
                        m.d.comb += rq_issue.eq(1)
                        m.d.sync += skip_cursor.eq(skip_cursor + 1)
                        # the group's next lane, or the next group at the group's or the row's
                        # end
                        with m.If((on_last_ox & ~row_group) | (rq_lane == C - 1)):
                            m.d.sync += [position.eq(position + 1), rq_lane.eq(0)]
                        with m.Else():
                            m.d.sync += rq_lane.eq(rq_lane + 1)
                        with m.If(on_last_ox):
                            m.d.sync += [ox_left.eq(last_ox), on_last_ox.eq(~last_ox.any()),
                                         oy_left.eq(oy_left - 1), on_last_oy.eq(oy_left == 1)]
                        with m.Else():
                            m.d.sync += [ox_left.eq(ox_left - 1), on_last_ox.eq(ox_left == 1)]
                        with m.If(on_last_ox & on_last_oy):
                            m.next = "RQ_DRAIN"
                with m.State("RQ_DRAIN"):
                    # nothing in flight: the channel's last value is being written
                    m.d.sync += rq_step.eq(rq_step << 1)
                    with m.If(~rq_flight.any()):
                        end_channel()
            # ---- global sum pooling: channel by channel, one value a cycle ----
            with m.State("POOL"):
                # the cursor runs over the channel's plane; each value arrives a cycle later.
                # pool_end (registered) is the cycle after the plane's last read: its value is
                # added and the cursor stays on the next plane.
                m.d.sync += pool_end.eq(position == last_position)
                with m.If(~pool_end):
                    m.d.sync += [cursor.eq(cursor_step), position.eq(position + 1)]
                with m.If(position != 0):
                    m.d.sync += pool_sum.eq(pool_sum + activation_read_data)
                with m.If(pool_end):
                    m.next = "POOL_WRITE"
            with m.State("POOL_WRITE"):
                check(output_beyond)
                # the cursor already stands at the next channel's plane
                m.d.comb += [address.eq(output_address), activation_write_data.eq(pool_sum),
                             activation_write_en.eq(1)]
                m.d.sync += [output_address.eq(output_address + 1), pool_sum.eq(0),
                             position.eq(0), pool_end.eq(0)]
                next_out_channel()
                with m.If(on_last_out_channel):
                    m.next = "NEXT"
                with m.Else():
                    m.next = "POOL"
            # ---- the next operation, or the answer ----
            with m.State("NEXT"):
                # the program cursor stands on the last multiplier read (a pool has none)
                m.d.comb += program_increment.eq(single_multiplier & ~is_pool)
                m.d.sync += [ops_left.eq(ops_left - 1), fetch.eq(0), stride2.eq(0),
                             program_cursor.eq(program_next)]
                # the last output is (classes, 1, 1), just written, ending at
                # output_address: scanned from its start (unconditional, as in DECODE)
                # after RQ_WRITE this is the write's cycle: output_address steps only at its
                # end, hence + write_pending (as a carry-in: output_address + ~last + carry)
                last_inverted = ~Cat(last_out_channel, Const(0, max(0, AW - CW)))
                m.d.sync += [cursor.eq((Cat(Const(1, 1), output_address[:AW]) +
                                        Cat(write_pending, last_inverted))[1:]),
                             argmax_valid.eq(0), argmax_end.eq(0)]
                with m.If(ops_left == 1):
                    first_out_channel()
                    m.next = "ARGMAX"
                with m.Else():
                    m.next = "FETCH"
            with m.State("ARGMAX"):
                # argmax_end: the value arriving is the last (out_channel was the last read)
                m.d.sync += [cursor.eq(cursor_step), argmax_label.eq(out_channel),
                             argmax_valid.eq(1), argmax_end.eq(on_last_out_channel)]
                next_out_channel()
                with m.If(argmax_valid):
                    with m.If((argmax_label == 0) | (activation_read_data > best_value)):
                        m.d.sync += [best_value.eq(activation_read_data),
                                     best_label.eq(argmax_label)]
                with m.If(argmax_end):
                    m.d.sync += busy.eq(0)
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                m.d.comb += self.prediction.valid.eq(1)
                with m.If(self.prediction.ready):
                    m.d.sync += program_count.eq(0)
                    m.next = "PROGRAM"
            with m.State("ERROR"):
                # refuse quietly: take and drop every input, so nothing upstream waits forever
                m.d.comb += self.pixels.ready.eq(1)
                m.d.sync += busy.eq(0)
        # A PROGRAM section's words after the program's last (a second program, rule 5) are
        # refused as the capacity checks are; those that come once the answer is out are the
        # next image's program.
        with m.If(self.program.valid & ~fsm.ongoing("PROGRAM")):
            m.d.sync += refused.eq(1)
        with m.If(refused & ~error):
            m.d.sync += [error.eq(1), code.eq(Status.BAD_PROGRAM)]
        with m.If(error):
            # whatever state the FSM is in: take and drop the pixels too, answer nothing
            m.d.comb += [self.pixels.ready.eq(1), self.prediction.valid.eq(0)]

        # 0 while the program, header and pixels come in (the previous image's last record
        # is still in the registers)
        loading = fsm.ongoing("PROGRAM") | fsm.ongoing("HEADER") | fsm.ongoing("PIXELS")
        m.d.comb += [
            self.activity.opcode.eq(Mux(loading, 0, Mux(is_conv, Opcode.CONV, Mux(
                is_linear, Opcode.LINEAR, Mux(is_pool, Opcode.POOL, 0))))),
            self.activity.waiting.eq((fsm.ongoing("WEIGHT") | fsm.ongoing("BIAS")) &
                                     ~value_valid),
        ]

        # -- the program RAM's address: B for the requantization's first two steps -----------
        # Its low word is read in MAC and RQ_WRITE (the cycles before RQ's first step; neither
        # reads the RAM), its high word in step 0; otherwise the cursor (A from step 1 on).
        with m.If(fsm.ongoing("MAC") | (fsm.ongoing("RQ_WRITE") if C == 1 else 0)):
            m.d.comb += program_read.addr.eq(b_address)
        with m.Elif(rq_step[0]):
            m.d.comb += program_read.addr.eq(b_address + 1)

        # -- the sizes' operands, by the step: products of other steps and states are not read
        # HEADER: C*H at 3 (H is the word), (C*H)*W at 6. DECODE: H*W at 0, H'*W' at 1, C*(H*W)
        # at 3 (a product arrives three steps after its operands are chosen).
        with m.Switch(fetch):
            with m.Case(0):
                m.d.comb += [size_a_src.eq(height), size_b_src.eq(width)]
            with m.Case(1):
                m.d.comb += [size_a_src.eq(out_height), size_b_src.eq(out_width)]
            with m.Case(3):
                m.d.comb += [size_a_src.eq(in_channels),
                             size_b_src.eq(Mux(fsm.ongoing("HEADER"), word, sizes[:16]))]
            with m.Case(6):
                m.d.comb += [size_a_src.eq(width), size_b_src.eq(sizes[:16])]

        # -- a requantized value, written the cycle after RQ_WRITE ---------------------------
        # (the clamp in front of the SPRAM's data input was the critical path: 30.6 MHz)
        # (it writes at output_address and steps it, rather than keep the address in a register
        # of its own: 13 flip-flops fed from a register, a logic cell each)
        with m.If(write_pending):
            m.d.sync += output_address.eq(output_address + 1)
            m.d.comb += [address.eq(output_address), activation_write_data.eq(pending_value),
                         activation_write_en.eq(1)]
            if C > 1:
                # values written a cycle apart: each is checked as it is written (RQ_WRITE
                # checks the registered output_beyond at one column)
                check(_above(output_address, self.memory_words - 1))
        # -- taking a weight: in WEIGHT, or in MAC as the previous weight ends ---------------
        # (kx, ky, channel, weight_start) name the weight to take, and step to the next as
        # it is taken, so that a linear layer's MAC takes a weight every cycle. After the FSM:
        # in MAC it overrides the position's stepping.
        with m.If(load_weight):
            m.d.comb += take_value.eq(1)
            kernel_last = kernel - 1
            last_kx = kx == kernel_last
            last_ky = ky == kernel_last
            channel_first = first_in_channel & (ky == 0) & (kx == 0)
            channel_last = on_last_channel & last_kx & last_ky
            m.d.sync += [
                fault.eq((value_first != (channel_first & ~out_channel.any())) |
                         (value_last != (channel_last & on_last_out_channel)) | out_of_bound),
                weight.eq(value), weight_first.eq(channel_first), weight_last.eq(channel_last),
                oy_left.eq(last_oy), ox_left.eq(last_ox), position.eq(0),
                on_last_ox.eq(last_group(last_ox)),
                on_last_oy.eq(~last_oy.any() if C == 1 else last_oy < group_rows),
                row.eq(ky - pad), column.eq(kx - pad), column_start.eq(kx - pad),
                row_address.eq(weight_start), cursor.eq(weight_start),
                weight_start.eq(weight_start + Mux(
                    ~last_kx, 1, Mux(~last_ky, row_back, channel_step))),
            ]
            with m.If(~last_kx):
                m.d.sync += kx.eq(kx + 1)
            with m.Elif(~last_ky):
                m.d.sync += [kx.eq(0), ky.eq(ky + 1)]
            with m.Else():
                m.d.sync += [kx.eq(0), ky.eq(0), channels_left.eq(channels_left - 1),
                             first_in_channel.eq(0), on_last_channel.eq(channels_left == 1)]

        return m
