"""python -m sw train: the whole chain on the tiny digits ResNet, on one and on two processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sw.codec.container import read_container
from sw.data import digits
from sw.quant import qat
from sw.quant.models import build_model
from sw.quant.train import (
    Dist,
    TensorData,
    evaluate,
    file_rates,
    load_decoded,
    train_float,
    train_qat,
)

# 6 bits/weight: the tiny model's 4,968 weights carry a 374-byte program (0.6 bits/weight)
TINY = ["--model", "digits-tiny", "--epochs", "2", "--qat-epochs", "6", "--target-bpw", "6"]


def run_train(*args, processes=1):
    if processes == 1:
        command = [sys.executable, "-m", "sw", "train"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "-m", "sw", "train"]
    # one thread per process: tiny layers gain nothing from two, and under pytest -n 2 the
    # other worker holds the second core
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                          timeout=600, env=environment)


def check_run(done, out, report, processes):
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(report.read_text())
    data = out.read_bytes()
    # the figures are those of the file: its bytes, and the accuracy of its decoded weights
    model, container = load_decoded("digits-tiny", data)
    _, _, x_test, y_test = digits()
    assert figures["accuracy"] == evaluate(model, TensorData(x_test, y_test))
    assert figures["bits_per_weight"] == 8 * len(data) / container.weight_count * \
        container.weight_count / figures["weights"]
    assert figures["bits_per_weight"] == file_rates(container)["bits_per_weight"]
    assert figures["bits_per_weight_weights_only"] < figures["bits_per_weight"]
    assert figures["processes"] == processes and figures["ranks_agree"]
    assert figures["accuracy"] == figures["qat_accuracy"]   # export changes nothing
    assert figures["bits_per_weight"] <= 6 * 1.02
    # the file carries its integer program, and the report's integer accuracy is the engine's
    from sw.network.engine import BoundNetwork, infer
    assert container.program is not None and figures["program_bytes"] == \
        container.program_section.size
    predictions = infer(BoundNetwork.from_container(container), x_test.numpy()).predictions
    assert figures["accuracy_int"] == 100.0 * float((predictions == y_test.numpy()).mean())
    assert figures["accuracy_float"] == figures["accuracy"]
    assert abs(figures["accuracy_int"] - figures["accuracy_float"]) <= 3
    for key in ("float_accuracy", "accuracy"):
        assert 10 < figures[key] <= 100
    assert "float baseline" in done.stdout and "bits/weight whole model" in done.stdout
    return figures


@pytest.mark.slow
def test_train_one_process(tmp_path):
    out, report, baseline = tmp_path / "t.sbit", tmp_path / "r.json", tmp_path / "b.pt"
    done = run_train(*TINY, "--out", out, "--report", report, "--save-baseline", baseline)
    first = check_run(done, out, report, 1)
    # the saved float model is loaded instead of trained: same baseline figure
    done = run_train(*TINY, "--out", out, "--report", report, "--baseline", baseline,
                     "--qat-epochs", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(report.read_text())["float_accuracy"] == first["float_accuracy"]


@pytest.mark.slow
def test_train_ddp_two_processes(tmp_path):
    out, report = tmp_path / "t.sbit", tmp_path / "r.json"
    check_run(run_train(*TINY, "--out", out, "--report", report, processes=2), out, report, 2)


@pytest.mark.parametrize("args, message", [
    (TINY + ["--baseline", "missing.pt"], "no such file"),
    (["--model", "digits-tiny", "--target-bpw", "1"], "below the fixed overhead"),
    (["--target-bpw", "0"], "must be positive"),
])
@pytest.mark.slow
def test_train_errors_are_one_line(tmp_path, args, message):
    done = run_train(*args, "--out", tmp_path / "x.sbit")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


@pytest.mark.slow
def test_qat_meets_a_rate_it_has_to_reach():
    """The multiplier must bring the whole file from above the target to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # as in run_train: two threads on tiny layers only contend
    try:
        check_qat_meets_rate()
    finally:
        torch.set_num_threads(threads)


def check_qat_meets_rate():
    from sw.codec.container import write_container
    from sw.quant.models import fold_batchnorm, weight_count
    torch.manual_seed(0)
    x, y, _, _ = digits()
    data = TensorData(x, y, augment=True)
    model = train_float(build_model("digits-tiny"), data, 1, 3e-3, 64, 0, Dist(False),
                        progress=False)
    qmodel = qat.quantize_model(fold_batchnorm(model), bits=3.0)
    start = 8 * len(write_container(qat.export_tensors(qmodel))) / weight_count(qmodel)
    assert start > 4.0 * 1.05
    log = []
    # a high learning rate: the tiny model must get there in five short epochs
    train_qat(qmodel, data, 4.0, 5, 1e-2, 64, 1, Dist(False), progress=False, log=log)
    assert max(entry["multiplier"] for entry in log) > 0
    assert log[-1]["rate"] <= log[-1]["budget"] * 1.02
    container = read_container(write_container(qat.export_tensors(qmodel)))
    assert file_rates(container)["bits_per_weight"] <= 4.0 * 1.02


@pytest.mark.slow
def test_mnist1d_trains_on_its_own_data(tmp_path):
    """MNIST-1D's sequences, not random images; no integer program (1 x k kernels)."""
    out, report = tmp_path / "m.sbit", tmp_path / "r.json"
    done = run_train("--model", "mnist1d", "--epochs", "1", "--qat-epochs", "2",
                     "--target-bpw", "3", "--out", out, "--report", report)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert figures["float_accuracy"] > 30   # ten classes: chance is 10 %
    assert figures["accuracy_int"] is None and "no integer program" in done.stdout
    assert read_container(out.read_bytes()).program is None
