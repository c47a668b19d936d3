"""``python -m sw.bench quant``: rate-accuracy curve of the digits ResNet, PTQ beside QAT.

One float baseline is trained (or loaded); then for every target rate the folded float model is
compressed post-training (:mod:`sw.compress`) and, separately, trained quantization-aware to the
same target (:mod:`sw.train`). Every accuracy is that of the weights decoded from the written
container, and every rate is that of the container file (whole model, headers included).
Writes ``results.json``, ``table.md`` and ``curve.png`` to ``--out``.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from .. import compress, quant
from ..container import write_container
from ..data import digits
from ..models import build_model, fold_batchnorm, weight_count
from ..train import (Dist, TensorData, evaluate, file_rates, load_decoded, train_float,
                     train_qat)

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
    return parser.parse_args(argv)


def main(argv) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dist = Dist(False)
    torch.set_num_threads(1)  # small layers: one thread beats two that contend (see sw.train)
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
               **file_rates(container), "seconds": time.perf_counter() - started}
        results["ptq"].append(row)
        print(f"PTQ {target:>4}: {row['bits_per_weight']:.3f} bits/weight, "
              f"{row['accuracy']:.2f} %")
        if args.no_qat:
            continue
        started = time.perf_counter()
        torch.manual_seed(args.seed)
        qmodel = quant.quantize_model(fold_batchnorm(model))
        train_qat(qmodel, train_set, target, args.qat_epochs, 1e-3, 64, args.seed + 1, dist)
        data = (out / f"qat_{target:g}.sbit")
        data.write_bytes(write_container(quant.export_tensors(qmodel)))
        decoded, container = load_decoded("digits", data.read_bytes())
        row = {"target_bpw": target, "accuracy": evaluate(decoded, test_set),
               **file_rates(container), "seconds": time.perf_counter() - started,
               "levels": [m.quantizer.levels() for _, m in quant.quantized_modules(qmodel)]}
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
    lines = ["| target | PTQ bits/w (model / weights) | PTQ top-1 | QAT bits/w (model / weights) "
             "| QAT top-1 | QAT time |", "|---|---|---|---|---|---|",
             f"| float | 32 | {results['float_accuracy']:.2f} % | 32 | "
             f"{results['float_accuracy']:.2f} % | {results['float_seconds']:.0f} s |"]
    for row in results["ptq"]:
        q = qat.get(row["target_bpw"])
        qat_cells = (f"{q['bits_per_weight']:.3f} / {q['bits_per_weight_weights_only']:.3f} | "
                     f"{q['accuracy']:.2f} % | {q['seconds']:.0f} s") if q else "- | - | -"
        lines.append(f"| {row['target_bpw']:g} | {row['bits_per_weight']:.3f} / "
                     f"{row['bits_per_weight_weights_only']:.3f} | {row['accuracy']:.2f} % | "
                     f"{qat_cells} |")
    return "\n".join(lines) + "\n"


def plot(results, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label, marker in (("ptq", "PTQ (rate-distortion allocation)", "s"),
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
