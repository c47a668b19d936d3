"""``python -m sw infer``: accuracy of a container's program, reports, dumps, one-line errors."""

import json

import numpy as np
import pytest

from sw.cli import main
from sw.codec.container import CodedTensor, read_container, write_container
from sw.network.engine import BoundNetwork, infer
from sw.network.lower import Layer, lower, order_tensors


@pytest.fixture
def digits_model(tmp_path):
    """A tiny convolutional model on the 8x8 digits, with its program (not trained: the
    figures checked are the engine's, whatever the accuracy)."""
    from sw.data import digits
    rng = np.random.default_rng(5)
    tensors = [CodedTensor("conv.weight", rng.integers(0, 3, (4, 1, 3, 3)), 3, 1, np.float32(0.3)),
               CodedTensor("conv.bias", rng.integers(0, 31, 4), 31, 15, np.float32(0.02)),
               CodedTensor("fc.weight", rng.integers(0, 5, (10, 4)), 5, 2, np.float32(0.2))]
    layers = [Layer("conv", "conv.weight", "conv.bias", 2, True), Layer("pool", input=0),
              Layer("linear", "fc.weight", input=1)]
    x_train, _, x_test, y_test = digits()
    lowered = lower(layers, {t.name: t for t in tensors}, x_train.numpy()[:200])
    path = tmp_path / "m.sbit"
    path.write_bytes(write_container(order_tensors(tensors, lowered.tensor_order),
                                     program=lowered.program))
    return path, x_test.numpy(), y_test.numpy()


def test_default_images_report_and_dump(digits_model, tmp_path, capsys):
    path, x_test, y_test = digits_model
    report, dump = tmp_path / "r.json", tmp_path / "d.npz"
    assert main(["infer", str(path), "--report", str(report), "--dump", str(dump)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 451 and out[0].startswith("image 0: class ")
    figures = json.loads(report.read_text())
    network = BoundNetwork.from_container(read_container(path.read_bytes()))
    expected = infer(network, x_test, dump=True)
    assert figures["predictions"] == expected.predictions.tolist()
    assert figures["accuracy_int"] == 100.0 * float((expected.predictions == y_test).mean())
    assert figures["count"] == 450 and figures["operations"] == 3
    assert "integer accuracy" in out[-1] and "float on the same weights" in out[-1]
    with np.load(dump) as arrays:
        assert sorted(arrays.files) == ["input", "op0", "op1", "op2"]
        for index, layer in enumerate(expected.layers):
            np.testing.assert_array_equal(arrays[f"op{index}"], layer)


def test_images_file_without_labels(digits_model, tmp_path, capsys):
    path, x_test, _ = digits_model
    images = tmp_path / "i.npz"
    np.savez(images, images=x_test[:7].reshape(7, 64))  # flat images are fine
    assert main(["infer", str(path), "--images", str(images), "--quiet"]) == 0
    assert "7 images classified" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("no_program", "holds no program"),
    ("wrong_shape", "do not fit the program's input"),
    ("no_images_array", "no 'images' array"),
    ("directory", "is a directory"),
    ("missing", "no such file"),
    ("bad_labels", "one integer per image"),
    ("limit", "--limit must be positive"),
])
def test_errors_are_one_line(digits_model, tmp_path, capsys, case, message):
    path, x_test, _ = digits_model
    args = ["infer", str(path)]
    if case == "no_program":
        plain = tmp_path / "plain.sbit"
        plain.write_bytes(write_container([CodedTensor("w", np.zeros((2, 2), np.uint8), 3, 1)]))
        args = ["infer", str(plain)]
    elif case == "limit":
        args += ["--limit", "0"]
    else:
        images = tmp_path / "i.npz"
        if case == "wrong_shape":
            np.savez(images, images=np.zeros((3, 5)))
        elif case == "no_images_array":
            np.savez(images, pictures=np.zeros((3, 64)))
        elif case == "directory":
            images = tmp_path
        elif case == "bad_labels":
            np.savez(images, images=x_test[:3], labels=np.zeros(2, np.int64))
        args += ["--images", str(images if case != "missing" else tmp_path / "none.npz")]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
