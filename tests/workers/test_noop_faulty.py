"""The benchmark and fault-injection recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_block

from storage.errors import RecipeError
from workers.recipe import build_recipe

REPO = Path(__file__).resolve().parents[2]
ALL = ("margins/test", "margins/train", "logits/test")


def test_noop_shapes_and_determinism() -> None:
    recipe = build_recipe("noop", {"n_train": 30, "n_test": 7, "n_classes": 3})
    recipe.setup("cpu")
    block = make_block(30, rows=range(4), outputs=ALL)
    out = recipe.train_block(block)
    assert out["margins/test"].shape == (4, 7)
    assert out["margins/train"].shape == (4, 30)
    assert out["logits/test"].shape == (4, 7, 3)
    assert all(a.dtype == np.float32 for a in out.values())
    again = recipe.train_block(make_block(30, rows=range(2, 3), outputs=ALL))
    np.testing.assert_array_equal(again["margins/test"][0], out["margins/test"][2])


def test_noop_at_cifar_shapes() -> None:
    recipe = build_recipe("noop", {"n_train": 50_000, "n_test": 10_000})
    recipe.setup("cpu")
    out = recipe.train_block(make_block(50_000, rows=range(64)))
    assert out["margins/test"].shape == (64, 10_000)  # its speed is bench/bench_scheduler.py's business


def test_faulty_raise_with_traceback_and_bad_shape() -> None:
    recipe = build_recipe("faulty", {"faults": {1: "raise", 2: "bad_shape"}})
    recipe.setup("cpu")
    assert recipe.train_block(make_block(20, block_id=0))["margins/test"].shape == (4, 5)
    with pytest.raises(RuntimeError, match="injected failure in block 1"):
        recipe.train_block(make_block(20, block_id=1))
    assert recipe.train_block(make_block(20, block_id=2))["margins/test"].shape == (4, 6)


def test_faulty_fails_only_the_first_attempts(tmp_path: Path) -> None:
    params = {"faults": {3: "raise"}, "fail_attempts": 2, "state_dir": str(tmp_path)}
    recipe = build_recipe("faulty", params)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            recipe.train_block(make_block(20, block_id=3))
    assert recipe.train_block(make_block(20, block_id=3))["margins/test"].shape == (4, 5)
    # A fresh recipe (another worker process) sees the same count.
    assert build_recipe("faulty", params).train_block(make_block(20, block_id=3))["margins/test"].shape == (4, 5)


def test_faulty_crash_ends_the_process_then_recovers(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path[:0] = [{tests!r}, {repo!r}]\n"
        "from helpers import make_block\n"
        "from workers.recipe import build_recipe\n"
        "r = build_recipe('faulty', {{'faults': {{0: 'crash'}}, 'fail_attempts': 1, 'state_dir': {state!r}}})\n"
        "r.train_block(make_block(20))\n"
        "print('survived')\n"
    ).format(tests=str(Path(__file__).parent), repo=str(REPO), state=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert first.returncode == 137 and "survived" not in first.stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "survived" in second.stdout


def test_faulty_params_validation() -> None:
    with pytest.raises(RecipeError, match="state_dir is required"):
        build_recipe("faulty", {"faults": {0: "raise"}, "fail_attempts": 1})
    with pytest.raises(RecipeError, match=r"recipe\.params\.faults\.0"):
        build_recipe("faulty", {"faults": {0: "explode"}})
