"""Deterministic training subsets: a pure function of (seed, model index).

Reproducible across machines and numpy versions: only the raw output of an
explicit bit generator (PCG64 seeded through SeedSequence, whose streams numpy
guarantees stable) is used, never a ``Generator`` method whose algorithm may
change between releases.
"""

from __future__ import annotations

import numpy as np

__all__ = ["subset_size", "subset_mask", "block_masks", "model_seed", "block_seeds"]

_MASK_STREAM = 0
_TRAIN_STREAM = 1


def subset_size(n: int, alpha: float) -> int:
    """Examples per subset: exactly round(alpha * n), at least 1."""
    return max(1, min(n, int(round(alpha * n))))


def _raw_keys(seed: int, index: int, stream: int, count: int) -> np.ndarray:
    bit_generator = np.random.PCG64(np.random.SeedSequence([int(seed), int(index), stream]))
    return bit_generator.random_raw(count)


def subset_mask(seed: int, index: int, n: int, alpha: float) -> np.ndarray:
    """Boolean mask of length ``n`` with exactly ``subset_size(n, alpha)`` True entries.

    The subset is the ``k`` examples with the smallest random 64-bit keys.
    """
    k = subset_size(n, alpha)
    keys = _raw_keys(seed, index, _MASK_STREAM, n)
    threshold = np.partition(keys, k - 1)[k - 1]
    mask = keys <= threshold
    if int(mask.sum()) != k:  # a tie at the threshold: fall back to a stable order
        mask = np.zeros(n, dtype=bool)
        mask[np.argsort(keys, kind="stable")[:k]] = True
    return mask


def block_masks(seed: int, rows: range, n: int, alpha: float, replicates: int = 1) -> np.ndarray:
    """Masks of the models ``rows`` as a bool array [len(rows), n].

    With ``replicates`` R, model ``i`` trains on mask ``i // R``: masks stay a
    pure function of (seed, mask index), and the R models of a mask differ only
    by their training seeds (:func:`model_seed` of the model index).
    """
    out = np.empty((len(rows), n), dtype=bool)
    for i, index in enumerate(rows):
        mask_index = index // replicates
        if i and rows[i - 1] // replicates == mask_index:
            out[i] = out[i - 1]  # a replicate of the model before it
        else:
            out[i] = subset_mask(seed, mask_index, n, alpha)
    return out


def model_seed(seed: int, index: int) -> int:
    """The training seed of model ``index`` (init, data order, augmentation): a 63-bit int."""
    return int(_raw_keys(seed, index, _TRAIN_STREAM, 1)[0] >> np.uint64(1))


def block_seeds(seed: int, rows: range) -> np.ndarray:
    """Training seeds of the models ``rows`` as int64 [len(rows)]."""
    return np.array([model_seed(seed, i) for i in rows], dtype=np.int64)
