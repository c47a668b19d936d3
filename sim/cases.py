"""Containers for the decoder tests: real-ish quantized weights and the corner cases.

Everything is generated from a seed with :mod:`sw.container`; nothing is stored.
"""

import numpy as np

from sw.codec import FrequencyTable
from sw.container import CodedTensor, RawTensor, write_container
from sw.params import CodecParams

__all__ = ["quantized", "skewed", "uniform", "corner_tensors", "random_container",
           "program_container", "corrupt"]


def quantized(rng, name, shape, levels, sigma=0.6):
    """Gaussian-ish weights rounded to ``levels`` levels around a central zero point."""
    zero_point = (levels - 1) // 2
    values = np.rint(rng.normal(0, sigma, size=shape)).astype(np.int64) + zero_point
    symbols = np.clip(values, 0, levels - 1)
    scale = rng.uniform(0.001, 0.1, size=shape[:1] if len(shape) and rng.random() < 0.5
                        else 1).astype(np.float32)
    return CodedTensor(name, symbols, levels, zero_point, scale)


def skewed(rng, name, size, p_zero=0.9999, levels=3):
    """Nearly all zeros: sub-bit coding's home ground."""
    symbols = np.where(rng.random(size) < p_zero, levels // 2,
                       rng.integers(0, levels, size))
    return CodedTensor(name, symbols.astype(np.int64), levels, levels // 2)


def uniform(rng, name, size, levels):
    return CodedTensor(name, rng.integers(0, levels, size), levels, int(rng.integers(0, levels)))


def corner_tensors(rng, params: CodecParams):
    """One of each shape of section the decoder must get right."""
    return [
        uniform(rng, "all256", 700, 256),
        CodedTensor("one_level", np.zeros(50, np.int64), 1, 0),
        CodedTensor("one_symbol_of_many", np.full(40, 3), 8, 2),
        CodedTensor("empty", np.zeros((0, 4), np.int64), 5, 2),
        CodedTensor("single", np.array([1]), 2, 0),
        RawTensor("bias", rng.normal(size=7).astype(np.float32)),
        RawTensor("odd_bytes", np.arange(5, dtype=np.uint8)),
        CodedTensor("sparse_table", np.array([0, 9, 0, 9, 200, 0] * 11), 256, 0),
        skewed(rng, "skewed", 3000),
        quantized(rng, "layer", (16, 9), 4),
        CodedTensor("two", rng.integers(0, 2, 33), 2, 1, table=FrequencyTable(
            np.array([1, params.total_frequency - 1]), params.precision_bits)),
    ]


def random_container(seed: int, params: CodecParams, sections: int = 4, max_size: int = 300):
    """A container of a few random sections; returns ``(bytes, tensors)``."""
    rng = np.random.default_rng(seed)
    tensors = []
    for i in range(sections):
        kind = rng.integers(0, 6)
        size = int(rng.integers(0, max_size))
        levels = int(rng.choice([1, 2, 3, 5, 16, 100, 256]))
        if kind == 0:
            tensors.append(RawTensor(f"raw{i}", rng.normal(size=size % 17).astype(np.float16)))
        elif kind == 1:
            tensors.append(skewed(rng, f"skew{i}", size, p_zero=0.99, levels=max(levels, 2)))
        elif kind == 2:
            tensors.append(uniform(rng, f"uni{i}", size, levels))
        else:
            tensors.append(quantized(rng, f"q{i}", (size // 8 + 1, 8), max(levels, 2),
                                     sigma=float(rng.uniform(0.2, 20))))
    return write_container(tensors, params), tensors


def program_container(seed: int, params: CodecParams) -> bytes:
    """A container with a program (docs/INFERENCE.md): three linear layers of random weights
    with per-channel multipliers, lowered by :mod:`sw.lower` (116 program words), and a RAW
    section between the program and the coded sections it consumes."""
    from sw.lower import lower, mlp_layers, order_tensors
    rng = np.random.default_rng(seed)

    def coded(name, shape, levels, per_channel):
        scale = rng.uniform(0.01, 0.2, shape[0] if per_channel else 1).astype(np.float32)
        return CodedTensor(name, rng.integers(0, levels, shape), levels, levels // 2, scale)

    tensors = [coded("fc1.weight", (24, 16), 5, True), coded("fc1.bias", (24,), 31, False),
               coded("fc2.weight", (16, 24), 3, True), coded("fc2.bias", (16,), 31, False),
               coded("fc3.weight", (10, 16), 7, True)]
    layers = mlp_layers([("fc1.weight", "fc1.bias"), ("fc2.weight", "fc2.bias"),
                         ("fc3.weight", None)])
    lowered = lower(layers, {t.name: t for t in tensors}, rng.random((8, 16, 1, 1)))
    raw = RawTensor("norm", rng.normal(size=5).astype(np.float32))
    return write_container([raw] + order_tensors(tensors, lowered.tensor_order), params,
                           program=lowered.program)


def corrupt(data: bytes, rng, mode: str) -> bytes:
    """A damaged copy: ``flip`` one bit, ``truncate`` at a random even length, ``word`` one
    random 16-bit word."""
    data = bytearray(data)
    if mode == "flip":
        bit = int(rng.integers(0, 8 * len(data)))
        data[bit // 8] ^= 1 << (bit % 8)
    elif mode == "truncate":
        return bytes(data[:2 * int(rng.integers(0, len(data) // 2))])
    elif mode == "word":
        i = 2 * int(rng.integers(0, len(data) // 2))
        data[i:i + 2] = rng.integers(0, 256, 2, dtype=np.uint8).tobytes()
    else:
        raise ValueError(mode)
    return bytes(data)
