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
3. the container is written and measured; if the real file misses the budget (the coder is
   within 0.1 % of the entropy, so it rarely does) the budget is corrected and step 2 rerun.

The budget is ``target x weights`` bits minus everything that does not depend on the choice:
file header, section headers, other tensors (stored raw, or coded with ``--bias-levels``).
"""

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .container import CodedTensor, RawTensor, read_container, write_container
from .params import CodecParams


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
                        help="a model of sw.models (digits, digits-tiny) to load MODEL into and "
                             "measure float and decoded top-1 accuracy on its test set")
    parser.add_argument("--fold", action="store_true",
                        help="MODEL is a model of --eval-model with BatchNorm: fold every "
                             "BatchNorm into its convolution first (much better than coding "
                             "the raw BatchNorm vectors)")
    parser.add_argument("--steps", type=int, default=64, metavar="N",
                        help="candidate steps per layer (default %(default)s)")
    from .commands import add_params_arguments
    add_params_arguments(parser)


# -- candidates ------------------------------------------------------------------------------------

@dataclass
class Candidates:
    """Every (k, step) choice of one layer with its rate (bits) and distortion (squared error)."""

    half: np.ndarray        #: k of each candidate (levels = 2k+1)
    step: np.ndarray
    rate: np.ndarray        #: bits: entropy x count + frequency table + scale
    distortion: np.ndarray  #: sum of squared weight errors


def _entropy_terms(counts):
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, counts * np.log2(np.maximum(counts, 1)), 0.0)


def layer_candidates(weights: np.ndarray, steps: int = 64, sample: int = 1 << 18,
                     seed: int = 0) -> Candidates:
    """The rate-distortion candidates of one weight tensor (see the module docstring).

    Layers of more than ``sample`` weights are measured on a random sample of that size and
    scaled up: the entropy of a quarter-million samples is within a fraction of a percent.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    n = w.size
    if n > sample:
        w = np.random.default_rng(seed).choice(w, sample, replace=False)
    scale_up = n / w.size
    peak = float(np.abs(w).max())
    if peak == 0:
        # an all-zero tensor: 3 levels, every symbol the zero point, free
        return Candidates(np.array([1]), np.array([1.0]), np.array([3.0 * TABLE_BITS_PER_LEVEL]),
                          np.array([0.0]))
    cap = MAX_HALF + 1
    halves = np.arange(1, MAX_HALF + 1)
    out_h, out_s, out_r, out_d = [], [], [], []
    # From 127 levels spanning the largest weight to a step so large that all round to zero.
    for step in np.geomspace(peak / (MAX_HALF + 0.5), 2.5 * peak, steps):
        q = np.rint(w / step)
        a = np.minimum(np.abs(q), cap).astype(np.int64)
        signed = np.clip(q, -cap, cap).astype(np.int64) + cap
        count_abs = np.bincount(a, minlength=cap + 1).astype(np.float64)
        error_in = np.bincount(a, weights=(w - q * step) ** 2, minlength=cap + 1)
        sum_abs = np.bincount(a, weights=np.abs(w), minlength=cap + 1)
        sum_sq = np.bincount(a, weights=w * w, minlength=cap + 1)
        signed_counts = np.bincount(signed, minlength=2 * cap + 1).astype(np.float64)
        pos = signed_counts[cap + 1:]          # q = 1 .. cap
        neg = signed_counts[:cap][::-1]        # q = -1 .. -cap
        # distortion for every k: rounding error of |q| <= k, clipping error of |q| > k
        inner = np.cumsum(error_in)[halves]
        tail_n = count_abs.sum() - np.cumsum(count_abs)[halves]
        tail_abs = sum_abs.sum() - np.cumsum(sum_abs)[halves]
        tail_sq = sum_sq.sum() - np.cumsum(sum_sq)[halves]
        ks = halves * step
        distortion = inner + tail_sq - 2 * ks * tail_abs + ks * ks * tail_n
        # entropy for every k: symbols |q| < k as they are, the tails folded onto +-k
        inner_terms = _entropy_terms(signed_counts[cap]) + np.concatenate(
            [[0.0], np.cumsum(_entropy_terms(pos) + _entropy_terms(neg))])[halves - 1]
        pos_tail = pos.sum() - np.concatenate([[0.0], np.cumsum(pos)])[halves - 1]
        neg_tail = neg.sum() - np.concatenate([[0.0], np.cumsum(neg)])[halves - 1]
        total = w.size
        bits = (total * math.log2(total) - inner_terms - _entropy_terms(pos_tail)
                - _entropy_terms(neg_tail))
        out_h.append(halves)
        out_s.append(np.full(halves.shape, step))
        out_r.append(np.maximum(bits, 0) * scale_up + TABLE_BITS_PER_LEVEL * (2 * halves + 1))
        out_d.append(np.maximum(distortion, 0) * scale_up)
    return Candidates(np.concatenate(out_h), np.concatenate(out_s), np.concatenate(out_r),
                      np.concatenate(out_d))


def allocate(candidates: list, budget_bits: float, sensitivity=None) -> list:
    """Index of the chosen candidate of each layer: least weighted distortion within budget.

    Parameters
    ----------
    candidates : list of Candidates
    budget_bits : float
        Bits available to all layers together.
    sensitivity : sequence of float, optional
        Weight of each layer's squared error (default 1).

    Raises ``ValueError`` when even the smallest choice of every layer does not fit.
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
    return choice


# -- compression -------------------------------------------------------------------------------------

def is_weight(name: str, array: np.ndarray) -> bool:
    """Coded by PTQ: floating-point tensors of two or more dimensions."""
    return array.dtype.kind == "f" and array.ndim >= 2 and array.size > 0


def _bias_tensor(name, array, levels):
    half = levels // 2
    peak = float(np.abs(array).max())
    scale = np.float32(peak / half if peak > 0 else 1.0)
    q = np.clip(np.rint(array.astype(np.float32) / scale), -half, half).astype(np.int64)
    return CodedTensor(name, (q + half).astype(np.uint8), levels, half, np.array([scale]))


@dataclass
class PTQResult:
    data: bytes
    rows: list           #: per layer: name, shape, levels, step, bits/weight, mse
    rates: dict          #: from sw.train.file_rates
    budget_bits: float
    iterations: int


def compress_tensors(tensors: dict, target_bpw: float, params: CodecParams = CodecParams(),
                     budget: str = "model", bias_levels: int = 0, sensitivity: dict = None,
                     steps: int = 64) -> PTQResult:
    """Quantize and encode ``tensors`` (name -> array) to ``target_bpw`` bits per weight."""
    from .train import file_rates
    if target_bpw <= 0:
        raise ValueError(f"--target-bpw must be positive, not {target_bpw}")
    if bias_levels and not (3 <= bias_levels <= 255 and bias_levels % 2):
        raise ValueError(f"--bias-levels must be odd, 3..255, not {bias_levels}")
    names = [name for name, array in tensors.items() if is_weight(name, array)]
    if not names:
        raise ValueError("the model has no floating-point tensor of two or more dimensions")
    weights = sum(tensors[name].size for name in names)
    sensitivity = sensitivity or {}
    unknown = set(sensitivity) - set(names)
    if unknown:
        raise ValueError(f"sensitivity given for tensors that are not weights: "
                         f"{', '.join(sorted(unknown)[:3])}")

    def others():
        out = {}
        for name, array in tensors.items():
            if name in names:
                continue
            if bias_levels and array.dtype.kind == "f" and array.ndim == 1 and array.size:
                out[name] = _bias_tensor(name, array, bias_levels)
            else:
                out[name] = RawTensor(name, array)
        return out

    other = others()
    # Everything but the weights' payload and tables: the same file with every weight tensor
    # as a one-level section (no table, no payload) measures it exactly.
    placeholder = [CodedTensor(name, np.zeros(tensors[name].shape, np.uint8), 1, 0,
                               np.ones(1, np.float32)) if name in names else other[name]
                   for name in tensors]
    fixed = write_container(placeholder, params)
    fixed_bits = 8 * len(fixed)
    if budget == "weights":
        fixed_bits -= 8 * sum(len(_section_bytes(t, params)) for t in other.values())
    budget_bits = target_bpw * weights - fixed_bits
    if budget_bits <= 0:
        raise ValueError(f"target {target_bpw} bits/weight is below the fixed cost of the file "
                         f"({fixed_bits / weights:.3f} bits/weight: headers and other tensors)")

    candidates = [layer_candidates(tensors[name], steps) for name in names]
    weights_of = [float(sensitivity.get(name, 1.0)) for name in names]
    goal = budget_bits
    for iteration in range(1, 5):
        choice = allocate(candidates, goal, weights_of)
        coded = {}
        for name, c, index in zip(names, candidates, choice):
            half, step = int(c.half[index]), np.float32(c.step[index])
            q = np.clip(np.rint(tensors[name].astype(np.float32) / step), -half, half)
            coded[name] = CodedTensor(name, (q + half).astype(np.uint8), 2 * half + 1, half,
                                      np.array([step]))
        data = write_container([coded[n] if n in coded else other[n] for n in tensors], params)
        container = read_container(data)
        rates = file_rates(container)
        measured = rates["bits_per_weight" if budget == "model"
                         else "bits_per_weight_weights_only"]
        if measured <= target_bpw * 1.002 or iteration == 4:
            break
        # the real file is a little over: take the excess off the weights' share and redo
        goal -= (measured - target_bpw * 0.999) * weights
    rows = []
    by_name = {info.name: info for info in container.sections}
    for name in names:
        tensor = coded[name]
        error = tensor.dequantize().astype(np.float64) - tensors[name].astype(np.float64)
        rows.append({"name": name, "shape": list(tensor.shape), "levels": tensor.levels,
                     "step": float(tensor.scale[0]), "weights": int(tensor.symbols.size),
                     "bits_per_weight": 8 * by_name[name].size / tensor.symbols.size,
                     "mse": float((error ** 2).mean()),
                     "zero_fraction": float((tensor.symbols == tensor.zero_point).mean())})
    return PTQResult(data, rows, rates, budget_bits, iteration)


def _section_bytes(tensor, params):
    """The bytes of one section (a one-section container without its file header)."""
    return write_container([tensor], params)[20 + 4 * params.state_count:]


def print_table(result: PTQResult, file=sys.stdout) -> None:
    print(f"{'tensor':<28} {'shape':<16} {'levels':>6} {'step':>10} {'bits/w':>7} {'zeros':>6} "
          f"{'MSE':>10}", file=file)
    for row in result.rows:
        shape = "x".join(str(d) for d in row["shape"])
        print(f"{row['name'][:28]:<28} {shape:<16} {row['levels']:>6} {row['step']:>10.4g} "
              f"{row['bits_per_weight']:>7.3f} {100 * row['zero_fraction']:>5.1f}% "
              f"{row['mse']:>10.3g}", file=file)
    total_error = sum(r["mse"] * r["weights"] for r in result.rows)
    rates = result.rates
    print(f"{'total':<28} {rates['weights']:<16} {'':>6} {'':>10} "
          f"{rates['bits_per_weight_weights_only']:>7.3f} {'':>6} "
          f"{total_error / rates['weights']:>10.3g}", file=file)
    print(f"{rates['bytes']} bytes: {rates['bits_per_weight']:.4f} bits/weight whole model, "
          f"{rates['bits_per_weight_weights_only']:.4f} weights only", file=file)


def fisher_sensitivity(model_name: str, state: dict, batches: int = 8) -> dict:
    """Mean squared gradient of the training loss per weight tensor (a diagonal Fisher)."""
    import torch
    from .data import digits
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
    """The model of ``sw.models`` whose state dict matches ``state`` (with or without BN)."""
    import torch
    from .models import build_model, fold_batchnorm
    model = build_model(model_name)
    if set(model.state_dict()) != set(state):
        model = fold_batchnorm(model)
        if set(model.state_dict()) != set(state):
            raise ValueError(f"MODEL does not hold the tensors of {model_name} (with or without "
                             f"BatchNorm)")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model


def accuracy_of(model_name, state) -> float:
    from .data import digits
    from .train import TensorData, evaluate
    _, _, x, y = digits()
    return evaluate(_load_model(model_name, state), TensorData(x, y))


def run(args) -> int:
    from .commands import params_from
    from .quant import state_dict_from_container
    from .tensorio import load_tensors
    if args.target_bpw <= 0:
        raise ValueError(f"--target-bpw must be positive, not {args.target_bpw}")
    if args.eval_model and not args.eval_model.startswith("digits"):
        raise ValueError("--eval-model: only the digits models have data here")
    tensors = load_tensors(args.model)
    if args.fold:
        if not args.eval_model:
            raise ValueError("--fold needs --eval-model (the architecture to fold)")
        from .models import fold_batchnorm
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
    result = compress_tensors(tensors, args.target_bpw, params_from(args), args.budget,
                              args.bias_levels, sensitivity, args.steps)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_bytes(result.data)
    print_table(result)
    report = {"model": str(args.model), "target_bpw": args.target_bpw, "budget": args.budget,
              **result.rates, "layers": result.rows, "container": str(args.output)}
    if args.eval_model:
        decoded = {k: v.numpy() for k, v in
                   state_dict_from_container(read_container(result.data)).items()}
        report["float_accuracy"] = accuracy_of(args.eval_model, tensors)
        report["accuracy"] = accuracy_of(args.eval_model, decoded)
        print(f"top-1: float {report['float_accuracy']:.2f} %, decoded from {args.output} "
              f"{report['accuracy']:.2f} %")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    return 0
