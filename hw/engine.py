"""The inference engine: runs a container's integer program on the weights as they are decoded.

docs/INFERENCE.md is the specification and :mod:`sw.engine` its reference; this is the same
arithmetic in gates. The engine takes the program's words, then one image's pixels, then the
decoder's weight stream, and emits the predicted class. It keeps no decompressed weights: a
convolution takes each weight once, as it arrives, and applies it to every output position of
its channel before taking the next one (the loop over positions is the innermost), so the
decoder's backpressure paces it; only the accumulators of one output channel, the biases of
one layer and the activations are stored.

This first engine computes one product per cycle (a digits-ResNet image is about 3.1 M
cycles). Its structure is the one a wider engine keeps: the lanes of a wider one would take
several output positions of the same weight at once.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw.format import Status
from sw.program import HEADER_WORDS, OP_WORDS, Opcode, ValueType

from .decoder import ProgramWord, WeightBatch
from .spram import SinglePortRam

__all__ = ["ActivationWrite", "EngineStatus", "Prediction", "InferenceEngine"]


#: An activation the engine writes (pixels and every operation's outputs), for observers.
ActivationWrite = data.StructLayout({"address": unsigned(16), "value": signed(16)})

#: ``busy`` while an image is in flight; ``error`` and ``code`` (a :class:`sw.format.Status`)
#: when the engine refused the program or the weights that follow it. Sticky until reset.
EngineStatus = data.StructLayout({"busy": 1, "error": 1, "code": 4})

#: The engine's answer for one image: the predicted class and the cycles it took.
Prediction = data.StructLayout({"label": unsigned(16), "cycles": unsigned(32)})

#: Words of an operation record the engine keeps in registers (the multipliers stay in RAM).
_RECORD = {
    "opcode": 0, "output_type": 1, "in_channels": 2, "in_height": 3, "in_width": 4,
    "out_channels": 5, "kernel": 6, "stride": 7, "input_address": 8, "output_address": 9,
    "skip_address": 10, "flags": 11, "weight_bound": 12, "bias_bound": 13, "shift": 14,
    "skip_shift": 15, "bias_low": 16, "bias_high": 17, "multiplier_count": 19,
}


class InferenceEngine(wiring.Component):
    """Runs the integer program of docs/INFERENCE.md, one product per cycle.

    Parameters
    ----------
    lanes : int
        Of the decoder whose ``weights`` stream this engine takes.
    memory_words : int
        Activation memory (values of 16 bits): one SB_SPRAM256KA (16K words) on iCE40.
        Addresses wrap at its power of two; this engine does not check a program against it.
    program_words : int
        Program RAM; a longer program is refused with ``BAD_PROGRAM``. The defaults of this
        and the next two are what the UP5K build keeps in 8 block RAMs (512 x 16: 2,
        512 x 16: 2, 512 x 32: 4), beside the decoder's 14: the digits ResNet needs 237
        program words, 128 channels and 64 positions.
    max_channels : int
        Output channels of one operation (its biases are kept). Not checked: a wider layer
        wraps its bias addresses.
    max_positions : int
        Output positions of one channel (its accumulators are kept). Not checked likewise.
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
    """

    def __init__(self, lanes: int = 1, *, memory_words: int = 8192, program_words: int = 512,
                 max_channels: int = 512, max_positions: int = 512, spram: bool = None):
        self.lanes = lanes
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
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes

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
        m.submodules.accumulator_ram = accumulator_ram = Memory(
            shape=signed(32), depth=self.max_positions, init=[])
        accumulator_write = accumulator_ram.write_port()
        # transparent: the MAC loop reads a position the cycle its last sum is written when a
        # channel has a single output position
        accumulator_read = accumulator_ram.read_port(transparent_for=(accumulator_write,))

        address = Signal(16)             # the activation memory's one address
        cursor = Signal(16)              # ... when a loop walks it; states override it
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
                     self.status.busy.eq(busy)]
        cycles = Signal(32)
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

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
            self.weights.ready.eq(~batch_full | error),
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
        bound = Signal(16)
        # |value| > bound, as two comparisons side by side instead of a negation followed by a
        # comparison (that chain was on the critical path)
        negative_bound = Signal(signed(17))
        out_of_bound = Signal()
        m.d.comb += out_of_bound.eq((value > bound) | (value < negative_bound))

        # -- the program header and the current operation ------------------------------------
        program_count = Signal(range(self.program_words + 1))
        last_op = Signal(signed(9))      # op_count - 1 (op_count is the header's word, 8 bits)
        input_size = Signal(17)
        input_address = Signal(16)
        op_index = Signal(8)
        op_base = Signal(range(self.program_words + 1))   # first word of the current record
        # The program RAM's read address, a counter: the header and a record are read word
        # after word and the per-channel multipliers channel after channel. (As op_base +
        # OP_WORDS + out_channel it was the critical path, 26 MHz.)
        program_cursor = Signal.like(op_base)
        m.d.comb += program_read.addr.eq(program_cursor)
        # Fields read only in part are kept in part, and fields only compared with constants
        # as the comparisons' results (decoded as the word arrives): ~90 flip-flops fewer.
        narrow = {"kernel": 2, "flags": 2, "shift": 6, "skip_shift": 5}
        record = {name: Signal(narrow.get(name, 16), name=f"op_{name}") for name in _RECORD
                  if name not in ("opcode", "output_type", "stride")}
        decoded = {
            "opcode": {"is_conv": Opcode.CONV, "is_linear": Opcode.LINEAR,
                       "is_pool": Opcode.POOL},
            "output_type": {"type_u8": ValueType.U8, "type_s8": ValueType.S8},
            "stride": {"stride_is_2": 2},
            "multiplier_count": {"single_multiplier": 1},
        }
        flags = {flag: Signal(name=f"op_{flag}") for fields in decoded.values()
                 for flag in fields}
        fetch = Signal(range(OP_WORDS + 2))

        is_conv = flags["is_conv"]
        is_linear = flags["is_linear"]
        has_bias = record["flags"][0]
        has_skip = record["flags"][1]
        bias_multiplier = Signal(signed(32))
        m.d.comb += bias_multiplier.eq(Cat(record["bias_low"], record["bias_high"]))

        # Loop bounds of the current operation, made ready in DECODE. A linear layer runs as a
        # 1x1 convolution over C*H*W channels of one pixel each.
        channels = Signal(16)            # inner-product channels: in_channels, or C*H*W
        height = Signal(16)
        width = Signal(16)
        channel_stride = Signal(17)      # H*W: words from one input channel to the next
        kernel = Signal(2)
        stride2 = Signal()
        out_height = Signal(16)
        out_width = Signal(16)
        # Each loop's last index, registered once per operation: comparing a counter with
        # `bound - 1` computed in the same cycle put a subtractor and a long LUT chain in front
        # of the FSM (16 MHz). Signed and a bit wider, as Amaranth's `bound - 1` is, so that a
        # zero bound never matches, as before.
        last_out_channel = Signal(signed(17))
        last_channel = Signal(signed(17))
        last_plane = Signal(signed(18))      # channel_stride - 1
        last_position = Signal(signed(18))   # positions - 1
        last_ox = Signal(signed(17))
        last_oy = Signal(signed(17))
        on_last_ox = Signal()                # ox == last_ox, oy == last_oy: set with them, so
        on_last_oy = Signal()                # that MAC's decisions start from flip-flops
        last_input = Signal(signed(18))      # input_size - 1
        skip_cursor = Signal(16)             # skip address of the value being requantized
        # out_channel == last_out_channel and in_channel == last_channel, kept beside the
        # counters (set with them) so that no 16-bit comparison sits in the WEIGHT checks
        on_last_out_channel = Signal()
        on_last_channel = Signal()
        low = Signal(signed(17))         # the output type's range
        high = Signal(signed(17))

        # -- loop counters -------------------------------------------------------------------
        out_channel = Signal(16)
        in_channel = Signal(16)
        ky = Signal(2)
        kx = Signal(2)
        oy = Signal(16)
        ox = Signal(16)
        position = Signal(17)
        # The read address of output (0, 0) for the next weight: kept as a running value,
        # stepped as (kx, ky, in_channel) advance by per-operation constants, instead of
        # channel_base + (ky - pad) * width + (kx - pad) formed in WEIGHT (26 MHz).
        weight_start = Signal(signed(20))
        first_offset = Signal(signed(20))   # -(pad * width + pad): (0, 0) of a plane's first
        row_back = Signal(signed(20))       # width - (kernel - 1): kx back to 0, ky + 1
        kernel_span = Signal(signed(20))    # (kernel - 1) * (width + 1)
        channel_step = Signal(signed(20))   # channel_stride - kernel_span: the next plane
        row = Signal(signed(18))            # input row of (oy, ky)
        column = Signal(signed(18))         # input column of (ox, kx)
        row_address = Signal(signed(20))    # where the current output row's reads start (the
                                            # cursor walks the row from there)
        # The checks of a value BIAS or WEIGHT takes, acted on the next cycle (in BIAS,
        # CHANNEL or MAC): between the decoder's value and the FSM they were the critical
        # path (23 MHz, then 27). A bad section still stops the engine with BAD_PROGRAM, a
        # cycle later; what it wrote meanwhile (a bias, a partial sum) is internal.
        fault = Signal()
        output_address = Signal(17)         # output address of the value being written
        first_weight = Signal()             # the weight being applied is the channel's first
        weight = Signal(signed(16))

        # MAC pipeline: stage 1 holds the position whose input and accumulator are being read.
        # It is valid only the cycle after a MAC cycle issued it.
        s1_valid = Signal()
        s1_position = Signal(17)
        s1_inside = Signal()
        s1_first = Signal()
        s1_weight = Signal(signed(16))
        product = Signal(signed(32))
        m.d.comb += product.eq(s1_weight * Mux(s1_inside, activation_read_data, 0))
        with m.If(s1_valid):
            m.d.comb += [accumulator_write.addr.eq(s1_position),
                         accumulator_write.data.eq(
                             Mux(s1_first, 0, accumulator_read.data) + product),
                         accumulator_write.en.eq(1)]

        # -- one shared 16x16 unsigned multiplier (one SB_MAC16), registered product ---------
        # Every product but the MAC's goes through it, a 16-bit piece at a time: the header's
        # and DECODE's sizes, the bias term (|bias| x |B|, B of 32 bits) and the
        # requantization (|accumulator| x multiplier, the accumulator of 32 bits). Operands
        # are magnitudes, so one signedness serves all; the sign is applied to the sum.
        multiply_a = Signal(16)
        multiply_b = Signal(16)
        multiplied = Signal(32)
        m.d.sync += multiplied.eq(multiply_a * multiply_b)
        wide_low = Signal(32)            # the low piece's product, while the high one runs
        wide = Signal(48)                # |X| x Y of a 32-bit X, from its two pieces
        wide_negative = Signal()
        wide_term = Signal(signed(50))   # +-wide (as ~wide + 1: one adder with the sum)
        m.d.comb += wide_term.eq(Mux(wide_negative, ~wide.as_signed(), wide))

        # |B|, |bias| and |accumulator| each from its own source: one unit shared behind a
        # state-selected multiplexer was the critical path (31 MHz)
        def magnitude_of(x):
            return Mux(x < 0, -x, x)

        bias_term = Signal(signed(50))   # bias x B + the rounding constant, per channel
        multiplier = Signal(16)
        skip_value = Signal(signed(16))
        magnitude_in = Signal(32)        # |accumulator| or |bias|, for its pieces
        negative_in = Signal()
        base = Signal(signed(50))        # bias_term + skip << T, beside the multiply
        skip_term = Signal(signed(47))   # skip << T a cycle before: the shift, then the add
        b_magnitude = Signal(32)         # |B|, once per operation
        b_negative = Signal()
        total = Signal(signed(50))
        # clamp(total >> S) without shifting all 50 bits or comparing them with low and high:
        # with k the output type's bits above the sign (8 for U8, 7 for S8, 15 for S16),
        # total >> S > high exactly when total >= 2**(S+k), and total >> S < low exactly when
        # total < -2**(S+k) (U8: total < 0); that is, when the bits from S+k up are not all
        # copies of the sign. range_mask marks those bits, once per operation. Only the 16
        # bits of the shifted value that are written are formed, coarsest stage first so
        # that each stage is no wider than what the next needs.
        range_mask = Signal(50)
        unsigned_output = Signal()
        sign = total[49]
        over = Signal()
        under = Signal()
        window = total
        for bit in reversed(range(6)):
            window = Mux(record["shift"][bit], window >> (1 << bit), window)
        # registered (RQ_CLAMP): from total through the clamp to the SPRAM's data input, far
        # across the chip, was the critical path (26 MHz)
        clamped = Signal(signed(16))
        m.d.comb += [
            over.eq(~sign & (total & range_mask).any()),
            under.eq(sign & (unsigned_output | (~total & range_mask).any())),
        ]
        pool_sum = Signal(signed(24))
        best_value = Signal(signed(17))
        best_label = Signal(16)
        prediction = Signal(Prediction)
        m.d.comb += self.prediction.payload.eq(prediction)

        m.d.sync += s1_valid.eq(0)

        # range_mask[i] = S + k <= i, formed from the record's registers outside the FSM (only
        # its register's enable is DECODE's) and from equalities only: written as '<=', Yosys
        # made each of the 50 a carry chain (247 SB_CARRY)
        range_start = Signal(7)
        m.d.comb += range_start.eq(record["shift"] + Mux(flags["type_u8"], 8,
                                                         Mux(flags["type_s8"], 7, 15)))
        eighth = [range_start[3:] == j for j in range(7)]
        below = [Const(0, 1)] + [Cat(*eighth[:j]).any() for j in range(1, 7)]
        within = [Cat(*[range_start[:3] == t for t in range(r + 1)]).any() for r in range(8)]
        next_range_mask = Cat(below[i >> 3] | (eighth[i >> 3] & within[i & 7]) for i in range(50))

        def fail(status):
            m.d.sync += [error.eq(1), code.eq(status)]
            m.next = "ERROR"

        with m.FSM():
            # ---- the program ----
            with m.State("PROGRAM"):
                m.d.comb += program_write.addr.eq(program_count)
                with m.If(value_valid):
                    # a coded section before the program: the program is not the first
                    # section (docs/INFERENCE.md, rule 5)
                    fail(Status.BAD_PROGRAM)
                with m.Elif(self.program.valid):
                    m.d.comb += [program_write.data.eq(self.program.payload.word),
                                 program_write.en.eq(program_count < self.program_words)]
                    m.d.sync += program_count.eq(program_count + 1)
                    with m.If(program_count == self.program_words):
                        fail(Status.BAD_PROGRAM)   # longer than this engine holds
                    with m.Elif(self.program.payload.last):
                        with m.If(self.program.payload.partial):
                            fail(Status.BAD_PROGRAM)
                        with m.Else():
                            m.d.sync += [fetch.eq(0), busy.eq(1), cycles.eq(0),
                                         program_cursor.eq(0)]
                            m.next = "HEADER"
            with m.State("HEADER"):
                # words 0 (op_count), 1-3 (C, H, W) and 5 (input_address), a cycle after
                # their address
                m.d.sync += [fetch.eq(fetch + 1), program_cursor.eq(program_cursor + 1)]
                word = program_read.data
                size_carry = Signal()    # bit 16 of C*H times bit 0 of W: bit 16 of C*H*W
                with m.Switch(fetch):
                    with m.Case(1):
                        m.d.sync += last_op.eq(word[:8] - 1)
                    with m.Case(2):
                        m.d.sync += input_size.eq(word)
                    with m.Case(3):
                        m.d.comb += [multiply_a.eq(input_size), multiply_b.eq(word)]
                    with m.Case(4):
                        # C*H is ready; its low 17 bits times W give C*H*W's low 17 bits
                        m.d.comb += [multiply_a.eq(multiplied[:16]), multiply_b.eq(word)]
                        m.d.sync += size_carry.eq(multiplied[16] & word[0])
                    with m.Case(5):
                        m.d.sync += input_size.eq(multiplied + (size_carry << 16))
                    with m.Case(6):
                        m.d.sync += [input_address.eq(word), position.eq(0), cursor.eq(word),
                                     last_input.eq(input_size - 1)]
                        m.next = "PIXELS"
            # ---- the image ----
            with m.State("PIXELS"):
                m.d.comb += self.pixels.ready.eq(1)
                with m.If(self.pixels.valid):
                    m.d.comb += [activation_write_data.eq(self.pixels.payload),
                                 activation_write_en.eq(1)]
                    m.d.sync += [cursor.eq(cursor + 1), position.eq(position + 1)]
                    with m.If(position == last_input):
                        m.d.sync += [op_index.eq(0), op_base.eq(HEADER_WORDS), fetch.eq(0),
                                     program_cursor.eq(HEADER_WORDS)]
                        m.next = "FETCH"
            # ---- the next operation's record ----
            with m.State("FETCH"):
                m.d.sync += [fetch.eq(fetch + 1), program_cursor.eq(program_cursor + 1)]
                for name, offset in _RECORD.items():
                    with m.If(fetch == offset + 1):
                        if name in record:
                            m.d.sync += record[name].eq(program_read.data)
                        for flag, constant in decoded.get(name, {}).items():
                            m.d.sync += flags[flag].eq(program_read.data == constant)
                with m.If(fetch == OP_WORDS):
                    m.next = "DECODE"
            with m.State("DECODE"):
                # H*W, then C*H*W and H'*W' a cycle each on the shared multiplier
                m.d.comb += [multiply_a.eq(record["in_height"]), multiply_b.eq(record["in_width"])]
                m.d.sync += [
                    height.eq(Mux(is_linear, 1, record["in_height"])),
                    width.eq(Mux(is_linear, 1, record["in_width"])),
                    b_negative.eq(bias_multiplier < 0), b_magnitude.eq(magnitude_of(bias_multiplier)),
                    program_cursor.eq(op_base + OP_WORDS),     # the first channel's multiplier
                    last_out_channel.eq(record["out_channels"] - 1),
                    kernel.eq(Mux(is_conv, record["kernel"], 1)),
                    stride2.eq(is_conv & flags["stride_is_2"]),
                    out_height.eq(Mux(is_conv, Mux(flags["stride_is_2"],
                                                   (record["in_height"] + 1) >> 1,
                                                   record["in_height"]), 1)),
                    out_width.eq(Mux(is_conv, Mux(flags["stride_is_2"],
                                                  (record["in_width"] + 1) >> 1,
                                                  record["in_width"]), 1)),
                ]
                with m.If(flags["type_u8"]):
                    m.d.sync += [low.eq(0), high.eq(255)]
                with m.Elif(flags["type_s8"]):
                    m.d.sync += [low.eq(-128), high.eq(127)]
                with m.Else():
                    m.d.sync += [low.eq(-32768), high.eq(32767)]
                m.d.sync += [range_mask.eq(next_range_mask),
                             unsigned_output.eq(flags["type_u8"])]
                m.next = "DECODE_HW"
            with m.State("DECODE_HW"):
                m.d.comb += [multiply_a.eq(multiplied[:16]), multiply_b.eq(record["in_channels"])]
                pad = kernel >> 1
                m.d.sync += [first_offset.eq(Mux(pad, -(width + 1), 0)),
                             row_back.eq(width - (kernel - 1)),
                             kernel_span.eq(Mux(kernel == 3, (width + 1) << 1,
                                                Mux(kernel == 2, width + 1, 0))),
                             channel_stride.eq(Mux(is_linear, 1, multiplied)),
                             last_plane.eq(Mux(is_linear, 1, multiplied[:17]) - 1),
                             last_ox.eq(out_width - 1), last_oy.eq(out_height - 1)]
                m.next = "DECODE_CHW"
            with m.State("DECODE_CHW"):
                m.d.comb += [multiply_a.eq(out_height), multiply_b.eq(out_width)]
                m.d.sync += [channels.eq(Mux(is_linear, multiplied, record["in_channels"])),
                             last_channel.eq(Mux(is_linear, multiplied[:16],
                                                 record["in_channels"]) - 1)]
                m.next = "DECODE2"
            with m.State("DECODE2"):
                m.d.sync += [last_position.eq(multiplied[:17] - 1),   # H'*W' - 1
                             channel_step.eq(channel_stride - kernel_span),
                             out_channel.eq(0), skip_cursor.eq(record["skip_address"]),
                             on_last_out_channel.eq(last_out_channel == 0),
                             output_address.eq(record["output_address"]), position.eq(0)]
                with m.If(flags["is_pool"]):
                    m.d.sync += [cursor.eq(record["input_address"]), pool_sum.eq(0)]
                    m.next = "POOL"
                with m.Elif(has_bias):
                    m.d.sync += [bound.eq(record["bias_bound"]),
                                 negative_bound.eq(-record["bias_bound"])]
                    m.next = "BIAS"
                with m.Else():
                    m.next = "CHANNEL"
            # ---- a layer's biases, before its weights ----
            with m.State("BIAS"):
                # the layer's last bias: position counts them from 0 (a down-counter of 32
                # bits did this before)
                last_bias = position == last_out_channel
                m.d.comb += [bias_write.addr.eq(position), bias_write.data.eq(value)]
                with m.If(value_valid):
                    m.d.comb += [take_value.eq(1), bias_write.en.eq(1)]
                    m.d.sync += [fault.eq((value_first != (position == 0)) |
                                          (value_last != last_bias) | out_of_bound),
                                 position.eq(position + 1)]
                    with m.If(last_bias):
                        m.next = "CHANNEL"
                with m.If(fault):
                    fail(Status.BAD_PROGRAM)
            # ---- one output channel: its bias term, then every weight over every position ----
            with m.State("CHANNEL"):
                m.d.comb += bias_read.addr.eq(out_channel)
                m.d.sync += [in_channel.eq(0), on_last_channel.eq(last_channel == 0),
                             ky.eq(0), kx.eq(0), first_weight.eq(1),
                             weight_start.eq(record["input_address"] + first_offset)]
                m.next = "CHANNEL2"
                with m.If(fault):          # the layer's last bias
                    fail(Status.BAD_PROGRAM)
            with m.State("CHANNEL2"):
                with m.If(~flags["single_multiplier"]):
                    m.d.sync += program_cursor.eq(program_cursor + 1)   # the next channel's
                m.d.sync += [magnitude_in.eq(magnitude_of(bias_read.data)),
                             negative_in.eq((bias_read.data < 0) ^ b_negative),
                             multiplier.eq(program_read.data), bound.eq(record["weight_bound"]),
                             negative_bound.eq(-record["weight_bound"])]
                m.next = "CHANNEL3"
            with m.State("CHANNEL3"):
                # |bias| < 2**16 and |B| <= 2**31: two pieces of B
                m.d.comb += [multiply_a.eq(magnitude_in), multiply_b.eq(b_magnitude[:16])]
                m.next = "CHANNEL4"
            with m.State("CHANNEL4"):
                m.d.comb += [multiply_a.eq(magnitude_in), multiply_b.eq(b_magnitude[16:])]
                m.d.sync += wide_low.eq(multiplied)
                m.next = "CHANNEL5"
            with m.State("CHANNEL5"):
                m.d.sync += [wide.eq((multiplied << 16) + wide_low),
                             wide_negative.eq(negative_in & has_bias)]
                with m.If(~has_bias):
                    m.d.sync += wide.eq(0)
                m.next = "CHANNEL6"
            with m.State("CHANNEL6"):
                # the rounding constant rides with the bias: one term per channel
                m.d.sync += bias_term.eq(wide_term + wide_negative
                                         + ((Const(1, 47) << record["shift"][:6]) >> 1))
                m.next = "WEIGHT"
            with m.State("WEIGHT"):
                # take the next weight; (ky, kx) and in_channel say where it applies
                with m.If(value_valid):
                    m.d.comb += take_value.eq(1)
                    starts = (out_channel == 0) & (in_channel == 0) & (ky == 0) & (kx == 0)
                    ends = on_last_out_channel & on_last_channel & \
                        (ky == kernel - 1) & (kx == kernel - 1)
                    pad = kernel >> 1
                    # ky - pad and kx - pad are -1, 0 or 1
                    m.d.sync += [
                        fault.eq((value_first != starts) | (value_last != ends) |
                                        out_of_bound),
                        weight.eq(value), oy.eq(0), ox.eq(0), position.eq(0),
                        on_last_ox.eq(last_ox == 0), on_last_oy.eq(last_oy == 0),
                        row.eq(ky - pad), column.eq(kx - pad),
                        row_address.eq(weight_start), cursor.eq(weight_start),
                    ]
                    m.next = "MAC"
            with m.State("MAC"):
                # issue the read of position (oy, ox) for this weight; stage 1 adds it
                inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
                m.d.sync += [s1_valid.eq(1), s1_position.eq(position), s1_inside.eq(inside),
                             s1_first.eq(first_weight), s1_weight.eq(weight)]
                m.d.comb += accumulator_read.addr.eq(position)
                step = Mux(stride2, 2, 1)
                m.d.sync += position.eq(position + 1)
                with m.If(on_last_ox):
                    next_row = row_address + Mux(stride2, width << 1, width)
                    m.d.sync += [ox.eq(0), column.eq(kx - (kernel >> 1)), oy.eq(oy + 1),
                                 on_last_ox.eq(last_ox == 0),
                                 on_last_oy.eq(oy + 1 == last_oy),
                                 row.eq(row + step), row_address.eq(next_row),
                                 cursor.eq(next_row)]
                    with m.If(on_last_oy):
                        # this weight is done: the next one, or the channel's requantization
                        m.d.sync += first_weight.eq(0)
                        last_kx = kx == kernel - 1
                        last_ky = ky == kernel - 1
                        m.d.sync += weight_start.eq(weight_start + Mux(
                            ~last_kx, 1, Mux(~last_ky, row_back, channel_step)))
                        with m.If(~last_kx):
                            m.d.sync += kx.eq(kx + 1)
                            m.next = "WEIGHT"
                        with m.Elif(~last_ky):
                            m.d.sync += [kx.eq(0), ky.eq(ky + 1)]
                            m.next = "WEIGHT"
                        with m.Elif(~on_last_channel):
                            m.d.sync += [kx.eq(0), ky.eq(0), in_channel.eq(in_channel + 1),
                                         on_last_channel.eq(in_channel + 1 == last_channel)]
                            m.next = "WEIGHT"
                        with m.Else():
                            m.d.sync += position.eq(0)
                            m.next = "DRAIN"
                with m.Else():
                    m.d.sync += [ox.eq(ox + 1), column.eq(column + step),
                                 on_last_ox.eq(ox + 1 == last_ox),
                                 cursor.eq(cursor + step)]
                with m.If(fault):   # last, so that it decides the next state
                    fail(Status.BAD_PROGRAM)
            with m.State("DRAIN"):
                m.next = "RQ_READ"   # the channel's last sum is written this cycle
            # ---- requantize the channel's accumulators, one position at a time ----
            with m.State("RQ_READ"):
                m.d.comb += [accumulator_read.addr.eq(position),
                             address.eq(skip_cursor)]
                m.next = "RQ_MULTIPLY"
            with m.State("RQ_MULTIPLY"):
                m.d.sync += [magnitude_in.eq(magnitude_of(accumulator_read.data)),
                             negative_in.eq(accumulator_read.data < 0),
                             skip_value.eq(Mux(has_skip, activation_read_data, 0))]
                m.next = "RQ_LOW"
            with m.State("RQ_LOW"):
                m.d.comb += [multiply_a.eq(magnitude_in[:16]), multiply_b.eq(multiplier)]
                m.d.sync += skip_term.eq(skip_value << record["skip_shift"])
                m.next = "RQ_HIGH"
            with m.State("RQ_HIGH"):
                m.d.comb += [multiply_a.eq(magnitude_in[16:]), multiply_b.eq(multiplier)]
                m.d.sync += [wide_low.eq(multiplied), base.eq(bias_term + skip_term)]
                m.next = "RQ_WIDE"
            with m.State("RQ_WIDE"):
                m.d.sync += [wide.eq((multiplied << 16) + wide_low),
                             wide_negative.eq(negative_in)]
                m.next = "RQ_SUM"
            with m.State("RQ_SUM"):
                m.d.sync += total.eq(base + wide_term + wide_negative)
                m.next = "RQ_CLAMP"
            with m.State("RQ_CLAMP"):
                m.d.sync += clamped.eq(Mux(over, high, Mux(under, low, window[:16])))
                m.next = "RQ_WRITE"
            with m.State("RQ_WRITE"):
                # the output and the skip tensor are walked in address order, channel after
                # channel: two counters instead of sums of addresses
                m.d.comb += [address.eq(output_address),
                             activation_write_data.eq(clamped), activation_write_en.eq(1)]
                m.d.sync += [position.eq(position + 1), output_address.eq(output_address + 1),
                             skip_cursor.eq(skip_cursor + 1)]
                with m.If(position == last_position):
                    m.d.sync += [out_channel.eq(out_channel + 1),
                                 on_last_out_channel.eq(out_channel + 1 == last_out_channel)]
                    with m.If(on_last_out_channel):
                        m.next = "NEXT"
                    with m.Else():
                        m.next = "CHANNEL"
                with m.Else():
                    m.next = "RQ_READ"
            # ---- global sum pooling: channel by channel, one value a cycle ----
            with m.State("POOL"):
                # the cursor runs over the channel's plane; each value arrives a cycle later
                m.d.sync += [cursor.eq(cursor + 1), position.eq(position + 1)]
                with m.If(position == last_plane):
                    m.next = "POOL_LAST"
                with m.If(position != 0):
                    m.d.sync += pool_sum.eq(pool_sum + activation_read_data)
            with m.State("POOL_LAST"):
                m.d.sync += pool_sum.eq(pool_sum + activation_read_data)
                m.next = "POOL_WRITE"
            with m.State("POOL_WRITE"):
                # the cursor already stands at the next channel's plane
                m.d.comb += [address.eq(output_address), activation_write_data.eq(pool_sum),
                             activation_write_en.eq(1)]
                m.d.sync += [output_address.eq(output_address + 1), pool_sum.eq(0),
                             position.eq(0), out_channel.eq(out_channel + 1),
                             on_last_out_channel.eq(out_channel + 1 == last_out_channel)]
                with m.If(on_last_out_channel):
                    m.next = "NEXT"
                with m.Else():
                    m.next = "POOL"
            # ---- the next operation, or the answer ----
            with m.State("NEXT"):
                next_base = op_base + OP_WORDS + record["multiplier_count"]
                m.d.sync += [op_index.eq(op_index + 1), fetch.eq(0),
                             op_base.eq(next_base), program_cursor.eq(next_base)]
                with m.If(op_index == last_op):
                    m.d.sync += [position.eq(0), cursor.eq(record["output_address"]),
                                 best_label.eq(0)]
                    m.next = "ARGMAX"
                with m.Else():
                    m.next = "FETCH"
            with m.State("ARGMAX"):
                m.d.sync += [cursor.eq(cursor + 1), position.eq(position + 1)]
                with m.If(position != 0):
                    with m.If((position == 1) | (activation_read_data > best_value)):
                        m.d.sync += [best_value.eq(activation_read_data),
                                     best_label.eq(position - 1)]
                with m.If(position == record["out_channels"]):
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                m.d.sync += [prediction.label.eq(best_label), prediction.cycles.eq(cycles),
                             busy.eq(0)]
                m.next = "ANSWER2"
            with m.State("ANSWER2"):
                m.d.comb += self.prediction.valid.eq(1)
                with m.If(self.prediction.ready):
                    m.d.sync += program_count.eq(0)
                    m.next = "PROGRAM"
            with m.State("ERROR"):
                # refuse quietly: take and drop every input, so nothing upstream waits forever
                m.d.comb += self.pixels.ready.eq(1)
                m.d.sync += busy.eq(0)
        return m
