"""The reference inference engine: a container's program run in integers, as the hardware must.

docs/INFERENCE.md specifies the arithmetic; this module is that specification in code, twice:
:func:`infer` runs a batch of images with numpy (all 450 test digits through the digits ResNet
in about a second), :func:`infer_reference` runs one image with plain loops over every sum, in
the order the specification writes them. The tests hold the two equal on random programs.

Both work on one flat activation memory, as the hardware does, so a program whose tensors
overlap gives the same (wrong) answer here as on the chip instead of a different one.
:func:`infer_float` runs the same network in floating point on the dequantized weights,
without quantizing activations: the accuracy the integer engine is measured against.
"""

from dataclasses import dataclass

import numpy as np

from sw.codec.program import Opcode, Program, ValueType

__all__ = ["BoundNetwork", "InferenceResult", "quantize_images", "infer", "infer_reference",
           "infer_float", "requantize"]


@dataclass
class BoundNetwork:
    """A program with the integers of its coded sections, in the order the program consumes them.

    Attributes
    ----------
    program : Program
    weights : list
        Per operation: its weight integers (int64, shaped ``op.weight_shape``), or ``None``.
    biases : list
        Per operation: its bias integers (int64, one per output channel), or ``None``.
    weight_scales, bias_scales : list
        Per operation: the coded sections' float scales (for :func:`infer_float`), or ``None``.
    """

    program: Program
    weights: list
    biases: list
    weight_scales: list
    bias_scales: list

    @classmethod
    def from_container(cls, container) -> "BoundNetwork":
        """Bind the program of a read :class:`sw.codec.container.Container` to its coded sections.

        The reader has already checked that the coded sections follow the program's order,
        counts and bounds; a container without a program is refused with ``ValueError``.
        """
        from sw.codec.container import CodedTensor

        program = container.program
        if program is None:
            raise ValueError("the container holds no program (docs/INFERENCE.md): it was "
                             "written without one, so it cannot run inference")
        coded = iter(t for t in container.tensors if isinstance(t, CodedTensor))
        count = len(program.ops)
        network = cls(program, [None] * count, [None] * count, [None] * count, [None] * count)
        for expected in program.expected_tensors():
            tensor = next(coded)
            integers = tensor.integers().astype(np.int64).reshape(expected.shape)
            if expected.role == "bias":
                network.biases[expected.op_index] = integers
                network.bias_scales[expected.op_index] = tensor.scale
            else:
                network.weights[expected.op_index] = integers
                network.weight_scales[expected.op_index] = tensor.scale
        return network


@dataclass
class InferenceResult:
    """Predictions of a batch; ``layers[i]`` is operation ``i``'s output when dumped."""

    predictions: np.ndarray  #: int64, one class per image
    scores: np.ndarray       #: the last operation's output, (images, classes)
    layers: list = None      #: per operation, (images, *op.output_shape) int64


def quantize_images(program: Program, images) -> np.ndarray:
    """``U8`` inputs: ``clamp(floor(x * 2**input_exponent + 1/2), 0, 255)`` (int64).

    ``images`` are float, shaped ``(count, *program.input_shape)`` or flat per image.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim < 1 or images[0].size != program.input_size:
        raise ValueError(f"images of shape {images.shape[1:]} do not fit the program's input "
                         f"{program.input_shape}")
    if not np.isfinite(images).all():
        raise ValueError("images hold NaN or infinite values")
    scaled = np.floor(np.ldexp(images, program.input_exponent) + 0.5)
    return np.clip(scaled, 0, 255).astype(np.int64).reshape(len(images), *program.input_shape)


def requantize(op, accumulators, biases, skips) -> np.ndarray:
    """``clamp(floor((acc*A + bias*B + skip*2**T + 2**(S-1)) / 2**S))`` per output channel.

    ``accumulators`` is ``(images, channels, ...)``; ``biases`` a channel vector or ``None``;
    ``skips`` like ``accumulators`` or ``None``. Exact in int64 (every term < 2**46).
    """
    shape = (1, -1) + (1,) * (accumulators.ndim - 2)
    multipliers = np.array([op.multiplier(c) for c in range(op.out_channels)], np.int64)
    total = accumulators * multipliers.reshape(shape)
    if biases is not None:
        total = total + (biases * op.bias_multiplier).reshape(shape)
    if skips is not None:
        total = total + (skips << op.skip_shift)
    total = (total + (1 << (op.shift - 1))) >> op.shift
    return np.clip(total, op.output_type.low, op.output_type.high)


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """``(images, out_h, out_w, channels * kernel * kernel)``: each output's inputs, zero padded,
    in the order of a weight row ``(in, kh, kw)``."""
    pad = kernel // 2
    images, channels, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    columns = np.empty((images, out_h, out_w, channels, kernel, kernel), x.dtype)
    for dy in range(kernel):
        for dx in range(kernel):
            columns[..., dy, dx] = padded[:, :, dy:dy + stride * out_h:stride,
                                          dx:dx + stride * out_w:stride].transpose(0, 2, 3, 1)
    return columns.reshape(images, out_h, out_w, -1)


def _exact_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matrix product through float64 BLAS: exact, since the program's accumulator
    bound keeps every partial sum below 2**31, far inside float64's 2**53."""
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def infer(network: BoundNetwork, images, *, dump: bool = False, quantized: bool = False,
          batch: int = 256) -> InferenceResult:
    """Run the program on every image (vectorised); ``quantized`` images are already ``U8``."""
    program = network.program
    x = np.asarray(images, np.int64).reshape(len(images), *program.input_shape) if quantized \
        else quantize_images(program, images)
    predictions, scores, layers = [], [], [[] for _ in program.ops] if dump else None
    for start in range(0, len(x), batch):
        result = _infer_batch(network, x[start:start + batch], dump)
        predictions.append(result.predictions)
        scores.append(result.scores)
        if dump:
            for index, output in enumerate(result.layers):
                layers[index].append(output)
    return InferenceResult(np.concatenate(predictions), np.concatenate(scores),
                           [np.concatenate(parts) for parts in layers] if dump else None)


def _infer_batch(network: BoundNetwork, x: np.ndarray, dump: bool) -> InferenceResult:
    program = network.program
    count = len(x)
    memory = np.zeros((count, program.memory_words), np.int64)
    memory[:, program.input_address:program.input_address + program.input_size] = \
        x.reshape(count, -1)
    layers = []
    for index, op in enumerate(program.ops):
        source = memory[:, op.input_address:op.input_address + op.input_size]
        if op.opcode == Opcode.POOL:
            output = source.reshape(count, op.in_channels, -1).sum(axis=2)
        else:
            weights = network.weights[index]
            if op.opcode == Opcode.CONV:
                columns = _windows(source.reshape(count, *op.input_shape), op.kernel, op.stride)
                acc = _exact_dot(columns, weights.reshape(op.out_channels, -1).T)
                acc = acc.transpose(0, 3, 1, 2)
            else:
                acc = _exact_dot(source, weights.T)
            acc = acc.reshape(count, *op.output_shape)
            skips = memory[:, op.skip_address:op.skip_address + op.output_size] \
                .reshape(count, *op.output_shape) if op.has_skip else None
            output = requantize(op, acc, network.biases[index], skips)
        output = output.reshape(count, -1)
        memory[:, op.output_address:op.output_address + op.output_size] = output
        if dump:
            layers.append(output.reshape(count, *op.output_shape).copy())
    last = program.ops[-1]
    scores = memory[:, last.output_address:last.output_address + last.output_size]
    return InferenceResult(scores.argmax(axis=1), scores.copy(), layers if dump else None)


def infer_reference(network: BoundNetwork, image, *, quantized: bool = False):
    """One image, plain loops, every sum written out: ``(prediction, per-operation outputs)``.

    The slow executable form of docs/INFERENCE.md; :func:`infer` must agree with it exactly.
    """
    program = network.program
    x = np.asarray(image, np.int64).reshape(-1) if quantized \
        else quantize_images(program, np.asarray(image)[None])[0].reshape(-1)
    memory = [0] * program.memory_words
    for i, value in enumerate(x):
        memory[program.input_address + i] = int(value)
    outputs = []
    for index, op in enumerate(program.ops):
        c_in, h_in, w_in = op.input_shape
        _, h_out, w_out = op.output_shape

        def read(channel, row, column):
            return memory[op.input_address + (channel * h_in + row) * w_in + column]

        result = []
        for o in range(op.out_channels):
            for y in range(h_out):
                for x_ in range(w_out):
                    if op.opcode == Opcode.POOL:
                        result.append(sum(read(o, r, c) for r in range(h_in)
                                          for c in range(w_in)))
                        continue
                    acc = 0
                    if op.opcode == Opcode.LINEAR:
                        row = network.weights[index][o]
                        for j in range(op.input_size):
                            acc += int(row[j]) * memory[op.input_address + j]
                    else:
                        pad = op.kernel // 2
                        for i in range(c_in):
                            for dy in range(op.kernel):
                                for dx in range(op.kernel):
                                    r = y * op.stride + dy - pad
                                    c = x_ * op.stride + dx - pad
                                    if 0 <= r < h_in and 0 <= c < w_in:
                                        acc += int(network.weights[index][o, i, dy, dx]) \
                                            * read(i, r, c)
                    assert abs(acc) < 1 << 31, "the program's accumulator bound was broken"
                    total = acc * op.multiplier(o)
                    if op.has_bias:
                        total += int(network.biases[index][o]) * op.bias_multiplier
                    if op.has_skip:
                        skip = memory[op.skip_address + (o * h_out + y) * w_out + x_]
                        total += skip * (1 << op.skip_shift)
                    total = (total + (1 << (op.shift - 1))) // (1 << op.shift)
                    result.append(min(max(total, op.output_type.low), op.output_type.high))
        for i, value in enumerate(result):
            memory[op.output_address + i] = value
        outputs.append(np.array(result, np.int64).reshape(op.output_shape))
    scores = outputs[-1].reshape(-1)
    return int(np.argmax(scores)), outputs


def infer_float(network: BoundNetwork, images, *, batch: int = 256) -> np.ndarray:
    """Class scores of the same network in float64 on the dequantized weights.

    Activations are not quantized; ``U8`` outputs apply ReLU (without the saturation at 255),
    and a ``POOL`` averages (its integer form sums and leaves the division by the pixel count
    to the next operation's multiplier).
    """
    program = network.program
    images = np.asarray(images, np.float64).reshape(len(images), *program.input_shape)
    return np.concatenate([_float_batch(network, images[s:s + batch])
                           for s in range(0, len(images), batch)])


def _float_batch(network: BoundNetwork, x: np.ndarray) -> np.ndarray:
    program = network.program
    count = len(x)
    memory = {program.input_address: x}
    for index, op in enumerate(program.ops):
        source = memory[op.input_address].reshape(count, *op.input_shape)
        if op.opcode == Opcode.POOL:
            output = source.mean(axis=(2, 3)).reshape(count, *op.output_shape)
        else:
            scale = network.weight_scales[index].astype(np.float64)
            weights = network.weights[index] * scale.reshape((-1,) + (1,) * (
                network.weights[index].ndim - 1))
            if op.opcode == Opcode.CONV:
                columns = _windows(source, op.kernel, op.stride)
                output = (columns @ weights.reshape(op.out_channels, -1).T).transpose(0, 3, 1, 2)
            else:
                output = source.reshape(count, -1) @ weights.T
            output = output.reshape(count, *op.output_shape)
            if op.has_bias:
                bias = network.biases[index] * network.bias_scales[index].astype(np.float64)
                output = output + bias.reshape(1, -1, 1, 1)
            if op.has_skip:
                output = output + memory[op.skip_address].reshape(count, *op.output_shape)
            if op.output_type == ValueType.U8:
                output = np.maximum(output, 0)
        memory[op.output_address] = output
    last = program.ops[-1]
    return memory[last.output_address].reshape(count, -1)
