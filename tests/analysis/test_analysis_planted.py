"""Counterfactuals and brittleness against a planted linear ground truth (real Zarr stores, real fits)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import invoke, planted_store, write_truth

from analysis.brittleness import brittleness, flip_curve
from analysis.counterfactual import predict_counterfactual
from regression.config import SolverConfig
from regression.fit import fit_datamodels

NOISE = 0.1
FAST = SolverConfig(n_alphas=30, eps=1e-4, lr="auto", batch_size=128, tol=1e-4, max_epochs=100)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("planted") / "planted.zarr"
    _, beta, bias = planted_store(path, noise=NOISE)
    # Rows 512..639 stay out of the fit: they measure the error bar.
    fit_datamodels(path, name="fitted", rows=slice(0, 512), config=FAST)
    write_truth(path, "truth", beta, bias, rows=512)
    return path, beta, bias


def truth(beta: np.ndarray, bias: np.ndarray, kept: np.ndarray) -> np.ndarray:
    indicator = np.zeros(beta.shape[0])
    indicator[kept] = 1
    return indicator @ beta + bias


def test_counterfactual_of_fitted_datamodels_matches_truth(planted) -> None:
    path, beta, bias = planted
    rng = np.random.default_rng(1)
    targets = np.arange(beta.shape[1])
    for _ in range(3):
        kept = np.sort(rng.choice(beta.shape[0], size=15, replace=False))
        result = predict_counterfactual(path, name="fitted", targets=targets, subset=kept)
        assert result.error_source == "held-out rows" and result.error_rows == 128
        std = np.array(result.std)
        # The error bar is the noise the truth was planted with (plus a little estimation error).
        assert np.all((std > 0.8 * NOISE) & (std < 2 * NOISE)), std
        np.testing.assert_allclose(result.predicted, truth(beta, bias, kept), atol=4 * std.max())
    removed = rng.choice(beta.shape[0], size=4, replace=False)
    result = predict_counterfactual(path, name="fitted", targets=targets, removed=removed)
    expected = truth(beta, bias, np.setdiff1d(np.arange(beta.shape[0]), removed))
    # Removing 4 of 30 is far from the α = 0.5 subsets the fit saw: a looser bound.
    np.testing.assert_allclose(result.predicted, expected, atol=0.3)
    assert result.subset_size == beta.shape[0] - 4 and result.fit_fraction == 0.5


def test_counterfactual_cli_json_equals_library(planted, tmp_path: Path) -> None:
    path, _, _ = planted
    out = tmp_path / "cf"
    cli = invoke("analyze", "counterfactual", path, "--name", "truth", "--targets", "0:3", "--remove", "1,2,7",
                 "--out", out, "--json")
    assert cli.exit_code == 0, cli.stderr
    data = json.loads(cli.stdout)
    lib = predict_counterfactual(path, name="truth", targets=[0, 1, 2], removed=[1, 2, 7])
    assert data["predicted"] == lib.predicted and data["targets"] == [0, 1, 2]
    assert json.loads((out / "counterfactual.json").read_text())["predicted"] == lib.predicted
    # Exactly the truth: full-set prediction minus the removed weights.
    _, beta, bias = planted
    np.testing.assert_allclose(lib.predicted, beta.sum(0)[:3] + bias[:3] - beta[[1, 2, 7], :3].sum(0), atol=1e-5)


def smallest_flipping_set(beta_t: np.ndarray, full: float, max_size: int) -> int | None:
    """Exhaustive search: the size of the smallest removal set that moves ``full`` across 0."""
    n = beta_t.size
    for k in range(1, max_size + 1):
        sums = np.array([beta_t[list(c)].sum() for c in itertools.combinations(range(n), k)])
        after = full - sums
        if ((after <= 0) if full > 0 else (after > 0)).any():
            return k
    return None


def test_brittleness_sets_are_the_truths_smallest(planted) -> None:
    path, beta, bias = planted
    result = brittleness(path, name="truth")
    full = beta.sum(0) + bias
    assert [t.target for t in result.targets] == list(range(beta.shape[1]))
    assert {t.predicted_correct for t in result.targets} == {True, False}  # flips both ways are exercised
    for t in result.targets:
        assert t.full == pytest.approx(full[t.target], abs=1e-5)
        expected = smallest_flipping_set(beta[:, t.target], full[t.target], max_size=5)
        if expected is None:
            assert t.size is None or t.size > 5
            continue
        assert t.size == expected, (t.target, t.size, expected)
        kept = np.setdiff1d(np.arange(beta.shape[0]), t.removal)
        after = truth(beta, bias, kept)[t.target]
        assert (after > 0) != (full[t.target] > 0)  # the set really flips the ground truth
        assert t.after == pytest.approx(after, abs=1e-5)
    k, fraction = flip_curve(result.sizes(), result.max_k)
    assert result.curve_fraction == fraction.tolist()
    assert fraction[-1] == result.n_flippable / len(result.targets)


def test_brittleness_max_k_limits_the_sets(planted) -> None:
    path, _, _ = planted
    result = brittleness(path, name="truth", max_k=1)
    assert all(t.size in (None, 1) for t in result.targets) and result.curve_k == [1]
