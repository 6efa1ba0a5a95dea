"""Shared noise factors: found, removed per target, only with enough targets, the same from a store and from arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dm_helpers import build_store
from typer.testing import CliRunner

from orchestrator.cli import app
from regression import SolverConfig, saga_lasso_path
from regression.factors import (
    factors_from_array,
    factors_from_reader,
    remove_from_array,
    store_factors,
    store_removal,
    usable_factors,
)
from regression.fit import fit_datamodels
from regression.loader import StoreSource
from storage.datamodels import read_datamodels
from storage.sweep_store import SweepStore
from workers.masks import block_masks

N_TRAIN, N_VAL = 540, 60


def _shared_noise(n_targets: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks, outputs = sparse mask effects + one per-model factor every target loads on + a little noise, beta."""
    rng = np.random.default_rng(seed)
    m, n = N_TRAIN + N_VAL, 40
    masks = block_masks(seed, range(m), n, 0.5)
    beta = np.zeros((n, n_targets))
    for t in range(n_targets):
        beta[rng.choice(n, size=3, replace=False), t] = rng.normal(0, 1, size=3)
    model_factor = rng.normal(0, 1.5, size=(m, 1))  # what a seed does to every margin at once
    outputs = masks @ beta + model_factor * rng.normal(1, 0.3, size=n_targets) + rng.normal(0, 0.2, (m, n_targets))
    return masks, outputs.astype(np.float32), beta


def _fit(masks: np.ndarray, outputs: np.ndarray, **settings: object) -> np.ndarray:
    config = SolverConfig(n_alphas=30, eps=1e-3, **settings)
    fit = saga_lasso_path(masks[:N_TRAIN], outputs[:N_TRAIN], X_val=masks[N_TRAIN:], Y_val=outputs[N_TRAIN:],
                          config=config, device="cpu")
    return np.asarray(fit.weight)


def test_removing_the_shared_factor_recovers_the_mask_effects_better() -> None:
    masks, outputs, beta = _shared_noise(200)
    plain = np.abs(_fit(masks, outputs, noise_factors=0) - beta).mean()
    removed = np.abs(_fit(masks, outputs, noise_factors=1) - beta).mean()
    assert removed < 0.7 * plain  # measured: about half the error


def test_the_components_are_the_principal_components_of_the_training_rows() -> None:
    _, outputs, _ = _shared_noise(150, seed=1)
    found = factors_from_array(outputs, n_train=N_TRAIN, k=2)
    streamed = factors_from_reader(lambda r0, r1: outputs[r0:r1], n_rows=outputs.shape[0], n_train=N_TRAIN, k=2,
                                   step=37)
    np.testing.assert_allclose(np.abs(found.scores), np.abs(streamed.scores), rtol=1e-8, atol=1e-8)
    train = outputs[:N_TRAIN].astype(np.float64)
    mean = train.mean(0)
    _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
    expected = (outputs - mean) @ vt[:2].T
    for j in range(2):  # each component up to its sign
        sign = np.sign(expected[0, j] * found.scores[0, j])
        np.testing.assert_allclose(found.scores[:, j], sign * expected[:, j], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(found.explained, s[:2] ** 2 / (s**2).sum(), rtol=1e-8)
    np.testing.assert_allclose(found.scores[:N_TRAIN].mean(0), 0, atol=1e-9)  # centred on the training rows


def test_a_large_offset_changes_no_component() -> None:
    _, outputs, _ = _shared_noise(150, seed=6)
    offset = outputs.astype(np.float64) + 1e8  # means far above the spread: a naive E[y²] − E[y]² loses it
    np.testing.assert_allclose(np.abs(factors_from_array(offset, n_train=N_TRAIN, k=2).scores),
                               np.abs(factors_from_array(outputs, n_train=N_TRAIN, k=2).scores), rtol=1e-6, atol=1e-6)


def test_each_target_loses_its_least_squares_share_of_the_components() -> None:
    _, outputs, _ = _shared_noise(120, seed=2)
    adjusted = remove_from_array(outputs, n_train=N_TRAIN, requested=1)
    scores = factors_from_array(outputs, n_train=N_TRAIN, k=1).scores
    for t in (0, 57, 119):  # what is left of each target on its training rows is orthogonal to the component
        assert abs(float(scores[:N_TRAIN, 0] @ adjusted[:N_TRAIN, t])) < 1e-6 * float(np.abs(outputs[:, t]).sum())
        # and the removed part is that target's own loading times the component
        removed = outputs[:, t] - adjusted[:, t]
        loading = float(np.linalg.lstsq(scores[:N_TRAIN], outputs[:N_TRAIN, t], rcond=None)[0][0])
        np.testing.assert_allclose(removed, loading * scores[:, 0], rtol=1e-6, atol=1e-6)


def test_few_targets_get_no_components() -> None:
    assert [usable_factors(5, w) for w in (1, 99, 100, 350, 10_000)] == [0, 0, 1, 3, 5]
    masks, outputs, _ = _shared_noise(60, seed=3)
    np.testing.assert_array_equal(_fit(masks, outputs), _fit(masks, outputs, noise_factors=0))


def test_a_store_fit_equals_the_array_fit_and_records_the_components(tmp_path: Path) -> None:
    masks, outputs, _ = _shared_noise(250, seed=4)
    outputs = outputs.astype(np.float16)  # as the store keeps them
    y = outputs.astype(np.float32)
    build_store(tmp_path / "store", masks, outputs, block=50)
    store = SweepStore.open(tmp_path / "store")
    rows = np.arange(N_TRAIN + N_VAL)
    # The outputs the solver reads from the store equal the array path's, shard by shard.
    factors = store_factors(store, rows, n_train=N_TRAIN, output="margins/test", width=250, k=2)
    expected = remove_from_array(y, n_train=N_TRAIN, requested=2)
    for targets in (slice(0, 125), slice(125, 250)):
        adjust = store_removal(store, rows, factors.scores, n_train=N_TRAIN, output="margins/test", width=250,
                               targets=targets)
        source = StoreSource(store, rows=rows, output="margins/test", targets=targets, device=torch.device("cpu"),
                             adjust=adjust)
        np.testing.assert_allclose(source.read_host(0, rows.size)[1], expected[:, targets], rtol=1e-5, atol=1e-5)

    config = SolverConfig(n_alphas=30, eps=1e-3)
    fit_datamodels(tmp_path / "store", name="dm", config=config, val_fraction=N_VAL / (N_TRAIN + N_VAL), shards=2)
    stored = read_datamodels(SweepStore.open(tmp_path / "store").group, "dm")
    assert stored.attrs["noise_factors"] == 2  # 250 targets: two components of the default five
    # The fits agree to the solver's tolerance (the components' sums run in other orders, and
    # a last-bit change may move an iterate by up to tol); without the components they differ far more.
    gap = np.abs(stored.weight - _fit(masks, y)).mean()
    assert gap < 0.01 * np.abs(stored.weight - _fit(masks, y, noise_factors=0)).mean()


@pytest.mark.parametrize("value", ["-1", "2.5", "many"])
def test_a_bad_count_exits_2_with_one_line(tmp_path: Path, value: str) -> None:
    masks, outputs, _ = _shared_noise(10, seed=5)
    build_store(tmp_path / "store", masks, outputs.astype(np.float16), block=50)
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "store"), "--name", "dm", "--noise-factors", value])
    assert result.exit_code == 2
    assert "noise-factors" in result.output or "noise_factors" in result.output
    assert "dm" not in SweepStore.open(tmp_path / "store").group.get("datamodels", {})
