"""The reference engine: rounding, the vectorised path against the loops, layers against float."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sw.codec.container import CodedTensor, read_container, write_container
from sw.codec.program import Op, Opcode, ValueType
from sw.network.engine import (
    BoundNetwork,
    infer,
    infer_float,
    infer_reference,
    quantize_images,
    requantize,
)
from sw.network.lower import Layer, lower, order_tensors
from tests.test_program import small_network


def bound(lowered, tensors) -> BoundNetwork:
    return BoundNetwork.from_container(read_container(
        write_container(tensors, program=lowered.program)))


def test_rounding_at_ties_goes_up():
    """``floor(v / 2**S + 1/2)``: halves round towards +infinity, negative ones too."""
    op = Op(Opcode.LINEAR, ValueType.S16, 1, 1, 1, 5, weight_bound=1, shift=2,
            multipliers=(1,))
    acc = np.array([[2, 6, -2, -6, -7]])  # 0.5, 1.5, -0.5, -1.5, -1.75
    assert requantize(op, acc, None, None).tolist() == [[1, 2, 0, -1, -2]]
    relu = dataclasses.replace(op, output_type=ValueType.U8)
    assert requantize(relu, np.array([[-2, 2, 1020, 1022, 1023]]), None, None).tolist() == \
        [[0, 1, 255, 255, 255]]
    signed8 = dataclasses.replace(op, output_type=ValueType.S8, out_channels=4)
    assert requantize(signed8, np.array([[-514, -510, 510, 508]]), None, None).tolist() == \
        [[-128, -127, 127, 127]]


def test_requantize_sums_bias_and_skip_before_the_one_rounding():
    op = Op(Opcode.CONV, ValueType.S16, 1, 1, 1, 2, 1, 1, has_bias=True, weight_bound=1,
            bias_bound=3, shift=4, skip_shift=3, bias_multiplier=5, skip_address=7,
            multipliers=(3, 7))
    acc = np.array([[[[10]], [[-10]]]])
    bias = np.array([2, -3])
    skip = np.array([[[[1]], [[-1]]]])
    # (10*3 + 2*5 + 1*8 + 8) >> 4 = 56 >> 4 = 3; (-70 - 15 - 8 + 8) >> 4 = -85 >> 4 = -6
    assert requantize(op, acc, bias, skip).reshape(-1).tolist() == [3, -6]


def test_input_quantization():
    lowered, _, _ = small_network()
    program = lowered.program  # input exponent 4
    images = np.zeros((1, *program.input_shape))
    images[0, 0, 0, :6] = [0.0, 1 / 32, 3 / 32, 1.0, 20.0, -1.0]
    assert quantize_images(program, images)[0, 0, 0, :6].tolist() == [0, 1, 2, 16, 255, 0]
    with pytest.raises(ValueError, match="NaN"):
        quantize_images(program, np.full((1, *program.input_shape), np.nan))
    with pytest.raises(ValueError, match="do not fit"):
        quantize_images(program, np.zeros((1, 3)))


def test_vectorised_equals_loops_on_the_small_network():
    lowered, tensors, images = small_network()
    network = bound(lowered, tensors)
    result = infer(network, images, dump=True)
    for i in range(4):
        prediction, outputs = infer_reference(network, images[i])
        assert prediction == result.predictions[i]
        for layer, output in zip(result.layers, outputs):
            assert np.array_equal(layer[i], output)


@st.composite
def random_networks(draw):
    """Random small networks of every operation the spec has, with random constants."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    channels = draw(st.integers(1, 3))
    size = draw(st.integers(1, 5))
    layers, tensors = [], {}
    shape = (channels, size, size)

    def coded(name, shape, levels, scale):
        tensor = CodedTensor(name, rng.integers(0, levels, shape), levels,
                             int(rng.integers(0, levels)), scale)
        tensors[name] = tensor

    depth = draw(st.integers(1, 3))
    current = -1
    shapes = []
    for index in range(depth):
        out = int(rng.integers(1, 4))
        kernel = int(rng.choice([1, 3]))
        stride = int(rng.choice([1, 2]))
        per_channel = bool(rng.integers(0, 2))
        scale = rng.uniform(0.01, 1, out if per_channel else 1).astype(np.float32)
        coded(f"c{index}.weight", (out, shape[0], kernel, kernel), int(rng.integers(1, 9)),
              scale)
        has_bias = bool(rng.integers(0, 2))
        if has_bias:
            coded(f"c{index}.bias", (out,), 31, np.float32(rng.uniform(0.001, 0.1)))
        out_shape = (out, (shape[1] - 1) // stride + 1, (shape[2] - 1) // stride + 1)
        skip = None
        # a skip from an earlier layer (or the image) of the same shape
        candidates = [j for j in range(-1, index)
                      if (j == -1 and (channels, size, size) == out_shape)
                      or (j >= 0 and layers[j].kind == "conv" and shapes[j] == out_shape)]
        if candidates and rng.integers(0, 2):
            skip = int(rng.choice(candidates))
        layers.append(Layer("conv", f"c{index}.weight", f"c{index}.bias" if has_bias else None,
                            stride, bool(rng.integers(0, 2)), current, skip))
        shape = out_shape
        current = index
        shapes = _shapes_of(layers, (channels, size, size), tensors)
    if rng.integers(0, 2):
        layers.append(Layer("pool", input=current))
        current = len(layers) - 1
        shape = (shape[0], 1, 1)
    classes = int(rng.integers(1, 5))
    coded("fc.weight", (classes, int(np.prod(shape))), int(rng.integers(2, 16)),
          np.float32(rng.uniform(0.01, 1)))
    layers.append(Layer("linear", "fc.weight", None, input=current))
    images = rng.uniform(0, 4, (3, channels, size, size))
    return layers, tensors, images, int(rng.integers(0, 6))


def _shapes_of(layers, input_shape, tensors):
    from sw.network.lower import _shapes
    return _shapes(layers, input_shape, tensors)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_networks(), st.data())
def test_vectorised_equals_loops_on_random_programs(network, data):
    layers, tensors, images, exponent = network
    lowered = lower(layers, tensors, images, exponent)
    program = lowered.program
    # random constants within the rules, to reach roundings and saturations lowering avoids
    ops = []
    pooled = {op.input_address for op in program.ops if op.opcode == Opcode.POOL}
    for op in program.ops:
        if op.opcode != Opcode.POOL and data.draw(st.booleans()):
            shift = data.draw(st.integers(1, 24))
            op = dataclasses.replace(
                op, shift=shift,
                multipliers=tuple(data.draw(st.integers(1, 32767)) for _ in op.multipliers),
                bias_multiplier=data.draw(st.integers(-(1 << 20), 1 << 20)) if op.has_bias
                else 0,
                skip_shift=data.draw(st.integers(0, 12)) if op.has_skip else 0,
                # what a pool sums stays 8 bits wide, so that its sums fit S16
                output_type=data.draw(st.sampled_from(
                    [ValueType.U8, ValueType.S8] if op.output_address in pooled
                    else list(ValueType))))
        ops.append(op)
    program = dataclasses.replace(program, ops=tuple(ops))
    program.check()
    lowered = dataclasses.replace(lowered, program=program)
    network = bound(lowered, order_tensors(list(tensors.values()), lowered.tensor_order))
    result = infer(network, images, dump=True)
    for i in range(len(images)):
        prediction, outputs = infer_reference(network, images[i])
        assert prediction == result.predictions[i]
        for layer, output in zip(result.layers, outputs):
            assert np.array_equal(layer[i], output)


def test_each_layer_type_within_one_step_of_float():
    """Each operation on the integer engine's own input, against float on that same input.

    The dequantized input through the float layer, scaled by ``2**output_exponent``, must
    round to within one step of what the integer operation wrote (saturation aside).
    """
    lowered, tensors, images = small_network()
    network = bound(lowered, tensors)
    program = network.program
    result = infer(network, images, dump=True)
    exponents = {program.input_address: program.input_exponent}
    values = {program.input_address: quantize_images(program, images)}
    checked = set()
    for index, op in enumerate(program.ops):
        x = values[op.input_address] * 2.0 ** -exponents[op.input_address]
        if op.opcode == Opcode.POOL:
            expected = x.sum(axis=(2, 3)).reshape(len(x), -1, 1, 1)
        else:
            weights = network.weights[index] * network.weight_scales[index].reshape(
                (-1,) + (1,) * (network.weights[index].ndim - 1))
            if op.opcode == Opcode.CONV:
                from sw.network.engine import _windows
                expected = (_windows(x, op.kernel, op.stride)
                            @ weights.reshape(op.out_channels, -1).T).transpose(0, 3, 1, 2)
            else:
                # after a pool the real input is the mean: the multiplier holds the 1/(H*W)
                source = program.ops[index - 1] if index else None
                divisor = source.in_height * source.in_width \
                    if source is not None and source.opcode == Opcode.POOL else 1
                expected = (x.reshape(len(x), -1) / divisor @ weights.T).reshape(
                    len(x), -1, 1, 1)
            if op.has_bias:
                expected = expected + (network.biases[index] * network.bias_scales[index]) \
                    .reshape(1, -1, 1, 1)
            if op.has_skip:
                expected = expected + values[op.skip_address] * 2.0 ** -exponents[op.skip_address]
            if op.output_type == ValueType.U8:
                expected = np.maximum(expected, 0)
        expected = np.clip(expected * 2.0 ** op.output_exponent, op.output_type.low,
                           op.output_type.high)
        got = result.layers[index]
        assert np.abs(got - expected.reshape(got.shape)).max() <= 1.0, op.opcode
        checked.add((op.opcode, op.has_skip, op.output_type))
        exponents[op.output_address] = op.output_exponent
        values[op.output_address] = got
    assert {(Opcode.CONV, False, ValueType.U8), (Opcode.CONV, False, ValueType.S16),
            (Opcode.CONV, True, ValueType.U8), (Opcode.POOL, False, ValueType.S16),
            (Opcode.LINEAR, False, ValueType.S16)} <= checked


def test_float_path_is_the_torch_model():
    """infer_float of a lowered ResNet computes what torch computes with the decoded weights."""
    torch = pytest.importorskip("torch")
    from sw.network.lower import resnet_layers
    from sw.quant import qat
    from sw.quant.models import build_model, fold_batchnorm

    model = fold_batchnorm(build_model("digits-tiny")).eval()
    qmodel = qat.quantize_model(fold_batchnorm(build_model("digits-tiny")), bits=3.0)
    tensors = qat.export_tensors(qmodel)
    model.load_state_dict(qat.state_dict_from_container(read_container(
        write_container(tensors))))
    images = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    lowered = lower(resnet_layers(model), {t.name: t for t in tensors}, images, 4)
    network = bound(lowered, order_tensors(tensors, lowered.tensor_order))
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).double().numpy()
    np.testing.assert_allclose(infer_float(network, images), expected, rtol=1e-4, atol=1e-4)
    assert len(lowered.program.ops) == 1 + 2 + 3 + 2  # stem; a, b; a, sc, b; pool, fc


def test_container_without_program_is_refused():
    data = write_container([CodedTensor("w", np.zeros((2, 2), np.uint8), 3, 1)])
    with pytest.raises(ValueError, match="no program"):
        BoundNetwork.from_container(read_container(data))
