"""The default model: a small MLP trained on scikit-learn's bundled digits, quantized and coded.

:func:`default_container` is the model every build and board simulation carries unless given
another (``python -m hw.build``, ``python -m sim.board``); ``python -m sw.bench codec`` measures
the coder on a larger one from :func:`train_digits_mlp`. Nothing is downloaded and torch is not
imported: training takes a few seconds with scikit-learn.
"""

import numpy as np

from sw.codec.container import CodedTensor, write_container
from sw.network.lower import BIAS_LEVELS, lower, mlp_layers, order_tensors
from sw.params import CodecParams

__all__ = ["train_digits_mlp", "zero_point_quantize", "default_container"]


def train_digits_mlp(hidden=(512, 256), seed=0):
    """An MLP on sklearn's digits: ~166k weights, ~97 % test accuracy, a few seconds to train."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, random_state=seed,
        stratify=digits.target)
    mlp = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed, alpha=1e-4)
    mlp.fit(x_train, y_train)
    return mlp, mlp.score(x_test, y_test)


def zero_point_quantize(weights: np.ndarray, levels: int):
    """Symbols of ``levels`` (odd) levels around an exact zero, step chosen for the least MSE."""
    half = levels // 2
    peak = np.abs(weights).max()
    best = None
    for clip in np.linspace(0.2, 1.0, 33):
        step = clip * peak / half
        q = np.clip(np.round(weights / step), -half, half)
        error = float(((q * step - weights) ** 2).mean())
        if best is None or error < best[0]:
            best = (error, step, q)
    _, step, q = best
    return (q + half).astype(np.uint8), half, np.float32(step)


def default_container(params: CodecParams = CodecParams(), hidden=(128, 64), levels=3,
                      seed=0) -> tuple:
    """A small real model: an MLP trained on sklearn's bundled digits, ternary weights.

    Returns ``(name, container bytes)``. Training takes a few seconds; nothing is downloaded.
    Weight matrices are zero-point quantized to ``levels`` levels and biases to 31, all coded;
    the container carries the MLP's integer program (docs/INFERENCE.md), its activation scales
    calibrated on the training digits.
    """
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split


    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp, accuracy = train_digits_mlp(hidden=hidden, seed=seed)
    tensors, names = [], []
    for index, (weights, bias) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        # sklearn stores (in, out); the container holds (out, in) like torch.
        symbols, zero_point, step = zero_point_quantize(np.ascontiguousarray(weights.T), levels)
        tensors.append(CodedTensor(f"fc{index}.weight", symbols, levels, zero_point, step))
        tensors.append(CodedTensor.symmetric(f"fc{index}.bias", bias, BIAS_LEVELS))
        names.append((f"fc{index}.weight", f"fc{index}.bias"))
    # Calibrate on the MLP's own training images (train_digits_mlp's split, which is also
    # sw.data.digits'). Not through sw.data: importing torch beside sklearn's training makes
    # its BLAS calls contend for threads (4x slower here).
    data = load_digits()
    x_train = train_test_split(data.images[:, None] / 16.0, data.target, test_size=0.25,
                               random_state=seed, stratify=data.target)[0]
    lowered = lower(mlp_layers(names), {t.name: t for t in tensors}, x_train)
    shape = "-".join(str(n) for n in (64, *hidden, 10))
    return f"digits-mlp-{shape}-{levels}level", write_container(
        order_tensors(tensors, lowered.tensor_order), params, program=lowered.program)
