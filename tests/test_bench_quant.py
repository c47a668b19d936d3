"""The transformer benchmark's calibration: a real forward pass, inputs compress accepts."""

import numpy as np
import pytest

from sw.bench.quant import run_measured, synthetic_transformer, transformer_inputs


@pytest.fixture(scope="module")
def tiny():
    state = synthetic_transformer(seed=1, d=32, ff=64, vocab=100, layers=2)
    return state, transformer_inputs(state, sequences=3, length=16, seed=2)


def layer_norm(x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def test_one_input_per_linear_weight(tiny):
    state, inputs = tiny
    linear = {name for name, array in state.items() if array.ndim == 2
              and name.startswith("layers.")}
    assert set(inputs) == linear and len(linear) == 12
    for name, x in inputs.items():
        assert x.dtype == np.float32 and x.shape == (48, state[name].shape[1]), name
        assert np.isfinite(x).all() and x.std() > 0, name


def test_inputs_are_those_of_the_forward_pass(tiny):
    state, inputs = tiny
    tokens = np.random.default_rng(2).integers(100, size=(3, 16))
    x = (state["embed.weight"][tokens] + state["pos.weight"][:16]).reshape(48, 32)
    h = layer_norm(x.astype(np.float64))     # ln1 is the unit LayerNorm
    for name in "qkv":
        np.testing.assert_allclose(inputs[f"layers.0.attn.{name}.weight"], h, atol=1e-4)
    # causal: a sequence's first token attends to itself alone, so its heads' outputs
    # concatenated are its own value vector
    first = np.arange(3) * 16
    v = h[first] @ state["layers.0.attn.v.weight"].T
    np.testing.assert_allclose(inputs["layers.0.attn.o.weight"][first], v, rtol=1e-4, atol=1e-5)
    assert not np.allclose(inputs["layers.0.attn.o.weight"][first + 1],
                           (h[first + 1] @ state["layers.0.attn.v.weight"].T), atol=1e-3)
    # the feed-forward's down sees GELU outputs: never below GELU's minimum, -0.17
    down = inputs["layers.0.ff.down.weight"]
    assert down.min() >= -0.1701 and (down < 0).any()


def test_attention_has_heads_of_64():
    state = synthetic_transformer(seed=3, d=128, ff=64, vocab=100, layers=1)
    inputs = transformer_inputs(state, sequences=2, length=8, seed=4)
    h = inputs["layers.0.attn.q.weight"].astype(np.float64).reshape(2, 8, 128)
    q, k, v = (np.einsum("stc,hjc->sthj", h, state[f"layers.0.attn.{name}.weight"].reshape(
        2, 64, 128)) for name in "qkv")
    logits = np.einsum("sthj,suhj->shtu", q, k) / 8 + np.triu(np.full((8, 8), -np.inf), 1)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("shtu,suhj->sthj", weights, v).reshape(16, 128)
    np.testing.assert_allclose(inputs["layers.0.attn.o.weight"], heads, rtol=1e-4, atol=1e-5)


def test_compress_takes_the_inputs(tiny):
    from sw.quant.compress import compress_tensors
    from sw.quant.gptq import statistics_from_arrays
    state, inputs = tiny
    result = compress_tensors(state, 2.0, statistics=statistics_from_arrays(inputs, state))
    assert result.rates["bits_per_weight"] <= 2.0
    assert all("output_error" in row for row in result.rows if row["name"] in inputs)


def test_run_measured_reports_the_commands_own_peak():
    import sys
    big = np.ones(200 * 2 ** 20 // 8)       # 200 MB in this process: not the child's
    seconds, peak_mb = run_measured([sys.executable, "-c", "import numpy; "
                                     "numpy.ones(100 * 2 ** 20 // 8).sum()"])
    assert big.sum() and 100 < peak_mb < 190 and seconds > 0


def test_mcnemar_p_counts_only_the_items_one_classifier_gets_right():
    from sw.bench.quant import mcnemar_p
    # 4 items only A gets wrong, none only B: p = 2 / 2**4; items both get wrong do not count
    assert mcnemar_p([1, 2, 3, 4, 9], [9]) == pytest.approx(0.125)
    assert mcnemar_p([9], [1, 2, 3, 4, 9]) == pytest.approx(0.125)
    assert mcnemar_p([1, 2], [3, 4]) == 1.0 and mcnemar_p([], []) == 1.0
    assert mcnemar_p(range(10), []) == pytest.approx(2 / 1024)
