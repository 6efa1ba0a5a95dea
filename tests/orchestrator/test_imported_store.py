"""Every command on an imported store (data dmsweep did not train): reading ones work, training ones refuse."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from snapshots import tree_snapshot
from orchestrator.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "regression"))
from dm_helpers import planted  # noqa: E402


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imported")
    masks, margins, _ = planted(400, 40, 6, seed=3)
    np.save(root / "masks.npy", masks)
    np.save(root / "margins.npy", margins)
    store = root / "imported.zarr"
    made = invoke("import-npy", store, "--masks", root / "masks.npy", "--margins", root / "margins.npy",
                  "--block", 50, "--no-progress")
    assert made.exit_code == 0, made.stderr
    fitted = invoke("fit", store, "--name", "dm", "--rows", "0:350", "--k", 20, "--no-progress")
    assert fitted.exit_code == 0, fitted.stderr
    return store


def test_status_names_the_provenance(imported: Path) -> None:
    result = invoke("status", imported, "--json")
    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["kind"] == "import" and status["source"] == "import: npy"
    assert status["completed_models"] == 400 and status["failed_blocks"] == 0
    human = invoke("status", imported)
    assert human.exit_code == 0 and "import: npy" in human.stdout and "400/400" in human.stdout


@pytest.mark.parametrize(("command", "options"), [
    (["verify"], []),
    (["eval"], ["--name", "dm", "--rows", "350:400"]),
    (["analyze", "counterfactual"], ["--targets", "0,1", "--remove", "0:5"]),
    (["analyze", "brittleness"], []),
    (["analyze", "neighbors"], ["--targets", "0"]),
    (["analyze", "leakage"], ["--top", "3"]),
    (["analyze", "embed"], ["--components", "2", "--clusters", "2"]),
    (["analyze", "lds-curve"], ["--points", "200"]),
    (["report"], []),
])
def test_reading_commands_work(imported: Path, command: list[str], options: list[str]) -> None:
    result = invoke(*command, imported, *options, "--json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)


def test_export_works(imported: Path, tmp_path: Path) -> None:
    result = invoke("export", imported, tmp_path / "dm.pt", "--name", "dm")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "dm.pt").is_file()


@pytest.mark.parametrize(("command", "options", "needle"), [
    (["extend"], ["--num-models", "500"], "imported store"),
    (["analyze", "brittleness"], ["--verify"], "imported store"),
])
def test_training_commands_refuse_with_one_line(imported: Path, command: list[str], options: list[str],
                                                 needle: str) -> None:
    before = tree_snapshot(imported.parent)
    result = invoke(*command, imported, *options)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert tree_snapshot(imported.parent) == before
