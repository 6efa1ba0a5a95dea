"""Bad input to every analysis command: exit 2, one line on stderr, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import invoke, planted_store, write_truth

from snapshots import tree_snapshot

COMMANDS = {
    "counterfactual": ["analyze", "counterfactual", "{store}", "--targets", "0", "--remove", "1"],
    "brittleness": ["analyze", "brittleness", "{store}"],
    "neighbors": ["analyze", "neighbors", "{store}"],
    "leakage": ["analyze", "leakage", "{store}"],
    "embed": ["analyze", "embed", "{store}", "--clusters", "2", "--components", "2"],
    "lds-curve": ["analyze", "lds-curve", "{store}"],
    "report": ["report", "{store}"],
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``with.zarr`` (datamodels ``truth``) and ``without.zarr`` (none) in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    _, beta, bias = planted_store(root / "with.zarr", m=128, n_train=12, n_test=4)
    write_truth(root / "with.zarr", "truth", beta, bias, rows=64)
    planted_store(root / "without.zarr", m=64, n_train=12, n_test=4)
    (root / "empty.txt").write_text("\n")
    np.save(root / "floats.npy", np.array([0.5, 1.5]))
    (root / "a-file").write_text("not a folder")
    return root


def assert_refused(root: Path, args: list[str], *needles: str) -> None:
    before = tree_snapshot(root)
    result = invoke(*args)
    assert result.exit_code == 2, (args, result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert tree_snapshot(root) == before, args


def command(kind: str, store: Path, *extra: str) -> list[str]:
    return [a.format(store=store) for a in COMMANDS[kind]] + list(extra)


@pytest.mark.parametrize("kind", COMMANDS)
def test_unknown_datamodels_name(stores: Path, kind: str) -> None:
    assert_refused(stores, command(kind, stores / "with.zarr", "--name", "nope"), "no datamodels named 'nope'", "truth")


@pytest.mark.parametrize("kind", COMMANDS)
def test_store_without_datamodels(stores: Path, kind: str) -> None:
    assert_refused(stores, command(kind, stores / "without.zarr"), "has no datamodels", "dmsweep fit")


@pytest.mark.parametrize("kind", COMMANDS)
def test_no_store(stores: Path, kind: str) -> None:
    assert_refused(stores, command(kind, stores / "missing.zarr"), "no store at")


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "counterfactual", "{store}", "--targets", "4", "--remove", "1"],
        ["analyze", "counterfactual", "{store}", "--targets", "0:9", "--remove", "1"],
        ["analyze", "brittleness", "{store}", "--targets", "7"],
        ["analyze", "neighbors", "{store}", "--targets", "-1"],
        ["analyze", "embed", "{store}", "--targets", "0:5"],
        ["analyze", "lds-curve", "{store}", "--targets", "0:5"],
    ],
)
def test_target_out_of_range(stores: Path, args: list[str]) -> None:
    assert_refused(stores, [a.format(store=stores / "with.zarr") for a in args], "targets")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--remove", ""], "--remove is empty"),
        (["--remove", " , "], "--remove is empty"),
        (["--remove-file", "{root}/empty.txt"], "holds no indices"),
        (["--remove-file", "{root}/floats.npy"], "expected integer indices"),
        (["--remove-file", "{root}/nothing.npy"], "no file"),
        (["--remove", "12"], "outside [0, 12)"),
        (["--remove", "1", "--subset", "2"], "exactly one"),
        ([], "exactly one"),
        (["--subset", "3:3"], "outside"),
    ],
)
def test_bad_removal_or_subset(stores: Path, extra: list[str], needle: str) -> None:
    args = ["analyze", "counterfactual", str(stores / "with.zarr"), "--targets", "0"]
    assert_refused(stores, args + [e.format(root=stores) for e in extra], needle)


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", "brittleness", "{store}", "--max-k", "0"],
        ["analyze", "neighbors", "{store}", "--k", "0"],
        ["analyze", "leakage", "{store}", "--top", "0"],
        ["analyze", "embed", "{store}", "--clusters", "9"],
        ["analyze", "lds-curve", "{store}", "--points", "many"],
        ["analyze", "lds-curve", "{store}", "--points", "10000"],
        ["analyze", "leakage", "{store}", "--out", "{root}/a-file"],
        ["analyze", "brittleness", "{store}", "--verify"],  # a synthetic store names no recipe to retrain with
        ["report", "{store}", "--out", "{root}"],
        ["report", "{store}", "--lds-curve", "sometimes"],
    ],
)
def test_other_bad_options(stores: Path, args: list[str]) -> None:
    assert_refused(stores, [a.format(store=stores / "with.zarr", root=stores) for a in args])
