"""``python -m sw.bench codec``: the coder on weights of a really trained network.

An MLP is trained on scikit-learn's bundled digits (nothing downloaded), its weight matrices are
zero-point quantized at several level counts, and the integer tensors are coded with subbit and,
side by side in the same run, with zstd -19, xz -9 and constriction's ANS coder (when those
packages are installed). Rates are in bits per weight; speeds are the best of several runs, in
millions of symbols per second on one core.
"""

import argparse
import lzma
import time

import numpy as np

from sw.codec import fastrans
from sw.codec.container import CodedTensor, RawTensor, read_container, write_container
from sw.codec.rans import FrequencyTable, entropy_bits
from sw.params import CodecParams
from sw.quant.default_model import train_digits_mlp, zero_point_quantize


def best_time(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(symbols_by_layer, levels, params, repeats):
    """Rates and speeds of subbit and its peers on one set of quantized layers."""
    count = sum(s.size for s in symbols_by_layer)
    tables = [FrequencyTable.from_counts(np.bincount(s.ravel(), minlength=levels),
                                         params.precision_bits) for s in symbols_by_layer]
    sections = [(s.ravel(), t) for s, t in zip(symbols_by_layer, tables)]
    entropy = sum(entropy_bits(np.bincount(s.ravel())) for s in symbols_by_layer)

    fastrans.encode(sections, params)  # compile
    encode_time, (states, payloads) = best_time(lambda: fastrans.encode(sections, params), repeats)

    def decode_all():
        coder_states = states.copy()
        return [fastrans.decode_section(coder_states, len(s), t, p, params)
                for (s, t), p in zip(sections, payloads)]
    decode_time, decoded = best_time(decode_all, repeats)
    assert all((d == s).all() for (d, _), (s, _) in zip(decoded, sections))

    tensors = [CodedTensor(f"l{i}", s, levels, levels // 2) for i, s in enumerate(symbols_by_layer)]
    container = read_container(write_container(tensors, params))
    payload_bits = 8 * sum(info.payload_bytes for info in container.sections)
    table_bits = 8 * sum(info.table_bytes for info in container.sections)
    header_bits = 8 * (container.file_header_bytes
                       + sum(i.header_bytes for i in container.sections))
    row = {
        "count": count, "entropy": entropy / count, "payload": payload_bits / count,
        "file": 8 * container.size / count, "tables": table_bits / count,
        "headers": header_bits / count, "encode": count / encode_time / 1e6,
        "decode": count / decode_time / 1e6, "peers": {},
    }
    raw = np.concatenate([s.ravel() for s in symbols_by_layer]).tobytes()
    try:
        import zstandard
        compressor = zstandard.ZstdCompressor(level=19)
        t, packed = best_time(lambda: compressor.compress(raw), 1)
        row["peers"]["zstd -19"] = (8 * len(packed) / count, count / t / 1e6,
                                    count / best_time(lambda: zstandard.ZstdDecompressor()
                                                      .decompress(packed), repeats)[0] / 1e6)
    except ImportError:
        pass
    t, packed = best_time(lambda: lzma.compress(raw, preset=9), 1)
    row["peers"]["xz -9"] = (8 * len(packed) / count, count / t / 1e6,
                             count / best_time(lambda: lzma.decompress(packed), repeats)[0] / 1e6)
    try:
        import constriction
        row["peers"]["constriction"] = _constriction(constriction, symbols_by_layer, levels,
                                                     repeats)
    except ImportError:
        pass
    return row


def _constriction(constriction, symbols_by_layer, levels, repeats):
    """constriction's stack ANS coder with each layer's empirical model (no header cost)."""
    layers = []
    for s in symbols_by_layer:
        counts = np.bincount(s.ravel(), minlength=levels).astype(np.float64)
        used = np.flatnonzero(counts)
        layers.append((np.searchsorted(used, s.ravel()).astype(np.int32),
                       constriction.stream.model.Categorical(counts[used] / counts.sum(),
                                                             perfect=False)))

    def encode():
        coder = constriction.stream.stack.AnsCoder()
        for symbols, model in reversed(layers):
            coder.encode_reverse(symbols, model)
        return coder.get_compressed()

    def decode(compressed):
        coder = constriction.stream.stack.AnsCoder(compressed)
        return [coder.decode(model, len(symbols)) for symbols, model in layers]

    count = sum(len(s) for s, _ in layers)
    encode_time, compressed = best_time(encode, repeats)
    decode_time, decoded = best_time(lambda: decode(compressed), repeats)
    assert all((d == s).all() for d, (s, _) in zip(decoded, layers))
    return 32 * len(compressed) / count, count / encode_time / 1e6, count / decode_time / 1e6


def startup_seconds(repeats: int = 5) -> tuple:
    """Wall time of ``python -m sw verify`` on a small file and of ``python -c "import numpy"``.

    Both run as fresh interpreters, alternately, ``repeats`` times each; the median of each is
    returned, so a cold disk cache on the first run does not count. The file is a 2-section
    container (a 6-weight coded tensor and a 3-value raw one), which ``verify`` decodes with
    the reference coder (:data:`sw.cli.files.REFERENCE_CODER_SYMBOLS`) and so without numba.

    Returns
    -------
    tuple of (float, float, int)
        Seconds of ``verify`` and of ``import numpy``, and the file's size in bytes.
    """
    import statistics
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    tensors = [CodedTensor.from_integers("w", np.array([0, 1, -1, 0, 0, 1], np.int8)),
               RawTensor("b", np.ones(3, np.float32))]
    verify, numpy_import = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.sbit"
        path.write_bytes(write_container(tensors))
        for _ in range(repeats):
            for command, times in (([sys.executable, "-m", "sw", "verify", str(path)], verify),
                                   ([sys.executable, "-c", "import numpy"], numpy_import)):
                start = time.perf_counter()
                # From the folder holding this ``sw``, so the tree measured is this one.
                subprocess.run(command, check=True, capture_output=True,
                               cwd=Path(__file__).resolve().parents[2])
                times.append(time.perf_counter() - start)
        size = path.stat().st_size
    return statistics.median(verify), statistics.median(numpy_import), size


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.bench codec", description=__doc__)
    parser.add_argument("--levels", type=int, nargs="+", default=[3, 7, 15, 63, 255])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    params = CodecParams()

    mlp, accuracy = train_digits_mlp()
    weights = [w.T.astype(np.float32) for w in mlp.coefs_]
    count = sum(w.size for w in weights)
    print(f"model: MLP 64-512-256-10 on sklearn digits, {count} weights, "
          f"test accuracy {100 * accuracy:.1f} %; P={params.precision_bits}, "
          f"K={params.state_count}\n")
    print(f"{'levels':>6} {'entropy':>8} {'payload':>8} {'pay/ent':>8} {'tables':>7} "
          f"{'headers':>8} {'file':>7} {'hdr+tbl%':>8} {'enc Ms/s':>9} {'dec Ms/s':>9}   "
          "peers: bits/w (enc, dec Msym/s)")
    for levels in args.levels:
        symbols = [zero_point_quantize(w, levels)[0] for w in weights]
        row = measure(symbols, levels, params, args.repeats)
        peers = "  ".join(f"{name} {bits:.4f} ({enc:.0f}, {dec:.0f})"
                          for name, (bits, enc, dec) in row["peers"].items())
        overhead = 100 * (row["tables"] + row["headers"]) / row["file"]
        print(f"{levels:>6} {row['entropy']:8.4f} {row['payload']:8.4f} "
              f"{row['payload'] / row['entropy']:8.5f} {row['tables']:7.4f} {row['headers']:8.4f} "
              f"{row['file']:7.4f} {overhead:8.3f} {row['encode']:9.1f} "
              f"{row['decode']:9.1f}   {peers}")
    print("\nbits per weight; 'payload' excludes the 32 K-bit initial states, counted in "
          "'headers'; "
          "peers code the same symbols (zstd and xz as one byte per weight).")
    verify, numpy_import, size = startup_seconds()
    print(f"start-up: python -m sw verify of a {size}-byte file {verify:.2f} s, "
          f"python -c 'import numpy' {numpy_import:.2f} s (median of 5 fresh interpreters)")
    return 0
