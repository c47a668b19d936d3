"""From a quantized network to its integer program: calibration, memory plan and constants.

A network is described by :class:`Layer` s (what each layer computes and which coded tensors
it uses); :func:`lower` calibrates every activation's power-of-two scale on sample images,
places every tensor in the activation memory, derives each operation's fixed-point constants
from the coded sections' float scales (docs/INFERENCE.md, "From float scales") and returns the
:class:`sw.codec.program.Program` with the order in which the container must hold the coded
sections. No torch: :func:`resnet_layers` reads a :class:`sw.quant.models.ResNet` by its attributes.
"""

import math
from dataclasses import dataclass

import numpy as np

from sw.codec.program import (
    BIAS_TERM_LIMIT,
    MAX_SHIFT,
    MAX_SKIP_SHIFT,
    NO_SKIP,
    Op,
    Opcode,
    Program,
    ProgramError,
    ValueType,
)
from sw.network.engine import _windows

__all__ = ["BIAS_LEVELS", "Layer", "Lowered", "lower", "program_word_count", "resnet_layers",
           "mlp_layers",
           "order_tensors"]

#: Levels of coded biases (one scale per tensor, around zero): 5 bits of precision against 32
#: for float32, and a frequency table of 62 bytes where 255 levels would cost 510 bytes per
#: bias, more than a digits-sized bias's payload. QAT, PTQ and the board's MLP code biases so;
#: an integer program needs them coded.
BIAS_LEVELS = 31
#: Exponents an activation scale ``2**-f`` may take; far beyond what real layers need.
EXPONENT_RANGE = (-24, 24)


@dataclass
class Layer:
    """One layer of a network to lower.

    Parameters
    ----------
    kind : str
        ``"conv"``, ``"linear"`` or ``"pool"`` (global average).
    weight, bias : str
        Names of the coded weight and bias tensors (``bias`` may be ``None``).
    stride : int
        Of a convolution; its kernel and padding (``kernel // 2``) follow from the weight.
    relu : bool
        ReLU after the layer (and after the residual add).
    input : int
        Index of the layer whose output this one reads; ``-1`` is the image.
    skip : int, optional
        Index of the layer (``-1`` the image) whose output is added before the ReLU.
    """

    kind: str
    weight: str = None
    bias: str = None
    stride: int = 1
    relu: bool = False
    input: int = -1
    skip: int = None


@dataclass
class Lowered:
    program: Program
    tensor_order: list  #: names of the coded sections in the order the program consumes them
    ranges: list        #: calibrated largest magnitude of every layer's float output


def _shapes(layers, input_shape, tensors):
    shapes = []
    for index, layer in enumerate(layers):
        c, h, w = input_shape if layer.input == -1 else shapes[layer.input]
        if layer.kind == "conv":
            out, c_in, k, _ = tensors[layer.weight].shape
            if c_in != c:
                raise ValueError(f"layer {index}: {layer.weight} takes {c_in} channels, not {c}")
            shapes.append((out, (h - 1) // layer.stride + 1, (w - 1) // layer.stride + 1))
        elif layer.kind == "linear":
            out, features = tensors[layer.weight].shape
            if features != c * h * w:
                raise ValueError(f"layer {index}: {layer.weight} takes {features} features, "
                                 f"not {c * h * w}")
            shapes.append((out, 1, 1))
        elif layer.kind == "pool":
            shapes.append((c, 1, 1))
        else:
            raise ValueError(f"layer {index}: unsupported kind {layer.kind!r}")
    return shapes


def _plan_memory(layers, input_shape, shapes) -> tuple:
    """Addresses of the image and every layer output: first fit over live intervals.

    A tensor lives from the layer that writes it to the last layer that reads it; a layer's
    output never shares words with what that layer reads, since those are still live.
    """
    sizes = [int(np.prod(input_shape))] + [int(np.prod(s)) for s in shapes]
    last_use = list(range(len(sizes)))  # tensor t+1 is layer t's output; 0 is the image
    for index, layer in enumerate(layers):
        for source in (layer.input, layer.skip):
            if source is not None:
                last_use[source + 1] = max(last_use[source + 1], index + 1)
    last_use[-1] = len(sizes)  # the scores stay for the argmax
    addresses = []
    for tensor, size in enumerate(sizes):
        busy = sorted((addresses[t], sizes[t]) for t in range(tensor) if last_use[t] >= tensor)
        address = 0
        for start, length in busy:
            if address + size <= start:
                break
            address = max(address, start + length)
        addresses.append(address)
    return addresses[0], addresses[1:]


def _float_outputs(layers, tensors, images, shapes) -> list:
    """Every layer's float output on ``images`` (dequantized weights, float activations)."""
    outputs = []
    for index, layer in enumerate(layers):
        x = images if layer.input == -1 else outputs[layer.input]
        if layer.kind == "pool":
            y = x.mean(axis=(2, 3), keepdims=True)
        else:
            weight = tensors[layer.weight].dequantize().astype(np.float64)
            if layer.kind == "conv":
                k = weight.shape[2]
                y = (_windows(x, k, layer.stride) @ weight.reshape(len(weight), -1).T)
                y = y.transpose(0, 3, 1, 2)
            else:
                y = (x.reshape(len(x), -1) @ weight.T).reshape(len(x), -1, 1, 1)
            if layer.bias is not None:
                y = y + tensors[layer.bias].dequantize().astype(np.float64).reshape(1, -1, 1, 1)
            if layer.skip is not None:
                y = y + (images if layer.skip == -1 else outputs[layer.skip])
            if layer.relu:
                y = np.maximum(y, 0)
        outputs.append(y)
    return outputs


def _exponent(largest: float, value_type: ValueType) -> int:
    """The finest ``f`` with ``largest * 2**f`` inside the type's range."""
    if not largest > 0:
        return 0
    exponent = math.floor(math.log2(value_type.high / largest))
    return int(min(max(exponent, EXPONENT_RANGE[0]), EXPONENT_RANGE[1]))


def _bound(tensor) -> int:
    """Largest ``|q|`` a coded tensor's alphabet can hold."""
    return max(tensor.zero_point, tensor.levels - 1 - tensor.zero_point, 1)


def _fixed_point(multipliers: np.ndarray, bias_step: float, bias_bound: int,
                 max_shift: int = MAX_SHIFT):
    """``(A, S, B)``: the finest shift whose multipliers fit 15 bits and bias term its limit."""
    largest = float(multipliers.max())
    shift = min(max_shift, math.floor(math.log2(32767 / largest)))
    while shift >= 1:
        a = np.rint(np.ldexp(multipliers, shift)).astype(np.int64)
        b = int(round(math.ldexp(bias_step, shift)))
        if a.max() <= 32767 and abs(b) < 1 << 31 and bias_bound * abs(b) < BIAS_TERM_LIMIT:
            return np.maximum(a, 1), shift, b
        shift -= 1
    raise ProgramError(f"no shift in 1..{MAX_SHIFT} represents multipliers up to {largest:.3g}")


def lower(layers, tensors: dict, images, input_exponent: int = None) -> Lowered:
    """The program of ``layers`` over the coded ``tensors`` (name -> CodedTensor).

    ``images`` (float, ``(count, C, H, W)``, none negative: the input is ``U8``) calibrate
    every activation's scale ``2**-f``: the finest that holds the largest value seen on them.
    ``input_exponent`` is the images' own, by default likewise the finest that holds them.
    """
    from sw.codec.container import CodedTensor

    images = np.asarray(images, np.float64)
    if images.ndim != 4 or not len(images):
        raise ValueError(f"calibration images must be (count, C, H, W), not {images.shape}")
    if not np.isfinite(images).all() or images.min() < 0:
        raise ValueError("calibration images must be finite and not negative (the engine's "
                         "input is U8)")
    if input_exponent is None:
        input_exponent = _exponent(float(images.max()), ValueType.U8)
    input_shape = tuple(images.shape[1:])
    for layer in layers:
        for name in (layer.weight, layer.bias):
            if name is not None and not isinstance(tensors.get(name), CodedTensor):
                raise ValueError(f"{name} is not a coded tensor: integer inference needs coded "
                                 f"weights and biases")
    shapes = _shapes(layers, input_shape, tensors)
    input_address, addresses = _plan_memory(layers, input_shape, shapes)
    outputs = _float_outputs(layers, tensors, images, shapes)
    ranges = [float(np.abs(y).max()) if y.size else 0.0 for y in outputs]
    # ReLU outputs are U8; others S16, except what a pool sums (S8, so that the sums of up
    # to 256 pixels still fit S16).
    pooled = {layer.input for layer in layers if layer.kind == "pool"}
    types = [ValueType.U8 if layer.relu else ValueType.S8 if index in pooled else ValueType.S16
             for index, layer in enumerate(layers)]
    exponents = [_exponent(r, t) for r, t in zip(ranges, types)]
    # A pool's output is a sum: it holds the exponent of what it sums.
    for index, layer in enumerate(layers):
        if layer.kind == "pool":
            exponents[index] = input_exponent if layer.input == -1 else exponents[layer.input]

    def exponent_of(source):
        return input_exponent if source == -1 else exponents[source]

    def divisor_of(source):
        # the integer pool leaves its 1/(H*W) to the next layer's multiplier
        if source == -1 or layers[source].kind != "pool":
            return 1
        c, h, w = input_shape if layers[source].input == -1 else shapes[layers[source].input]
        return h * w

    def constants(index):
        layer = layers[index]
        weight = tensors[layer.weight]
        shift_out = exponents[index]
        real = weight.scale.astype(np.float64) * 2.0 ** (shift_out - exponent_of(layer.input)) \
            / divisor_of(layer.input)
        bias = tensors[layer.bias] if layer.bias else None
        bias_step = float(bias.scale[0]) * 2.0 ** shift_out if bias is not None else 0.0
        if bias is not None and len(bias.scale) != 1:
            raise ValueError(f"{layer.bias}: a bias takes one scale per tensor")
        # a skip is shifted left by shift + exponent - its exponent: at most MAX_SKIP_SHIFT
        max_shift = MAX_SHIFT if layer.skip is None else \
            min(MAX_SHIFT, MAX_SKIP_SHIFT + exponent_of(layer.skip) - shift_out)
        return _fixed_point(real, bias_step, _bound(bias) if bias is not None else 0, max_shift)

    # Two limits can make an exponent coarser than calibration chose, each lowering one
    # exponent at a time (which can raise the next layer's multiplier), so they are applied
    # until neither moves: a multiplier must fit 15 bits at a shift of 1 or more, and a skip
    # operand is shifted left into the sum, so it may not be finer than the sum's fraction.
    for _ in range(4 * len(layers) + 4):
        moved = False
        for index, layer in enumerate(layers):
            if layer.kind == "pool":
                exponents[index] = exponent_of(layer.input)
                continue
            scale = float(tensors[layer.weight].scale.max())
            limit = math.floor(math.log2(16383 * divisor_of(layer.input) / scale)) \
                + exponent_of(layer.input)
            if exponents[index] > limit:
                exponents[index], moved = limit, True
        for index, layer in enumerate(layers):
            if layer.skip is not None and layer.kind != "pool":
                _, shift, _ = constants(index)
                source = layer.skip
                if source == -1:
                    continue  # the image's exponent is the user's: checked below
                if exponents[source] > exponents[index] + shift:
                    exponents[source], moved = exponents[index] + shift, True
        if not moved:
            break

    ops, order = [], []
    for index, layer in enumerate(layers):
        c, h, w = input_shape if layer.input == -1 else shapes[layer.input]
        source_address = input_address if layer.input == -1 else addresses[layer.input]
        if layer.kind == "pool":
            ops.append(Op(Opcode.POOL, ValueType.S16, c, h, w, c, input_address=source_address,
                          output_address=addresses[index], output_exponent=exponents[index]))
            continue
        weight = tensors[layer.weight]
        multipliers, shift, bias_multiplier = constants(index)
        skip_address, skip_shift = NO_SKIP, 0
        if layer.skip is not None:
            skip_address = input_address if layer.skip == -1 else addresses[layer.skip]
            skip_shift = exponents[index] + shift - exponent_of(layer.skip)
            if not 0 <= skip_shift <= MAX_SKIP_SHIFT:
                raise ProgramError(f"layer {index}: skip shift {skip_shift} outside "
                                   f"0..{MAX_SKIP_SHIFT}")
        if layer.bias:
            order.append(layer.bias)
        order.append(layer.weight)
        conv = layer.kind == "conv"
        ops.append(Op(
            Opcode.CONV if conv else Opcode.LINEAR, types[index], c, h, w, shapes[index][0],
            kernel=weight.shape[2] if conv else 0, stride=layer.stride if conv else 0,
            input_address=source_address, output_address=addresses[index],
            skip_address=skip_address, has_bias=layer.bias is not None,
            weight_bound=_bound(weight),
            bias_bound=_bound(tensors[layer.bias]) if layer.bias else 0, shift=shift,
            skip_shift=skip_shift, bias_multiplier=bias_multiplier if layer.bias else 0,
            output_exponent=exponents[index],
            multipliers=tuple(int(a) for a in (multipliers if len(multipliers) > 1
                                               else multipliers[:1]))))
    program = Program(*input_shape, input_exponent, input_address, tuple(ops))
    program.check()
    return Lowered(program, order, ranges)


def program_word_count(layers, tensors: dict) -> int:
    """Words of the program :func:`lower` makes of ``layers``, without calibrating it."""
    from sw.codec.program import HEADER_WORDS, OP_WORDS
    words = HEADER_WORDS
    for layer in layers:
        words += OP_WORDS
        if layer.kind != "pool":
            words += len(tensors[layer.weight].scale)
    return words


def order_tensors(tensors: list, order: list) -> list:
    """``tensors`` with the named ones first, in ``order``, and the rest after, as they were."""
    by_name = {t.name: t for t in tensors}
    missing = [name for name in order if name not in by_name]
    if missing:
        raise ValueError(f"tensors missing for the program: {', '.join(missing)}")
    chosen = set(order)
    return [by_name[name] for name in order] + [t for t in tensors if t.name not in chosen]


def resnet_layers(model) -> list:
    """The layers of a :class:`sw.quant.models.ResNet` (BatchNorm folded), named as its state dict.

    A block runs its projection ``sc`` first (when it has one: it reads the block's input,
    which is then still live), then ``a``, ``b`` (and ``c`` in a bottleneck), the shortcut
    added before the last ReLU; the container holds the sections in that order, the order the
    engine consumes them.
    """
    if not all(hasattr(model, part) for part in ("stem", "layers", "fc")):
        raise ValueError(f"{type(model).__name__} is not a ResNet of sw.quant.models")
    stem = list(model.stem)
    if len(stem) != 2 or not hasattr(stem[0], "weight"):
        raise ValueError("only the convolution + ReLU stem of the small ResNets lowers to a "
                         "program (no max pool in docs/INFERENCE.md)")
    layers = []

    def conv(name, module, source, relu, skip=None):
        if not hasattr(module, "weight") or module.weight.dim() != 4:
            raise ValueError(f"{name}: a folded convolution was expected (fold BatchNorm first)")
        if tuple(module.stride) not in ((1, 1), (2, 2)) or module.stride[0] != module.stride[1]:
            raise ValueError(f"{name}: stride {tuple(module.stride)}")
        if module.kernel_size[0] not in (1, 3) or module.padding[0] != module.kernel_size[0] // 2:
            raise ValueError(f"{name}: kernel {module.kernel_size} padding {module.padding}")
        layers.append(Layer("conv", f"{name}.weight",
                            f"{name}.bias" if module.bias is not None else None,
                            module.stride[0], relu, source, skip))
        return len(layers) - 1

    current = conv("stem.0", stem[0], -1, True)
    for stage_index, stage in enumerate(model.layers):
        for block_index, block in enumerate(stage):
            prefix = f"layers.{stage_index}.{block_index}"
            block_input = current
            parts = [p for p in ("a", "b", "c") if hasattr(block, p)]
            shortcut = conv(f"{prefix}.sc", block.sc, block_input, False) \
                if hasattr(block.sc, "weight") else block_input
            for position, part in enumerate(parts):
                last = position == len(parts) - 1
                current = conv(f"{prefix}.{part}", getattr(block, part), current, True,
                               shortcut if last else None)
    pooled = len(layers)
    layers.append(Layer("pool", input=current))
    layers.append(Layer("linear", "fc.weight",
                        "fc.bias" if model.fc.bias is not None else None, input=pooled))
    return layers


def mlp_layers(names: list) -> list:
    """An MLP's layers: ``names`` are ``(weight, bias)`` pairs; ReLU between them."""
    layers = []
    for index, (weight, bias) in enumerate(names):
        layers.append(Layer("linear", weight, bias, relu=index < len(names) - 1,
                            input=index - 1))
    return layers
