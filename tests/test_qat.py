"""The quantizer: gradients, odd level counts around an exact zero, the rate estimate, export."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sw.codec.container import CodedTensor, read_container, write_container
from sw.codec.rans import entropy_bits
from sw.quant import qat
from sw.quant.models import build_model, fold_batchnorm


def test_gradients_reach_weight_and_step():
    torch.manual_seed(0)
    q = qat.ZeroPointQuantizer((16, 8, 3, 3), bits=2.7)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    q.init_step(w)
    target = torch.randn(16, 8, 3, 3)
    ((q(w) - target) ** 2).sum().backward()
    for grad in (w.grad, q.step.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the rate estimate has gradients too, and a larger step means fewer bits
    q.step.grad = None
    w.grad = None
    q.soft_bits(w).backward()
    assert q.step.grad < 0 and w.grad.abs().sum() > 0


def test_lsq_step_gradient():
    """d(output)/d(step) is round(x) - x inside the range and +-k outside, times 1/sqrt(n k)."""
    q = qat.ZeroPointQuantizer((4,), bits=math.log2(7))   # k = 3 exactly: frozen below
    q.frozen_half.fill_(3)
    with torch.no_grad():
        q.step.fill_(0.5)
    w = torch.tensor([0.3, -0.8, 5.0, -7.0])
    out = q(w)
    assert out.tolist() == [0.5, -1.0, 1.5, -1.5]
    grads = [torch.autograd.grad(out[i], q.step, retain_graph=True)[0].item() for i in range(4)]
    x = w / 0.5
    expected = [float(torch.round(x[0]) - x[0]), float(torch.round(x[1]) - x[1]), 3.0, -3.0]
    assert grads == pytest.approx([e / math.sqrt(4 * 3) for e in expected], rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(bits=st.floats(0.0, 9.0), per_channel=st.booleans(), seed=st.integers(0, 1000),
       scale=st.floats(1e-3, 1e3), train=st.booleans())
def test_levels_odd_zero_exact(bits, per_channel, seed, scale, train):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, generator=generator) * scale
    w[0, 0] = 0.0
    with torch.no_grad():
        q = qat.ZeroPointQuantizer(tuple(w.shape), per_channel, bits)
        q.init_step(w)
        q.train(train)
        output = q(w)                            # a training forward sets the level count
        levels = q.levels()
        assert levels % 2 == 1 and 3 <= levels <= 255
        assert output[0, 0].item() == 0.0        # an exact zero
        integers = q.integers(w)
        assert integers[0, 0] == 0 and integers.abs().max() <= levels // 2
    q.frozen_half.fill_(q.half_levels())
    exported = CodedTensor("w", (integers + levels // 2).numpy().astype(np.uint8), levels,
                           levels // 2, q.positive_step().detach().reshape(-1).numpy())
    assert exported.zero_point == (exported.levels - 1) // 2
    assert np.array_equal(exported.dequantize(), q(w).detach().numpy())


def test_level_count_follows_the_step():
    """Untrained: the initial bit-width's count. Training: the fewest levels covering the
    weights at the learned step, whatever the initial count; frozen: fixed."""
    w = torch.linspace(-4, 4, 101)
    q = qat.ZeroPointQuantizer((101,), bits=math.log2(2 * 8 + 1))
    assert q.levels() == 17
    with torch.no_grad():
        q.step.fill_(1.0)
    q.eval()
    q(w)
    assert q.levels() == 17                                  # eval forwards change nothing
    q.train()
    assert torch.equal(q(w), torch.round(w))                 # covered: nothing clipped
    assert q.levels() == 9                                   # +-4 steps
    with torch.no_grad():
        q.step.fill_(3.0)
    q(w)
    assert q.levels() == 3                                   # round(4 / 3) = 1
    q.frozen_half.fill_(q.half_levels())
    with torch.no_grad():
        q.step.fill_(0.5)
    q(w)
    assert q.levels() == 3 and q(w).abs().max() == 0.5       # frozen: clipped at +-1 step


def test_precision_follows_sensitivity():
    """Two layers alike but for how much the loss cares (outputs scaled by 10 and by 0.1),
    under the same rate price: a few steps of QAT leave the sensitive one many levels and
    push the other to three."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"sensitive": torch.nn.Linear(32, 32, bias=False),
                                 "insensitive": torch.nn.Linear(32, 32, bias=False)})
    teacher = {name: layer.weight.detach().clone() for name, layer in model.items()}
    qat.quantize_model(model, bits=4.0)                # both start on 17 levels
    x = torch.randn(256, 32)
    target = 10 * x @ teacher["sensitive"].T + 0.1 * x @ teacher["insensitive"].T
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        output = 10 * model["sensitive"](x) + 0.1 * model["insensitive"](x)
        loss = (torch.nn.functional.mse_loss(output, target)
                + 0.05 * qat.soft_bits(model) / 2048)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    levels = {name: layer.quantizer.levels() for name, layer in model.items()}
    assert levels["insensitive"] == 3
    assert levels["sensitive"] >= 7


def test_soft_rate_is_exact_on_the_grid():
    """Weights on the levels: the soft histogram is the hard one, so soft bits = hard bits."""
    generator = torch.Generator().manual_seed(1)
    integers = torch.randint(-3, 4, (4000,), generator=generator)
    integers[torch.rand(4000, generator=generator) < 0.6] = 0
    q = qat.ZeroPointQuantizer((4000,))
    q.frozen_half.fill_(3)
    with torch.no_grad():
        q.step.fill_(0.25)
    w = integers.float() * 0.25
    counts = np.bincount(integers.numpy() + 3, minlength=7)
    expected = entropy_bits(counts) + 16 * 7
    assert q.soft_bits(w).item() == pytest.approx(expected, rel=1e-5)
    assert q.hard_bits(w) == pytest.approx(expected, rel=1e-12)


def test_rate_constraint_multiplier():
    c = qat.RateConstraint(1.0, rate_lr=0.1)
    c.update(2.0)
    assert c.multiplier == pytest.approx(0.1)
    c.update(3.0)
    assert c.multiplier == pytest.approx(0.3)
    for _ in range(10):
        c.update(0.5)
    assert c.multiplier == 0.0
    with pytest.raises(ValueError):
        qat.RateConstraint(0.0)


def tiny_quantized(seed=0, per_channel=False):
    torch.manual_seed(seed)
    model = build_model("digits-tiny", seed)
    model.train()
    for _ in range(3):                                   # some BatchNorm statistics to fold
        model(torch.rand(32, 1, 8, 8))
    model.eval()
    return qat.quantize_model(fold_batchnorm(model), per_channel, bits=2.5)


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [False, True])
def test_export_decode_load_is_exact(per_channel):
    qmodel = tiny_quantized(per_channel=per_channel)
    optimizer = torch.optim.Adam(qmodel.parameters(), 1e-2)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    for _ in range(5):                                   # move weights, steps and level counts
        loss = torch.nn.functional.cross_entropy(qmodel(x), y) + 1e-4 * qat.soft_bits(qmodel)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    qat.freeze_levels(qmodel)
    container = read_container(write_container(qat.export_tensors(qmodel)))
    plain = fold_batchnorm(build_model("digits-tiny"))
    plain.load_state_dict(qat.state_dict_from_container(container))
    plain_modules = dict(plain.named_modules())
    for name, module in qat.quantized_modules(qmodel):
        assert torch.equal(plain_modules[name].weight, module.quantized_weight())
        assert torch.equal(plain_modules[name].bias, module.quantized_bias())
        coded = container[f"{name}.weight"]
        assert coded.levels % 2 == 1 and coded.zero_point == coded.levels // 2
        assert coded.levels == module.quantizer.levels()
        assert len(coded.scale) == (module.weight.shape[0] if per_channel else 1)
    qmodel.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(qmodel(x), plain(x))
    # soft and hard rate estimates are in the same range as the real coded payload
    payload_bits = sum(8 * s.payload_bytes for s, t in zip(container.sections, container.tensors)
                       if t.name.endswith(".weight"))
    tables = 16 * sum(m.quantizer.levels() for _, m in qat.quantized_modules(qmodel))
    assert qat.hard_bits(qmodel) - tables == pytest.approx(payload_bits, rel=0.05, abs=300)


@pytest.mark.parametrize("bias", [np.zeros(8, np.float32),
                                  np.random.default_rng(1).normal(0, 0.3, 64).astype(np.float32),
                                  np.array([1e-8, -3e-9, 0.0], np.float32)])
def test_training_bias_is_the_containers_bias_quantizer(bias):
    """QAT's forward pass rounds a bias exactly as CodedTensor.symmetric writes it."""
    layer = qat.QLinear.from_float(torch.nn.Linear(4, len(bias)))
    with torch.no_grad():
        layer.bias.copy_(torch.from_numpy(bias))
    coded = CodedTensor.symmetric("bias", bias, qat.BIAS_LEVELS)
    assert torch.equal(layer.quantized_bias(), torch.from_numpy(coded.dequantize()))
