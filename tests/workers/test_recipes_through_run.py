"""Every built-in recipe through `dmsweep run` on the session's local Ray.

The recipe tests next to this one call ``train_block`` directly; these run the
whole path a user runs (spec → driver → worker actor → store → ledger), which is
where a recipe's outputs meet the store's shapes and dtypes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fake_cifar10 import write_fake_cifar10
from fake_fmow import write_fake_fmow
from helpers import write_script
from typer.testing import CliRunner

from orchestrator.cli import app
from storage.sweep_store import SweepStore


def run_spec(tmp_path: Path, recipe: dict[str, Any], *, num_models: int = 8, block: int = 4, retries: int = 2):
    spec = {"store": str(tmp_path / "sweep.zarr"), "recipe": recipe, "alpha": 0.5, "num_models": num_models,
            "block": block, "seed": 5, "retries": retries, "timeout_s": 300}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return CliRunner().invoke(app, ["run", str(path), "--json", "--no-progress"])


@pytest.mark.parametrize(
    ("name", "params", "n_train"),
    [
        ("digits-mlp", {"epochs": 2, "hidden": 16, "n_train": 300}, 300),
        ("cifar10-resnet9", {"width": 4, "epochs": 1, "batch_size": 8, "lr": 0.05}, 40),
        ("cifar10-airbench", {"dataset": "digits32", "n_train": 64, "n_test": 16, "widths": [4, 8, 8],
                              "batch_size": 16, "epochs": 1, "whiten_images": 16}, 64),
        ("fmow-resnet9", {"image_size": 16, "width": 4, "epochs": 1, "batch_size": 4}, 12),
    ],
)
def test_trained_recipe_through_run(ray_session, tmp_path: Path, name: str, params: dict, n_train: int) -> None:
    if name == "cifar10-resnet9":
        params = {**params, "data_dir": str(write_fake_cifar10(tmp_path / "cifar"))}
    if name == "fmow-resnet9":
        params = {**params, "data_dir": str(write_fake_fmow(tmp_path / "wilds"))}
    result = run_spec(tmp_path, {"name": name, "params": params})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["completed_blocks"] == 2
    store = SweepStore.open(tmp_path / "sweep.zarr")
    masks = store.read("masks", slice(0, 8))
    assert masks.shape == (8, n_train) and (masks.sum(1) == round(0.5 * n_train)).all()
    margins = store.read("margins/test", slice(0, 8))
    assert np.isfinite(margins).all() and margins.astype(np.float32).std() > 0


def test_legacy_script_through_run(ray_session, tmp_path: Path) -> None:
    script = write_script(tmp_path)
    result = run_spec(tmp_path, {"name": "legacy", "params": {"script": str(script), "n_train": 12, "n_test": 5}})
    assert result.exit_code == 0, result.stderr
    store = SweepStore.open(tmp_path / "sweep.zarr")
    # The script chooses its subsets: the store holds its masks, not generated ones.
    for index in range(8):
        expected = np.zeros(12, dtype=bool)
        rng = np.random.default_rng(index)
        expected[rng.permutation(12)[:6]] = True
        np.testing.assert_array_equal(store.read("masks", slice(index, index + 1))[0], expected)
        np.testing.assert_allclose(store.read("margins/test", slice(index, index + 1))[0],
                                   rng.normal(size=5).astype(np.float16), rtol=1e-3)


def test_legacy_bad_shapes_fail_their_block_cleanly(ray_session, tmp_path: Path) -> None:
    # Models 4..7 (block 1) return margins of the wrong shape; block 0 is fine.
    tweak = "if index >= 4: out['margins'] = np.zeros((5, 2), np.float32)"
    script = write_script(tmp_path, tweak)
    result = run_spec(tmp_path, {"name": "legacy", "params": {"script": str(script), "n_train": 12, "n_test": 5}},
                      retries=0)
    assert result.exit_code == 1, result.stderr
    assert json.loads(result.stdout)["failed_blocks"] == [1]
    store = SweepStore.open(tmp_path / "sweep.zarr")
    assert store.ledger.completed_blocks().tolist() == [0]
    assert store.completed_rows().tolist() == [0, 1, 2, 3]
    status = CliRunner().invoke(app, ["status", str(tmp_path / "sweep.zarr"), "--json"])
    assert status.exit_code == 0
    assert "margins has shape (5, 2)" in status.stdout


def test_diverging_models_fail_their_block_and_write_nothing(ray_session, tmp_path: Path) -> None:
    # SGD at lr 1e30 overflows: every model's margins are NaN, and no block is stored.
    recipe = {"name": "digits-mlp", "params": {"epochs": 1, "hidden": 8, "n_train": 100, "optimizer": "sgd", "lr": 1e30}}
    result = run_spec(tmp_path, recipe, retries=0)
    assert result.exit_code == 1, result.stderr
    assert json.loads(result.stdout)["failed_blocks"] == [0, 1]
    store = SweepStore.open(tmp_path / "sweep.zarr")
    assert store.ledger.completed_blocks().tolist() == []
    status = CliRunner().invoke(app, ["status", str(tmp_path / "sweep.zarr"), "--json"])
    assert "are not finite: training diverged" in status.stdout
