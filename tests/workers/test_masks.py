from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workers.masks import block_masks, block_seeds, model_seed, subset_mask, subset_size


@pytest.mark.parametrize(("n", "alpha"), [(4000, 0.5), (1797, 0.1), (50000, 0.5), (7, 0.3), (10, 0.99)])
def test_exact_subset_size(n: int, alpha: float) -> None:
    for index in range(5):
        mask = subset_mask(3, index, n, alpha)
        assert mask.dtype == np.bool_ and mask.shape == (n,)
        assert int(mask.sum()) == subset_size(n, alpha) == max(1, round(alpha * n))


def test_pure_function_of_seed_and_index() -> None:
    first = block_masks(11, range(64, 96), 1000, 0.5)
    again = block_masks(11, range(64, 96), 1000, 0.5)
    assert np.array_equal(first, again)
    # A row does not depend on which block (or range) it was generated in.
    assert np.array_equal(first[5], subset_mask(11, 69, 1000, 0.5))


def test_same_in_a_fresh_process() -> None:
    code = (
        "import numpy as np; from workers.masks import block_masks, block_seeds;"
        "m = block_masks(5, range(10), 500, 0.5); s = block_seeds(5, range(10));"
        "print(np.packbits(m).tobytes().hex()); print(','.join(map(str, s)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == np.packbits(block_masks(5, range(10), 500, 0.5)).tobytes().hex()
    assert out[1] == ",".join(map(str, block_seeds(5, range(10))))


def test_independent_across_indices_and_seeds() -> None:
    n, alpha, count = 2000, 0.5, 400
    masks = block_masks(0, range(count), n, alpha).astype(np.float64)
    # Each example's inclusion frequency is ~alpha, and pairs of masks overlap as
    # independent draws would (hypergeometric mean k^2/n).
    assert abs(masks.mean(axis=0).mean() - alpha) < 1e-9
    assert masks.mean(axis=0).std() < 0.05
    overlaps = masks[:-1] @ masks[1:].T
    k = subset_size(n, alpha)
    assert abs(np.diag(overlaps).mean() - k * k / n) < 10
    assert not np.array_equal(subset_mask(0, 1, n, alpha), subset_mask(1, 1, n, alpha))


def test_training_seeds_differ_and_are_stable() -> None:
    seeds = block_seeds(0, range(1000))
    assert len(set(seeds.tolist())) == 1000
    assert (seeds >= 0).all()
    assert model_seed(0, 17) == seeds[17]
