"""Calibration-aware PTQ: per-layer input statistics and GPTQ/OPTQ error-compensating rounding.

A layer ``y = W x`` (a convolution as ``W`` of shape ``(out, in * kh * kw)`` applied to the
im2col columns ``x`` of its input) quantized to ``W_hat`` makes the output error
``E ||(W - W_hat) x||^2 = tr((W - W_hat) H (W - W_hat)^T)`` with ``H = E[x x^T]``. GPTQ (Frantar
et al. 2023, "OPTQ") rounds the columns of ``W`` one after the other and, after each, spreads
that column's rounding error over the columns not yet rounded so that the output error the
rest can still compensate is cancelled: with ``U`` the upper Cholesky factor of ``H^-1``,
rounding column ``i`` with error ``e = (w_i - q_i) / U_ii`` updates ``W[:, j] -= e U_ij`` for
``j > i``. The updates are applied lazily in blocks of 128 columns (one matrix product per
block instead of one rank-one update per column), ``H`` is damped by 1 % of its mean diagonal
so the Cholesky factorisation exists, and columns are taken in order of decreasing ``H_ii``
("act order": the columns whose error matters most are rounded while the most columns are left
to compensate). The quantization grid (levels and step per row) is fixed beforehand by the
rate-distortion allocation of :mod:`sw.quant.compress`; GPTQ only chooses which level each weight
takes.

The statistics also give the bias correction (``b += (W - W_hat) E[x]``, the output's mean put
back) and each layer's sensitivity (its error relative to the output's energy ``w H w^T``).
"""

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["LayerStatistics", "collect_statistics", "statistics_from_arrays", "gptq_quantize",
           "gptq_factor", "GptqFactor", "DAMPING", "BLOCK"]

DAMPING = 0.01   #: fraction of the mean diagonal of H added to its diagonal
BLOCK = 128      #: columns rounded between two lazy updates of the rest


@dataclass
class LayerStatistics:
    """The second moment and mean of one layer's input columns.

    Attributes
    ----------
    hessian : ndarray
        ``E[x x^T]``, shape ``(columns, columns)``, float64.
    mean : ndarray
        ``E[x]``, shape ``(columns,)``.
    count : int
        Input vectors seen (images x output positions for a convolution).
    """

    hessian: np.ndarray
    mean: np.ndarray
    count: int


class _Accumulator:
    def __init__(self, columns):
        self.sum_outer = torch.zeros(columns, columns, dtype=torch.float64)
        self.sum = torch.zeros(columns, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        self.sum_outer += x.T @ x
        self.sum += x.sum(0)
        self.count += x.shape[0]

    def result(self) -> LayerStatistics:
        count = max(self.count, 1)
        return LayerStatistics((self.sum_outer / count).numpy(), (self.sum / count).numpy(),
                               self.count)


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors one output value is computed from: rows of ``(count, columns)``."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError("grouped convolutions are not supported by calibration")
        if module.padding_mode != "zeros":
            x = nn.functional.pad(x, module._reversed_padding_repeated_twice,
                                  mode=module.padding_mode)
            padding = 0
        else:
            padding = module.padding
        unfolded = nn.functional.unfold(x, module.kernel_size, module.dilation, padding,
                                        module.stride)          # (N, C*kh*kw, L)
        return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def collect_statistics(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> dict:
    """Input statistics of every Conv2d and Linear of ``model`` on ``inputs``.

    Returns ``{weight name: LayerStatistics}``, named as in ``model.state_dict()``. The float
    model's own activations are used for every layer (one pass; the layers are quantized
    independently).
    """
    accumulators, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            columns = module.weight[0].numel()
            accumulator = accumulators[f"{name}.weight" if name else "weight"] = \
                _Accumulator(columns)
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, acc=accumulator: acc.add(_columns(m, args[0]))))
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    return {name: acc.result() for name, acc in accumulators.items()}


def statistics_from_arrays(arrays: dict, tensors: dict) -> dict:
    """Statistics from a calibration file: ``{weight name: inputs (samples, columns)}``.

    Each array holds input vectors of one weight tensor (for a convolution, im2col columns of
    ``in * kh * kw`` values, in the order of ``weight.reshape(out, -1)``).
    """
    statistics = {}
    for name, x in arrays.items():
        if name not in tensors:
            raise ValueError(f"calibration: {name!r} is not a tensor of the model")
        weight = tensors[name]
        columns = int(np.prod(weight.shape[1:]))
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != columns or x.dtype.kind != "f":
            raise ValueError(f"calibration: {name!r} must hold float inputs of shape (samples, "
                             f"{columns}), not {x.dtype} {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"calibration: NaN or infinite inputs for {name!r}")
        accumulator = _Accumulator(columns)
        for start in range(0, len(x), 4096):
            accumulator.add(torch.from_numpy(np.ascontiguousarray(x[start:start + 4096])))
        statistics[name] = accumulator.result()
    return statistics


@dataclass
class GptqFactor:
    """What GPTQ needs of a layer's ``H``, the same for every grid: computed once per layer."""

    order: np.ndarray   #: the columns in the order they are rounded
    upper: np.ndarray   #: upper Cholesky factor of the damped ``H^-1``, in that order


@torch.no_grad()
def gptq_factor(hessian: np.ndarray, damping: float = DAMPING,
                act_order: bool = True) -> GptqFactor:
    """The column order and the upper Cholesky factor of ``(H + damping mean(diag H) I)^-1``."""
    h = torch.tensor(hessian, dtype=torch.float64).clone()
    columns = h.shape[0]
    dead = torch.diag(h) <= 0
    # an input that is always zero: its weights do not matter; round them where they are
    h[dead, dead] = 1
    order = torch.argsort(torch.diag(h), descending=True) if act_order else \
        torch.arange(columns)
    h = h[order][:, order]
    h += damping * torch.mean(torch.diag(h)) * torch.eye(columns, dtype=torch.float64)
    # U: row i is how column i's error spreads to the columns after it
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return GptqFactor(order.numpy(), np.ascontiguousarray(upper.numpy()))


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, steps: np.ndarray, half: int,
                  damping: float = DAMPING, block: int = BLOCK, act_order: bool = True,
                  bit_price=None, factor: GptqFactor = None) -> np.ndarray:
    """GPTQ rounding of ``weight`` (rows, columns) onto ``clamp(round(w / step), -half, half)``.

    Parameters
    ----------
    weight : ndarray
        ``(rows, columns)``.
    hessian : ndarray
        ``E[x x^T]`` of the layer's inputs, ``(columns, columns)``; unused when ``factor``
        (:func:`gptq_factor` of it, with ``damping`` and ``act_order``) is given.
    steps : ndarray
        One step, or one per row (float32: exactly what the container stores).
    half : int
        ``k``: the integers lie in ``-k..k``.
    bit_price : float or ndarray, optional
        Entropy-constrained rounding: each weight takes, of the two levels around it and zero,
        the one minimising ``(w - q s)^2 / d^2 + bit_price x code length(q)``, where ``d^2``
        scales the first term to the output error GPTQ's update leaves and the code lengths
        are those of round-to-nearest on the same grid. Plain GPTQ rounds to nearest, and its
        error feedback pushes many weights off zero: the symbols' entropy then rose by up to
        2x at the rates of this project (per row, or one for all).

    Returns the integers, shape ``(rows, columns)``, int64.
    """
    if factor is None:
        factor = gptq_factor(hessian, damping, act_order)
    w = np.asarray(weight, np.float64)[:, factor.order]
    rows, columns = w.shape
    step = np.ascontiguousarray(np.broadcast_to(np.asarray(steps, np.float64).reshape(-1),
                                                (rows,)))
    upper = factor.upper
    if bit_price is None:
        price = np.zeros(rows)
        code_length = np.zeros(2 * half + 1)
    else:
        price = np.ascontiguousarray(np.broadcast_to(np.asarray(bit_price, np.float64),
                                                     (rows,)))
        nearest = np.clip(np.rint(w / step[:, None]), -half, half).astype(np.int64) + half
        counts = np.bincount(nearest.ravel(), minlength=2 * half + 1).astype(np.float64)
        code_length = -np.log2((counts + 0.5) / (counts.sum() + 0.5 * len(counts)))
    q = np.empty((rows, columns), np.int64)
    for first in range(0, columns, block):
        last = min(first + block, columns)
        w_block = np.ascontiguousarray(w[:, first:last])
        errors = np.empty_like(w_block)
        _compiled_round_block()(w_block, np.ascontiguousarray(upper[first:last, first:last]),
                                step, half, bit_price is not None, price, code_length,
                                q[:, first:last], errors)
        w[:, last:] -= errors @ upper[first:last, last:]
    out = np.empty_like(q)
    out[:, factor.order] = q
    return out


def _round_block(w_block, u_block, step, half, priced, price, code_length, q_block, errors):
    """Round a block's columns in order, each one's error spread over the block's later columns.

    Plain loops, compiled with numba (:func:`_compiled_round_block`): the per-column tensor
    operations they replace cost 17 s of a 27 M-weight model's pass, almost all overhead.
    """
    rows, width = w_block.shape
    for i in range(width):
        d = u_block[i, i]
        for r in range(rows):
            x = w_block[r, i]
            s = step[r]
            if priced:
                # of the two levels around x and zero, the cheapest in error plus code length
                below = min(max(np.floor(x / s), -half), half)
                above = min(max(np.floor(x / s) + 1.0, -half), half)
                rounded = below
                best = ((x - below * s) / d) ** 2 + price[r] * code_length[int(below) + half]
                cost = ((x - above * s) / d) ** 2 + price[r] * code_length[int(above) + half]
                if cost < best:
                    rounded, best = above, cost
                cost = (x / d) ** 2 + price[r] * code_length[half]
                if cost < best:
                    rounded = 0.0
            else:
                rounded = min(max(np.rint(x / s), -half), half)
            q_block[r, i] = int(rounded)
            e = (x - rounded * s) / d
            errors[r, i] = e
            for j in range(i + 1, width):
                w_block[r, j] -= e * u_block[i, j]


@functools.cache
def _compiled_round_block():
    """:func:`_round_block` compiled with numba, on first use (importing numba is slow)."""
    import numba
    return numba.njit(cache=True, nogil=True)(_round_block)
