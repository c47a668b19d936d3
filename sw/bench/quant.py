"""``python -m sw.bench quant``: rate-accuracy curve of the digits ResNet, PTQ beside QAT.

One float baseline is trained (or loaded); then for every target rate the folded float model is
compressed post-training (:mod:`sw.quant.compress`) and, separately, trained
quantization-aware to the same target (:mod:`sw.quant.train`). Every accuracy is that of the
weights decoded from the written container, and every rate is that of the container file
(whole model, headers included).
Writes ``results.json``, ``table.md`` and ``curve.png`` to ``--out``.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sw.codec.container import CodedTensor, RawTensor, write_container
from sw.data import digits
from sw.quant import compress, qat
from sw.quant.models import build_model, fold_batchnorm, weight_count
from sw.quant.train import (
    Dist,
    TensorData,
    evaluate,
    file_rates,
    load_decoded,
    train_float,
    train_qat,
)

TARGETS = (0.5, 0.8, 1.2, 2.0, 4.0)


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m sw.bench quant", description=__doc__)
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS),
                        metavar="B", help="bits per weight (default %(default)s)")
    parser.add_argument("--out", default="build/bench/quant", help="output directory")
    parser.add_argument("--baseline", help="float digits model to load instead of training")
    parser.add_argument("--epochs", type=int, default=30, help="float epochs")
    parser.add_argument("--qat-epochs", type=int, default=40, help="QAT epochs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-qat", action="store_true", help="PTQ only (seconds, not minutes)")
    parser.add_argument("--model", choices=("digits", "mnist1d", "transformer"),
                        default="digits",
                        help="digits ResNet (default), the MNIST-1D CNN with every method, or "
                             "compress's time and memory on a 27 M-weight synthetic transformer")
    parser.add_argument("--qat-targets", type=float, nargs="+", metavar="B",
                        help="QAT budgets on MNIST-1D (default 0.25 0.5 1 2)")
    args = parser.parse_args(argv)
    if args.model == "mnist1d":
        # MNIST-1D defaults: 40 float epochs, 20 QAT epochs
        args.epochs = 40 if args.epochs == 30 else args.epochs
        args.qat_epochs = 20 if args.qat_epochs == 40 else args.qat_epochs
    return args


def main(argv) -> int:
    args = parse(argv)
    if args.model == "transformer":
        if args.targets == list(TARGETS):
            args.targets = [1.0, 2.0]
        return main_transformer(args)
    if args.model == "mnist1d":
        if args.out == "build/bench/quant":
            args.out = "build/bench/quant-mnist1d"
        return main_mnist1d(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dist = Dist(False)
    torch.set_num_threads(1)  # small layers: one thread beats two that contend (see sw.quant.train)
    x_train, y_train, x_test, y_test = digits()
    train_set, test_set = TensorData(x_train, y_train, augment=True), TensorData(x_test, y_test)

    torch.manual_seed(args.seed)
    model = build_model("digits", args.seed)
    started = time.perf_counter()
    if args.baseline:
        model.load_state_dict(torch.load(args.baseline, map_location="cpu", weights_only=True))
    else:
        train_float(model, train_set, args.epochs, 3e-3, 64, args.seed, dist)
    float_seconds = time.perf_counter() - started
    float_accuracy = evaluate(model, test_set)
    folded = fold_batchnorm(model)
    state = {k: v.detach().numpy() for k, v in folded.state_dict().items()}
    weights = weight_count(folded)
    print(f"float digits ResNet: {float_accuracy:.2f} % top-1, {weights} weights, "
          f"{float_seconds:.0f} s")

    from sw.quant.gptq import collect_statistics
    statistics = collect_statistics(folded, x_train[:512])
    results = {"float_accuracy": float_accuracy, "weights": weights, "float_seconds":
               float_seconds, "ptq": [], "qat": []}
    for target in args.targets:
        started = time.perf_counter()
        try:
            ptq = compress.compress_tensors(state, target)
        except ValueError as error:     # a target below the file's fixed cost
            print(f"PTQ {target}: {error}")
            continue
        decoded, container = load_decoded("digits", ptq.data)
        row = {"target_bpw": target, "accuracy": evaluate(decoded, test_set),
               **file_rates(container), "seconds": time.perf_counter() - started,
               "zero_tensors": ptq.zero_tensors}
        started = time.perf_counter()
        calibrated = compress.compress_tensors(state, target, statistics=statistics)
        decoded, container = load_decoded("digits", calibrated.data)
        row["calibrated"] = {"accuracy": evaluate(decoded, test_set), **file_rates(container),
                             "seconds": time.perf_counter() - started}
        results["ptq"].append(row)
        print(f"PTQ {target:>4}: data-free {row['bits_per_weight']:.3f} bits/weight, "
              f"{row['accuracy']:.2f} %; calibrated "
              f"{row['calibrated']['bits_per_weight']:.3f} bits/weight, "
              f"{row['calibrated']['accuracy']:.2f} %")
        if args.no_qat:
            continue
        started = time.perf_counter()
        torch.manual_seed(args.seed)
        qmodel = qat.quantize_model(fold_batchnorm(model))
        train_qat(qmodel, train_set, target, args.qat_epochs, 1e-3, 64, args.seed + 1, dist)
        data = (out / f"qat_{target:g}.sbit")
        data.write_bytes(write_container(qat.export_tensors(qmodel)))
        decoded, container = load_decoded("digits", data.read_bytes())
        row = {"target_bpw": target, "accuracy": evaluate(decoded, test_set),
               **file_rates(container), "seconds": time.perf_counter() - started,
               "levels": [m.quantizer.levels() for _, m in qat.quantized_modules(qmodel)]}
        results["qat"].append(row)
        print(f"QAT {target:>4}: {row['bits_per_weight']:.3f} bits/weight, "
              f"{row['accuracy']:.2f} %, {row['seconds']:.0f} s")

    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown_table(results)
    (out / "table.md").write_text(table)
    print(table)
    plot(results, out / "curve.png")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'curve.png'}")
    return 0


def markdown_table(results) -> str:
    qat = {row["target_bpw"]: row for row in results["qat"]}
    lines = ["| target | PTQ bits/w (model / weights) | PTQ data-free top-1 | PTQ calibrated "
             "(bits/w, top-1) | QAT bits/w (model / weights) | QAT top-1 | QAT time |",
             "|---|---|---|---|---|---|---|",
             f"| float | 32 | {results['float_accuracy']:.2f} % | {results['float_accuracy']:.2f} %"
             f" | 32 | {results['float_accuracy']:.2f} % | {results['float_seconds']:.0f} s |"]
    for row in results["ptq"]:
        q = qat.get(row["target_bpw"])
        qat_cells = (f"{q['bits_per_weight']:.3f} / {q['bits_per_weight_weights_only']:.3f} | "
                     f"{q['accuracy']:.2f} % | {q['seconds']:.0f} s") if q else "- | - | -"
        calibrated = row.get("calibrated")
        calibrated = f"{calibrated['bits_per_weight']:.3f}, {calibrated['accuracy']:.2f} %" \
            if calibrated else "-"
        lines.append(f"| {row['target_bpw']:g} | {row['bits_per_weight']:.3f} / "
                     f"{row['bits_per_weight_weights_only']:.3f} | {row['accuracy']:.2f} % | "
                     f"{calibrated} | {qat_cells} |")
    return "\n".join(lines) + "\n"


def plot(results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4))
    calibrated = [r["calibrated"] for r in results["ptq"] if "calibrated" in r]
    if calibrated:
        axes.plot([r["bits_per_weight"] for r in calibrated], [r["accuracy"] for r in calibrated],
                  marker="D", label="PTQ calibrated (GPTQ)")
    for key, label, marker in (("ptq", "PTQ data-free (rate-distortion allocation)", "s"),
                               ("qat", "QAT (entropy-constrained)", "o")):
        rows = results[key]
        if rows:
            axes.plot([r["bits_per_weight"] for r in rows], [r["accuracy"] for r in rows],
                      marker=marker, label=label)
    axes.axhline(results["float_accuracy"], color="grey", linestyle="--",
                 label=f"float32 ({results['float_accuracy']:.2f} %)")
    axes.set_xscale("log")
    axes.set_xticks([0.5, 0.8, 1.2, 2, 4])
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("bits per weight (whole container file)")
    axes.set_ylabel("top-1 accuracy on the 450 test digits (%)")
    axes.set_ylim(max(0, min([r["accuracy"] for k in ("ptq", "qat") for r in results[k]]
                             + [results["float_accuracy"]]) - 5), 100.5)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- MNIST-1D: every method on data that can tell them apart -------------------------------------

#: budgets of PTQ (data-free and calibrated) on MNIST-1D
MNIST1D_PTQ_TARGETS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
#: budgets of the two QATs
MNIST1D_QAT_TARGETS = (0.25, 0.5, 1.0, 2.0)
#: round-to-nearest bit-widths: 2**b - 1 levels around zero (3, 7, 15, 255)
RTN_BITS = (2, 3, 4, 8)
#: the level counts of "QAT at uniform precision", the same in every layer: ternary and 7 levels
UNIFORM_LEVELS = (3, 7)


def rtn_tensors(state: dict, bits: int) -> list:
    """Round-to-nearest: every weight tensor on ``2**bits - 1`` levels, step max|w| / k."""
    half = 2 ** (bits - 1) - 1
    tensors = []
    for name, array in state.items():
        if compress.is_weight(name, array):
            peak = float(np.abs(array).max())
            step = np.float32(peak / half if peak > 0 else 1.0)
            q = np.clip(np.rint(array / step), -half, half).astype(np.int64)
            tensors.append(CodedTensor(name, (q + half).astype(np.uint8), 2 * half + 1, half,
                                       np.array([step])))
        else:
            tensors.append(RawTensor(name, array))
    return tensors


def fixed_length_bits(tensors: list, bits: int) -> int:
    """Size of the same file with the weights stored as ``bits``-bit words, not entropy-coded:
    every header, scale, CRC and raw tensor of the coded file plus ``bits`` per weight."""
    placeholder = [CodedTensor(t.name, np.zeros(t.shape, np.uint8), 1, 0, t.scale)
                   if isinstance(t, CodedTensor) else t for t in tensors]
    weights = sum(t.symbols.size for t in tensors if isinstance(t, CodedTensor))
    return 8 * len(write_container(placeholder)) + bits * weights


def main_mnist1d(args) -> int:
    from sw.data import mnist1d
    from sw.quant.gptq import collect_statistics
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dist = Dist(False)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = mnist1d()
    train_set, test_set = TensorData(x_train, y_train), TensorData(x_test, y_test)
    torch.manual_seed(args.seed)
    model = build_model("mnist1d", args.seed)
    started = time.perf_counter()
    if args.baseline:
        model.load_state_dict(torch.load(args.baseline, map_location="cpu", weights_only=True))
    else:
        train_float(model, train_set, args.epochs, 3e-3, 64, args.seed, dist)
        torch.save(model.state_dict(), out / "mnist1d_float.pt")
    float_seconds = time.perf_counter() - started
    float_accuracy = evaluate(model, test_set)
    folded = fold_batchnorm(model)
    state = {k: v.detach().numpy() for k, v in folded.state_dict().items()}
    weights = weight_count(folded)
    print(f"float MNIST-1D CNN: {float_accuracy:.2f} % top-1 on {len(test_set)} test sequences "
          f"(one point = {len(test_set) // 100} sequences), {weights} weights, "
          f"{float_seconds:.0f} s", flush=True)
    results = {"model": "mnist1d", "float_accuracy": float_accuracy, "weights": weights,
               "test_count": len(test_set), "float_seconds": float_seconds, "rows": []}
    float_predictions = predictions(folded, x_test)

    def record(method, target, data, seconds, **extra):
        decoded, container = load_decoded("mnist1d", data)
        # paired with the float model: how many test predictions the quantization changed
        predicted = predictions(decoded, x_test)
        changed = int((predicted != float_predictions).sum())
        row = {"method": method, "target_bpw": target, "accuracy": evaluate(decoded, test_set),
               "changed": changed, **file_rates(container), "seconds": seconds,
               # which test sequences it gets wrong: methods compared pairwise (McNemar)
               "wrong": torch.nonzero(predicted != y_test).ravel().tolist(), **extra}
        results["rows"].append(row)
        print(f"{method:<22} target {str(target):>5}: {row['bits_per_weight']:.3f} bits/weight, "
              f"{row['accuracy']:.2f} %, {changed} predictions changed  ({seconds:.1f} s)",
              flush=True)
        return row

    for bits in RTN_BITS:
        started = time.perf_counter()
        tensors = rtn_tensors(state, bits)
        data = write_container(tensors)
        row = record("RTN + entropy coding", bits, data, time.perf_counter() - started,
                     levels=2 ** bits - 1)
        plain = dict(row, method="RTN, fixed-length", bits_per_weight=fixed_length_bits(
            tensors, bits) / weights)
        results["rows"].append(plain)

    statistics = collect_statistics(folded, x_train[:512])
    rtn_sizes = [r["bits_per_weight"] for r in results["rows"]
                 if r["method"] == "RTN + entropy coding"]
    for target in sorted(set(MNIST1D_PTQ_TARGETS) | {round(s, 4) for s in rtn_sizes}):
        for method, stats in (("PTQ data-free", None), ("PTQ calibrated", statistics)):
            started = time.perf_counter()
            try:
                ptq = compress.compress_tensors(state, target, statistics=stats)
            except ValueError as error:
                print(f"{method} {target}: {error}")
                continue
            record(method, target, ptq.data, time.perf_counter() - started,
                   levels=[r["levels"] for r in ptq.rows], zero_tensors=ptq.zero_tensors)

    results["sensitivity"] = layer_sensitivity(folded, test_set)
    if not args.no_qat:
        for target in args.qat_targets or MNIST1D_QAT_TARGETS:
            for levels in (None,) + UNIFORM_LEVELS:
                started = time.perf_counter()
                torch.manual_seed(args.seed)
                learned = levels is None
                method = "QAT learned precision" if learned else f"QAT uniform {levels} levels"
                qmodel = qat.quantize_model(fold_batchnorm(model),
                                              bits=4.0 if learned else math.log2(levels))
                if not learned:
                    qat.freeze_levels(qmodel)     # one level count everywhere, never learned
                log = []
                train_qat(qmodel, train_set, target, args.qat_epochs, 1e-3, 64, args.seed + 1,
                          dist, progress=False, log=log)
                data = write_container(qat.export_tensors(qmodel))
                (out / f"{'learned' if learned else f'uniform{levels}'}_{target:g}.sbit"
                 ).write_bytes(data)
                layers = [{"name": name, "weights": m.weight.numel(),
                           "levels": m.quantizer.levels(),
                           "step": float(m.quantizer.positive_step().detach().mean()),
                           "entropy_bits_per_weight": m.quantizer.hard_bits(m.weight)
                           / m.weight.numel()}
                          for name, m in qat.quantized_modules(qmodel)]
                record(method, target, data, time.perf_counter() - started,
                       levels=[layer["levels"] for layer in layers], layers=layers)

    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = mnist1d_table(results)
    (out / "table.md").write_text(table)
    print(table)
    plot_mnist1d(results, out / "curve.png")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'curve.png'}")
    return 0


@torch.no_grad()
def predictions(model, x, batch_size: int = 500) -> torch.Tensor:
    """The class ``model`` predicts for each input of ``x``."""
    model.eval()
    return torch.cat([model(x[start:start + batch_size]).argmax(1)
                      for start in range(0, len(x), batch_size)])


@torch.no_grad()
def layer_sensitivity(folded, test_set, levels: int = 3) -> list:
    """What each layer costs the float model alone: top-1 change, in points, with only that
    layer's weights on ``levels`` levels at their least-MSE step (no training), the others float.
    The yardstick the learned level counts are set against."""
    baseline = evaluate(folded, test_set)
    rows = []
    for name, module in folded.named_modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        quantizer = qat.ZeroPointQuantizer(tuple(module.weight.shape), bits=math.log2(levels))
        quantizer.init_step(module.weight)
        quantizer.eval()
        original = module.weight.detach().clone()
        module.weight.copy_(quantizer(module.weight))
        rows.append({"name": name, "weights": module.weight.numel(), "levels": levels,
                     "points": evaluate(folded, test_set) - baseline})
        module.weight.copy_(original)
    return rows


def mcnemar_p(wrong_a, wrong_b) -> float:
    """Exact two-sided McNemar p-value of two classifiers on the same test set.

    Given the test items each gets wrong: of the items exactly one of them gets right, how
    unlikely a split at least this uneven is if either were as likely to be the one.
    """
    wrong_a, wrong_b = set(wrong_a), set(wrong_b)
    only_a, only_b = len(wrong_a - wrong_b), len(wrong_b - wrong_a)
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _rows(results, method):
    return sorted((r for r in results["rows"] if r["method"] == method),
                  key=lambda r: r["bits_per_weight"])


def mnist1d_table(results) -> str:
    """Every run, then the issue's targets side by side."""
    float_accuracy = results["float_accuracy"]
    lines = [f"MNIST-1D CNN, {results['weights']} weights, float {float_accuracy:.2f} % on "
             f"{results['test_count']} test sequences", "",
             "| method | target | bits/w (model / weights) | top-1 | vs float | predictions "
             "changed | levels per layer |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        levels = row.get("levels")
        levels = ", ".join(map(str, levels)) if isinstance(levels, list) else str(levels)
        lines.append(f"| {row['method']} | {row['target_bpw']:g} | {row['bits_per_weight']:.3f} "
                     f"/ {row['bits_per_weight_weights_only']:.3f} | {row['accuracy']:.2f} % | "
                     f"{row['accuracy'] - float_accuracy:+.2f} | {row.get('changed', '-')} | "
                     f"{levels} |")

    def at(method, target):
        return next((r for r in results["rows"] if r["method"] == method
                     and r["target_bpw"] == target), None)

    learned_rows = _rows(results, "QAT learned precision")
    if learned_rows:
        lines += ["", "Learned against uniform precision, same budget (bits/w of the whole file, "
                  "top-1; in brackets learned minus uniform):", "",
                  "| budget | learned | levels per layer | "
                  + " | ".join(f"uniform {n} levels" for n in UNIFORM_LEVELS) + " |",
                  "|---|---|---|" + "---|" * len(UNIFORM_LEVELS)]
        for learned in learned_rows:
            cells = []
            for n in UNIFORM_LEVELS:
                uniform = at(f"QAT uniform {n} levels", learned["target_bpw"])
                cells.append(f"{uniform['bits_per_weight']:.3f}, {uniform['accuracy']:.2f} % "
                             f"({learned['accuracy'] - uniform['accuracy']:+.2f})"
                             if uniform else "-")
            lines.append(f"| {learned['target_bpw']:g} | {learned['bits_per_weight']:.3f}, "
                         f"{learned['accuracy']:.2f} % | "
                         f"{', '.join(map(str, learned['levels']))} | " + " | ".join(cells) + " |")
    if learned_rows and results.get("sensitivity"):
        lines += ["", "Learned level counts against each layer's sensitivity (top-1 change of "
                  "the float model with that layer alone on 3 levels, untrained):", "",
                  "| layer | weights | alone on 3 levels | learned levels at "
                  + " / ".join(f"{r['target_bpw']:g}" for r in learned_rows) + " bits/w |",
                  "|---|---|---|---|"]
        for index, layer in enumerate(results["sensitivity"]):
            lines.append(f"| {layer['name']} | {layer['weights']} | {layer['points']:+.2f} | "
                         + " / ".join(str(r["levels"][index]) for r in learned_rows) + " |")
    lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
    calibrated = at("PTQ calibrated", 2.0)
    if calibrated:
        drop = float_accuracy - calibrated["accuracy"]
        lines.append(f"| PTQ calibrated at 2 bits/weight within 1 point of float | "
                     f"{calibrated['bits_per_weight']:.3f} bits/w, {calibrated['accuracy']:.2f} % "
                     f"({-drop:+.2f}) | {'yes' if drop <= 1 else 'no'} |")
    qat = [r for r in _rows(results, "QAT learned precision") if r["bits_per_weight"] <= 1.0]
    if qat:
        best = max(qat, key=lambda r: r["accuracy"])
        drop = float_accuracy - best["accuracy"]
        lines.append(f"| QAT at <= 1 bit/weight within 1 point of float | "
                     f"{best['bits_per_weight']:.3f} bits/w, {best['accuracy']:.2f} % "
                     f"({-drop:+.2f}) | {'yes' if drop <= 1 else 'no'} |")
    for rtn in _rows(results, "RTN + entropy coding"):
        same = at("PTQ data-free", round(rtn["bits_per_weight"], 4))
        if same:
            gain = same["accuracy"] - rtn["accuracy"]
            changed = (f"; predictions changed {same['changed']} vs {rtn['changed']}"
                       if "changed" in same and "changed" in rtn else "")
            verdict = "yes" if gain >= 0 else "no"
            if "wrong" in same and "wrong" in rtn:
                p = mcnemar_p(same["wrong"], rtn["wrong"])
                changed += "; McNemar p " + ("< 0.001" if p < 1e-3 else f"= {p:.2f}")
                if gain < 0 and p >= 0.05:
                    verdict = "no; a tie at p >= 0.05"
            lines.append(f"| data-free PTQ >= RTN + entropy coding at {rtn['bits_per_weight']:.3f}"
                         f" bits/w ({rtn['target_bpw']}-bit RTN) | PTQ {same['accuracy']:.2f} % "
                         f"vs RTN {rtn['accuracy']:.2f} % ({gain:+.2f}){changed} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot_mnist1d(results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5))
    styles = {"QAT learned precision": "o-", "QAT uniform 3 levels": "o:",
              "QAT uniform 7 levels": "o--",
              "PTQ calibrated": "s-", "PTQ data-free": "s--",
              "RTN + entropy coding": "^-", "RTN, fixed-length": "v:"}
    for method, style in styles.items():
        rows = _rows(results, method)
        if rows:
            axes.plot([r["bits_per_weight"] for r in rows], [r["accuracy"] for r in rows],
                      style, label=method)
    axes.axhline(results["float_accuracy"], color="grey", linestyle="--",
                 label=f"float32 ({results['float_accuracy']:.2f} %)")
    axes.set_xscale("log")
    axes.set_xticks([0.25, 0.5, 1, 2, 4, 8])
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("bits per weight (whole container file)")
    axes.set_ylabel(f"top-1 on {results['test_count']} MNIST-1D test sequences (%)")
    axes.set_ylim(max(0, results["float_accuracy"] - 40), 100.5)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- a transformer-sized state dict: time, memory and budget of compress -------------------------

def synthetic_transformer(seed: int = 0, d: int = 512, ff: int = 2048, vocab: int = 16000,
                          layers: int = 6) -> dict:
    """A randomly initialised (untrained) transformer-like state dict of 27.3 M weights.

    Token embedding 16,000 x 512 and position table 512 x 512 (N(0, 0.02)); six blocks of
    q/k/v/o projections 512 x 512 and a 512 -> 2048 -> 512 feed-forward, each row with its own
    log-normal scale and four columns eight times larger (the outlier features of trained
    transformers); zero biases, unit LayerNorms. Random, not trained: it measures time,
    memory and the budget, not accuracy.
    """
    rng = np.random.default_rng(seed)

    def projection(rows, columns):
        w = rng.standard_normal((rows, columns), dtype=np.float32)
        w *= (np.exp(0.5 * rng.standard_normal((rows, 1))) / np.sqrt(columns)).astype(np.float32)
        w[:, rng.choice(columns, 4, replace=False)] *= 8
        return w
    state = {"embed.weight": 0.02 * rng.standard_normal((vocab, d), dtype=np.float32),
             "pos.weight": 0.02 * rng.standard_normal((512, d), dtype=np.float32)}
    for index in range(layers):
        prefix = f"layers.{index}."
        for name in ("q", "k", "v", "o"):
            state[f"{prefix}attn.{name}.weight"] = projection(d, d)
            state[f"{prefix}attn.{name}.bias"] = np.zeros(d, np.float32)
        state[prefix + "ff.up.weight"], state[prefix + "ff.up.bias"] = \
            projection(ff, d), np.zeros(ff, np.float32)
        state[prefix + "ff.down.weight"], state[prefix + "ff.down.bias"] = \
            projection(d, ff), np.zeros(d, np.float32)
        for norm in ("ln1", "ln2"):
            state[f"{prefix}{norm}.weight"] = np.ones(d, np.float32)
            state[f"{prefix}{norm}.bias"] = np.zeros(d, np.float32)
    return state


@torch.no_grad()
def transformer_inputs(state: dict, sequences: int = 8, length: int = 64, seed: int = 0) -> dict:
    """The inputs of every linear weight of :func:`synthetic_transformer` on random tokens.

    A real forward pass of the state dict as a pre-LayerNorm causal transformer:
    ``x = embed[token] + pos[position]``, then per block ``x += o(attention(ln1(x)))`` and
    ``x += down(gelu(up(ln2(x))))``. Attention has ``max(1, d // 64)`` heads of ``d / heads``
    (8 heads of 64 at ``d = 512``, as GPT-2's 64-wide heads; one head below ``d = 64``), causal
    softmax; GELU is the exact (erf) one.

    Parameters
    ----------
    state : dict
        Name -> array, as :func:`synthetic_transformer` makes it.
    sequences, length : int
        ``sequences`` sequences of ``length`` tokens (at most the position table's rows):
        ``sequences * length`` samples per weight.
    seed : int
        Seed of the uniformly random token ids.

    Returns
    -------
    dict
        Weight name -> float32 inputs ``(samples, columns)`` (sample ``s * length + t``: token
        ``t`` of sequence ``s``), for the q, k, v and o projections and the feed-forward's up and
        down of every block; the lookup tables (embedding, positions) have none. The format of
        ``python -m sw compress --calibration``.
    """
    t = {name: torch.from_numpy(array) for name, array in state.items()}
    vocab, d = state["embed.weight"].shape
    heads = max(1, d // 64)
    blocks = len({name.split(".")[1] for name in state if name.startswith("layers.")})
    tokens = torch.from_numpy(np.random.default_rng(seed).integers(vocab, size=(sequences, length)))
    x = t["embed.weight"][tokens] + t["pos.weight"][:length]
    inputs = {}

    def linear(name, h):
        inputs[name + ".weight"] = h.reshape(-1, h.shape[-1]).numpy()
        return torch.nn.functional.linear(h, t[name + ".weight"], t[name + ".bias"])

    def layer_norm(name, h):
        return torch.nn.functional.layer_norm(h, (d,), t[name + ".weight"], t[name + ".bias"])

    for index in range(blocks):
        prefix = f"layers.{index}."
        h = layer_norm(prefix + "ln1", x)
        q, k, v = (linear(f"{prefix}attn.{name}", h).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for name in "qkv")
        heads_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + linear(prefix + "attn.o", heads_out.transpose(1, 2).flatten(2))
        h = layer_norm(prefix + "ln2", x)
        x = x + linear(prefix + "ff.down",
                       torch.nn.functional.gelu(linear(prefix + "ff.up", h)))
    return inputs


#: run by :func:`run_measured` between the benchmark and the command: it reports the command's
#: own peak resident memory (kB) on its stdout
_PEAK_WRAPPER = """\
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run_measured(command: list) -> tuple:
    """Run ``command`` (its stdout discarded); return its seconds and peak resident MB.

    A child's ``ru_maxrss`` starts at its parent's peak (Linux carries the spawning process's
    high-water mark across exec), and ``RUSAGE_CHILDREN`` is the largest child so far: both
    would report this benchmark's own size, or an earlier run's. So the command is started by
    a small Python wrapper, whose only child it is (what ``/usr/bin/time`` does, without
    needing it installed).
    """
    import subprocess
    import sys
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *command], check=True,
                          stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - started, int(done.stdout.split()[-1]) / 1024


def main_transformer(args) -> int:
    """``python -m sw compress`` on the synthetic transformer, data-free and calibrated (GPTQ on
    the layer inputs of :func:`transformer_inputs`): seconds, peak memory, bits."""
    import sys

    from safetensors.numpy import save_file
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "transformer.safetensors"
    state = synthetic_transformer(args.seed)
    save_file(state, str(path))
    weights = sum(v.size for v in state.values() if v.ndim >= 2)
    print(f"synthetic transformer: {weights} weights, {path}")
    calibration = out / "calibration.npz"
    inputs = transformer_inputs(state, seed=args.seed)
    np.savez(calibration, **inputs)
    print(f"calibration: {len(next(iter(inputs.values())))} inputs of each of {len(inputs)} "
          f"weights, {calibration}")
    rows = []
    for method, extra in (("data-free", []), ("calibrated", ["--calibration", str(calibration)])):
        for target in args.targets:
            name = f"transformer_{target:g}" + ("_calibrated" if extra else "")
            report = out / f"{name}.json"
            seconds, peak_mb = run_measured(
                [sys.executable, "-m", "sw", "compress", str(path), "--target-bpw", str(target),
                 "-o", str(out / f"{name}.sbit"), "--report", str(report), *extra])
            figures = json.loads(report.read_text())
            rows.append({"method": method, "target_bpw": target,
                         "bits_per_weight": figures["bits_per_weight"], "seconds": seconds,
                         "peak_mb": peak_mb, "zero_tensors": figures["zero_tensors"],
                         "per_channel": sum(r["per_channel"] for r in figures["layers"]),
                         "tensors": len(figures["layers"])})
            print(f"{method} target {target}: {figures['bits_per_weight']:.4f} bits/weight, "
                  f"{seconds:.0f} s, peak {peak_mb:.0f} MB "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in figures['seconds'].items())})",
                  flush=True)
    lines = ["| target | method | file bits/w | under target | seconds | peak MB | "
             "per-channel tensors | erased |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["target_bpw"]):
        lines.append(f"| {r['target_bpw']:g} | {r['method']} | {r['bits_per_weight']:.4f} | "
                     f"{100 * (1 - r['bits_per_weight'] / r['target_bpw']):.3f} % | "
                     f"{r['seconds']:.0f} | {r['peak_mb']:.0f} | {r['per_channel']} of "
                     f"{r['tensors']} | {', '.join(r['zero_tensors']) or 'none'} |")
    table = "\n".join(lines) + "\n"
    (out / "transformer.md").write_text(table)
    print(table)
    return 0
