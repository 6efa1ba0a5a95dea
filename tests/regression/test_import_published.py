"""import_npy: any row count, mask and margin dtype, train margins, evaluation models, replicates; bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dm_helpers import planted
from typer.testing import CliRunner

from snapshots import tree_snapshot
from orchestrator.cli import app
from regression import SolverConfig
from regression.fit import fit_datamodels
from regression.lds import evaluate_lds
from storage.errors import InputError
from storage.npy_rows import open_npy
from storage.published import import_npy, published_files
from storage.sweep_store import SweepStore

FAST = SolverConfig(n_alphas=15, eps=1e-3, batch_size=200)


def _save(folder: Path, **arrays: np.ndarray) -> dict[str, Path]:
    paths = {}
    for name, array in arrays.items():
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], array)
    return paths


@pytest.mark.parametrize("rows", [1, 97, 51])  # one row, a prime, block + 1
def test_odd_row_counts_round_trip_bit_exact(tmp_path: Path, rows: int) -> None:
    rng = np.random.default_rng(rows)
    masks = rng.random((rows, 23)) < 0.5
    margins = rng.normal(size=(rows, 7)).astype(np.float16)
    train = rng.normal(size=(rows, 23)).astype(np.float16)
    paths = _save(tmp_path, masks=masks, margins=margins, train=train)
    result = import_npy(paths["masks"], paths["margins"], tmp_path / "store", train_margins=paths["train"], block=50)
    assert result.num_models == rows and result.outputs == ["margins/test", "margins/train"]
    store = SweepStore.open(tmp_path / "store")
    assert store.num_models == rows and store.completed_rows().tolist() == list(range(rows))
    np.testing.assert_array_equal(store.read("masks", slice(0, rows)), masks)
    assert store.read("margins/test", slice(0, rows)).tobytes() == margins.tobytes()
    assert store.read("margins/train", slice(0, rows)).tobytes() == train.tobytes()
    assert result.bytes_read == masks.nbytes + margins.nbytes + train.nbytes


def test_uint8_masks_and_float32_margins(tmp_path: Path) -> None:
    masks, margins, _ = planted(120, 15, 4, seed=5)
    paths = _save(tmp_path, masks=masks.astype(np.uint8), margins=margins.astype(np.float32))
    import_npy(paths["masks"], paths["margins"], tmp_path / "store", block=32)
    store = SweepStore.open(tmp_path / "store")
    np.testing.assert_array_equal(store.read("masks", slice(0, 120)), masks)
    assert store.read("margins/test", slice(0, 120)).tobytes() == margins.astype(np.float16).tobytes()


def test_the_reader_reads_row_ranges_of_any_npy(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(12, 5)
    np.save(tmp_path / "a.npy", data)
    rows = open_npy(tmp_path / "a.npy", param="masks")
    assert rows.shape == (12, 5) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[3:7], data[3:7])
    np.testing.assert_array_equal(rows[10:12], data[10:])
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    with pytest.raises(InputError, match="Fortran") as err:
        open_npy(tmp_path / "f.npy", param="margins")
    assert err.value.params == ("margins",)


def test_evaluation_models_in_the_same_store_are_left_out_of_the_fit_and_used_by_eval(tmp_path: Path) -> None:
    masks, margins, _ = planted(500, 30, 5, noise=0.2, seed=7)
    folder = tmp_path / "cifar" / "data"
    folder.mkdir(parents=True)
    _save(folder, train_masks_50pct=masks, test_margins_50pct=margins)
    files = published_files(folder, 50)
    result = import_npy(files["masks"], files["margins"], tmp_path / "store", block=64, eval_models=120,
                        source="published")
    assert result.eval_rows == [380, 500] and result.num_models == 500
    fit = fit_datamodels(tmp_path / "store", name="dm", config=FAST)
    assert fit.n_train_rows + fit.n_val_rows == 380  # the evaluation models stay out
    lds = evaluate_lds(tmp_path / "store", name="dm")
    assert lds.rows == [[380, 500]] and lds.n_models == 120 and lds.lds > 0.5
    with pytest.raises(InputError, match="evaluation models") as err:
        fit_datamodels(tmp_path / "store", name="dm2", rows=slice(0, 450), config=FAST)
    assert err.value.params == ("rows",)


def test_evaluation_models_in_a_store_of_their_own(tmp_path: Path) -> None:
    masks, margins, _ = planted(300, 30, 5, noise=0.2, seed=8)
    paths = _save(tmp_path, masks=masks, margins=margins)
    result = import_npy(paths["masks"], paths["margins"], tmp_path / "fit", block=64, eval_models=100,
                        eval_store=tmp_path / "eval")
    assert result.num_models == 200 and result.eval_store == str(tmp_path / "eval") and result.eval_rows is None
    evaluation = SweepStore.open(tmp_path / "eval")
    np.testing.assert_array_equal(evaluation.read("masks", slice(0, 100)), masks[200:])
    fit_datamodels(tmp_path / "fit", name="dm", config=FAST)
    lds = evaluate_lds(tmp_path / "fit", name="dm", eval_store=tmp_path / "eval")
    assert lds.n_models == 100 and lds.lds > 0.5


def _bad_imports(tmp_path: Path) -> list[tuple[dict, dict, str, tuple[str, ...]]]:
    masks, margins, _ = planted(100, 10, 3)
    nan = margins.copy()
    nan[95, 0] = np.nan
    twos = masks.astype(np.uint8)
    twos[40, 3] = 2
    paths = _save(tmp_path, masks=masks, margins=margins, short=margins[:90], nan=nan, twos=twos,
                  floats=masks.astype(np.float32), ints=margins.astype(np.int32),
                  big=np.full((100, 3), 1e6, dtype=np.float32), flat=masks[:, 0].copy(),
                  train=np.zeros((100, 9), dtype=np.float16))
    good = {"masks": paths["masks"], "margins": paths["margins"]}
    return [
        ({**good, "margins": paths["short"]}, {}, "rows", ("masks", "margins")),
        ({**good, "margins": paths["nan"]}, {}, "NaN", ("margins",)),
        ({**good, "margins": paths["big"]}, {}, "infinite", ("margins",)),
        ({**good, "masks": paths["twos"]}, {}, "0 and 1", ("masks",)),
        ({**good, "masks": paths["floats"]}, {}, "bool", ("masks",)),
        ({**good, "margins": paths["ints"]}, {}, "float", ("margins",)),
        ({**good, "masks": paths["flat"]}, {}, "2-D", ("masks",)),
        ({**good, "masks": tmp_path / "missing.npy"}, {}, "cannot read", ("masks",)),
        (good, {"train_margins": paths["train"]}, "columns", ("train_margins",)),
        (good, {"block": 0}, "block", ("block",)),
        (good, {"eval_models": 100}, "eval_models", ("eval_models",)),
        (good, {"replicates": 3}, "replicates", ("replicates",)),  # 100 rows are not groups of 3
        (good, {"replicates": 2}, "replicates", ("replicates",)),  # random masks: pairs differ
        (good, {"replicates": 4, "block": 30}, "multiple", ("block", "replicates")),
    ]


def test_bad_imports_exit_2_with_one_line_and_write_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cases = _bad_imports(folder)
    before = tree_snapshot(tmp_path)
    for files, options, match, params in cases:
        with pytest.raises(InputError, match=match) as err:
            import_npy(files["masks"], files["margins"], tmp_path / "store", **options)
        assert err.value.params == params, (match, err.value.params)
        assert tree_snapshot(tmp_path) == before, match
    runner = CliRunner()
    for files, options, match, _ in cases:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        result = runner.invoke(app, ["import-npy", str(tmp_path / "store"), "--masks", str(files["masks"]),
                                     "--margins", str(files["margins"]), "--no-progress", *flags])
        assert result.exit_code == 2, (match, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert tree_snapshot(tmp_path) == before, match


def test_cli_published_layout_and_replicates(tmp_path: Path) -> None:
    masks, margins, _ = planted(60, 12, 3, seed=4)
    masks = np.repeat(masks[:20], 3, axis=0)  # 20 masks, 3 replicates each
    folder = tmp_path / "data"
    folder.mkdir()
    _save(folder, train_masks_20pct=masks, test_margins_20pct=margins)
    result = CliRunner().invoke(app, ["import-npy", str(tmp_path / "store"), "--published", str(folder), "--pct", "20",
                                      "--eval-models", "30", "--replicates", "3", "--block", "18", "--json"])
    assert result.exit_code == 0, result.stderr
    made = json.loads(result.stdout)
    assert made["eval_rows"] == [30, 60] and made["replicates"] == 3 and made["block"] == 18
    provenance = SweepStore.open(tmp_path / "store").metadata.provenance
    assert provenance.source == "published" and provenance.replicates == 3 and provenance.eval_rows == (30, 60)
    missing = CliRunner().invoke(app, ["import-npy", str(tmp_path / "other"), "--published", str(folder), "--pct", "50"])
    assert missing.exit_code == 2 and "--published" in missing.stderr and not (tmp_path / "other").exists()
