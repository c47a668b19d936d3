"""``python -m sw``: round trips through every input format, and one-line errors."""

import subprocess
import sys

import numpy as np
import pytest

from sw.cli import main


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "conv.weight": rng.choice([-1, 0, 1], size=(16, 8, 3, 3), p=[.1, .8, .1]).astype(np.int8),
        "conv.bias": rng.normal(size=16).astype(np.float32),
        "fc.weight": rng.integers(-100, 100, size=(10, 64)).astype(np.int32),
        "wide": rng.integers(-1000, 1000, size=20).astype(np.int64),
        "empty": np.zeros((0,), np.int16),
    }
    return tensors


def check_decoded(path, tensors):
    with np.load(path) as decoded:
        assert sorted(decoded.files) == sorted(tensors)
        for name, value in tensors.items():
            np.testing.assert_array_equal(decoded[name], value)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_round_trip(tmp_path, model, suffix, capsys):
    source = tmp_path / f"model{suffix}"
    if suffix == ".npz":
        np.savez(source, **model)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file(model, str(source))
    else:
        import torch
        torch.save({k: torch.from_numpy(v) for k, v in model.items()}, source)
    coded, decoded = tmp_path / "model.sbit", tmp_path / "out.npz"
    assert main(["encode", str(source), "-o", str(coded), "--states", "8"]) == 0
    assert main(["verify", str(coded)]) == 0
    assert main(["inspect", str(coded)]) == 0
    assert main(["decode", str(coded), "-o", str(decoded)]) == 0
    check_decoded(decoded, model)
    report = capsys.readouterr().out
    assert "conv.weight" in report and "whole model" in report


def test_dequantize(tmp_path, model):
    source, coded, out = tmp_path / "m.npz", tmp_path / "m.sbit", tmp_path / "f.npz"
    np.savez(source, **model)
    main(["encode", str(source), "-o", str(coded)])
    assert main(["decode", str(coded), "-o", str(out), "--dequantize"]) == 0
    with np.load(out) as decoded:
        assert decoded["conv.weight"].dtype == np.float32
        np.testing.assert_array_equal(decoded["conv.weight"], model["conv.weight"])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sw", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_errors_are_one_line(tmp_path, model):
    source, coded = tmp_path / "m.npz", tmp_path / "m.sbit"
    np.savez(source, **model)
    assert run_cli("encode", source, "-o", coded).returncode == 0
    data = coded.read_bytes()
    (tmp_path / "flipped.sbit").write_bytes(data[:300] + bytes([data[300] ^ 4]) + data[301:])
    (tmp_path / "short.sbit").write_bytes(data[:-7])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = [
        (("verify", tmp_path / "missing.sbit"), "no such file"),
        (("verify", tmp_path / "flipped.sbit"), ""),
        (("verify", tmp_path / "short.sbit"), "ends early"),
        (("decode", coded, "-o", tmp_path / "out.txt"), ".npz"),
        (("encode", tmp_path / "junk.npz", "-o", tmp_path / "x.sbit"), "not a readable .npz"),
        (("encode", coded, "-o", tmp_path / "x.sbit"), "unknown model format"),
        (("encode", source, "-o", tmp_path / "x.sbit", "--states", "0"), "state_count"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode != 0, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr and expected in result.stderr, result.stderr
