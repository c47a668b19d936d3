"""``python -m sw``: round trips through every input format, and one-line errors."""

import subprocess
import sys

import numpy as np
import pytest

from sw.cli import main
from sw.format import file_header_bytes


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


@pytest.mark.slow
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


def one_level_bomb(sections: int, symbols: int) -> bytes:
    """A tiny container whose one-level coded sections declare ``symbols`` each: no payload,
    so a few hundred bytes ask a decoder for ``sections * symbols`` values."""
    import struct
    import zlib

    from sw.codec.container import CodedTensor, write_container
    from sw.params import CodecParams
    params = CodecParams(state_count=4)
    data = bytearray(write_container([CodedTensor(f"z{i}", np.zeros(1, np.int64), 1, 0)
                                      for i in range(sections)], params))
    position = file_header_bytes(params.state_count)
    for _ in range(sections):
        start = position
        name_bytes = struct.unpack_from("<H", data, start + 2)[0]
        dims_at = start + 4 + name_bytes + (name_bytes & 1) + 2
        struct.pack_into("<I", data, dims_at, symbols)
        count_at = dims_at + 4 + 6 + 4       # levels, zero point, scale count; one scale
        struct.pack_into("<I", data, count_at, symbols)
        end = count_at + 4 + 4                # symbol_count, payload_words (0)
        struct.pack_into("<I", data, end, zlib.crc32(data[start:end]))
        position = end + 4
    return bytes(data)


def test_decode_states_size_and_refuses_above_limit(tmp_path, capsys):
    bomb = tmp_path / "bomb.sbit"
    bomb.write_bytes(one_level_bomb(3, 1 << 28))
    assert len(bomb.read_bytes()) < 300
    out = tmp_path / "out.npz"
    assert main(["decode", str(bomb), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    # The size is stated from the headers, before any allocation, and the limit is named.
    assert "3 tensors, 805,306,368 values, 1.5 GiB decoded" in captured.out
    assert "declares 805,306,368 values" in captured.err and "--max-values" in captured.err
    assert not out.exists()


def test_decode_max_values_can_be_raised(tmp_path, capsys):
    small = tmp_path / "small.sbit"
    small.write_bytes(one_level_bomb(2, 1000))
    out = tmp_path / "out.npz"
    assert main(["decode", str(small), "-o", str(out), "--max-values", "1999"]) == 1
    assert "above the limit of 1,999" in capsys.readouterr().err
    assert main(["decode", str(small), "-o", str(out), "--max-values", "2000"]) == 0
    with np.load(out) as decoded:
        assert decoded["z0"].shape == (1000,) and not decoded["z1"].any()


def test_decode_to_safetensors(tmp_path, model):
    from safetensors.numpy import load_file
    source, coded, out = tmp_path / "m.npz", tmp_path / "m.sbit", tmp_path / "m.safetensors"
    np.savez(source, **model)
    assert main(["encode", str(source), "-o", str(coded)]) == 0
    assert main(["decode", str(coded), "-o", str(out)]) == 0
    decoded = load_file(str(out))
    assert sorted(decoded) == sorted(model)
    for name, value in model.items():
        np.testing.assert_array_equal(decoded[name], value)
    assert decoded["conv.weight"].dtype == np.int16          # coded: integers as int16
    assert decoded["conv.bias"].dtype == np.float32           # raw: as stored


def test_load_state_dict(tmp_path, model):
    import torch

    from sw.codec.container import CodedTensor, RawTensor, write_container
    from sw.io.load import load_state_dict
    scale = np.array([0.5, 0.25], np.float32)
    symbols = np.array([[0, 1, 2], [2, 2, 0]])
    path = tmp_path / "m.sbit"
    path.write_bytes(write_container([
        CodedTensor("fc.weight", symbols, 3, 1, scale),
        RawTensor("fc.bias", np.array([1.5, -2], np.float16)),
        RawTensor("steps", np.array(7, np.int64)),
    ]))
    state = load_state_dict(path)
    assert list(state) == ["fc.weight", "fc.bias", "steps"]
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    assert state["fc.weight"].dtype == torch.float32
    torch.testing.assert_close(state["fc.weight"],
                               torch.tensor([[-0.5, 0, 0.5], [0.25, 0.25, -0.25]]))
    assert state["fc.bias"].dtype == torch.float16 and state["steps"].shape == ()
    state["fc.bias"] += 1      # writable, no warning from torch about read-only numpy memory
    module = torch.nn.Linear(3, 2).half()
    module.load_state_dict({"weight": state["fc.weight"].half(), "bias": state["fc.bias"]})
    with pytest.raises(ValueError, match="above the limit of 5"):
        load_state_dict(path, max_values=5)


def test_decode_output_suffix_checked_first(tmp_path, capsys):
    assert main(["decode", str(tmp_path / "missing.sbit"), "-o", str(tmp_path / "x.h5")]) == 1
    assert "output must end in .npz or .safetensors" in capsys.readouterr().err


def test_verify_small_file_does_not_import_numba(tmp_path, model):
    """Start-up: numba (and scipy under it) is most of the time of `verify` on a small file;
    such a file is decoded with the reference coder, which gives the same verdict."""
    source, coded = tmp_path / "m.npz", tmp_path / "m.sbit"
    np.savez(source, **model)
    assert main(["encode", str(source), "-o", str(coded)]) == 0
    flipped = tmp_path / "flipped.sbit"
    data = coded.read_bytes()
    flipped.write_bytes(data[:400] + bytes([data[400] ^ 1]) + data[401:])
    script = ("import sys; from sw.cli import main; "
              "codes = [main(['verify', p]) for p in sys.argv[1:]]; "
              "print(codes, 'numba' in sys.modules, 'scipy' in sys.modules, "
              "'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script, str(coded), str(flipped)],
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "[0, 1] False False False", run


def test_startup_measurement_of_bench():
    from sw.bench.codec import startup_seconds
    verify, numpy_import, size = startup_seconds(repeats=1)
    assert 0 < numpy_import and 0 < verify < 30 and size == 222


@pytest.fixture
def sparse_integers():
    """Integer tensors outside one 256-value window: only a value table codes them."""
    rng = np.random.default_rng(3)
    return {
        "two": rng.choice(np.array([-200, 200], np.int16), 10_000),          # the issue's
        "ids": rng.choice(np.array([-70000, 5, 123456], np.int32), (50, 40), p=[.05, .9, .05]),
        "huge": rng.choice(np.array([0, (1 << 64) - 1], np.uint64), 300),
        "few": np.array([-5000, 5000, 7], np.int64),    # the table costs more than raw
        "near": np.arange(10, dtype=np.int8),            # one window: CODED, as before
    }


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_value_table_round_trip(tmp_path, sparse_integers, suffix, capsys):
    """encode uses a value table where it pays; decode gives back exact values and dtypes."""
    from sw.codec.container import read_container
    from sw.format import SectionKind
    from sw.io.tensors import load_tensors, save_tensors
    source, coded, out = tmp_path / f"m{suffix}", tmp_path / "m.sbit", tmp_path / f"o{suffix}"
    save_tensors(source, sparse_integers)
    assert main(["encode", str(source), "-o", str(coded)]) == 0
    assert "4 coded tensors" in capsys.readouterr().out
    container = read_container(coded.read_bytes())
    kinds = {info.name: info.kind for info in container.sections}
    assert kinds == {"two": SectionKind.MAPPED, "ids": SectionKind.MAPPED,
                     "huge": SectionKind.MAPPED, "few": SectionKind.RAW,
                     "near": SectionKind.CODED}
    # 16 bits/value raw before; about one bit now (plus the section's 30 bytes)
    two = next(info for info in container.sections if info.name == "two")
    assert 8 * two.size / 10_000 < 1.05
    assert main(["verify", str(coded)]) == 0
    assert main(["inspect", str(coded)]) == 0
    report = capsys.readouterr().out
    assert "2v" in report and "two int16 -200..200" in report
    for extra in ([], ["--dequantize"]):
        assert main(["decode", str(coded), "-o", str(out), *extra]) == 0
        decoded = load_tensors(out)
        for name in ("two", "ids", "huge", "few"):
            assert decoded[name].dtype == sparse_integers[name].dtype, name
            np.testing.assert_array_equal(decoded[name], sparse_integers[name])


def test_bad_value_table_is_one_line(tmp_path):
    """A value table made non-increasing (its CRC made right): one line, exit status 1, from
    verify and decode alike."""
    import struct
    import zlib

    from sw.codec.container import MappedTensor, write_container
    data = bytearray(write_container([MappedTensor.from_array(
        "t", np.array([-200, 200, 200, -200], np.int16))]))
    start = file_header_bytes(32)
    # kind, name_bytes, "t\0", ndim, dims[0], levels, dtype
    values_at = start + 2 + 2 + 2 + 2 + 4 + 2 + 2
    assert struct.unpack_from("<2h", data, values_at) == (-200, 200)
    struct.pack_into("<2h", data, values_at, 200, -200)
    end = len(data) - 4
    struct.pack_into("<I", data, end, zlib.crc32(data[start:end]))
    path = tmp_path / "bad.sbit"
    path.write_bytes(bytes(data))
    for args in (("verify", path), ("decode", path, "-o", tmp_path / "o.npz")):
        result = run_cli(*args)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "value table is not strictly increasing" in result.stderr, result.stderr
