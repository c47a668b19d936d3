"""Zero-point quantization with learned step, learned precision and an entropy regulariser.

Every convolution and linear weight is quantized to ``2k+1`` levels around an exact zero: the
integer ``q = clamp(round(w / s), -k, k)`` stands for ``q * s``, and is stored as the symbol
``q + k`` (so the zero point is the middle symbol ``k``). Three things are learned:

* the weights, through straight-through rounding;
* the step ``s`` (per layer, or per output channel), with the LSQ gradient (Esser et al. 2020):
  rounding passes the gradient straight through, clipping sends ``+-k`` to the step, and the
  step's gradient is scaled by ``1 / sqrt(n k)`` for ``n`` weights per step;
* through the step, the precision. Entropy-coded, a layer's rate is set by its step relative to
  its weights (about ``h(w) - log2 s`` bits per weight), not by its level count: a level no
  weight reaches costs only its 16-bit table entry. So the level count is not a parameter of
  its own: while the precision is learned, every training forward sets ``k`` to the smallest
  count that covers the layer's weights at the current step (``round(max |w| / s)``, 1..127),
  and the step, learned against the task loss and the rate constraint, decides it. A layer the
  task needs keeps a fine step and many levels; one it does not need is pushed to a coarse step
  and three levels.

The regulariser estimates the coded size of each layer: each weight ``x = w / s`` is assigned
softly to its two neighbouring levels (weights ``1 - t`` and ``t``, the linear-interpolation
kernel, ``t = x - floor(x)``), the assignments are summed into a histogram over the levels and
``n * H(histogram)`` is the layer's estimated bits. It is differentiable with respect to the
weights and the step. The training loop (:mod:`sw.quant.train`) holds the sum over the
model to a target with an adaptive Lagrange multiplier (see :class:`RateConstraint`) that is
driven by the *exact* entropy of the hard symbols, which the rANS coder attains within 0.1 %.
"""

import math

import numpy as np
import torch
from torch import nn

from sw.codec.container import CodedTensor, RawTensor
from sw.codec.rans import entropy_bits
from sw.network.lower import BIAS_LEVELS

__all__ = [
    "MIN_HALF", "MAX_HALF", "round_ste", "scale_grad", "ZeroPointQuantizer", "QConv2d",
    "QLinear", "quantize_model", "quantized_modules", "soft_bits", "hard_bits",
    "export_tensors", "state_dict_from_container", "freeze_levels", "BIAS_LEVELS",
    "RateConstraint",
]

TABLE_BITS_PER_LEVEL = 16  #: a coded section stores one u16 frequency per level
MIN_HALF = 1      #: 3 levels
MAX_HALF = 127    #: 255 levels


class _RoundSTE(torch.autograd.Function):
    """``round`` forward (exactly, half to even like numpy), identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (bit-exact), gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer; the gradient passes straight through."""
    return _RoundSTE.apply(x)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``factor`` (LSQ's step-gradient scale)."""
    return _ScaleGrad.apply(x, factor)


class ZeroPointQuantizer(nn.Module):
    """Quantizer of one weight tensor: learned step(s), level count following the step.

    Parameters
    ----------
    shape : tuple
        Shape of the weight it quantizes.
    per_channel : bool
        One step per output channel (first dimension) instead of one per tensor.
    bits : float
        Initial bit-width: ``2k+1`` levels with ``k = round((2**bits - 1) / 2)`` and the step
        initialised to their least-MSE step; from the first training forward on the count
        follows the step.
    """

    def __init__(self, shape, per_channel: bool = False, bits: float = 4.0):
        super().__init__()
        step_shape = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else (1,)
        self.per_channel = per_channel
        self.step = nn.Parameter(torch.full(step_shape, 1e-2))
        # The current k: the initial bit-width's until the first training forward, then the
        # count that covers the weights at the learned step (see cover).
        initial = int(min(MAX_HALF, max(MIN_HALF, round((2.0 ** bits - 1) / 2))))
        self.register_buffer("learned_half", torch.tensor(initial, dtype=torch.int64))
        # 0 while the precision is learned; the integer k once it is fixed (freeze_levels).
        self.register_buffer("frozen_half", torch.tensor(0, dtype=torch.int64))
        self.weights_per_step = int(np.prod(shape)) // int(np.prod(step_shape))

    # -- precision --------------------------------------------------------------------------------

    def half_levels(self) -> int:
        """The integer ``k`` (``2k+1`` levels) used now and at export: frozen, or learned."""
        return int(self.frozen_half) or int(self.learned_half)

    def levels(self) -> int:
        return 2 * self.half_levels() + 1

    @torch.no_grad()
    def cover(self, weight: torch.Tensor) -> int:
        """Set the learned ``k`` to the fewest levels that reach every weight at the current step.

        ``round(max |w / s|)``, kept inside 1..127: no weight is clipped (below 127), and no
        level is stored that no weight uses at the layer's edge. Ignored once frozen.
        """
        if not int(self.frozen_half):
            reach = float((weight.detach() / self.positive_step()).abs().max())
            self.learned_half.fill_(int(min(MAX_HALF, max(MIN_HALF, round(reach)))))
        return self.half_levels()

    def positive_step(self) -> torch.Tensor:
        # The step must stay positive whatever the optimiser does; abs keeps its gradient.
        return self.step.abs().clamp_min(1e-8)

    @torch.no_grad()
    def init_step(self, weight: torch.Tensor, half: int = None) -> None:
        """Set the step(s) to the least-MSE step for ``half`` (default: current k) levels."""
        half = half or self.half_levels()
        w = weight.detach().float()
        if not self.per_channel and w.numel() > 1 << 18:
            # a strided sample of a quarter million weights picks the same step, much faster
            w = w.reshape(-1)[::w.numel() // (1 << 18)]
        dims = tuple(range(1, w.ndim)) if self.per_channel else tuple(range(w.ndim))
        peak = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) if self.per_channel \
            else w.abs().max().clamp_min(1e-12).reshape(1)
        best_error, best_step = None, None
        for fraction in torch.linspace(0.05, 1.0, 40):
            step = fraction * peak / half
            error = ((torch.clamp(torch.round(w / step.view(self.step.shape)), -half, half)
                      * step.view(self.step.shape) - w) ** 2)
            error = error.sum(dim=dims).reshape(step.shape) if self.per_channel else error.sum()
            if best_error is None:
                best_error, best_step = error, step.clone()
            else:
                better = error < best_error
                best_step = torch.where(better, step, best_step)
                best_error = torch.where(better, error, best_error)
        self.step.copy_(best_step.view(self.step.shape))

    # -- forward ----------------------------------------------------------------------------------

    def _quantize(self, weight, step, half) -> torch.Tensor:
        return round_ste(torch.clamp(weight / step, -half, half)) * step

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight: exactly ``q * s`` at the current (or frozen) level count."""
        half = self.cover(weight) if self.training else self.half_levels()
        step = scale_grad(self.positive_step(), 1 / math.sqrt(self.weights_per_step * half))
        return self._quantize(weight, step, half)

    @torch.no_grad()
    def integers(self, weight: torch.Tensor) -> torch.Tensor:
        """The exported integers ``clamp(round(w / s), -k, k)`` at the export precision."""
        half = self.half_levels()
        return torch.clamp(torch.round(weight / self.positive_step()), -half, half).to(torch.int64)

    # -- rate -------------------------------------------------------------------------------------

    def _soft_bits_at(self, weight, step, half: int) -> torch.Tensor:
        x = torch.clamp(weight / step, -half, half).reshape(-1)
        below = torch.floor(x).clamp(max=half - 1).detach()
        t = x - below
        index = (below + half).to(torch.int64)
        histogram = torch.zeros(2 * half + 1, dtype=x.dtype, device=x.device)
        histogram = histogram.index_add(0, index, 1 - t).index_add(0, index + 1, t)
        p = histogram / x.numel()
        return -(p * torch.log2(p.clamp_min(1e-12))).sum() * x.numel()

    def soft_bits(self, weight: torch.Tensor) -> torch.Tensor:
        """Differentiable estimate of the coded bits of ``weight``: entropy x count, plus the
        frequency table the container stores for the layer (16 bits per level)."""
        half = self.half_levels()
        return (self._soft_bits_at(weight, self.positive_step(), half)
                + TABLE_BITS_PER_LEVEL * (2 * half + 1))

    @torch.no_grad()
    def hard_bits(self, weight: torch.Tensor) -> float:
        """Exact entropy x count of the symbols export would write now, plus their table."""
        q = self.integers(weight)
        half = self.half_levels()
        counts = torch.bincount((q + half).reshape(-1), minlength=2 * half + 1)
        return (entropy_bits(counts.cpu().numpy())
                + TABLE_BITS_PER_LEVEL * (2 * half + 1))


class _Quantized:
    """Mixin of :class:`QConv2d` and :class:`QLinear`: quantized weight and coded 8-bit bias."""

    def _setup_quantizer(self, per_channel: bool, bits: float):
        self.quantizer = ZeroPointQuantizer(tuple(self.weight.shape), per_channel, bits)
        self.quantizer.init_step(self.weight)

    def quantized_weight(self) -> torch.Tensor:
        return self.quantizer(self.weight)

    def quantized_bias(self):
        """The bias as export writes it (:meth:`sw.codec.container.CodedTensor.symmetric` on
        ``BIAS_LEVELS`` levels), differentiable: the same rule in torch, rounding through
        :func:`round_ste`. tests/test_qat.py holds the two equal."""
        if self.bias is None:
            return None
        half = BIAS_LEVELS // 2
        peak = self.bias.detach().abs().max()
        scale = torch.where(peak > 0, peak / half, torch.ones_like(peak))
        return round_ste(torch.clamp(self.bias / scale, -half, half)) * scale


class QConv2d(nn.Conv2d, _Quantized):
    """A convolution whose weight (and bias) go through the quantizer in every forward."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, per_channel=False, bits=4.0) -> "QConv2d":
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                     conv.padding_mode)
        module.load_state_dict(conv.state_dict())
        module._setup_quantizer(per_channel, bits)
        return module

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QLinear(nn.Linear, _Quantized):
    """A linear layer whose weight (and bias) go through the quantizer in every forward."""

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel=False, bits=4.0) -> "QLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.load_state_dict(linear.state_dict())
        module._setup_quantizer(per_channel, bits)
        return module

    def forward(self, x):
        return nn.functional.linear(x, self.quantized_weight(), self.quantized_bias())


def quantize_model(model: nn.Module, per_channel: bool = False, bits: float = 4.0) -> nn.Module:
    """Replace (in place) every Conv2d and Linear of ``model`` by its quantized version."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                setattr(parent, name, QConv2d.from_float(child, per_channel, bits))
            elif type(child) is nn.Linear:
                setattr(parent, name, QLinear.from_float(child, per_channel, bits))
    return model


def quantized_modules(model: nn.Module):
    """``(name, module)`` of every quantized layer, in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _Quantized)]


def soft_bits(model: nn.Module) -> torch.Tensor:
    """Differentiable estimate of the coded bits of all quantized weights of ``model``."""
    return sum(m.quantizer.soft_bits(m.weight) for _, m in quantized_modules(model))


def hard_bits(model: nn.Module) -> float:
    """Exact entropy x count, summed over layers, of the symbols export would write now."""
    return sum(m.quantizer.hard_bits(m.weight) for _, m in quantized_modules(model))


@torch.no_grad()
def freeze_levels(model: nn.Module) -> None:
    """Fix every layer's level count at its current value (the one export writes)."""
    for _, module in quantized_modules(model):
        module.quantizer.frozen_half.fill_(module.quantizer.half_levels())


@torch.no_grad()
def export_tensors(model: nn.Module) -> list:
    """The container's tensors for ``model``, named as in its plain (unquantized) state dict.

    Quantized weights become :class:`CodedTensor` s of ``2k+1`` levels with zero point ``k``;
    biases of quantized layers are coded on ``BIAS_LEVELS`` levels with their own scale; every other
    parameter or buffer is stored raw.
    """
    tensors = []
    done = set()
    for name, module in quantized_modules(model):
        prefix = f"{name}." if name else ""
        half = module.quantizer.half_levels()
        q = module.quantizer.integers(module.weight)
        step = module.quantizer.positive_step().detach().to(torch.float32).reshape(-1)
        tensors.append(CodedTensor(prefix + "weight", (q + half).numpy().astype(np.uint8),
                                   levels=2 * half + 1, zero_point=half, scale=step.numpy()))
        done.update({prefix + "weight", prefix + "quantizer.step",
                     prefix + "quantizer.learned_half",
                     prefix + "quantizer.frozen_half"})
        if module.bias is not None:
            tensors.append(CodedTensor.symmetric(prefix + "bias",
                                                 module.bias.detach().cpu().numpy(), BIAS_LEVELS))
            done.add(prefix + "bias")
    for name, value in model.state_dict().items():
        if name not in done:
            tensors.append(RawTensor(name, value.detach().cpu().numpy()))
    return tensors


def state_dict_from_container(container) -> dict:
    """A torch state dict of the container's tensors, coded ones dequantized (float32)."""
    state = {}
    for tensor in container.tensors:
        if isinstance(tensor, CodedTensor):
            state[tensor.name] = torch.from_numpy(tensor.dequantize())
        else:
            state[tensor.name] = torch.from_numpy(np.array(tensor.data))
    return state


class RateConstraint:
    """Adaptive Lagrange multiplier holding the coded rate at or under a target.

    The loss is ``task + multiplier * estimate`` where ``estimate`` is the differentiable soft
    rate in bits per weight. After each step the multiplier moves by dual ascent on the measured
    (hard, exact-entropy) rate: ``multiplier += rate_lr * (rate / target - 1)``, never below
    zero. Above target it grows until the regulariser wins; below it, it shrinks and lets the
    task loss take the bits back. No hand-tuned weight: only how fast it adapts.

    Parameters
    ----------
    target : float
        Target rate of the coded weights, bits per weight.
    rate_lr : float
        Multiplier change per step for a rate 100 % over target.
    """

    def __init__(self, target: float, rate_lr: float = 0.02, multiplier: float = 0.0):
        if target <= 0:
            raise ValueError(f"target rate must be positive, not {target}")
        self.target = float(target)
        self.rate_lr = float(rate_lr)
        self.multiplier = float(multiplier)

    def penalty(self, estimate: torch.Tensor) -> torch.Tensor:
        return self.multiplier * estimate

    def update(self, rate: float) -> float:
        self.multiplier = max(0.0, self.multiplier + self.rate_lr * (rate / self.target - 1))
        return self.multiplier
