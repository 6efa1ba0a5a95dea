"""Train and write one block, without Ray: what a worker actor does per task.

The runner reads the sweep's recipe, seed and α from the store itself (so a
worker can never train a block with settings other than the store's), builds
the recipe once, and for each block: regenerates its masks and seeds, trains,
writes the block's chunks, and returns a receipt for the driver's ledger.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.errors import BlockFailedError, EnvironmentFault, InputError
from storage.location import StoreLocation, store_location
from storage.npy_rows import open_npy
from storage.sweep_store import SweepStore
from workers.device import resolve_device
from workers.masks import block_masks, block_seeds
from workers.recipe import Recipe, TrainingBlock, build_recipe

__all__ = ["BlockReceipt", "BlockRunner", "check_finite_outputs"]


def check_finite_outputs(block_id: int, first_row: int, outputs: dict[str, np.ndarray]) -> None:
    """Fail the block, in one line, when any model's outputs hold NaN or infinity.

    A model that diverged would otherwise store NaN margins, which later make
    the whole fit refuse; failing the block keeps them out of the store and
    names the models (store rows) and the output.
    """
    for name, values in outputs.items():
        if name == "masks" or not np.issubdtype(values.dtype, np.floating):
            continue
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        if bad.size:
            rows = ", ".join(str(first_row + int(k)) for k in bad[:5]) + (", ..." if bad.size > 5 else "")
            raise BlockFailedError(
                f"block {block_id}: {name} of {bad.size} model(s) (rows {rows}) are not finite: "
                "training diverged (lower the learning rate, or check the data)"
            )


@dataclass(frozen=True)
class BlockReceipt:
    """What the driver needs to ledger a block; never the data itself."""

    block_id: int
    checksum: int
    nbytes: int
    train_seconds: float
    write_seconds: float
    node: str
    pid: int

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.write_seconds


class BlockRunner:
    """Trains blocks of one store's sweep. Build once per worker process.

    Parameters
    ----------
    store_path : the sweep's store (must exist): a path or ``s3://`` URI.
    device : torch device for training; ``None`` picks CUDA when present
        (:func:`workers.device.resolve_device`).
    node : a name for where this runs, recorded in the ledger.
    """

    def __init__(
        self, store_path: str | Path | StoreLocation, *, device: str | None = None, node: str | None = None
    ) -> None:
        self._store_path = store_location(store_path)
        store = SweepStore.open(self._store_path, mode="r")
        spec = store.spec
        if spec is None:
            raise InputError(f"{self._store_path.uri!r} is an imported store; it has no recipe to train with")
        self._seed = spec.seed
        self._alpha = spec.alpha
        self._replicates = spec.replicates
        self._masks_file = spec.masks_file
        self._n_train = store.dataset.n_train
        self.recipe: Recipe = build_recipe(spec.recipe.name, spec.recipe.params)
        self.device = str(resolve_device(device or "auto"))
        self.node = node or socket.gethostname()
        self.recipe.setup(self.device)

    def run(self, block_id: int) -> BlockReceipt:
        """Train block ``block_id`` and write its rows; raise :class:`BlockFailedError` on bad outputs."""
        start = time.perf_counter()
        # A fresh handle per block: the driver may have resized the store since.
        store = SweepStore.open(self._store_path, mode="r+")
        rows = store.block_rows(block_id)
        masks = self._block_masks(rows)
        seeds = block_seeds(self._seed, rows)
        with tempfile.TemporaryDirectory(prefix=f"dmsweep-block-{block_id:06d}-") as workdir:
            block = TrainingBlock(
                block_id=block_id,
                indices=np.arange(rows.start, rows.stop, dtype=np.int64),
                masks=masks,
                seeds=seeds,
                outputs=store.outputs,
                workdir=Path(workdir),
            )
            outputs = dict(self.recipe.train_block(block))
        if self.recipe.provides_masks:
            if "masks" not in outputs:
                raise BlockFailedError(f"block {block_id}: recipe {self.recipe.name!r} returned no masks")
            masks = outputs.pop("masks")
        unexpected = sorted(set(outputs) - set(store.outputs))
        if unexpected:
            raise BlockFailedError(f"block {block_id}: recipe returned outputs the store does not record: {unexpected}")
        check_finite_outputs(block_id, rows.start, outputs)
        trained = time.perf_counter()
        try:
            written = store.write_block(block_id, {"masks": masks, **outputs})
        except OSError as exc:
            # Disk full, permission denied, read-only: the store's fault, not the block's;
            # the driver stops the sweep on it instead of retrying every block in turn.
            fault = EnvironmentFault.classify(exc, store=self._store_path.uri, action=f"writing block {block_id}")
            if fault is None:
                raise
            raise fault from exc
        done = time.perf_counter()
        return BlockReceipt(
            block_id=block_id,
            checksum=written.checksum,
            nbytes=written.nbytes,
            train_seconds=trained - start,
            write_seconds=done - trained,
            node=self.node,
            pid=os.getpid(),
        )


    def _block_masks(self, rows: range) -> np.ndarray:
        if self._masks_file is not None:
            explicit = open_npy(self._masks_file, param="masks_file")  # a path every node mounts, or an s3:// object
            return np.array(explicit[rows.start : rows.stop], dtype=bool)
        if self._alpha is None:  # the spec model requires one of the two
            raise BlockFailedError("the spec has neither alpha nor masks_file")
        return block_masks(self._seed, rows, self._n_train, self._alpha, self._replicates)
