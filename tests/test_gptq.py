"""GPTQ rounding, layer statistics and the calibration file."""

import numpy as np
import pytest
import torch
from torch import nn

from sw.codec.rans import entropy_bits
from sw.quant import gptq


def correlated_layer(seed=0, rows=48, columns=96, samples=2000):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((columns, columns)) / np.sqrt(columns)
    x = rng.standard_normal((samples, columns)) @ (np.eye(columns) + 2 * mixing)
    w = rng.standard_normal((rows, columns)) * 0.1
    return w, x


def output_error(w, w_hat, hessian):
    e = w - w_hat
    return float(np.einsum("ij,jk,ik->", e, hessian, e))


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    w, x = correlated_layer()
    hessian = x.T @ x / len(x)
    step = np.float32(0.08)
    nearest = np.clip(np.rint(w / step), -3, 3)
    rounded = gptq.gptq_quantize(w, hessian, np.array([step]), 3)
    assert rounded.min() >= -3 and rounded.max() <= 3
    assert output_error(w, rounded * step, hessian) < 0.6 * output_error(w, nearest * step,
                                                                         hessian)
    # block size and column order change the arithmetic, not the quality
    other = gptq.gptq_quantize(w, hessian, np.array([step]), 3, block=16, act_order=False)
    assert output_error(w, other * step, hessian) < 0.7 * output_error(w, nearest * step,
                                                                       hessian)


def test_bit_price_trades_error_for_entropy():
    w, x = correlated_layer(1)
    hessian = x.T @ x / len(x)
    steps = np.full(w.shape[0], 0.05, np.float32)          # one step per row
    entropies, errors = [], []
    for price in [None, 1e-4, 1e-3]:
        q = gptq.gptq_quantize(w, hessian, steps, 7, bit_price=price)
        entropies.append(entropy_bits(np.bincount((q + 7).ravel())))
        errors.append(output_error(w, q * steps[:, None], hessian))
    assert entropies[0] > entropies[1] > entropies[2]
    assert errors[0] < errors[1] < errors[2]


def test_statistics_of_conv_and_linear_match_im2col():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 16, 5))
    x = torch.randn(10, 2, 4, 4)
    stats = gptq.collect_statistics(model, x, batch_size=4)
    columns = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18).double()
    assert stats["0.weight"].count == 160
    assert np.allclose(stats["0.weight"].hessian, (columns.T @ columns / 160).numpy())
    assert np.allclose(stats["0.weight"].mean, columns.mean(0).numpy())
    hidden = model[1](model[0](x)).detach().double()
    assert np.allclose(stats["2.weight"].hessian, (hidden.T @ hidden / 10).numpy(), atol=1e-10)
    # the same inputs given as a calibration file's arrays
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    again = gptq.statistics_from_arrays({"2.weight": hidden.float().numpy()}, tensors)
    assert np.allclose(again["2.weight"].hessian, stats["2.weight"].hessian, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        gptq.statistics_from_arrays({"2.weight": np.zeros((4, 7), np.float32)}, tensors)


def reference_gptq(w, hessian, steps, half, bit_price=None, block=gptq.BLOCK):
    """GPTQ with entropy-constrained rounding, written as plainly as possible: one column at a
    time, its error spread over the rest at once (no lazy blocks)."""
    factor = gptq.gptq_factor(hessian)
    w = np.asarray(w, np.float64)[:, factor.order].copy()
    steps = np.broadcast_to(np.asarray(steps, np.float64).reshape(-1), (len(w),))
    price = np.broadcast_to(np.asarray(bit_price or 0.0, np.float64), (len(w),))
    nearest = np.clip(np.rint(w / steps[:, None]), -half, half).astype(np.int64) + half
    counts = np.bincount(nearest.ravel(), minlength=2 * half + 1)
    code_length = -np.log2((counts + 0.5) / (counts.sum() + 0.5 * len(counts)))
    q = np.zeros(w.shape, np.int64)
    u = factor.upper
    for i in range(w.shape[1]):
        for r in range(len(w)):
            x, s = w[r, i], steps[r]
            if bit_price is None:
                options = [np.clip(np.rint(x / s), -half, half)]
            else:
                options = [np.clip(np.floor(x / s) + o, -half, half) for o in (0, 1)] + [0.0]
            costs = [((x - o * s) / u[i, i]) ** 2 + price[r] * code_length[int(o) + half]
                     for o in options]
            q[r, i] = options[int(np.argmin(costs))]
        w[:, i + 1:] -= ((w[:, i] - q[:, i] * steps) / u[i, i])[:, None] * u[i, i + 1:]
    out = np.empty_like(q)
    out[:, factor.order] = q
    return out


@pytest.mark.parametrize("half, price", [(3, None), (7, 1e-3), (1, 5e-3)])
def test_compiled_blocks_match_the_plain_algorithm(half, price):
    """The numba kernel with lazy block updates rounds (nearly) every weight as the plain
    column-by-column algorithm does; only the summation order of the updates differs."""
    w, x = correlated_layer(2, rows=40, columns=150)
    hessian = x.T @ x / len(x)
    steps = np.random.default_rng(3).uniform(0.03, 0.08, len(w)).astype(np.float32)
    fast = gptq.gptq_quantize(w, hessian, steps, half, bit_price=price, block=32)
    plain = reference_gptq(w, hessian, steps, half, bit_price=price)
    assert (fast != plain).mean() < 1e-3
    # a precomputed factor gives the same result as the Hessian itself
    again = gptq.gptq_quantize(w, None, steps, half, bit_price=price, block=32,
                               factor=gptq.gptq_factor(hessian))
    assert np.array_equal(again, fast)
