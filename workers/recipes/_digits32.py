"""``digits32``: a learnable CIFAR-shaped task generated from scikit-learn's bundled digits.

No copy of CIFAR-10 ships with any package, so the image recipes' tests and
the training benchmark need a stand-in of the same shape that a network can
actually learn (random pixels measure speed but not learning). Each image is
one of the 8×8 digits scaled ×3 to 24×24, placed at a random offset on a
32×32 canvas, painted in a random foreground colour over a random background,
with Gaussian pixel noise; the label is the digit. Train and test images come
from disjoint source digits (the same fixed split as ``digits-mlp``), so test
accuracy measures generalisation, not memorised sources.

Everything is drawn from ``numpy.random.PCG64(seed)``: the task is a pure
function of its sizes and seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS32_CLASSES", "generate_digits32"]

DIGITS32_CLASSES = 10
_SIDE, _SCALE, _NOISE = 32, 3, 24.0
#: Images rendered per batch of draws (bounds the float32 scratch to ~100 MB); part of the task's definition.
_CHUNK = 8192


def _render(sources: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, 3, 32, 32] and labels int64 [n] drawn from the 8×8 ``sources``."""
    pick = rng.integers(0, len(sources), n)
    glyphs = np.kron(sources[pick], np.ones((_SCALE, _SCALE), dtype=np.float32))  # [n, 24, 24] in [0, 1]
    size = glyphs.shape[1]
    offsets = rng.integers(0, _SIDE - size + 1, (n, 2))
    canvas = np.zeros((n, _SIDE, _SIDE), dtype=np.float32)
    rows = (offsets[:, :1] + np.arange(size))[:, :, None]
    cols = (offsets[:, 1:] + np.arange(size))[:, None, :]
    canvas[np.arange(n)[:, None, None], rows, cols] = glyphs
    background = rng.uniform(0, 110, (n, 3, 1, 1)).astype(np.float32)
    foreground = rng.uniform(140, 255, (n, 3, 1, 1)).astype(np.float32)
    images = background + (foreground - background) * canvas[:, None]
    images += rng.normal(0.0, _NOISE, images.shape).astype(np.float32)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels[pick].astype(np.int64)


def generate_digits32(n_train: int = 50_000, n_test: int = 10_000, *, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The digits32 split.

    Returns
    -------
    x_train uint8 [n_train, 3, 32, 32], y_train int64 [n_train],
    x_test uint8 [n_test, 3, 32, 32], y_test int64 [n_test].
    """
    from workers.recipes.digits_mlp import digits_split

    split = digits_split(0)  # the digits-mlp split: 1,297 train sources, 500 test sources
    rng = np.random.Generator(np.random.PCG64(seed))
    train_sources = split.x_train.reshape(-1, 8, 8)
    test_sources = split.x_test.reshape(-1, 8, 8)

    def render(sources: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [_render(sources, labels, min(_CHUNK, n - start), rng) for start in range(0, n, _CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_train, y_train = render(train_sources, split.y_train, n_train)
    x_test, y_test = render(test_sources, split.y_test, n_test)
    return x_train, y_train, x_test, y_test
