"""brittleness --verify: real retraining through the orchestrator on a local Ray, on a small mnist1d sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import invoke

from orchestrator.api import run_sweep
from orchestrator.spec import parse_spec
from regression.config import SolverConfig
from regression.fit import fit_datamodels
from storage.sweep_store import SweepStore

RECIPE = {"name": "mnist1d-cnn", "params": {"epochs": 6, "width": 8, "n_train": 100, "n_test": 20, "lr": 0.02}}


@pytest.fixture(scope="module")
def mnist1d(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "small.zarr"
    spec = parse_spec({"store": str(path), "recipe": RECIPE, "alpha": 0.5, "num_models": 256, "block": 64})
    assert run_sweep(spec, progress=False).done
    fit_datamodels(path, name="small", config=SolverConfig(n_alphas=20, eps=1e-3, lr="auto", batch_size=128))
    return path


def test_verify_retrains_without_each_candidate_set(mnist1d: Path, tmp_path: Path) -> None:
    args = ["analyze", "brittleness", mnist1d, "--verify", "--verify-targets", "3", "--seeds", "2",
            "--out", tmp_path, "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    v = data["verification"]
    assert v["n_candidates"] == 3 and v["seeds"] == 2 and v["models_trained"] == 8
    assert 0 <= v["n_confirmed"] <= 3 and v["confirmation_rate"] == v["n_confirmed"] / 3
    predicted = {t["target"]: t for t in data["targets"]}
    sizes = sorted(t["size"] for t in data["targets"] if t["size"] is not None)
    assert sorted(f["size"] for f in v["flips"]) == sizes[:3]  # the smallest predicted sets are checked
    # The retraining sweep trained exactly on "everything but the candidate set", then full-set controls.
    store = SweepStore.open(v["store"])
    masks = store.read("masks", slice(0, 8))
    outputs = store.read("margins/test", slice(0, 8)).astype(np.float64)
    for i, flip in enumerate(v["flips"]):
        removal = predicted[flip["target"]]["removal"]
        expected = np.ones(100, dtype=bool)
        expected[removal] = False
        assert (masks[2 * i : 2 * i + 2] == expected).all()
        assert flip["margins"] == pytest.approx(outputs[2 * i : 2 * i + 2, flip["target"]].tolist())
        correct = predicted[flip["target"]]["predicted_correct"]
        assert flip["flipped"] == [(m <= 0) if correct else (m > 0) for m in flip["margins"]]
    assert masks[6:].all()
    assert (tmp_path / "brittleness.json").is_file() and (tmp_path / "brittleness_curve.png").is_file()
    # Asking again resumes the retraining store instead of training again.
    again = json.loads(invoke(*args).stdout)["verification"]
    assert again["models_trained"] == 0 and again["n_confirmed"] == v["n_confirmed"]
