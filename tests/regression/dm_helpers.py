"""Small real sweep stores for the regression tests (planted sparse linear outputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.layout import DatasetInfo
from storage.metadata import ImportProvenance, import_metadata
from storage.sweep_store import SweepStore
from workers.masks import block_masks


def planted(m: int, n_train: int, n_test: int, *, seed: int = 0, alpha: float = 0.5, k: int = 4,
            noise: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks [m, n_train] (exact-size subsets), margins [m, n_test] from a sparse linear model, beta."""
    rng = np.random.default_rng(seed)
    masks = block_masks(seed, range(m), n_train, alpha)
    beta = np.zeros((n_train, n_test))
    for t in range(n_test):
        beta[rng.choice(n_train, size=k, replace=False), t] = rng.normal(0, 1, size=k)
    margins = masks @ beta + rng.normal(0, noise, size=(m, n_test)) + rng.normal(0, 1, size=n_test)
    return masks, margins.astype(np.float16), beta


def build_store(path: Path, masks: np.ndarray, margins: np.ndarray, *, block: int,
                complete: list[int] | None = None) -> SweepStore:
    """A real store holding ``masks``/``margins``; only blocks in ``complete`` (default all) are marked done."""
    m, n_train = masks.shape
    store = SweepStore.create(path, import_metadata(
        ImportProvenance(source="planted", description="sparse linear outputs planted by the regression tests"),
        dataset=DatasetInfo(name="planted", n_train=n_train, n_test=margins.shape[1], n_classes=2),
        num_models=m, block=block, outputs=("margins/test",),
    ))
    for b in range(m // block) if complete is None else complete:
        rows = slice(b * block, (b + 1) * block)
        written = store.write_block(b, {"masks": masks[rows], "margins/test": margins[rows]})
        store.ledger.mark_complete(b, checksum=written.checksum, seconds=0.0, node="test")
    return store
