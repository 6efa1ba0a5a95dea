"""The legacy adapter runs ``main(index, logdir) -> dict`` scripts and checks what they return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_block, write_script

from storage.errors import BlockFailedError, RecipeError
from workers.recipe import build_recipe

def run_legacy(tmp_path: Path, tweak: str = "pass") -> dict[str, np.ndarray]:
    recipe = build_recipe("legacy", {"script": str(write_script(tmp_path, tweak)), "n_train": 12, "n_test": 5})
    recipe.setup("cpu")
    work = tmp_path / "work"
    work.mkdir()
    return recipe.train_block(make_block(12, rows=range(10, 13), workdir=work))


def test_legacy_script_runs_per_index(tmp_path: Path) -> None:
    out = run_legacy(tmp_path)
    assert out["masks"].shape == (3, 12) and out["masks"].dtype == bool
    assert out["margins/test"].shape == (3, 5) and out["margins/test"].dtype == np.float32
    assert out["masks"].sum(axis=1).tolist() == [6, 6, 6]
    expected = np.random.default_rng(11)
    expected.permutation(12)
    np.testing.assert_allclose(out["margins/test"][1], expected.normal(size=5).astype(np.float32))
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["10", "11", "12"]
    assert (tmp_path / "work" / "12" / "done.json").is_file()


@pytest.mark.parametrize(
    ("tweak", "needle"),
    [
        ("del out['margins']", "model 10: legacy main returned no margins"),
        ("out['masks'] = out['masks'].astype(np.int64)", "masks has dtype int64, expected bool"),
        ("out['masks'] = out['masks'][:-1]", r"masks has shape \(11,\), expected \(12,\)"),
        ("out['margins'] = np.zeros((5, 2), np.float32)", r"margins has shape \(5, 2\)"),
        ("out['margins'] = np.arange(5)", "margins has dtype int64"),
        ("out['margins'][0] = np.nan", "non-finite"),
        ("out = [out]", "returned list"),
        ("raise ValueError('boom')", r"main\(10, \.\.\.\) raised ValueError: boom"),
    ],
)
def test_bad_legacy_outputs_fail_the_block(tmp_path: Path, tweak: str, needle: str) -> None:
    with pytest.raises(BlockFailedError, match=needle):
        run_legacy(tmp_path, tweak)


def test_legacy_module_path_and_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_script(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = build_recipe("legacy", {"script": "train_legacy:main", "n_train": 12, "n_test": 5})
    recipe.setup("cpu")
    out = recipe.train_block(make_block(12, rows=range(2), workdir=tmp_path))
    assert out["margins/test"].shape == (2, 5)


def test_legacy_bad_script_params(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe.params.script"):
        build_recipe("legacy", {"script": str(tmp_path / "missing.py"), "n_train": 3, "n_test": 2})
    with pytest.raises(RecipeError, match="recipe.params.n_test"):
        build_recipe("legacy", {"script": str(write_script(tmp_path)), "n_train": 3})
    recipe = build_recipe("legacy", {"script": f"{write_script(tmp_path)}:train", "n_train": 12, "n_test": 5})
    with pytest.raises(RecipeError, match="no function 'train'"):
        recipe.setup("cpu")
