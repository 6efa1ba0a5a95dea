"""Retraining a sweep's recipe on given masks: the function the brittleness check is handed.

:class:`SweepRetrainer` is an :class:`analysis.verify.Retrainer`: it runs the
masks as an ordinary sweep with explicit subsets (spec ``masks_file``), in a
store of its own whose name is a digest of the masks, recipe, seed and outputs,
so that asking again for the same models resumes that store instead of
retraining them. The store and its masks go under ``out_dir`` for a local
source store, and beside an ``s3://`` source (``<store>.retrain/``), where every
worker of a cluster can read them.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from analysis.verify import Retrained
from orchestrator.api import run_sweep
from orchestrator.spec import parse_spec
from orchestrator.sweep_store_setup import stored_spec
from storage.errors import BlockFailedError
from storage.location import objects_at, store_location
from storage.spec import OutputsSpec, SweepSpec
from storage.sweep_store import SweepStore

__all__ = ["SweepRetrainer"]


class SweepRetrainer:
    """Trains models with a sweep store's recipe on explicit masks, through the Ray driver.

    Parameters
    ----------
    source_store : the sweep whose recipe, resources, retries and timeout are reused.
    out_dir : where the retraining store and its masks file go (created on first use).
    seed : base seed of the retrained models.
    address : Ray cluster (default: the Ray of this process, or a new local one).

    Raises
    ------
    InputError
        The source is an imported store (it has no recipe to retrain with).
    """

    def __init__(self, source_store: str | Path, *, out_dir: str | Path, seed: int = 0, address: str | None = None) -> None:
        source = store_location(source_store)
        self._spec = stored_spec(SweepStore.open(source, mode="r"))
        self._base = str(Path(out_dir).resolve()) if source.is_local else f"{source.uri}.retrain"
        self._seed = seed
        self._address = address

    def spec_for(self, masks: np.ndarray, *, output: str, block: int) -> SweepSpec:
        """The retraining sweep's spec (nothing is written)."""
        outputs = OutputsSpec(train_margins=output == "margins/train")
        recipe = self._spec.recipe.model_dump(mode="json")
        digest = hashlib.sha256(
            np.ascontiguousarray(masks, dtype=bool).tobytes()
            + json.dumps([recipe, self._seed, outputs.model_dump()], sort_keys=True, default=str).encode()
        ).hexdigest()[:12]
        return parse_spec({
            "store": f"{self._base}/verify-{digest}.zarr",
            "recipe": recipe,
            "masks_file": f"{self._base}/verify-{digest}.npy",
            "num_models": int(masks.shape[0]),
            "block": int(block),
            "seed": self._seed,
            "outputs": outputs.model_dump(),
            "resources": self._spec.resources.model_dump(),
            "retries": self._spec.retries,
            "timeout_s": self._spec.timeout_s,
        }, source="retraining sweep")

    def __call__(self, masks: np.ndarray, *, output: str, block: int) -> Retrained:
        spec = self.spec_for(masks, output=output, block=block)
        folder, _, name = (spec.masks_file or "").rpartition("/")
        encoded = io.BytesIO()
        np.save(encoded, np.ascontiguousarray(masks, dtype=bool))
        # Created once (the name is the masks' digest), the same way in a folder or a bucket.
        objects_at(folder).put_if_absent(name, encoded.getvalue())
        run = run_sweep(spec, address=self._address, progress=False)
        if not run.done:
            raise BlockFailedError(f"retraining sweep {spec.store} left blocks {run.failed_blocks} failed")
        outputs = SweepStore.open(spec.store, mode="r").read(output, slice(0, spec.num_models))
        return Retrained(outputs=outputs, store=spec.store, models_trained=run.newly_completed_blocks * spec.block)
