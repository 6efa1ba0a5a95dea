"""The validation split at any row, and replicates: spec, masks, seeds, and LDS against the mean over replicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dm_helpers import build_store, planted
from scipy.stats import spearmanr
from typer.testing import CliRunner

from snapshots import tree_snapshot
from orchestrator.cli import app
from orchestrator.sweep_store_setup import create_store
from regression import SolverConfig, saga_lasso_path
from regression.fit import fit_datamodels
from regression.lds import evaluate_lds
from storage.datamodels import read_datamodels
from storage.errors import InputError
from storage.published import import_npy
from storage.spec import SweepSpec, spec_hash
from storage.sweep_store import SweepStore
from workers.block_runner import BlockRunner
from workers.masks import block_masks, model_seed, subset_mask


def test_a_split_inside_a_block_equals_a_fit_given_those_rows(tmp_path: Path) -> None:
    masks, margins, _ = planted(450, 30, 4, noise=0.3, seed=11)
    build_store(tmp_path / "store", masks, margins, block=50)
    config = SolverConfig(n_alphas=15, eps=1e-3, batch_size=500)
    # round(0.0822 * 450) = 37 validation rows: the split is row 413, inside block 8.
    fit = fit_datamodels(tmp_path / "store", name="dm", val_fraction=0.0822, config=config)
    assert (fit.n_train_rows, fit.n_val_rows) == (413, 37)
    stored = read_datamodels(SweepStore.open(tmp_path / "store").group, "dm")
    y = margins.astype(np.float32)
    direct = saga_lasso_path(masks[:413], y[:413], X_val=masks[413:], Y_val=y[413:], config=config, device="cpu")
    np.testing.assert_array_equal(stored.lam, direct.lam)
    np.testing.assert_allclose(stored.weight, direct.weight, atol=1e-6)
    np.testing.assert_allclose(stored.bias, direct.bias, atol=1e-5)
    assert stored.attrs["val_rows"] == [[413, 450]]


def test_a_validation_fraction_of_no_rows_is_refused(tmp_path: Path) -> None:
    masks, margins, _ = planted(100, 10, 2)
    build_store(tmp_path / "store", masks, margins, block=50)
    before = tree_snapshot(tmp_path / "store")
    with pytest.raises(InputError, match="val_fraction") as err:
        fit_datamodels(tmp_path / "store", name="dm", val_fraction=0.004)  # round(0.4) = 0 rows
    assert err.value.params == ("val_fraction",)
    assert tree_snapshot(tmp_path / "store") == before


def _spec(tmp_path: Path, **changes: object) -> SweepSpec:
    fields = dict(store=str(tmp_path / "sweep.zarr"), recipe={"name": "noop", "params": {"n_train": 40, "n_test": 6}},
                  alpha=0.5, num_models=24, block=12, seed=3)
    return SweepSpec(**{**fields, **changes})


def test_replicates_share_masks_and_not_seeds(tmp_path: Path) -> None:
    spec = _spec(tmp_path, replicates=3)
    create_store(spec)
    runner = BlockRunner(spec.store, device="cpu")
    ledger = SweepStore.open(spec.store, mode="r+").ledger
    for block_id in (0, 1):
        receipt = runner.run(block_id)  # what a worker does; the driver then ledgers the receipt
        ledger.mark_complete(block_id, checksum=receipt.checksum, seconds=receipt.seconds, node=receipt.node)
    store = SweepStore.open(spec.store)
    masks = store.read("masks", slice(0, 24))
    for i in range(24):
        np.testing.assert_array_equal(masks[i], subset_mask(3, i // 3, 40, 0.5))  # mask of model i is mask i // R
    np.testing.assert_array_equal(block_masks(3, range(5, 11), 40, 0.5, 3), masks[5:11])
    assert len({model_seed(3, i) for i in range(24)}) == 24
    margins = store.read("margins/test", slice(0, 24))
    assert not np.array_equal(margins[0], margins[1])  # the replicates trained with other seeds
    # replicates=1 leaves the hash of a spec that never had the field as it was
    assert spec_hash(_spec(tmp_path)) == spec_hash(_spec(tmp_path, replicates=1))
    assert spec_hash(_spec(tmp_path)) != spec_hash(_spec(tmp_path, replicates=2))


@pytest.mark.parametrize(("changes", "needle"), [
    ({"replicates": 5}, "must divide block"),
    ({"replicates": 0}, "replicates"),
    ({"replicates": 2, "alpha": None, "masks_file": "m.npy"}, "masks_file"),
])
def test_bad_replicates_in_a_spec_exit_2(tmp_path: Path, changes: dict, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        _spec(tmp_path, **changes)
    spec = tmp_path / "spec.yaml"
    fields = {**_spec(tmp_path).model_dump(mode="json"), **changes}
    import yaml

    spec.write_text(yaml.safe_dump(fields))
    result = CliRunner().invoke(app, ["init", str(spec)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "sweep.zarr").exists()


def test_replicate_lds_equals_a_hand_computation(tmp_path: Path) -> None:
    masks, margins, beta = planted(600, 30, 5, noise=0.3, seed=12)
    build_store(tmp_path / "fit", masks, margins, block=100)
    fit_datamodels(tmp_path / "fit", name="dm", config=SolverConfig(n_alphas=15, eps=1e-3, batch_size=200))
    # An evaluation set of 40 masks × 3 replicates: the same mask, independent noise per replicate.
    rng = np.random.default_rng(1)
    eval_masks = np.repeat(block_masks(99, range(40), 30, 0.5), 3, axis=0)
    offset = margins.astype(np.float64).mean(0) - (masks @ beta).mean(0)
    eval_margins = (eval_masks @ beta + offset + rng.normal(0, 1.0, size=(120, 5))).astype(np.float16)
    np.save(tmp_path / "em.npy", eval_masks)
    np.save(tmp_path / "eg.npy", eval_margins)
    import_npy(tmp_path / "em.npy", tmp_path / "eg.npy", tmp_path / "eval", block=30, replicates=3)
    result = evaluate_lds(tmp_path / "fit", name="dm", eval_store=tmp_path / "eval")
    dm = read_datamodels(SweepStore.open(tmp_path / "fit").group, "dm")
    pred = eval_masks.astype(np.float32) @ dm.weight + dm.bias
    actual = eval_margins.astype(np.float32)
    each = np.mean([spearmanr(pred[:, t], actual[:, t])[0] for t in range(5)])
    mean_actual = actual.reshape(40, 3, 5).mean(1)
    against_mean = np.mean([spearmanr(pred[::3, t], mean_actual[:, t])[0] for t in range(5)])
    assert result.replicates == 3 and result.n_masks == 40 and result.n_models == 120
    assert result.lds == pytest.approx(each, abs=1e-6)
    assert result.lds_mean == pytest.approx(against_mean, abs=1e-6)
    assert result.lds_mean > result.lds  # averaging removes part of the noise
    assert "3 replicates" in result.protocol and "40 masks" in result.protocol
    stored = read_datamodels(SweepStore.open(tmp_path / "fit").group, "dm").attrs["lds"]
    assert stored["lds_mean"] == pytest.approx(against_mean, abs=1e-6) and stored["protocol"] == result.protocol
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "fit"), "--name", "dm", "--eval-store", str(tmp_path / "eval")])
    assert out.exit_code == 0 and "against the mean of 3 replicates" in out.stdout and "protocol:" in out.stdout
    # rows that split a replicate group: exit 2, one line, nothing written
    before = tree_snapshot(tmp_path)
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "fit"), "--name", "dm", "--eval-store",
                                   str(tmp_path / "eval"), "--rows", "0:50"])
    assert bad.exit_code == 2 and "replicate" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert tree_snapshot(tmp_path) == before


def test_cli_fit_defaults_and_no_refit(tmp_path: Path) -> None:
    masks, margins, _ = planted(300, 20, 3, seed=13)
    build_store(tmp_path / "store", masks, margins, block=60)
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", str(tmp_path / "store"), "--name", "dm", "--k", "10", "--val-fraction", "0.125",
                                 "--no-progress", "--json"])
    assert fitted.exit_code == 0, fitted.stderr
    import json

    result = json.loads(fitted.stdout)
    assert (result["n_train_rows"], result["n_val_rows"]) == (262, 38)  # round(0.125 * 300): not a block edge
    assert result["config"]["refit"] is True and result["config"]["lr"] == "auto"
    human = runner.invoke(app, ["fit", str(tmp_path / "store"), "--name", "raw", "--k", "10", "--no-refit",
                                "--no-progress"])
    assert human.exit_code == 0, human.stderr
    assert "--no-refit" in human.stdout and "--lr auto" in human.stdout  # the settings it ran with
    group = read_datamodels(SweepStore.open(tmp_path / "store").group, "raw")
    assert group.attrs["config"]["refit"] is False
