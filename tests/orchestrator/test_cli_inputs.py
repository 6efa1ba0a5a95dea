"""Bad input: exit 2, one line on stderr naming what is wrong, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from snapshots import tree_snapshot
from orchestrator.cli import app

GOOD = {
    "store": "STORE",
    "recipe": {"name": "mnist1d-cnn", "params": {"epochs": 1, "width": 4, "n_train": 200, "n_test": 50}},
    "alpha": 0.5,
    "num_models": 32,
    "block": 16,
}


def write_spec(directory: Path, **changes: object) -> Path:
    spec = {**GOOD, "store": str(directory / "sweep.zarr"), **changes}
    spec = {k: v for k, v in spec.items() if v is not None}
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_refused(tmp_path: Path, args: list[str], *needles: str) -> None:
    before = tree_snapshot(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"alpha": None}, ["alpha", "required"]),
        ({"num_models": "many"}, ["num_models", "integer", "'many'"]),
        ({"alpha": 1.5}, ["alpha", "less than 1", "1.5"]),
        ({"block": 0}, ["block", "greater than 0"]),
        ({"num_models": 40}, ["multiple of block"]),
        ({"num_model": 32}, ["num_model", "Extra inputs"]),
        ({"recipe": {"name": "resnet-9000"}}, ["unknown recipe", "resnet-9000", "mnist1d-cnn"]),
        ({"recipe": {"name": "nosuchpkg.mod:Cls"}}, ["cannot import", "nosuchpkg"]),
        ({"recipe": {"name": "mnist1d-cnn", "params": {"epochs": 0}}}, ["recipe.params.epochs", "greater than or equal to 1"]),
        ({"recipe": {"name": "mnist1d-cnn", "params": {"epoch": 3}}}, ["recipe.params.epoch", "Extra inputs"]),
        ({"outputs": {"train_margins": "sometimes"}}, ["outputs.train_margins"]),
        ({"resources": {"num_cpus": -1}}, ["resources.num_cpus"]),
    ],
)
@pytest.mark.parametrize("command", ["init", "run"])
def test_invalid_spec_fields(tmp_path: Path, command: str, changes: dict, needles: list[str]) -> None:
    spec = write_spec(tmp_path, **changes)
    assert_refused(tmp_path, [command, str(spec)], *needles)


def test_unreadable_specs(tmp_path: Path) -> None:
    assert_refused(tmp_path, ["init", str(tmp_path / "missing.yaml")], "cannot read spec")
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: [unclosed\n")
    assert_refused(tmp_path, ["init", str(bad)], "not valid YAML")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    assert_refused(tmp_path, ["run", str(listing)], "expected a mapping")


def test_run_options_out_of_range(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    assert_refused(tmp_path, ["run", str(spec), "--workers", "0"], "--workers must be >= 1")
    assert_refused(tmp_path, ["run", str(spec), "--drain-timeout", "-1"], "--drain-timeout must be >= 0")


def test_store_path_holding_something_else(tmp_path: Path) -> None:
    occupied = tmp_path / "sweep.zarr"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    spec = write_spec(tmp_path)
    assert_refused(tmp_path, ["init", str(spec)], "already exists", "something else")
    assert_refused(tmp_path, ["run", str(spec)], "already exists")


def test_other_spec_on_existing_store_names_fields(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    result = invoke("init", str(spec), "--json")
    assert result.exit_code == 0, result.stderr
    assert invoke("init", str(spec)).exit_code == 0  # the same spec again is fine
    changed = write_spec(tmp_path, alpha=0.25, seed=3)
    assert_refused(tmp_path, ["run", str(changed)], "different spec", "alpha: 0.5 -> 0.25", "seed: 0 -> 3")
    # A smaller num_models (the spec as written before an extend) keeps the store's size.
    smaller = write_spec(tmp_path, num_models=16)
    kept = invoke("init", str(smaller), "--json")
    assert kept.exit_code == 0 and '"num_models": 32' in kept.stdout


def test_store_commands_on_non_stores(tmp_path: Path) -> None:
    assert_refused(tmp_path, ["status", str(tmp_path / "nothing")], "no store")
    (tmp_path / "plain").mkdir()
    assert_refused(tmp_path, ["verify", str(tmp_path / "plain")], "not a dmsweep store")
    spec = write_spec(tmp_path)
    assert invoke("init", str(spec)).exit_code == 0
    store = str(tmp_path / "sweep.zarr")
    assert_refused(tmp_path, ["extend", store, "--num-models", "16"], "must exceed")
    assert_refused(tmp_path, ["extend", store, "--num-models", "40"], "multiple of the block")


def test_json_everywhere(tmp_path: Path) -> None:
    import json

    spec = write_spec(tmp_path)
    created = json.loads(invoke("init", str(spec), "--json").stdout)
    assert created["num_blocks"] == 2 and created["dataset"]["n_train"] == 200
    status = json.loads(invoke("status", created["store"], "--json").stdout)
    assert status["completed_blocks"] == 0 and status["pending_blocks"] == 2
    verify = json.loads(invoke("verify", created["store"], "--json").stdout)
    assert verify["ok"] and verify["checked_blocks"] == 0
    schema = json.loads(invoke("schema").stdout)
    assert {"store", "recipe", "alpha", "num_models", "block"} <= set(schema["required"]) | set(schema["properties"])
