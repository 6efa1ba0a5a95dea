"""A sweep whose subsets are given explicitly (the brittleness check retrains on them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.api import run_sweep
from orchestrator.spec import parse_spec
from storage.errors import InputError
from storage.sweep_store import SweepStore

RECIPE = {"name": "mnist1d-cnn", "params": {"epochs": 1, "width": 4, "n_train": 120, "n_test": 30}}


def test_explicit_masks_are_what_the_store_holds(ray_session, tmp_path: Path) -> None:
    masks = np.ones((16, 120), dtype=bool)
    masks[:8, :40] = False  # the first 8 models train without examples 0..39
    np.save(tmp_path / "masks.npy", masks)
    spec = parse_spec({"store": str(tmp_path / "s.zarr"), "recipe": RECIPE, "masks_file": str(tmp_path / "masks.npy"),
                       "num_models": 16, "block": 8})
    assert run_sweep(spec, progress=False).done
    store = SweepStore.open(tmp_path / "s.zarr")
    assert np.array_equal(store.read("masks", slice(0, 16)), masks)
    assert np.isfinite(store.read("margins/test", slice(0, 16))).all()


def test_masks_file_of_wrong_shape_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "masks.npy", np.ones((16, 7), dtype=bool))
    spec = parse_spec({"store": str(tmp_path / "s.zarr"), "recipe": RECIPE, "masks_file": str(tmp_path / "masks.npy"),
                       "num_models": 16, "block": 8})
    with pytest.raises(InputError, match=r"must be bool \[16, 120\]"):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "s.zarr").exists()
