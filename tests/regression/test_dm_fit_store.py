"""fit_datamodels / evaluate_lds / import-export on real Zarr stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dm_helpers import build_store, planted

from snapshots import tree_snapshot
from regression import SolverConfig, solve_source
from regression.fit import fit_datamodels
from regression.lds import evaluate_lds
from regression.loader import StoreSource, split_batches
from storage.published import export, import_npy
from storage.datamodels import finished_shards, list_datamodels, open_datamodels, read_datamodels
from storage.errors import InputError
from storage.sweep_store import SweepStore

FAST = SolverConfig(n_alphas=25, eps=1e-4, lr="auto", batch_size=200, tol=1e-4, max_epochs=100)


def fast(**changes: object) -> SolverConfig:
    """FAST with some settings changed."""
    return SolverConfig(**{**FAST.model_dump(), **changes})


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    masks, margins, _ = planted(1000, 40, 9, noise=0.2)
    path = tmp_path_factory.mktemp("dm") / "store"
    # block 7 (rows 350..399) is missing: fits must use completed rows only
    build_store(path, masks, margins, block=50, complete=[b for b in range(20) if b != 7])
    return path


def test_streamed_equals_in_memory(store_path: Path) -> None:
    store = SweepStore.open(store_path)
    rows = store.completed_rows()[:700]
    src = StoreSource(store, rows=rows, output="margins/test", targets=slice(2, 7), device=torch.device("cpu"),
                      queue_depth=1)
    cuts = src.cut_points()
    train, val = split_batches(cuts, 0, 600, 200), split_batches(cuts, 600, 700, 200)
    cfg = fast(n_alphas=12, tol=1e-3, refit=True)
    streamed = solve_source(src, train=train, val=val, config=cfg)
    resident = solve_source(src.load(), train=train, val=val, config=cfg)
    np.testing.assert_array_equal(streamed.lam_index, resident.lam_index)
    np.testing.assert_allclose(streamed.weight, resident.weight, rtol=0, atol=1e-6)
    np.testing.assert_allclose(streamed.bias, resident.bias, atol=1e-6)


def test_table_in_a_file_equals_table_in_memory(store_path: Path, tmp_path: Path) -> None:
    store = SweepStore.open(store_path)
    rows = store.completed_rows()[:700]
    src = StoreSource(store, rows=rows, output="margins/test", targets=slice(0, 9), device=torch.device("cpu"))
    cuts = src.cut_points()
    train, val = split_batches(cuts, 0, 600, 200), split_batches(cuts, 600, 700, 200)
    cfg = fast(n_alphas=12, tol=1e-3, refit=True)
    data = src.load()
    table_file = tmp_path / "scratch" / "dm-shard0000.table"
    on_disk = solve_source(data, train=train, val=val, config=cfg, table_file=table_file)
    in_memory = solve_source(data, train=train, val=val, config=cfg)
    np.testing.assert_array_equal(on_disk.lam_index, in_memory.lam_index)
    np.testing.assert_array_equal(on_disk.weight, in_memory.weight)
    assert not table_file.parent.exists()  # the file and its folder are gone afterwards


@pytest.mark.parametrize("engine", ["saga", "gram"])
def test_fit_sharded_equals_unsharded_and_lds(store_path: Path, engine: str) -> None:
    config = fast(engine=engine)
    one = fit_datamodels(store_path, name="one", rows=slice(0, 800), config=config, overwrite=True)
    three = fit_datamodels(store_path, name="three", rows=slice(0, 800), shards=3, config=config, overwrite=True)
    assert (one.shards, three.shards) == (1, 3)
    assert one.n_train_rows + one.n_val_rows == 750  # block 7 is not completed
    root = SweepStore.open(store_path).group
    a, b = read_datamodels(root, "one"), read_datamodels(root, "three")
    np.testing.assert_allclose(a.lam, b.lam, rtol=1e-6)
    # SAGA's fp32 trajectories do not depend on the shard; the Gram engine's bf16 products
    # round differently with the shard's shape, so its shards agree to the solver's tolerance.
    atol = 1e-5 if engine == "saga" else 10 * config.tol * float(np.abs(a.weight).max())
    np.testing.assert_allclose(a.weight, b.weight, atol=atol)
    np.testing.assert_allclose(a.bias, b.bias, atol=atol)
    assert {r["engine"] for r in finished_shards(open_datamodels(root, "three")).values()} == {engine}
    assert a.weight.shape == (40, 9) and (a.nnz > 0).all() and (a.n_epochs > 0).all()
    # raw space: masks @ weight + bias predicts held-out margins
    lds = evaluate_lds(store_path, name="one")
    assert lds.n_models == 200 and lds.rows == [[800, 1000]] and lds.n_constant == 0
    assert lds.lds > 0.8 and lds.pearson > 0.8
    assert open_datamodels(root, "one").attrs["datamodels"]["lds"]["lds"] == pytest.approx(lds.lds)


def test_fit_on_ray_equals_serial(store_path: Path, request: pytest.FixtureRequest) -> None:
    ray = request.getfixturevalue("ray_session")
    assert ray.is_initialized()
    kw = dict(rows=slice(0, 600), targets=slice(0, 4), config=FAST)
    # one shard never goes to Ray; two shards run as Ray tasks while Ray is initialised
    serial = fit_datamodels(store_path, name="serial", shards=1, **kw)
    distributed = fit_datamodels(store_path, name="ray", shards=2, **kw)
    assert (serial.shards_fitted, distributed.shards_fitted) == (1, 2)
    root = SweepStore.open(store_path).group
    receipts = finished_shards(open_datamodels(root, "ray"))
    assert len({r["node"] for r in receipts.values()}) >= 1 and sorted(receipts) == [0, 1]
    serial_w = read_datamodels(root, "serial").weight
    # The default Gram engine's bf16 products round with the shard's shape: equal to its tolerance.
    np.testing.assert_allclose(serial_w, read_datamodels(root, "ray").weight,
                               atol=10 * FAST.tol * float(np.abs(serial_w).max()))


def test_resume_skips_finished_shards(store_path: Path) -> None:
    kw = dict(name="resume", rows=slice(0, 600), shards=3, config=FAST)
    first = fit_datamodels(store_path, **kw)
    assert (first.shards_fitted, first.shards_skipped) == (3, 0)
    again = fit_datamodels(store_path, **kw)
    assert (again.shards_fitted, again.shards_skipped) == (0, 3)
    # forget one shard (as if the fit crashed before recording it): only it is refitted
    group = open_datamodels(SweepStore.open(store_path, mode="r+").group, "resume")
    meta = dict(group.attrs["datamodels"])
    meta["finished_shards"] = {k: v for k, v in meta["finished_shards"].items() if k != "1"}
    group.attrs["datamodels"] = meta
    partial = fit_datamodels(store_path, **kw)
    assert (partial.shards_fitted, partial.shards_skipped) == (1, 2)
    fresh = open_datamodels(SweepStore.open(store_path).group, "resume")
    assert sorted(finished_shards(fresh)) == [0, 1, 2]
    # other settings: refused without overwrite, replaced with it
    with pytest.raises(InputError, match="other settings"):
        fit_datamodels(store_path, **{**kw, "rows": slice(0, 500)})
    replaced = fit_datamodels(store_path, overwrite=True, **{**kw, "rows": slice(0, 500)})
    assert replaced.shards_fitted == 3


def test_import_fit_export_round_trip(tmp_path: Path) -> None:
    masks, margins, _ = planted(400, 30, 5, noise=0.1, seed=2)
    np.save(tmp_path / "masks.npy", masks)
    np.save(tmp_path / "margins.npy", margins)
    imported = import_npy(tmp_path / "masks.npy", tmp_path / "margins.npy", tmp_path / "store", block=50)
    assert imported.num_models == 400 and (imported.n_train, imported.n_test) == (30, 5)
    store = SweepStore.open(tmp_path / "store")
    np.testing.assert_array_equal(store.read("masks", slice(0, 400)), masks)
    fit_datamodels(tmp_path / "store", name="dm", rows=slice(0, 300), config=fast(refit=True))
    out = export(tmp_path / "store", "dm", "pt", tmp_path / "dm.pt")
    data = torch.load(out, weights_only=True)
    assert set(data) == {"weight", "bias", "lam"} and data["weight"].shape == (30, 5)
    pred = torch.from_numpy(masks[300:]).float() @ data["weight"] + data["bias"]
    dm = read_datamodels(store.group, "dm")
    np.testing.assert_allclose(pred.numpy(), masks[300:] @ dm.weight + dm.bias, atol=1e-5)
    assert np.corrcoef(pred.numpy().ravel(), margins[300:].astype(np.float32).ravel())[0, 1] > 0.95
    npy = export(tmp_path / "store", "dm", "npy", tmp_path / "dm_npy")
    np.testing.assert_array_equal(np.load(npy / "weight.npy"), dm.weight)
    with pytest.raises(InputError, match="exists"):
        export(tmp_path / "store", "dm", "pt", tmp_path / "dm.pt")


def _bad_fit_calls(path: Path) -> list[tuple[dict, str]]:
    return [
        ({"rows": slice(0, 5000)}, "outside"),
        ({"rows": slice(350, 400)}, "completed rows"),  # only the incomplete block
        ({"targets": slice(5, 20)}, "outside"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.0}, "eps"),
        ({"lr": 0.0}, "lr"),
        ({"n_alphas": 0}, "n_alphas"),
        ({"shards": 0}, "shards"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"device": "tpu"}, "device"),
        ({"max_memory": 1 << 20}, "max_memory"),
    ]


def test_bad_fit_inputs_write_nothing(store_path: Path) -> None:
    before = tree_snapshot(store_path)
    for kwargs, match in _bad_fit_calls(store_path):
        settings = {k: v for k, v in kwargs.items() if k in SolverConfig.model_fields}
        rest = {k: v for k, v in kwargs.items() if k not in settings}
        with pytest.raises(InputError, match=match) as err:
            fit_datamodels(store_path, name="bad", config=SolverConfig(**settings), **rest)
        assert set(err.value.params) & set(kwargs), (kwargs, err.value.params)
    assert tree_snapshot(store_path) == before
    assert "bad" not in list_datamodels(SweepStore.open(store_path).group)


def test_nan_margins_and_empty_store_refused(tmp_path: Path) -> None:
    masks, margins, _ = planted(200, 20, 3)
    margins[120, 1] = np.nan
    build_store(tmp_path / "nan", masks, margins, block=50)
    build_store(tmp_path / "empty", masks, margins, block=50, complete=[])
    for name, match in (("nan", "NaN"), ("empty", "completed rows")):
        before = tree_snapshot(tmp_path / name)
        with pytest.raises(InputError, match=match):
            fit_datamodels(tmp_path / name, name="dm", config=FAST)
        assert tree_snapshot(tmp_path / name) == before


def test_bad_eval_inputs(store_path: Path, tmp_path: Path) -> None:
    fit_datamodels(store_path, name="evalme", rows=slice(0, 600), config=FAST)
    before = tree_snapshot(store_path)
    with pytest.raises(InputError, match="available"):
        evaluate_lds(store_path, name="nope")
    with pytest.raises(InputError, match="used to fit") as err:
        evaluate_lds(store_path, name="evalme", rows=slice(500, 700))
    assert err.value.params == ("rows",)
    masks, margins, _ = planted(100, 25, 9)
    other = build_store(tmp_path / "other", masks, margins, block=50)
    with pytest.raises(InputError, match="n_train") as err:
        evaluate_lds(store_path, name="evalme", eval_store=other.path)
    assert err.value.params == ("eval_store",)
    assert tree_snapshot(store_path) == before
    # a separate eval store of the same dataset works
    masks, margins, _ = planted(1000, 40, 9, noise=0.2)
    fresh = build_store(tmp_path / "fresh", masks[-100:], margins[-100:], block=50)
    assert evaluate_lds(store_path, name="evalme", eval_store=fresh.path).n_models == 100


def test_bad_import_inputs_write_nothing(tmp_path: Path) -> None:
    masks, margins, _ = planted(100, 10, 3)
    np.save(tmp_path / "masks.npy", masks)
    np.save(tmp_path / "masks_f32.npy", masks.astype(np.float32))
    np.save(tmp_path / "margins.npy", margins)
    np.save(tmp_path / "margins_short.npy", margins[:90])
    nan = margins.copy()
    nan[95, 0] = np.nan
    np.save(tmp_path / "margins_nan.npy", nan)
    # uint8 masks and a block that does not divide the rows are fine now (tests/regression/test_import_published.py)
    cases = [
        ("masks_f32.npy", "margins.npy", 50, "bool"),
        ("masks.npy", "margins_short.npy", 50, "rows"),
        ("masks.npy", "margins_nan.npy", 50, "NaN"),
        ("masks.npy", "margins.npy", 0, "block"),
        ("missing.npy", "margins.npy", 50, "cannot read"),
    ]
    for m, g, block, match in cases:
        with pytest.raises(InputError, match=match):
            import_npy(tmp_path / m, tmp_path / g, tmp_path / "store", block=block)
        assert not (tmp_path / "store").exists()


def test_memory_plan_streams_when_masks_exceed_the_bound() -> None:
    from regression.memory import current_rss, plan_memory

    kw = dict(n_rows=10_000, n_features=10_000, n_targets=10, output_width=10, batch_rows=500,
              device=torch.device("cpu"))
    rss = current_rss()
    assert plan_memory(max_memory=rss + (1 << 30), **kw).masks_resident  # 100 MB of masks fit in 1 GiB
    streamed = plan_memory(max_memory=rss + (200 << 20), **kw)
    assert not streamed.masks_resident and streamed.host_bytes < 200 << 20
    with pytest.raises(InputError, match="max_memory"):
        plan_memory(max_memory=rss + (10 << 20), **kw)


def test_memory_plan_puts_the_table_in_a_file_only_as_a_last_resort() -> None:
    from regression.memory import current_rss, plan_memory

    # 200,000 rows × 1,000 targets: an 800 MB table, with small masks and state.
    kw = dict(n_rows=200_000, n_features=1_000, n_targets=1_000, output_width=1_000, batch_rows=500,
              device=torch.device("cpu"))
    rss = current_rss()
    roomy = plan_memory(max_memory=rss + (4 << 30), **kw)
    assert roomy.table_on_device and not roomy.table_on_disk
    tight = plan_memory(max_memory=rss + (300 << 20), **kw)
    assert tight.table_on_disk and not tight.masks_resident and tight.host_bytes < 300 << 20
    with pytest.raises(InputError, match="max_memory"):
        plan_memory(max_memory=rss + (20 << 20), **kw)


def test_memory_plan_counts_what_follows_the_chosen_lambda() -> None:
    from regression.memory import current_rss, plan_memory, state_units

    assert state_units(refit=False) < state_units() < state_units(debias="ls") < state_units(debias="relaxed")
    # 20,000 features × 2,000 targets: 160 MB per [N, T] buffer, so the buffers decide the plan.
    kw = dict(n_rows=2_000, n_features=20_000, n_targets=2_000, output_width=2_000, batch_rows=500,
              device=torch.device("cpu"))
    rss = current_rss()
    bound = rss + int((state_units() * 160e6 + 400e6) / 0.75)  # the buffers, the batches and a margin
    plan_memory(max_memory=bound, **kw)  # the default fit (refit) fits
    with pytest.raises(InputError, match="max_memory"):
        plan_memory(max_memory=bound, units=state_units(debias="ls"), **kw)


class _Recorder:
    """A FitProgress that writes down every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def fit_started(self, *, shards: int, steps: int) -> None:
        self.calls.append(("fit_started", shards, steps))

    def lambda_step(self, done: int, total: int, alive: int) -> None:
        self.calls.append(("lambda_step", done, total, alive))

    def shard_finished(self) -> None:
        self.calls.append(("shard_finished",))

    def fit_finished(self) -> None:
        self.calls.append(("fit_finished",))


def test_fit_progress_is_told_in_order(store_path: Path) -> None:
    import re

    from regression import FitProgress

    recorder = _Recorder()
    _: FitProgress = recorder  # a Protocol: any object with these four methods is one
    fit_datamodels(store_path, name="progress", rows=slice(0, 600), targets=slice(0, 3), config=FAST,
                   progress=recorder)
    kinds = [c[0] for c in recorder.calls]
    assert kinds[0] == "fit_started" and recorder.calls[0][1:] == (1, FAST.n_alphas)
    assert kinds[-2:] == ["shard_finished", "fit_finished"]
    steps = [c for c in recorder.calls if c[0] == "lambda_step"]
    assert steps and [c[1] for c in steps] == list(range(1, len(steps) + 1))
    assert all(total == FAST.n_alphas and 0 <= alive <= 3 for _, _, total, alive in steps)
    assert kinds == ["fit_started", *["lambda_step"] * len(steps), "shard_finished", "fit_finished"]

    # Three shards (as Ray tasks if a test before started Ray: those report no λ steps).
    sharded = _Recorder()
    fit_datamodels(store_path, name="progress3", rows=slice(0, 600), config=FAST, shards=3, progress=sharded)
    sequence = " ".join(c[0] for c in sharded.calls)
    assert re.fullmatch(r"fit_started( lambda_step)*(( lambda_step)* shard_finished){3} fit_finished", sequence)
    assert sharded.calls[0] == ("fit_started", 3, FAST.n_alphas)

    # Resumed with nothing left to fit: started with no shards, then finished.
    again = _Recorder()
    fit_datamodels(store_path, name="progress3", rows=slice(0, 600), config=FAST, shards=3, progress=again)
    assert again.calls == [("fit_started", 0, FAST.n_alphas), ("fit_finished",)]
