"""Data for training and evaluation: scikit-learn's digits, MNIST-1D, and random stand-ins.

Nothing here downloads anything. The digits (1,797 8x8 grey images of 0-9, shipped inside
scikit-learn) are split once, stratified, with a fixed seed, so every run and every machine sees
the same 1,347 training and 450 test images. MNIST-1D is generated on the spot by the ``mnist1d``
package's own generator (never its download path).
"""

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["DIGITS_TEST_FRACTION", "DIGITS_SPLIT_SEED", "digits", "digits_arrays",
           "random_images", "shift_augment",
           "MNIST1D_TRAIN", "MNIST1D_TEST", "mnist1d"]

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits_arrays():
    """The digits split as numpy arrays (no torch): ``(x_train, y_train, x_test, y_test)``.

    Pixels (0..16) are scaled to 0..1 (float32, NCHW); the split is stratified by class with a
    fixed seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED,
        stratify=data.target)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def digits():
    """:func:`digits_arrays` as torch tensors."""
    import torch

    return tuple(torch.from_numpy(a) for a in digits_arrays())


def random_images(count: int, channels: int, size: int, classes: int, seed: int = 0):
    """Random inputs and labels for structural runs of ImageNet-sized models (no data needed)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, channels, size, size, generator=generator)
    y = torch.randint(0, classes, (count,), generator=generator)
    return x, y


def shift_augment(x: "torch.Tensor", generator: "torch.Generator", pad: int = 1) -> "torch.Tensor":
    """Shift every image by up to ``pad`` pixels in each direction, filling with zeros.

    The digits are tiny and few; small translations are the augmentation that keeps a ResNet of
    a few hundred thousand weights from memorising them.
    """
    import torch

    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


#: MNIST-1D split sizes: the published 4,000 training sequences, and 6,000 test sequences (the
#: published set has 1,000) so that one point of accuracy is 60 sequences, not 10.
MNIST1D_TRAIN = 4000
MNIST1D_TEST = 6000


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays(seed: int):
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples = MNIST1D_TRAIN + MNIST1D_TEST
    args.train_split = MNIST1D_TRAIN / args.num_samples
    args.seed = seed
    # make_dataset reseeds numpy's and random's global generators: leave them as they were
    import random
    numpy_state, random_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(random_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def mnist1d(seed: int = 42):
    """MNIST-1D (Greydanus 2020) generated offline: ``(x_train, y_train, x_test, y_test)``.

    Sequences of 40 values as float32 ``(N, 1, 1, 40)`` (one channel, height 1: the 1-D CNN
    of :mod:`sw.quant.models` is made of 2-D convolutions with ``1 x k`` kernels, which the
    quantizer and the container already handle), labels int64. The published generator
    settings (templates, noise, shear, translation; seed 42), with 4,000 training and 6,000
    test sequences. Takes about 6 s; cached in the process.
    """
    import torch

    x_train, y_train, x_test, y_test = _mnist1d_arrays(seed)

    def as_tensor(x):
        return torch.from_numpy(np.asarray(x, np.float32)[:, None, None, :].copy())
    return (as_tensor(x_train), torch.from_numpy(np.asarray(y_train, np.int64)),
            as_tensor(x_test), torch.from_numpy(np.asarray(y_test, np.int64)))
