"""Run :class:`hw.decoder.WeightDecoder` on a container in the Amaranth simulator.

Small containers only (a few thousand cycles a second); the cocotb/Icarus testbench
(:mod:`sim.decode`) is the one for real models.
"""

import random
from dataclasses import dataclass, field

import numpy as np
from amaranth.sim import Simulator

from hw.decoder import WeightDecoder
from sw.format import Status
from sw.params import CodecParams

__all__ = ["SimResult", "run_pysim", "stream_put", "stream_get", "words_of"]


@dataclass
class SimResult:
    status: Status | None      #: None when the decoder never finished
    done: bool
    error: bool
    cycles: int
    transfers: list = field(default_factory=list)  #: (section, first, last, values)
    #: (word, last, partial) of each word on ``program``, one per cycle its valid was high
    program: list = field(default_factory=list)

    def integers(self) -> np.ndarray:
        parts = [np.asarray(v, dtype=np.int16) for _, _, _, v in self.transfers]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def programs(self) -> list:
        """The words of each PROGRAM section, as cut by ``last``: lists of ``(word, partial)``;
        words after the last ``last`` (a section cut short) form a final list of their own."""
        sections, current = [], []
        for word, last, partial in self.program:
            current.append((word, partial))
            if last:
                sections.append(current)
                current = []
        return sections + ([current] if current else [])


async def stream_put(ctx, stream, payload):
    """Offer ``payload`` on ``stream`` until it is taken (valid held, as the protocol wants)."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream):
    """Take one payload from ``stream``."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def words_of(container: bytes) -> list:
    data = container + b"\0" * (len(container) & 1)
    return [int(v) for v in np.frombuffer(data, dtype="<u2")]


def run_pysim(container: bytes, params: CodecParams, lanes: int, *, stall_in: float = 0.0,
              stall_out: float = 0.0, max_cycles: int = 100_000, seed: int = 0,
              idle_after_input: int = 200) -> SimResult:
    """Feed ``container`` with random stalls; stop at ``done`` or ``idle_after_input`` cycles
    after the input ran out (a truncated container: the decoder must simply wait)."""
    dut = WeightDecoder(params, lanes)
    words = words_of(container)
    result = SimResult(None, False, False, 0)
    rng = random.Random(seed)

    async def testbench(ctx):
        position = 0
        idle = 0
        for cycle in range(max_cycles):
            offer = position < len(words) and rng.random() >= stall_in
            ctx.set(dut.words.valid, offer)
            if offer:
                ctx.set(dut.words.payload, words[position])
            take = rng.random() >= stall_out
            ctx.set(dut.weights.ready, take)
            # Sample both handshakes before the edge, as the registers will.
            in_fire = offer and ctx.get(dut.words.ready)
            if take and ctx.get(dut.weights.valid):
                payload = ctx.get(dut.weights.payload)
                count = payload.count
                result.transfers.append((payload.section, payload.first, payload.last,
                                         [payload.values[n] for n in range(count)]))
            # No ready: a word is a transfer in every cycle its valid is high.
            if ctx.get(dut.program.valid):
                word = ctx.get(dut.program.payload)
                result.program.append((word.word, word.last, word.partial))
            status = ctx.get(dut.status)
            if status.done:
                result.done = True
                result.error = bool(status.error)
                result.status = Status(status.code) if status.error else Status.OK
                result.cycles = cycle
                return
            await ctx.tick()
            if in_fire:
                position += 1
            if position >= len(words):
                idle += 1
                if idle > idle_after_input:
                    break
        result.cycles = cycle
        status = ctx.get(dut.status)
        result.error = bool(status.error)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return result
