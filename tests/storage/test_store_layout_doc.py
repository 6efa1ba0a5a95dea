"""docs/store-layout.md's reader examples run as written on a real store with datamodels."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from regression.config import SolverConfig
from regression.fit import fit_datamodels
from storage.sweep_store import SweepStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "regression"))
from dm_helpers import build_store, planted  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "store-layout.md"


def example(section: str) -> str:
    """The first python block under the heading ``## section``."""
    text = DOC.read_text()
    body = text[text.index(f"## {section}\n"):]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("layout") / "demo.zarr"
    masks, margins, _ = planted(300, 20, 4, seed=2)
    built = build_store(store, masks, margins, block=50, complete=[0, 1, 2, 4, 5])  # block 3 never completed
    built.ledger.compact()  # what a run's end does: Zarr readers see the ledger as of the last compaction
    fit_datamodels(store, name="dm", config=SolverConfig(n_alphas=8, max_epochs=20), rows=slice(0, 300))
    return store


def run(code: str, store: Path) -> dict[str, object]:
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about anything outside the hierarchy
        exec(compile(code.replace('"runs/demo.zarr"', repr(str(store))), str(DOC), "exec"), namespace)
    return namespace


def test_the_xarray_example_reads_completed_rows_and_predicts(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("xarray")
    found = run(example("xarray"), demo)
    store = SweepStore.open(demo)
    rows = store.completed_rows()
    assert rows.tolist() == [*range(0, 150), *range(200, 300)]
    np.testing.assert_array_equal(found["done"].values, store.read("margins/test", rows))  # type: ignore[attr-defined]
    assert found["predicted"].dims == ("model", "target")  # type: ignore[attr-defined]
    assert "('model', 'target')" in capsys.readouterr().out


def test_the_dask_example_runs(demo: Path) -> None:
    pytest.importorskip("dask.array")
    found = run(example("dask"), demo)
    assert np.asarray(found["mean_margin"]).shape == (4,)


def test_the_tensorstore_example_reads_the_masks(demo: Path) -> None:
    pytest.importorskip("tensorstore")
    local = example("tensorstore").split("margins = ts.open")[0]  # the rest reads a bucket of the reader's
    found = run(local.replace('"runs/demo.zarr/masks/"', repr(f"{demo}/masks/")), demo)
    expected = SweepStore.open(demo).array("masks")[0:64]
    np.testing.assert_array_equal(found["rows"], expected)
