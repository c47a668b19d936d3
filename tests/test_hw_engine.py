"""The inference engine's RTL against the reference engine (sw.network.engine), in the Amaranth
simulator.

Every activation the engine writes (the pixels, then each operation's outputs in address order)
and every prediction must equal the reference's, with random stalls on all inputs and on the
prediction's ready.
"""

import random

import pytest
from amaranth.sim import Simulator

from hw.engine import InferenceEngine
from sw.codec.container import read_container, write_container
from sw.codec.golden import golden_decode
from sw.format import SectionKind, Status
from sw.network.engine import BoundNetwork, infer, quantize_images
from tests.test_program import small_network


def stimulus(data: bytes, images):
    """Program words, coded sections (values, in order) and expected results for ``images``."""
    golden = golden_decode(data)
    assert golden.status == Status.OK
    program_words = [int(w) for w in golden.sections[0].words]
    sections = [(s.index, [int(v) for v in s.integers]) for s in golden.sections
                if s.kind == SectionKind.CODED and len(s.integers)]
    network = BoundNetwork.from_container(read_container(data))
    program = network.program
    reference = infer(network, images, dump=True)
    pixels = quantize_images(program, images).reshape(len(images), -1)
    writes = []
    for index in range(len(images)):
        expected = [(program.input_address + i, int(v)) for i, v in enumerate(pixels[index])]
        for op, layer in zip(program.ops, reference.layers):
            expected += [(op.output_address + i, int(v))
                         for i, v in enumerate(layer[index].reshape(-1))]
        writes.append(expected)
    return program_words, sections, pixels, reference.predictions.tolist(), writes


def run_engine(data: bytes, images, *, lanes=2, stall=0.3, seed=0, max_cycles=400_000,
               engine_options=None):
    """Run the engine over ``images`` (the program and weights sent again for each, as the
    decoder does); returns ``(predictions, writes per image, status, cycles per image)``."""
    program_words, sections, pixels, _, _ = stimulus(data, images)
    dut = InferenceEngine(lanes, **(engine_options or {}))
    rng = random.Random(seed)
    predictions, writes, cycles = [], [[] for _ in images], []
    image_of_write = [0]

    async def program_and_weights(ctx):
        for image in range(len(images)):
            for word_index, word in enumerate(program_words):
                while rng.random() < stall:
                    await ctx.tick()
                ctx.set(dut.program.valid, 1)
                ctx.set(dut.program.payload.word, word)
                ctx.set(dut.program.payload.last, word_index == len(program_words) - 1)
                await ctx.tick()
                ctx.set(dut.program.valid, 0)
            for section, values in sections:
                for start in range(0, len(values), lanes):
                    chunk = values[start:start + lanes]
                    while rng.random() < stall:
                        await ctx.tick()
                    ctx.set(dut.weights.valid, 1)
                    ctx.set(dut.weights.payload, {
                        "values": chunk + [0] * (lanes - len(chunk)), "count": len(chunk),
                        "section": section, "first": start == 0,
                        "last": start + lanes >= len(values)})
                    await ctx.tick().until(dut.weights.ready)
                    ctx.set(dut.weights.valid, 0)
            # the next image's program waits for this one's answer, as the system does
            await ctx.tick().until(dut.prediction.valid & dut.prediction.ready)

    async def pixel_source(ctx):
        for image in range(len(images)):
            for value in pixels[image]:
                while rng.random() < stall:
                    await ctx.tick()
                ctx.set(dut.pixels.valid, 1)
                ctx.set(dut.pixels.payload, int(value))
                await ctx.tick().until(dut.pixels.ready)
                ctx.set(dut.pixels.valid, 0)
            await ctx.tick().until(dut.prediction.valid & dut.prediction.ready)

    async def sink(ctx):
        for _ in range(max_cycles):
            ready = rng.random() >= stall
            ctx.set(dut.prediction.ready, ready)
            await ctx.delay(1e-9)   # let the engine's comb outputs settle before sampling
            if ctx.get(dut.activations.valid):
                writes[image_of_write[0]].append(
                    (ctx.get(dut.activations.payload.address),
                     ctx.get(dut.activations.payload.value)))
            if ctx.get(dut.status.error):
                break
            if ready and ctx.get(dut.prediction.valid):
                predictions.append(ctx.get(dut.prediction.payload.label))
                cycles.append(ctx.get(dut.prediction.payload.cycles))
                image_of_write[0] += 1
                if len(predictions) == len(images):
                    await ctx.tick()
                    break
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(program_and_weights, background=True)
    sim.add_testbench(pixel_source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return predictions, writes, cycles, dut


# The Amaranth simulator runs this engine at a few hundred to a thousand cycles a second: the
# small network (about 12,000 cycles an image) is what it can afford.
@pytest.mark.parametrize("lanes, stall", [
    (2, 0.3),
    pytest.param(1, 0.0, marks=pytest.mark.slow),
    pytest.param(4, 0.5, marks=pytest.mark.slow),
])
@pytest.mark.slow
def test_small_network_equals_the_reference(lanes, stall):
    lowered, tensors, images = small_network()
    data = write_container(tensors, program=lowered.program)
    _, _, _, expected_predictions, expected_writes = stimulus(data, images[:2])
    predictions, writes, cycles, _ = run_engine(data, images[:2], lanes=lanes, stall=stall,
                                                seed=lanes)
    for got, expected in zip(writes, expected_writes):
        assert got == expected
    assert predictions == expected_predictions
    assert len(cycles) == 2 and cycles[0] > 0


# Several output columns a cycle. On 6 x 6 the small network's 6- and 3-column outputs make
# groups of one row (full, a last group shorter than the others, a row narrower than a group);
# on 8 x 8 and 4 x 4 its 4- and 2-column outputs make groups of whole rows (2 or 4 rows a
# group, a last group with rows missing when fewer are left).
@pytest.mark.slow
@pytest.mark.parametrize("columns, stall, size", [
    (2, 0.3, 6), (4, 0.5, 6), (8, 0.0, 6), (4, 0.3, 4), (8, 0.0, 4), (16, 0.0, 8)])
def test_columns_equal_the_reference(columns, stall, size):
    lowered, tensors, images = small_network(size=size)
    data = write_container(tensors, program=lowered.program)
    _, _, _, expected_predictions, expected_writes = stimulus(data, images[:2])
    predictions, writes, _, _ = run_engine(data, images[:2], lanes=2, stall=stall,
                                           seed=columns, engine_options={"columns": columns},
                                           max_cycles=1_000_000)
    for got, expected in zip(writes, expected_writes):
        assert got == expected
    assert predictions == expected_predictions


@pytest.mark.parametrize("columns", [0, 3, 32])
def test_columns_are_a_power_of_two_up_to_16(columns):
    with pytest.raises(ValueError, match="columns"):
        InferenceEngine(1, columns=columns)


def test_engine_takes_what_the_decoder_gives():
    """The decoder's program and weights outputs connect to the engine as they are."""
    from amaranth import Module
    from amaranth.lib import wiring

    from hw.decoder import WeightDecoder
    m = Module()
    m.submodules.decoder = decoder = WeightDecoder(lanes=2)
    m.submodules.engine = engine = InferenceEngine(2)
    wiring.connect(m, decoder.program, engine.program)
    wiring.connect(m, decoder.weights, engine.weights)


def test_weights_before_the_program_are_refused():
    """A coded section ahead of the program is BAD_PROGRAM, not a wait for a program."""
    dut = InferenceEngine(2)

    async def testbench(ctx):
        ctx.set(dut.weights.valid, 1)
        ctx.set(dut.weights.payload, {"values": [1, 2], "count": 2, "section": 0,
                                      "first": 1, "last": 1})
        for _ in range(8):
            await ctx.tick()
            if ctx.get(dut.status.error):
                break
        assert ctx.get(dut.status.error) and ctx.get(dut.status.code) == Status.BAD_PROGRAM
        # and it drains what follows
        assert ctx.get(dut.weights.ready) and ctx.get(dut.pixels.ready)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def refusal(data: bytes, images, engine_options=None, *, second_program_after=None,
            max_cycles=20000):
    """Feed one image without stalls; ``second_program_after``: the program's words again
    after that many weights (0: right after the program). Returns (error, code, answered)."""
    program_words, sections, pixels, _, _ = stimulus(data, images)
    dut = InferenceEngine(1, **(engine_options or {}))
    values = [(first, last, v) for _, section in sections
              for first, last, v in ((i == 0, i == len(section) - 1, v)
                                     for i, v in enumerate(section))]
    result = {}

    async def send_program(ctx):
        for word_index, word in enumerate(program_words):
            ctx.set(dut.program.valid, 1)
            ctx.set(dut.program.payload.word, word)
            ctx.set(dut.program.payload.last, word_index == len(program_words) - 1)
            await ctx.tick()
        ctx.set(dut.program.valid, 0)

    async def sources(ctx):
        await send_program(ctx)
        for index, (first, last, v) in enumerate(values):
            if index == second_program_after:
                await send_program(ctx)
            ctx.set(dut.weights.valid, 1)
            ctx.set(dut.weights.payload, {"values": [v], "count": 1, "section": 0,
                                          "first": first, "last": last})
            await ctx.tick().until(dut.weights.ready)
        ctx.set(dut.weights.valid, 0)

    async def pixel_source(ctx):
        for value in pixels[0]:
            ctx.set(dut.pixels.valid, 1)
            ctx.set(dut.pixels.payload, int(value))
            await ctx.tick().until(dut.pixels.ready)
        ctx.set(dut.pixels.valid, 0)

    async def watch(ctx):
        ctx.set(dut.prediction.ready, 1)
        answered = False
        for _ in range(max_cycles):
            await ctx.tick()
            answered |= bool(ctx.get(dut.prediction.valid))
            if ctx.get(dut.status.error) or answered:
                break
        result.update(error=ctx.get(dut.status.error), code=ctx.get(dut.status.code),
                      answered=answered)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(sources, background=True)
    sim.add_testbench(pixel_source, background=True)
    sim.add_testbench(watch)
    sim.run()
    return result["error"], result["code"], result["answered"]


def _small_limits():
    lowered, tensors, images = small_network()
    program = lowered.program
    limits = {"memory_words": program.memory_words,
              "max_channels": max(op.out_channels for op in program.ops),
              "max_positions": max(op.output_size // op.out_channels for op in program.ops)}
    return write_container(tensors, program=program), images, program, limits


@pytest.mark.slow
@pytest.mark.parametrize("limit, columns", [
    ("memory_words", 1), ("max_channels", 1), ("max_positions", 1), ("image", 1),
    # the limit counts positions whatever the columns (groups of 4 would still fit)
    ("max_positions", 4),
    # a convolution's output past the memory: the streamed requantization checks its writes
    ("memory_words", 4)])
def test_a_program_beyond_the_engines_memories_is_refused(limit, columns):
    """One word of memory, one channel or one position short: BAD_PROGRAM, not a wrap."""
    from sw.board import _fits_engine
    data, images, program, limits = _small_limits()
    options = dict(limits, columns=columns)
    if limit == "image":      # the image itself does not fit (checked in the header)
        options["memory_words"] = program.input_address + program.input_size - 1
    else:
        options[limit] -= 1
    error, code, answered = refusal(data, images[:1], options)
    assert error and code == Status.BAD_PROGRAM and not answered
    # the software's rule for the board engine says the same
    import sw.board as board
    saved = dict(board.ENGINE_MEMORIES)
    try:
        board.ENGINE_MEMORIES.update({k: options[k] for k in limits})
        assert not _fits_engine(program)
        board.ENGINE_MEMORIES.update(limits)
        assert _fits_engine(program)
    finally:
        board.ENGINE_MEMORIES.clear()
        board.ENGINE_MEMORIES.update(saved)


@pytest.mark.slow
@pytest.mark.parametrize("columns", [1, 4])
def test_a_program_at_the_engines_limits_runs(columns):
    """The limits are inclusive: a program that fills every memory exactly runs bit-exact."""
    data, images, _, limits = _small_limits()
    _, _, _, expected_predictions, expected_writes = stimulus(data, images[:1])
    predictions, writes, _, _ = run_engine(data, images[:1], lanes=1, stall=0.0,
                                           engine_options=dict(limits, columns=columns))
    assert writes[0] == expected_writes[0] and predictions == expected_predictions


@pytest.mark.parametrize("after", [0, 40])
def test_a_second_program_is_refused(after):
    """A second PROGRAM section, before the weights or once they began, is BAD_PROGRAM."""
    data, images, _, _ = _small_limits()
    error, code, answered = refusal(data, images[:1], second_program_after=after)
    assert error and code == Status.BAD_PROGRAM and not answered


@pytest.mark.slow
@pytest.mark.parametrize("lanes, columns, size", [
    (1, 1, 6), (2, 1, 6), (3, 1, 6), (1, 4, 6), (1, 8, 4)])
def test_the_cycle_model_is_exact(lanes, columns, size):
    """engine_cycles predicts the engine's own count when nothing is late: a weight or bias
    taken every cycle the engine needs one, whatever the decoder's lanes."""
    from hw.engine import engine_cycles
    lowered, tensors, images = small_network(size=size)
    data = write_container(tensors, program=lowered.program)
    _, _, cycles, _ = run_engine(data, images[:2], lanes=lanes, stall=0.0,
                                 engine_options={"columns": columns})
    assert cycles == [engine_cycles(lowered.program, columns)] * 2

