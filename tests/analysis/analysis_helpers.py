"""Small real stores for the analysis tests: planted linear ground truth, and the CLI entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from orchestrator.cli import app
from storage.datamodels import create_datamodels, write_columns
from storage.layout import DatasetInfo
from storage.metadata import ImportProvenance, import_metadata
from storage.sweep_store import SweepStore
from workers.masks import block_masks


def planted_store(path: Path, *, m: int = 640, n_train: int = 30, n_test: int = 6, block: int = 64,
                  noise: float = 0.1, seed: int = 0) -> tuple[SweepStore, np.ndarray, np.ndarray]:
    """A store whose test margins are ``masks @ beta + bias + N(0, noise²)``; returns (store, beta, bias).

    ``beta`` [n_train, n_test] is sparse (5 non-zeros per target) and ``bias``
    [n_test] puts the full-training-set margins on both sides of 0, so that
    brittleness has flips in both directions.
    """
    rng = np.random.default_rng(seed)
    masks = block_masks(seed, range(m), n_train, 0.5)
    beta = np.zeros((n_train, n_test))
    for t in range(n_test):
        beta[rng.choice(n_train, size=5, replace=False), t] = rng.normal(0, 1, size=5)
    bias = rng.normal(0, 1, size=n_test) - beta.sum(0) / 2
    margins = masks @ beta + bias + rng.normal(0, noise, size=(m, n_test))
    store = SweepStore.create(path, import_metadata(
        ImportProvenance(source="planted", description="planted linear truth of the analysis tests", alpha=0.5),
        dataset=DatasetInfo(name="planted", n_train=n_train, n_test=n_test, n_classes=2),
        num_models=m, block=block, outputs=("margins/test",),
    ))
    for b in range(m // block):
        rows = slice(b * block, (b + 1) * block)
        written = store.write_block(b, {"masks": masks[rows], "margins/test": margins[rows].astype(np.float16)})
        store.ledger.mark_complete(b, checksum=written.checksum, seconds=1.0, node="test")
    return store, beta, bias


def write_truth(store_path: Path, name: str, beta: np.ndarray, bias: np.ndarray, *, rows: int) -> None:
    """Datamodels equal to the planted truth, as if perfectly estimated on the first ``rows`` rows."""
    store = SweepStore.open(store_path, mode="r+")
    n_train, n_test = beta.shape
    group = create_datamodels(
        store.group, name, n_train=n_train, n_targets=n_test, target_chunk=n_test,
        attrs={"rows": [[0, rows]], "train_rows": [[0, rows]], "val_rows": [], "targets": [0, n_test],
               "output": "margins/test", "n_train": n_train},
    )
    write_columns(group, 0, weight=beta, columns={
        "bias": bias, "lam": np.zeros(n_test), "val_mse": np.full(n_test, np.nan),
        "nnz": (beta != 0).sum(0), "n_epochs": np.ones(n_test)})


def invoke(*args: str):  # type: ignore[no-untyped-def]
    """Run ``dmsweep ARGS`` in-process."""
    return CliRunner().invoke(app, [str(a) for a in args])
