"""Data for training and evaluation: scikit-learn's bundled digits, and random stand-ins.

Nothing here downloads anything. The digits (1,797 8x8 grey images of 0-9, shipped inside
scikit-learn) are split once, stratified, with a fixed seed, so every run and every machine sees
the same 1,347 training and 450 test images.
"""

import numpy as np
import torch

__all__ = ["DIGITS_TEST_FRACTION", "DIGITS_SPLIT_SEED", "digits", "random_images", "shift_augment"]

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits():
    """The digits split: ``(x_train, y_train, x_test, y_test)`` as float32 NCHW / int64 tensors.

    Pixels (0..16) are scaled to 0..1; the split is stratified by class with a fixed seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED,
        stratify=data.target)
    return (torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.int64)),
            torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64)))


def random_images(count: int, channels: int, size: int, classes: int, seed: int = 0):
    """Random inputs and labels for structural runs of ImageNet-sized models (no data needed)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, channels, size, size, generator=generator)
    y = torch.randint(0, classes, (count,), generator=generator)
    return x, y


def shift_augment(x: torch.Tensor, generator: torch.Generator, pad: int = 1) -> torch.Tensor:
    """Shift every image by up to ``pad`` pixels in each direction, filling with zeros.

    The digits are tiny and few; small translations are the augmentation that keeps a ResNet of
    a few hundred thousand weights from memorising them.
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]
