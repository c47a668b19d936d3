"""``python -m sw compress``: post-training quantization to a bit budget, by rate-distortion.

Every floating-point tensor of two or more dimensions (convolution and linear weights) is
zero-point quantized; its level count ``2k+1`` and step ``s`` are chosen jointly over all layers
to minimise the total (optionally sensitivity-weighted) squared weight error subject to the size
of the whole file:

1. for each layer and each candidate step (a log-spaced grid) the weights are rounded once and
   bucketed by ``|q|``; prefix sums then give, for every ``k`` from 1 to 127 at once, the
   squared error (rounding inside, clipping outside) and the exact entropy of the clamped
   symbols, so each layer has a few thousand ``(rate, distortion)`` candidates;
2. a Lagrange multiplier is bisected so that each layer's ``argmin D + lambda R`` fits the
   budget, then layers are upgraded greedily into what is left (steepest ``dD/dR`` first);
3. the container is written and measured, and the weights' share of the budget is searched
   until the file lands in the 0.1 % under the target (the coder is within 0.1 % of the
   entropy, but GPTQ's rounding writes files far from the prediction, and the allocation
   moves in steps: see :func:`_search`); the largest file that fitted is kept.

The budget is ``target x weights`` bits minus everything that does not depend on the choice:
file header, section headers, other tensors (stored raw, or coded with ``--bias-levels``).
"""

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sw.codec.container import CodedTensor, RawTensor, read_container, write_container
from sw.codec.rans import entropy_bits
from sw.format import file_header_bytes
from sw.params import CodecParams, add_params_arguments, params_from

__all__ = ["add_arguments", "run", "Candidates", "layer_candidates", "allocate",
           "compress_tensors", "PTQResult"]

MAX_HALF = 127
TABLE_BITS_PER_LEVEL = 16


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="torch state dict (.pt/.pth/.bin) or "
                        ".safetensors")
    parser.add_argument("--target-bpw", type=float, required=True, metavar="B",
                        help="bits per weight of the whole container file")
    parser.add_argument("-o", "--output", metavar="OUT", required=True)
    parser.add_argument("--report", metavar="FILE.json", help="write the figures as JSON")
    parser.add_argument("--budget", choices=("model", "weights"), default="model",
                        help="the target counts the whole file (default) or only the file "
                             "header and weight sections")
    parser.add_argument("--bias-levels", type=int, default=0, metavar="N",
                        help="code 1-D float tensors (biases) on N odd levels with their own "
                             "scale instead of storing them raw (default: raw)")
    parser.add_argument("--sensitivity", metavar="FILE.json",
                        help="per-tensor weights of the squared error {name: weight}; "
                             "'fisher' estimates them on the data of --eval-model")
    parser.add_argument("--eval-model", metavar="NAME",
                        help="a model of sw.quant.models (digits, digits-tiny) to load MODEL into "
                             "and measure float and decoded top-1 accuracy on its test set")
    parser.add_argument("--fold", action="store_true",
                        help="MODEL is a model of --eval-model with BatchNorm: fold every "
                             "BatchNorm into its convolution first (much better than coding "
                             "the raw BatchNorm vectors)")
    parser.add_argument("--steps", type=int, default=96, metavar="N",
                        help="candidate steps per layer and mode (default %(default)s)")
    parser.add_argument("--calibration", metavar="FILE.npz",
                        help="calibration inputs: GPTQ rounding, bias correction and output-"
                             "error sensitivity. FILE.npz holds, per weight tensor name, its "
                             "layer's inputs (samples, columns; im2col columns for a "
                             "convolution), or 'x', inputs of --eval-model; 'builtin' takes "
                             "training inputs of --eval-model")
    parser.add_argument("--calibration-samples", type=int, default=512, metavar="N",
                        help="model inputs used for calibration (default %(default)s)")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="channel",
                        help="a tensor's error relative to each output channel's energy "
                             "(default), to the tensor's, or plain squared error")
    parser.add_argument("--max-relative-error", type=float, default=MAX_RELATIVE_ERROR,
                        metavar="E", help="no tensor coded with more error than E x its energy "
                                          "while the budget allows (default %(default)s; 1 "
                                          "allows zeroing a tensor)")
    parser.add_argument("--no-per-channel", action="store_true",
                        help="one step per tensor only (default: per output channel where it "
                             "pays)")
    add_params_arguments(parser)


# -- candidates ----------------------------------------------------------------------------------

#: candidate modes: one step for the whole tensor, or one per output channel (row)
PER_TENSOR, PER_CHANNEL = 0, 1
SCALE_BITS = 32   #: a float32 scale in the section header


@dataclass
class Candidates:
    """Every (mode, k, step) choice of one layer with its rate (bits) and distortion.

    Only the Pareto-optimal choices are kept: sorted by rate, each has strictly less distortion
    than every cheaper one.
    """

    half: np.ndarray        #: k of each candidate (levels = 2k+1)
    step: np.ndarray        #: the step (PER_TENSOR) or the multiplier of ``reference``
    rate: np.ndarray        #: bits: entropy x count + frequency table + extra scales
    distortion: np.ndarray  #: weighted sum of squared weight errors
    mode: np.ndarray = None  #: PER_TENSOR or PER_CHANNEL
    reference: np.ndarray = None  #: per-channel reference scale (rows' RMS), PER_CHANNEL
    energy: float = 0.0     #: the weighted distortion of coding every weight as zero

    def steps_of(self, index: int) -> np.ndarray:
        """The float32 step(s) the container stores for candidate ``index``."""
        if self.mode is not None and self.mode[index] == PER_CHANNEL:
            return (self.step[index] * self.reference).astype(np.float32)
        return np.array([self.step[index]], np.float32)

    def is_zero(self, index: int) -> bool:
        """Whether candidate ``index`` rounds every weight to zero."""
        return self.distortion[index] >= self.energy * (1 - 1e-9)


def _entropy_terms(counts):
    """``c * log2(c)`` per count: the entropy of a histogram of total ``n`` is
    ``n log2 n - sum(c log2 c)`` (:func:`sw.codec.rans.entropy_bits`), which this form lets the
    grid below take for every level count at once from cumulative sums."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, counts * np.log2(np.maximum(counts, 1)), 0.0)


def _grid_candidates(u, weight, steps, peak, scale_up, extra_bits):
    """Rate and weighted distortion of every (k, step) for values ``u`` (one step for all).

    ``weight`` is each value's distortion weight. The grid runs from steps fine enough to clip
    outliers (``min(peak / 127.5, rms / 64)``: 255 levels then span +-2 RMS) to a step so large
    that every value rounds to zero.
    """
    cap = MAX_HALF + 1
    halves = np.arange(1, MAX_HALF + 1)
    rms = float(np.sqrt(np.mean(u * u)))
    finest = min(peak / (MAX_HALF + 0.5), rms / 64) if rms > 0 else peak / (MAX_HALF + 0.5)
    out_h, out_s, out_r, out_d = [], [], [], []
    abs_u = np.abs(u)
    w_sq, w_abs = weight * u * u, weight * abs_u
    total_w, total_sq, total_abs = weight.sum(), w_sq.sum(), w_abs.sum()
    total = u.size
    for step in np.geomspace(finest, 2.5 * peak, steps):
        q = np.rint(u / step)
        a = np.minimum(np.abs(q), cap).astype(np.int64)
        signed = np.clip(q, -cap, cap).astype(np.int64) + cap
        count_abs = np.bincount(a, minlength=cap + 1).astype(np.float64)
        error_in = np.bincount(a, weights=weight * (u - q * step) ** 2, minlength=cap + 1)
        weight_abs = np.bincount(a, weights=weight, minlength=cap + 1)
        sum_abs = np.bincount(a, weights=w_abs, minlength=cap + 1)
        sum_sq = np.bincount(a, weights=w_sq, minlength=cap + 1)
        signed_counts = np.bincount(signed, minlength=2 * cap + 1).astype(np.float64)
        pos = signed_counts[cap + 1:]          # q = 1 .. cap
        neg = signed_counts[:cap][::-1]        # q = -1 .. -cap
        # distortion for every k: rounding error of |q| <= k, clipping error of |q| > k
        inner = np.cumsum(error_in)[halves]
        tail_w = total_w - np.cumsum(weight_abs)[halves]
        tail_abs = total_abs - np.cumsum(sum_abs)[halves]
        tail_sq = total_sq - np.cumsum(sum_sq)[halves]
        ks = halves * step
        distortion = inner + tail_sq - 2 * ks * tail_abs + ks * ks * tail_w
        # entropy for every k: symbols |q| < k as they are, the tails folded onto +-k
        inner_terms = _entropy_terms(signed_counts[cap]) + np.concatenate(
            [[0.0], np.cumsum(_entropy_terms(pos) + _entropy_terms(neg))])[halves - 1]
        pos_tail = pos.sum() - np.concatenate([[0.0], np.cumsum(pos)])[halves - 1]
        neg_tail = neg.sum() - np.concatenate([[0.0], np.cumsum(neg)])[halves - 1]
        bits = (total * math.log2(total) - inner_terms - _entropy_terms(pos_tail)
                - _entropy_terms(neg_tail))
        del count_abs
        out_h.append(halves)
        out_s.append(np.full(halves.shape, step))
        out_r.append(np.maximum(bits, 0) * scale_up + TABLE_BITS_PER_LEVEL * (2 * halves + 1)
                     + extra_bits)
        out_d.append(np.maximum(distortion, 0) * scale_up)
    return (np.concatenate(out_h), np.concatenate(out_s), np.concatenate(out_r),
            np.concatenate(out_d))


def _pareto(order_rate, distortion):
    """Indices (into the arrays) of the Pareto front: by rate, strictly falling distortion."""
    order = np.lexsort((distortion, order_rate))
    best = np.minimum.accumulate(distortion[order])
    keep = np.concatenate([[True], best[1:] < best[:-1]])
    return order[keep]


def layer_candidates(weights: np.ndarray, steps: int = 96, sample: int = 1 << 16,
                     seed: int = 0, row_weight=None, column_weight=None,
                     per_channel: bool = True) -> Candidates:
    """The rate-distortion candidates of one weight tensor (see the module docstring).

    Parameters
    ----------
    weights : ndarray
        The tensor; its first dimension is the output channel (row), the others are flattened
        into columns (a convolution as ``(out, in * kh * kw)``).
    steps : int
        Candidate steps per mode.
    sample : int
        Tensors of more weights are measured on a random sample of this size and scaled up:
        the entropy of 65,536 samples is within a few thousandths of a bit of the whole's, and
        ``compress_tensors`` measures the real file anyway.
    row_weight, column_weight : ndarray, optional
        Distortion weight of each row and each column; a weight's error counts ``row x column``
        times its square (default 1).
    per_channel : bool
        Also offer one step per row, each ``multiplier x`` the row's RMS, at 32 bits per extra
        step.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows = w.shape[0] if w.ndim >= 2 else 1
    w = w.reshape(rows, -1)
    columns = w.shape[1]
    n = w.size
    row_weight = np.ones(rows) if row_weight is None else np.asarray(row_weight, np.float64)
    column_weight = np.ones(columns) if column_weight is None else \
        np.asarray(column_weight, np.float64)
    flat = w.ravel()
    if n > sample:
        index = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    else:
        index = np.arange(n)
    values = flat[index]
    row_of, column_of = index // columns, index % columns
    weight = row_weight[row_of] * column_weight[column_of]
    scale_up = n / values.size
    energy = float((weight * values * values).sum() * scale_up)
    peak = float(np.abs(flat).max())
    zero = Candidates(np.array([1]), np.array([1.0]),
                      np.array([3.0 * TABLE_BITS_PER_LEVEL]), np.array([energy]),
                      np.array([PER_TENSOR]), None, energy)
    if peak == 0:
        # an all-zero tensor: 3 levels, every symbol the zero point, free
        return zero
    parts = [(*_grid_candidates(values, weight, steps, peak, scale_up, 0.0), PER_TENSOR)]
    reference = None
    if per_channel and rows > 1:
        reference = np.sqrt((w * w).mean(axis=1))
        reference = np.where(reference > 0, reference, 1.0)
        u = values / reference[row_of]
        parts.append((*_grid_candidates(u, weight * reference[row_of] ** 2, steps,
                                        float((np.abs(w).max(axis=1) / reference).max()),
                                        scale_up, SCALE_BITS * (rows - 1)), PER_CHANNEL))
    half = np.concatenate([p[0] for p in parts])
    step = np.concatenate([p[1] for p in parts])
    rate = np.concatenate([p[2] for p in parts])
    distortion = np.concatenate([p[3] for p in parts])
    mode = np.concatenate([np.full(p[0].shape, p[4]) for p in parts])
    # the all-zero choice is exact (no sampling noise): every weight's full energy
    half, step = np.append(half, 1), np.append(step, 4 * peak)
    rate = np.append(rate, 3.0 * TABLE_BITS_PER_LEVEL)
    distortion, mode = np.append(distortion, energy), np.append(mode, PER_TENSOR)
    keep = _pareto(rate, distortion)
    return Candidates(half[keep], step[keep], rate[keep], distortion[keep], mode[keep],
                      reference, energy)


def allocate(candidates: list, budget_bits: float, sensitivity=None) -> list:
    """Index of the chosen candidate of each layer: least weighted distortion within budget.

    See :func:`allocate_with_multiplier`, which also returns the Lagrange multiplier.
    """
    return allocate_with_multiplier(candidates, budget_bits, sensitivity)[0]


def allocate_with_multiplier(candidates: list, budget_bits: float, sensitivity=None):
    """``(choice, multiplier)``: least weighted distortion within budget, and its price of a bit.

    Parameters
    ----------
    candidates : list of Candidates
    budget_bits : float
        Bits available to all layers together.
    sensitivity : sequence of float, optional
        Weight of each layer's squared error (default 1).

    Raises ``ValueError`` when even the smallest choice of every layer does not fit. The
    multiplier is the bisected one (distortion per bit) before the greedy fill.
    """
    sensitivity = np.ones(len(candidates)) if sensitivity is None else np.asarray(sensitivity)
    smallest = sum(float(c.rate.min()) for c in candidates)
    if smallest > budget_bits:
        raise ValueError(f"the budget ({budget_bits / 8:.0f} bytes for the weights) is below the "
                         f"smallest possible size ({smallest / 8:.0f} bytes)")

    def choose(lam):
        return [int(np.argmin(s * c.distortion + lam * c.rate))
                for c, s in zip(candidates, sensitivity)]

    def rate_of(choice):
        return sum(float(c.rate[i]) for c, i in zip(candidates, choice))

    low, high = 1e-30, 1.0
    while rate_of(choose(high)) > budget_bits:   # high lambda: smaller files
        high *= 10
        if high > 1e30:
            break
    choice = choose(high)
    for _ in range(200):
        middle = math.sqrt(low * high)
        trial = choose(middle)
        if rate_of(trial) <= budget_bits:
            high, choice = middle, trial
        else:
            low = middle
        if high / low < 1 + 1e-9:
            break
    if rate_of(choice) > budget_bits:     # the bisection never found a fitting multiplier
        choice = [int(np.argmin(c.rate)) for c in candidates]
    # Fill what is left: the upgrade with the most distortion saved per bit, while one fits.
    left = budget_bits - rate_of(choice)
    while True:
        best = None
        for layer, (c, s) in enumerate(zip(candidates, sensitivity)):
            extra = c.rate - c.rate[choice[layer]]
            saved = s * (c.distortion[choice[layer]] - c.distortion)
            ok = (extra > 0) & (extra <= left) & (saved > 0)
            if ok.any():
                ratio = np.where(ok, saved / np.where(ok, extra, 1), -np.inf)
                index = int(np.argmax(ratio))
                if best is None or ratio[index] > best[0]:
                    best = (ratio[index], layer, index)
        if best is None:
            break
        _, layer, index = best
        left -= candidates[layer].rate[index] - candidates[layer].rate[choice[layer]]
        choice[layer] = index
    return choice, high


# -- compression ---------------------------------------------------------------------------------

def is_weight(name: str, array: np.ndarray) -> bool:
    """Coded by PTQ: floating-point tensors of two or more dimensions."""
    return array.dtype.kind == "f" and array.ndim >= 2 and array.size > 0


def bias_name_of(name: str, tensors: dict):
    """The bias beside weight ``name`` (``x.weight`` -> ``x.bias``), if it is a 1-D float."""
    if not name.endswith("weight"):
        return None
    bias = name[:-len("weight")] + "bias"
    array = tensors.get(bias)
    if array is None or array.dtype.kind != "f" or array.shape != tensors[name].shape[:1]:
        return None
    return bias


def check_finite(tensors: dict) -> None:
    """Refuse NaN or infinite weights, naming the tensors that hold them."""
    bad = [name for name, array in tensors.items()
           if array.dtype.kind == "f" and not np.isfinite(array).all()]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"NaN or infinite values in tensor(s) {', '.join(bad[:5])}{more}: "
                         f"a quantizer cannot code them")


def check_target(target_bpw: float) -> None:
    if not (isinstance(target_bpw, (int, float)) and math.isfinite(target_bpw)
            and target_bpw > 0):
        raise ValueError(f"--target-bpw must be positive and finite, not {target_bpw}")


#: how the data-free allocation weighs each tensor's squared error (``weighting=``)
WEIGHTINGS = ("channel", "tensor", "mse")


def output_energy(w2d: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Each row's ``w H w^T``: the energy of its output for inputs of second moment ``H``."""
    # a matrix product, not einsum's unoptimised triple loop (95 of 128 s on 27 M weights)
    return ((w2d @ hessian) * w2d).sum(axis=1)


def _rate_distortion(w2d, q2d, steps, half, hessian, weight_of_row, price) -> float:
    """``D + price x R`` of one rounding: the rows' weighted output error and the symbols'
    entropy in bits, the quantity the allocation minimises."""
    error = w2d - q2d * steps.reshape(-1, 1).astype(np.float64)
    counts = np.bincount((q2d + half).astype(np.int64).ravel())
    return float((output_energy(error, hessian) * weight_of_row).sum()) \
        + price * entropy_bits(counts)


def _row_weights(w2d: np.ndarray, weighting: str, hessian=None) -> np.ndarray:
    """Distortion weight of each row: the error relative to what the layer's output carries.

    ``tensor``: ``1 / ||W||^2`` (the output's noise-to-signal ratio for white inputs);
    ``channel``: every output channel's own ratio, averaged over channels (a channel of small
    weights, e.g. after a folded BatchNorm, counts as much as a large one); ``mse``: 1.
    With a ``hessian`` (the inputs' second moment), energies are those of the output,
    ``w H w^T``, instead of ``w w^T``.
    """
    rows = w2d.shape[0]
    if weighting == "mse":
        return np.ones(rows)
    if hessian is None:
        energy = (w2d * w2d).sum(axis=1)
    else:
        energy = output_energy(w2d, hessian)
    if weighting == "tensor":
        total = energy.sum()
        return np.full(rows, 1.0 / total if total > 0 else 0.0)
    live = energy > 0
    return np.where(live, 1.0 / (max(int(live.sum()), 1) * np.where(live, energy, 1)), 0.0)


#: a tensor coded with this much relative error is reported as erased (zero bits in effect)
ERASED_ERROR = 0.99
#: default ceiling of a tensor's relative (weighted) error: see cap_relative_error
MAX_RELATIVE_ERROR = 0.5


def cap_relative_error(candidates: list, budget_bits: float, cap: float):
    """Drop every candidate whose error exceeds ``cap`` x its tensor's energy, if that fits.

    Minimising a sum of per-tensor errors, however weighted, happily codes a large tensor at
    (nearly) zero bits when that saves more bits than its error costs: on the digits ResNet at
    1.2 bits/weight it zeroed the 147k-weight last convolution, and the network fell to chance
    (46 %); held to at most half its energy in error, it kept 90.7 %. The cap is relaxed (up
    to 1, where zeroing is allowed) only when the cheapest capped choices would take more than
    90 % of the budget. Returns ``(candidates, cap used)``.
    """
    for trial in (cap, 0.7, 0.9, 1.0):
        if trial < cap:
            continue
        capped = []
        for c in candidates:
            keep = c.distortion <= c.energy * trial
            if not keep.any() or trial >= 1.0:
                keep = np.ones(c.rate.shape, bool)
            capped.append(Candidates(c.half[keep], c.step[keep], c.rate[keep],
                                     c.distortion[keep], c.mode[keep], c.reference, c.energy))
        if sum(float(c.rate.min()) for c in capped) <= 0.9 * budget_bits or trial >= 1.0:
            return capped, trial
    return candidates, 1.0


@dataclass
class PTQResult:
    data: bytes
    rows: list           #: per layer: name, shape, levels, step(s), bits/weight, errors
    rates: dict          #: from sw.quant.train.file_rates
    budget_bits: float
    iterations: int
    zero_tensors: list   #: erased: every weight zero, or relative (output) error >= 0.99
    seconds: dict        #: time spent in candidates, allocation and coding
    error_cap: float = 1.0  #: the ceiling of relative error the allocation kept to


def compress_tensors(tensors: dict, target_bpw: float, params: CodecParams = CodecParams(),
                     budget: str = "model", bias_levels: int = 0, sensitivity: dict = None,
                     steps: int = 96, weighting: str = "channel", statistics: dict = None,
                     per_channel: bool = True, bias_correction: bool = True,
                     max_relative_error: float = MAX_RELATIVE_ERROR,
                     progress: bool = False, program_layers: list = None,
                     program_images=None) -> PTQResult:
    """Quantize and encode ``tensors`` (name -> array) to at most ``target_bpw`` bits per weight.

    Parameters
    ----------
    tensors : dict
        Name -> numpy array; floating-point tensors of two or more dimensions are the weights.
    target_bpw : float
        Ceiling of the file's bits per weight (``budget``: whole file or weights only); the
        file lands at most 0.1 % below it unless the candidates are too coarse.
    sensitivity : dict, optional
        Extra multiplier of a tensor's weighted error.
    weighting : {"channel", "tensor", "mse"}
        How a tensor's squared error is weighted (:func:`_row_weights`).
    statistics : dict, optional
        Name -> :class:`sw.quant.gptq.LayerStatistics` (calibration inputs): those tensors are
        weighted by their output error, rounded with GPTQ and their biases corrected.
    per_channel : bool
        Offer one step per output channel (chosen per tensor where it pays).
    max_relative_error : float
        No tensor may be coded with a larger weighted error relative to its energy while the
        budget allows (:func:`cap_relative_error`); 1 allows zeroing a tensor.
    program_layers, program_images : optional
        The network as :class:`sw.network.lower.Layer` s and calibration images (float NCHW): the
        file then carries its integer program (docs/INFERENCE.md), counted in the budget, with
        the coded sections in the order it consumes them. Its biases must be coded
        (``bias_levels``).
    """
    import time

    from sw.quant.train import file_rates
    check_target(target_bpw)
    if bias_levels and not (3 <= bias_levels <= 255 and bias_levels % 2):
        raise ValueError(f"--bias-levels must be odd, 3..255, not {bias_levels}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    check_finite(tensors)
    names = [name for name, array in tensors.items() if is_weight(name, array)]
    if not names:
        raise ValueError("the model has no floating-point tensor of two or more dimensions")
    weights = sum(tensors[name].size for name in names)
    sensitivity = sensitivity or {}
    statistics = statistics or {}
    unknown = (set(sensitivity) | set(statistics)) - set(names)
    if unknown:
        raise ValueError(f"sensitivity or calibration given for tensors that are not weights: "
                         f"{', '.join(sorted(unknown)[:3])}")
    timing = {}

    def other_tensor(name, array):
        if bias_levels and array.dtype.kind == "f" and array.ndim == 1 and array.size:
            return CodedTensor.symmetric(name, array, bias_levels)
        return RawTensor(name, array)

    other = {name: other_tensor(name, array) for name, array in tensors.items()
             if name not in names}
    # Everything but the weights' payload, tables and extra scales: the same file with every
    # weight tensor as a one-level section (no table, no payload) measures it exactly.
    placeholder = [CodedTensor(name, np.zeros(tensors[name].shape, np.uint8), 1, 0,
                               np.ones(1, np.float32)) if name in names else other[name]
                   for name in tensors]
    fixed_bits = 8 * len(write_container(placeholder, params))
    if program_layers is not None:
        if not bias_levels:
            raise ValueError("an integer program needs coded biases (bias_levels)")
        from sw.codec.container import program_section_size
        from sw.codec.program import HEADER_WORDS, OP_WORDS
        # at most one multiplier per output channel: the passes below measure the real file
        words = HEADER_WORDS + sum(
            OP_WORDS + (tensors[layer.weight].shape[0] if layer.weight else 0)
            for layer in program_layers)
        fixed_bits += 8 * program_section_size(words)
    if budget == "weights":
        fixed_bits -= 8 * sum(len(_section_bytes(t, params)) for t in other.values())
    budget_bits = target_bpw * weights - fixed_bits
    if budget_bits <= 0:
        raise ValueError(f"target {target_bpw} bits/weight is below the fixed cost of the file "
                         f"({fixed_bits / weights:.3f} bits/weight: headers and other tensors)")

    sensitivity_of = {name: float(sensitivity.get(name, 1.0)) for name in names}
    row_weights = {}
    for name in names:
        stats = statistics.get(name)
        w2d = tensors[name].reshape(len(tensors[name]), -1).astype(np.float64)
        row_weights[name] = _row_weights(w2d, weighting,
                                         None if stats is None else stats.hessian)

    def candidates_on(steps, cap):
        """Every tensor's candidates on ``steps`` steps per mode, held to the error cap."""
        started = time.perf_counter()
        candidates = []
        for name in names:
            stats = statistics.get(name)
            candidates.append(layer_candidates(
                tensors[name].reshape(len(tensors[name]), -1).astype(np.float64), steps,
                row_weight=row_weights[name],
                column_weight=None if stats is None else np.maximum(np.diag(stats.hessian), 0),
                per_channel=per_channel))
        timing["candidates"] = timing.get("candidates", 0.0) + time.perf_counter() - started
        return cap_relative_error(candidates, budget_bits, cap)

    candidates, error_cap = candidates_on(steps, max_relative_error)
    weights_of = [float(sensitivity.get(name, 1.0)) for name in names]

    factors = {}
    gptq_pays = {}          # name -> GPTQ's rounding (True) or round-to-nearest

    def quantized(name, c, index, multiplier):
        """``(CodedTensor, corrected bias or None)`` of one weight tensor."""
        half, steps_f32 = int(c.half[index]), c.steps_of(index)
        array = tensors[name]
        w2d = array.reshape(len(array), -1)
        stats = statistics.get(name)

        def nearest():
            return np.clip(np.rint(w2d.astype(np.float32) / steps_f32.reshape(-1, 1)),
                           -half, half)
        if stats is None or c.is_zero(index) or not gptq_pays.get(name, True):
            q = nearest()
        else:
            from sw.quant.gptq import gptq_factor, gptq_quantize
            if name not in factors:          # H is the same in every pass: factor it once
                factors[name] = gptq_factor(stats.hessian)
            # each weight's rounding also pays for its code length at the allocation's price
            # of a bit (in the units of the row's weighted output error)
            weight_of_row = row_weights[name] * sensitivity_of[name]
            price = np.divide(multiplier, weight_of_row, out=np.zeros_like(weight_of_row),
                              where=weight_of_row > 0)
            w64 = w2d.astype(np.float64)
            q = gptq_quantize(w64, stats.hessian, steps_f32, half, bit_price=price,
                              factor=factors[name])
            if name not in gptq_pays:
                # Decided once, on the first pass, for the whole search: switching between
                # passes makes the file jump across the window. At low rates GPTQ's rounding
                # can cost more than it saves (MNIST-1D at 1 bit/weight: 45 % with it in
                # every layer, 74 % with this choice).
                plain = nearest()
                gptq_pays[name] = _rate_distortion(w64, q, steps_f32, half, stats.hessian,
                                                   weight_of_row, multiplier) <= \
                    _rate_distortion(w64, plain, steps_f32, half, stats.hessian,
                                     weight_of_row, multiplier)
                q = q if gptq_pays[name] else plain
        q = q.reshape(array.shape)
        tensor = CodedTensor(name, (q + half).astype(np.uint8), 2 * half + 1, half, steps_f32)
        bias = None
        bias_name = bias_name_of(name, tensors)
        if stats is not None and bias_correction and bias_name:
            # the output's mean moved by (W - W_hat) E[x]: put it back into the bias
            error = (array.reshape(array.shape[0], -1).astype(np.float64)
                     - tensor.dequantize().reshape(array.shape[0], -1).astype(np.float64))
            bias = (tensors[bias_name] + error @ stats.mean).astype(tensors[bias_name].dtype)
        return tensor, (bias_name, bias)

    target_bits = target_bpw * weights
    rate_key = "bits_per_weight" if budget == "model" else "bits_per_weight_weights_only"
    timing["allocation"] = timing["coding"] = 0.0
    best = None
    passes = 0

    def code(goal, price_factor=1.0):
        """One pass: allocate ``goal`` bits, quantize, write and measure the file."""
        nonlocal best, passes
        started = time.perf_counter()
        choice, multiplier = allocate_with_multiplier(candidates, goal, weights_of)
        timing["allocation"] += time.perf_counter() - started
        started = time.perf_counter()
        coded, corrected = {}, dict(other)
        for name, c, index in zip(names, candidates, choice):
            coded[name], (bias_name, bias) = quantized(name, c, index,
                                                       multiplier * price_factor)
            if bias is not None:
                corrected[bias_name] = other_tensor(bias_name, bias)
        written = [coded[n] if n in coded else corrected[n] for n in tensors]
        program = None
        if program_layers is not None:
            from sw.network.lower import lower, order_tensors
            lowered = lower(program_layers, {t.name: t for t in written}, program_images)
            written, program = order_tensors(written, lowered.tensor_order), lowered.program
        data = write_container(written, params, program=program)
        timing["coding"] += time.perf_counter() - started
        measured_bits = file_rates(read_container(data))[rate_key] * weights
        passes += 1
        if progress:
            print(f"  pass {passes}: {measured_bits / weights:.5f} bits/weight "
                  f"(target {target_bpw})", file=sys.stderr)
        if measured_bits <= target_bits and (best is None or measured_bits > best[0]):
            best = (measured_bits, data, passes)
        return measured_bits

    def move_goal(goal, bits, aim):
        """The weights' share moved by what the file missed (None: nothing left to give)."""
        return goal + aim - bits if goal + aim - bits > 0 else None

    def move_price(log_price, bits, aim):
        """The price of a bit halved (a lower price rounds fewer weights to zero: a larger
        file) or doubled."""
        return log_price + (math.log(2) if bits < aim else -math.log(2))

    # The weights' share of the budget first. Where the file jumps across the window:
    # calibrated, the allocation's multiplier (GPTQ's price of a bit) stepped from one value
    # to the next, so the price is searched on the largest share that fitted; data-free, the
    # next step of a large tensor costs more bits than the window holds (MNIST-1D at 7.26
    # bits/weight: 4,096 bits, a 709-bit window), so the steps are made finer.
    fitted = _search(code, budget_bits, move_goal, target_bits,
                     resolution=1e-3 * target_bits, passes=MAX_PASSES)
    if fitted is not None and not _landed(best[0], target_bits):
        goal, bits = fitted
        if statistics:
            _search(lambda log_price: code(goal, math.exp(-log_price)), 0.0, move_price,
                    target_bits, resolution=1e-3, passes=MAX_PASSES - passes, first=bits)
        else:
            candidates, error_cap = candidates_on(REFINED_STEPS * steps, error_cap)
            _search(code, goal, move_goal, target_bits, resolution=1e-3 * target_bits,
                    passes=MAX_PASSES - passes)
    if best is None:
        raise ValueError(f"could not fit the file under {target_bpw} bits/weight (the "
                         f"smallest candidates still exceed it)")
    _, data, iteration = best
    container = read_container(data)
    rates = file_rates(container)
    rows, zero_tensors = [], []
    by_name = {info.name: info for info in container.sections}
    for name in names:
        tensor = container[name]
        original = tensors[name].astype(np.float64)
        error = tensor.dequantize().astype(np.float64) - original
        energy = float((original ** 2).sum())
        zero_fraction = float((tensor.symbols == tensor.zero_point).mean())
        row = {"name": name, "shape": list(tensor.shape), "levels": tensor.levels,
               "per_channel": len(tensor.scale) > 1,
               "step": float(np.median(tensor.scale)),
               "step_range": [float(tensor.scale.min()), float(tensor.scale.max())],
               "weights": int(tensor.symbols.size),
               "bits_per_weight": 8 * by_name[name].size / tensor.symbols.size,
               "mse": float((error ** 2).mean()),
               "relative_error": float((error ** 2).sum() / energy) if energy else 0.0,
               "zero_fraction": zero_fraction}
        stats = statistics.get(name)
        if stats is not None:
            row["rounding"] = "GPTQ" if gptq_pays.get(name, False) else "nearest"
            e2d, w2d = error.reshape(len(error), -1), original.reshape(len(original), -1)
            signal = float(output_energy(w2d, stats.hessian).sum())
            row["output_error"] = float(output_energy(e2d, stats.hessian).sum()
                                        / signal) if signal > 0 else 0.0
        # calibrated, the output is what is lost: GPTQ moves weights that its inputs never
        # excite far from their values (2,048-input layers on 512 samples: up to 3.5 x the
        # energy in weight error, at most 6.1 % at the output)
        lost = row.get("output_error", row["relative_error"])
        if energy > 0 and (zero_fraction == 1.0 or lost >= ERASED_ERROR):
            zero_tensors.append(name)
        rows.append(row)
    return PTQResult(data, rows, rates, budget_bits, iteration, zero_tensors, timing, error_cap)


#: passes of allocate, code and measure before compress settles for the largest file that fitted
MAX_PASSES = 20
#: how many times finer the candidate steps are made when the file jumps across the window
REFINED_STEPS = 4


def _landed(bits, target_bits):
    """The file is in the window: at most the target and at most 0.1 % under it."""
    return target_bits * (1 - 1e-3) <= bits <= target_bits


def _search(measure, start, unbracketed, target_bits, resolution, passes, first=None):
    """Search an ``x`` whose file (``measure(x)`` bits, growing with ``x``) lands in the window.

    The window is the 0.1 % under ``target_bits``. A file's size grows with ``x`` but not in
    proportion: GPTQ's entropy-constrained rounding writes files far below the allocation's
    prediction (digits at 1.2 bits/weight: 42 % of it), and the allocation moves in jumps. So
    ``x`` is searched, not corrected by a fixed gain: ``unbracketed(x, bits, aim)`` moves it
    until an ``x`` on each side of the target is known, then it is interpolated between the
    two nearest (kept off their ends), bisecting when two passes in a row fell on one side.

    ``first`` is the size at ``start`` when that was measured already. Stops when a file
    lands, after ``passes`` measurements, when ``unbracketed`` gives None, or when the two
    sides are less than ``resolution`` apart (the file jumps across the window there).
    Returns ``(x, bits)`` of the largest ``x`` whose file fitted, or None.
    """
    aim = target_bits * (1 - 5e-4)          # the middle of the window
    trials = [] if first is None else [(start, first)]

    def fitted():
        return max((t for t in trials if t[1] <= target_bits), default=None)

    def next_x():
        x, bits = trials[-1]
        if _landed(bits, target_bits):
            return None
        overshot = min((t for t in trials if t[1] > target_bits), default=None)
        if fitted() is None or overshot is None:
            return unbracketed(x, bits, aim)
        (low, low_bits), (high, high_bits) = fitted(), overshot
        if high - low < resolution:
            return None
        one_side = len(trials) >= 2 and (trials[-2][1] <= target_bits) == (bits <= target_bits)
        t = 0.5 if one_side or high_bits <= low_bits else (aim - low_bits) / (high_bits - low_bits)
        return low + (high - low) * min(max(t, 0.1), 0.9)

    x = start if first is None else next_x()
    for _ in range(passes):
        if x is None:
            break
        trials.append((x, measure(x)))
        x = next_x()
    return fitted()


def _section_bytes(tensor, params):
    """The bytes of one section (a one-section container without its file header)."""
    return write_container([tensor], params)[file_header_bytes(params.state_count):]


def print_table(result: PTQResult, file=sys.stdout) -> None:
    """Per tensor: levels, step(s), bits/weight, zeros and relative error; then the totals."""
    calibrated = any("output_error" in row for row in result.rows)
    print(f"{'tensor':<28} {'shape':<16} {'levels':>6} {'step(s)':>21} {'bits/w':>7} "
          f"{'zeros':>6} {'rel.err':>8}" + (f" {'out.err':>8} rounding" if calibrated else ""),
          file=file)
    for row in result.rows:
        shape = "x".join(str(d) for d in row["shape"])
        low, high = row["step_range"]
        steps = f"{low:.3g}..{high:.3g} /ch" if row["per_channel"] else f"{row['step']:.4g}"
        line = (f"{row['name'][-28:]:<28} {shape:<16} {row['levels']:>6} {steps:>21} "
                f"{row['bits_per_weight']:>7.3f} {100 * row['zero_fraction']:>5.1f}% "
                f"{row['relative_error']:>8.3g}")
        if calibrated:
            line += f" {row['output_error']:>8.3g} {row['rounding']}" if "output_error" in row \
                else f" {'':>8}"
        print(line, file=file)
    rates = result.rates
    print(f"{'total':<28} {rates['weights']:<16} {'':>6} {'':>21} "
          f"{rates['bits_per_weight_weights_only']:>7.3f}", file=file)
    print(f"{rates['bytes']} bytes: {rates['bits_per_weight']:.4f} bits/weight whole model, "
          f"{rates['bits_per_weight_weights_only']:.4f} weights only", file=file)
    if result.zero_tensors:
        print(f"coded at zero bits (all weights zero, or >= {ERASED_ERROR:.0%} of their energy "
              f"lost; calibrated: of their output's): {', '.join(result.zero_tensors)}",
              file=file)
    else:
        print("no tensor coded at zero bits", file=file)


def fisher_sensitivity(model_name: str, state: dict, batches: int = 8) -> dict:
    """Mean squared gradient of the training loss per weight tensor (a diagonal Fisher)."""
    import torch

    from sw.data import digits
    model = _load_model(model_name, state)
    x, y, _, _ = digits()
    model.eval()  # BatchNorm statistics as trained; gradients still flow
    totals = {name: 0.0 for name, _ in model.named_parameters()}
    for chunk_x, chunk_y in zip(x.chunk(batches), y.chunk(batches)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(chunk_x), chunk_y).backward()
        for name, parameter in model.named_parameters():
            totals[name] += float((parameter.grad ** 2).mean()) / batches
    return {name: value for name, value in totals.items() if name in state
            and is_weight(name, state[name])}


def _load_model(model_name, state):
    """The model of ``sw.quant.models`` whose state dict matches ``state`` (with or without BN)."""
    import torch

    from sw.quant.models import build_model, fold_batchnorm
    model = build_model(model_name)
    if set(model.state_dict()) != set(state):
        model = fold_batchnorm(model)
        if set(model.state_dict()) != set(state):
            raise ValueError(f"MODEL does not hold the tensors of {model_name} (with or without "
                             f"BatchNorm)")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model


#: the models of sw.quant.models whose data ship with the project: --eval-model and 'builtin'
EVAL_MODELS = ("digits", "digits-tiny", "mnist1d")
def program_of(model_name, tensors) -> tuple:
    """``(layers, None)`` to lower ``tensors`` of ``model_name`` to an integer program, or
    ``(None, why not)``: the network has a part the program lacks, or ``tensors`` still hold
    BatchNorm (fold it with --fold)."""
    from sw.network.lower import resnet_layers
    from sw.quant.models import build_model, fold_batchnorm
    try:
        layers = resnet_layers(fold_batchnorm(build_model(model_name)))
    except ValueError as error:
        return None, f"{model_name} does not lower to docs/INFERENCE.md's operations ({error})"
    names = {name for layer in layers for name in (layer.weight, layer.bias) if name}
    missing = sorted(names - set(tensors))
    if missing:
        return None, (f"MODEL lacks {missing[0]} of the folded {model_name} (BatchNorm not "
                      f"folded? use --fold)")
    return layers, None


def model_data(model_name):
    """``(x_train, y_train, x_test, y_test)`` of a model of :data:`EVAL_MODELS`."""
    from sw.data import digits, mnist1d
    return mnist1d() if model_name == "mnist1d" else digits()


def accuracy_of(model_name, state) -> float:
    from sw.quant.train import TensorData, evaluate
    _, _, x, y = model_data(model_name)
    return evaluate(_load_model(model_name, state), TensorData(x, y))


def calibration_statistics(args, tensors) -> dict:
    """Layer input statistics from ``--calibration`` (a file or 'builtin')."""
    import torch

    from sw.quant.gptq import collect_statistics, statistics_from_arrays
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration-samples must be positive, not "
                         f"{args.calibration_samples}")
    if args.calibration == "builtin":
        if not args.eval_model:
            raise ValueError("--calibration builtin needs --eval-model (whose training inputs "
                             "it takes)")
        inputs = model_data(args.eval_model)[0][:args.calibration_samples]
    else:
        from sw.io.tensors import load_tensors
        arrays = load_tensors(args.calibration)
        if "x" not in arrays:
            return statistics_from_arrays(arrays, tensors)
        if not args.eval_model:
            raise ValueError("--calibration: 'x' holds model inputs, which need --eval-model")
        inputs = torch.from_numpy(np.asarray(arrays["x"], np.float32))[:args.calibration_samples]
    model = _load_model(args.eval_model, tensors)
    try:
        statistics = collect_statistics(model, inputs)
    except RuntimeError as error:
        raise ValueError(f"--calibration: the inputs do not fit {args.eval_model} "
                         f"({str(error).splitlines()[0]})") from None
    return {name: s for name, s in statistics.items() if name in tensors
            and is_weight(name, tensors[name])}


def run(args) -> int:
    from sw.io.tensors import load_tensors
    from sw.quant.qat import state_dict_from_container
    check_target(args.target_bpw)
    if args.eval_model and args.eval_model not in EVAL_MODELS:
        raise ValueError(f"--eval-model: only {', '.join(EVAL_MODELS)} have data here")
    tensors = load_tensors(args.model)
    check_finite(tensors)
    if args.fold:
        if not args.eval_model:
            raise ValueError("--fold needs --eval-model (the architecture to fold)")
        from sw.quant.models import fold_batchnorm
        model = _load_model(args.eval_model, tensors)
        if not any(name.endswith("running_var") for name in tensors):
            raise ValueError("--fold: MODEL has no BatchNorm to fold")
        tensors = {k: v.detach().numpy() for k, v in fold_batchnorm(model).state_dict().items()}
    sensitivity = None
    if args.sensitivity == "fisher":
        if not args.eval_model:
            raise ValueError("--sensitivity fisher needs --eval-model")
        sensitivity = fisher_sensitivity(args.eval_model, tensors)
    elif args.sensitivity:
        path = Path(args.sensitivity)
        if not path.is_file():
            raise FileNotFoundError(2, "no such file", str(path))
        try:
            sensitivity = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a JSON object of numbers ({error})") from None
    statistics = calibration_statistics(args, tensors) if args.calibration else None
    layers, images, bias_levels = None, None, args.bias_levels
    if args.eval_model:
        layers, why_not = program_of(args.eval_model, tensors)
        if layers is None:
            print(f"no integer program: {why_not}", file=sys.stderr)
        else:
            images = model_data(args.eval_model)[0].numpy()
            # the engine adds integer biases: code them as QAT does unless told otherwise
            from sw.network.lower import BIAS_LEVELS
            bias_levels = bias_levels or BIAS_LEVELS
    result = compress_tensors(tensors, args.target_bpw, params_from(args), args.budget,
                              bias_levels, sensitivity, args.steps, args.weighting,
                              statistics, not args.no_per_channel,
                              max_relative_error=args.max_relative_error,
                              program_layers=layers, program_images=images)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_bytes(result.data)
    print_table(result)
    report = {"model": str(args.model), "target_bpw": args.target_bpw, "budget": args.budget,
              **result.rates, "layers": result.rows, "zero_tensors": result.zero_tensors,
              "calibrated": bool(statistics), "error_cap": result.error_cap,
              "seconds": result.seconds, "container": str(args.output)}
    if args.eval_model:
        decoded = {k: v.numpy() for k, v in
                   state_dict_from_container(read_container(result.data)).items()}
        report["float_accuracy"] = accuracy_of(args.eval_model, tensors)
        report["accuracy"] = report["accuracy_float"] = accuracy_of(args.eval_model, decoded)
        print(f"top-1: float {report['float_accuracy']:.2f} %, decoded from {args.output} "
              f"{report['accuracy']:.2f} %")
        container = read_container(result.data)
        if container.program is not None:
            from sw.network.engine import BoundNetwork, infer
            _, _, x_test, y_test = model_data(args.eval_model)
            predictions = infer(BoundNetwork.from_container(container), x_test.numpy())
            report["accuracy_int"] = 100.0 * float(
                (predictions.predictions == y_test.numpy()).mean())
            report["program_bytes"] = container.program_section.size
            print(f"integer program ({len(container.program.ops)} operations, "
                  f"{container.program_section.size} bytes): {report['accuracy_int']:.2f} % "
                  f"top-1")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    return 0
