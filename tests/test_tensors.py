"""sw.io.tensors: every tensor name round-trips, and bad inputs fail with one clear line."""

import subprocess
import sys

import numpy as np
import pytest

from sw.io.tensors import load_tensors, save_npz, save_safetensors, save_tensors

#: Names that are legal in npz and safetensors and broke ``np.savez(path, **tensors)``: ``file``
#: collides with its first parameter, ``allow_pickle`` is taken as its keyword, and ``a`` next
#: to ``a.npy`` are one member to np.load's key lookup.
AWKWARD = {
    "file": np.arange(3, dtype=np.int8),
    "allow_pickle": np.ones(2, np.float32),
    "a": np.array([1, 2], np.int16),
    "a.npy": np.array([3], np.int16),
    "args": np.zeros((0, 2), np.uint8),
    "kwds": np.array(True),
    "dir/sub.weight": np.full((2, 2), 7, np.int32),
    "ünïcode name": np.array([0.5], np.float64),
}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sw", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def one_line_error(result, expected):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("save", [save_npz, save_safetensors])
def test_any_name_round_trips(tmp_path, save):
    path = tmp_path / ("t.npz" if save is save_npz else "t.safetensors")
    save(path, AWKWARD)
    loaded = load_tensors(path)
    assert sorted(loaded) == sorted(AWKWARD)
    for name, value in AWKWARD.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)


def test_npz_readable_by_numpy(tmp_path):
    save_npz(tmp_path / "t.npz", {"file": np.arange(4), "w": np.eye(2)})
    with np.load(tmp_path / "t.npz") as archive:
        assert sorted(archive.files) == ["file", "w"]
        np.testing.assert_array_equal(archive["file"], np.arange(4))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_cli_round_trips_awkward_names(tmp_path, suffix):
    source, coded, out = tmp_path / f"in{suffix}", tmp_path / "m.sbit", tmp_path / f"out{suffix}"
    save_tensors(source, AWKWARD)
    assert run_cli("encode", source, "-o", coded, "--states", "4").returncode == 0
    result = run_cli("decode", coded, "-o", out)
    assert result.returncode == 0, result.stderr
    decoded = load_tensors(out)
    assert sorted(decoded) == sorted(AWKWARD)
    for name, value in AWKWARD.items():
        # Integer tensors are coded and come back as int16 integers; the rest as stored.
        np.testing.assert_array_equal(decoded[name], value)


def test_safetensors_keeps_file_order(tmp_path):
    tensors = {name: np.zeros(1, np.float32) for name in ["z", "a", "m"]}
    save_safetensors(tmp_path / "t.safetensors", tensors)
    # safetensors' writer picks the order; what load_tensors promises is the header's.
    import json
    import struct
    raw = (tmp_path / "t.safetensors").read_bytes()
    length, = struct.unpack("<Q", raw[:8])
    header_order = [k for k in json.loads(raw[8:8 + length]) if k != "__metadata__"]
    assert list(load_tensors(tmp_path / "t.safetensors")) == header_order


def test_text_file_as_torch_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_text("this is a text file, not a pickle\n")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_tensors(path)
    one_line_error(run_cli("encode", path, "-o", tmp_path / "x.sbit"),
                   "not a readable torch state dict")


@pytest.mark.parametrize("dtype, name", [("float8_e4m3fn", "F8_E4M3"),
                                         ("float8_e5m2", "F8_E5M2")])
def test_float8_safetensors_refused_by_name(tmp_path, dtype, name):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    path = tmp_path / "f8.safetensors"
    save_file({"ok": torch.ones(2), "layer.w8": torch.zeros(3, dtype=getattr(torch, dtype))},
              str(path))
    with pytest.raises(ValueError, match=f"'layer.w8' has dtype {name}"):
        load_tensors(path)
    line = one_line_error(run_cli("encode", path, "-o", tmp_path / "x.sbit"), "'layer.w8'")
    assert name in line and "cannot store" in line
    assert not (tmp_path / "x.sbit").exists()


def test_float8_torch_state_dict_refused_by_name(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "f8.pt"
    torch.save({"w": torch.zeros(2, dtype=torch.float8_e5m2)}, path)
    with pytest.raises(ValueError, match="'w' has dtype float8_e5m2"):
        load_tensors(path)


def test_bfloat16_safetensors_widened(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    values = torch.tensor([1.5, -2.25, 3.0e38], dtype=torch.bfloat16)
    save_file({"b": values}, str(tmp_path / "b.safetensors"))
    loaded = load_tensors(tmp_path / "b.safetensors")["b"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, values.float().numpy())


def test_unstorable_npz_dtype_names_tensor(tmp_path):
    np.savez(tmp_path / "c.npz", good=np.ones(2, np.float32), cplx=np.ones(2, np.complex64))
    one_line_error(run_cli("encode", tmp_path / "c.npz", "-o", tmp_path / "c.sbit"),
                   "tensor 'cplx': dtype complex64 cannot be stored")


@pytest.mark.parametrize("command", ["encode", "decode", "verify", "inspect"])
def test_directory_is_not_called_missing(tmp_path, command):
    folder = tmp_path / "model.npz"
    folder.mkdir()
    args = [command, folder] + (["-o", tmp_path / "o.npz"] if command in ("encode", "decode")
                                else [])
    line = one_line_error(run_cli(*args), "is a directory")
    assert "no such file" not in line


def test_bad_safetensors_header_one_line(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all}   ")
    one_line_error(run_cli("encode", path, "-o", tmp_path / "x.sbit"),
                   "not a readable .safetensors file")
