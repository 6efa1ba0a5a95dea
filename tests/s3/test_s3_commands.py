"""The README's flow with an s3:// store (import, status, verify, fit, eval, analyze, report, export), the
same fit streamed from S3 as from a disk, .npy range reads, and the errors an S3 user meets."""

from __future__ import annotations

import io
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from typer.testing import CliRunner

from orchestrator.cli import app
from regression.config import SolverConfig
from regression.engine import solve_source
from regression.fit import fit_datamodels
from regression.loader import StoreSource, split_batches
from storage.datamodels import read_datamodels
from storage.errors import InputError
from storage.npy_rows import open_npy
from storage.sweep_store import SweepStore

from conftest import free_port, s3_environment  # tests/s3/conftest.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "regression"))
from dm_helpers import build_store, planted  # noqa: E402

FAST = SolverConfig(n_alphas=12, tol=1e-3, max_epochs=30)


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def upload_npy(server, key: str, array: np.ndarray) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """Upload ``array`` as a .npy; its URI and the header's length (where the data begins)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    server.client().put_object(Bucket=server.bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{server.bucket}/{key}", len(buffer.getvalue()) - array.nbytes


@pytest.fixture(scope="module")
def imported(s3_server) -> str:  # type: ignore[no-untyped-def]
    """An imported store in the bucket (written block by block through the S3 client) with datamodels ``dm``."""
    masks, margins, _ = planted(400, 40, 6, seed=3)
    store = f"s3://{s3_server.bucket}/flow-{uuid.uuid4().hex[:8]}/imported.zarr"
    build_store(store, masks, margins, block=50)
    fitted = invoke("fit", store, "--name", "dm", "--rows", "0:350", "--k", 20, "--no-progress")
    assert fitted.exit_code == 0, fitted.stderr
    return store


def test_import_npy_into_an_s3_store(s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    masks, margins, _ = planted(120, 16, 4, seed=5)
    files = {}
    for name, array in (("masks", masks), ("margins", margins)):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], array)
    store = f"s3://{s3_server.bucket}/import-{uuid.uuid4().hex[:8]}/imported.zarr"
    result = invoke("import-npy", store, "--masks", files["masks"], "--margins", files["margins"], "--block", 40,
                    "--no-progress", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["store"] == store
    imported = SweepStore.open(store)
    assert imported.kind == "import" and imported.completed_rows().tolist() == list(range(120))
    np.testing.assert_array_equal(imported.read("margins/test", slice(0, 120)), margins)


def _listed(server, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_import_npy_of_the_published_layout_straight_from_s3(s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 131 rows (prime: a short last block), uint8 masks, float32 margins, the last 31 kept for evaluation.
    rng = np.random.default_rng(8)
    masks = (rng.random((131, 24)) < 0.5).astype(np.uint8)
    margins = rng.standard_normal((131, 5)).astype(np.float32)
    release = f"release-{uuid.uuid4().hex[:6]}/cifar10/data"
    upload_npy(s3_server, f"{release}/train_masks_50pct.npy", masks)
    upload_npy(s3_server, f"{release}/test_margins_50pct.npy", margins)
    store = tmp_path / "published.zarr"
    result = invoke("import-npy", store, "--published", f"s3://{s3_server.bucket}/{release}", "--pct", 50,
                    "--eval-models", 31, "--block", 40, "--requester-pays", "--no-progress", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["eval_rows"] == [100, 131]
    made = SweepStore.open(store)
    assert made.completed_rows().tolist() == list(range(131))
    np.testing.assert_array_equal(made.read("masks", slice(0, 131)), masks.astype(bool))
    np.testing.assert_array_equal(made.read("margins/test", slice(0, 131)), margins.astype(np.float16))
    assert made.metadata.provenance.files["masks"].startswith(f"s3://{s3_server.bucket}/{release}/")
    assert made.location.state.list("ledger/") == []  # the journal compacted once the import finished


def test_bad_rows_found_part_way_leave_nothing_in_the_bucket(s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    masks = np.random.default_rng(9).random((90, 12)) < 0.5
    margins = np.random.default_rng(10).standard_normal((90, 3)).astype(np.float32)
    margins[75, 1] = np.nan  # in the second block: the first is written by then
    files = {}
    for name, array in (("masks", masks), ("margins", margins)):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], array)
    prefix = f"bad-{uuid.uuid4().hex[:8]}/"
    result = invoke("import-npy", f"s3://{s3_server.bucket}/{prefix}imported.zarr", "--masks", files["masks"],
                    "--margins", files["margins"], "--block", 40, "--no-progress")
    assert result.exit_code == 2 and "row 75" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _listed(s3_server, prefix) == []


@pytest.mark.parametrize(("command", "options"), [
    (["status"], []),
    (["verify"], []),
    (["eval"], ["--name", "dm", "--rows", "350:400"]),
    (["analyze", "counterfactual"], ["--targets", "0,1", "--remove", "0:5"]),
    (["analyze", "neighbors"], ["--targets", "0"]),
    (["analyze", "lds-curve"], ["--points", "200"]),
    (["report"], []),
])
def test_reading_commands_on_an_s3_store(imported: str, command: list[str], options: list[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # results of an s3:// store go to ./<name>.analysis/
    result = invoke(*command, imported, *options, "--json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)
    if command[0] in ("analyze", "report"):
        assert (tmp_path / "imported.analysis").is_dir()


def test_export_and_xarray_on_the_s3_store(imported: str, tmp_path: Path) -> None:
    import xarray as xr

    result = invoke("export", imported, tmp_path / "dm.pt", "--name", "dm")
    assert result.exit_code == 0, result.stderr
    exported = torch.load(tmp_path / "dm.pt", weights_only=True)
    store = SweepStore.open(imported)
    datamodels = xr.open_zarr(store.location.zarr_store(read_only=True), group="datamodels/dm", consolidated=False)
    assert datamodels.weight.dims == ("train", "target") and datamodels.bias.dims == ("target",)
    np.testing.assert_array_equal(datamodels.weight.values, exported["weight"].numpy())


def test_fit_streamed_from_s3_equals_the_fit_on_a_local_store(s3_server, tmp_path: Path) -> None:
    masks, margins, _ = planted(600, 30, 5, seed=11)
    local = build_store(tmp_path / "local.zarr", masks, margins, block=50)
    remote = build_store(f"s3://{s3_server.bucket}/fit-{uuid.uuid4().hex[:8]}/remote.zarr", masks, margins, block=50)
    results = []
    for store in (local, remote):
        source = StoreSource(store, rows=store.completed_rows(), output="margins/test", targets=slice(0, 5),
                             device=torch.device("cpu"))  # not loaded: row blocks streamed by the reader thread
        cuts = source.cut_points()
        results.append(solve_source(source, train=split_batches(cuts, 0, 500, 100),
                                    val=split_batches(cuts, 500, 600, 100), config=FAST))
    np.testing.assert_array_equal(results[0].weight, results[1].weight)
    np.testing.assert_array_equal(results[0].lam, results[1].lam)
    for store in (local, remote):
        fit_datamodels(store.location, name="dm", config=FAST, rows=slice(0, 550))
    on_disk, in_s3 = (read_datamodels(SweepStore.open(s.location).group, "dm") for s in (local, remote))
    np.testing.assert_array_equal(on_disk.weight, in_s3.weight)
    np.testing.assert_array_equal(on_disk.bias, in_s3.bias)


def test_open_npy_reads_row_ranges_from_s3(s3_server) -> None:  # type: ignore[no-untyped-def]
    masks = np.random.default_rng(0).random((300, 70)) < 0.5
    margins = np.random.default_rng(1).standard_normal((300, 9)).astype(np.float16)
    masks_uri, offset = upload_npy(s3_server, "published/masks.npy", masks)
    margins_uri, _ = upload_npy(s3_server, "published/margins.npy", margins)
    recorder = f"{s3_server.endpoint}/moto-api/recorder"
    requests.post(f"{recorder}/reset-recording", timeout=10)
    requests.post(f"{recorder}/start-recording", timeout=10)
    try:
        source = open_npy(masks_uri, requester_pays=True)
        rows = source[100:250]
    finally:
        requests.post(f"{recorder}/stop-recording", timeout=10)
    recorded = [json.loads(line) for line in requests.get(f"{recorder}/download-recording", timeout=10).text.splitlines()
                if line.strip()]
    assert source.shape == (300, 70) and source.dtype == np.bool_
    assert np.array_equal(rows, masks[100:250])
    ranges = [r["headers"].get("Range") for r in recorded if r["method"] == "GET"]
    assert f"bytes={offset + 100 * 70}-{offset + 250 * 70 - 1}" in ranges  # only those rows were fetched
    assert all(r["headers"].get("X-Amz-Request-Payer") == "requester" for r in recorded)
    float_rows = open_npy(margins_uri)
    assert np.array_equal(float_rows[-5:], margins[-5:]) and np.array_equal(float_rows[7:8], margins[7:8])


@pytest.mark.parametrize(("array", "message"), [
    (np.asfortranarray(np.ones((20, 3), dtype=np.float32)), "Fortran order"),
    (np.array([{"a": 1}], dtype=object), "Python objects"),
])
def test_open_npy_refuses_what_it_cannot_read_by_rows(s3_server, array: np.ndarray, message: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    key = f"published/bad-{uuid.uuid4().hex[:6]}.npy"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=buffer.getvalue())
    with pytest.raises(InputError, match=message):
        open_npy(f"s3://{s3_server.bucket}/{key}")


def test_open_npy_errors(s3_server) -> None:  # type: ignore[no-untyped-def]
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="published/not.npy", Body=b"hello, world")
    truncated = io.BytesIO()
    np.save(truncated, np.ones((50, 50)))
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="published/short.npy", Body=truncated.getvalue()[:500])
    for key, message in [("published/not.npy", "not a .npy"), ("published/short.npy", "truncated"),
                         ("published/absent.npy", "no object")]:
        with pytest.raises(InputError, match=message):
            open_npy(f"s3://{s3_server.bucket}/{key}")


def _refused(env: dict[str, str], args: list[str], needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert env.get("AWS_SECRET_ACCESS_KEY", "\0") not in result.stderr  # no secret in any message


def _spec(tmp_path: Path, store: str) -> Path:
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"store": store, "recipe": {"name": "noop", "params": {"n_train": 8, "n_test": 4}},
                                    "alpha": 0.5, "num_models": 4, "block": 4}))
    return path


def test_missing_or_wrong_credentials_exit_2_and_write_nothing(s3_auth_server, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = f"s3://{s3_auth_server.bucket}/sweep.zarr"
    spec = _spec(tmp_path, store)
    good = s3_environment(s3_auth_server.endpoint, key=s3_auth_server.key, secret=s3_auth_server.secret)
    no_keys = {k: v for k, v in good.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    _refused(no_keys, ["init", spec], "no AWS credentials", monkeypatch)
    _refused({**good, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"}, ["init", spec], "access key is not known",
             monkeypatch)
    _refused({**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, ["status", store], "secret key does not match",
             monkeypatch)
    import boto3

    client = boto3.client("s3", endpoint_url=s3_auth_server.endpoint, region_name="us-east-1",
                          aws_access_key_id=s3_auth_server.key, aws_secret_access_key=s3_auth_server.secret)
    assert client.list_objects_v2(Bucket=s3_auth_server.bucket).get("KeyCount", 0) == 0  # nothing written


def test_missing_bucket_and_unreachable_endpoint_exit_2(s3_server, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = s3_environment(s3_server.endpoint)
    _refused(env, ["init", _spec(tmp_path, "s3://dmsweep-no-such-bucket/sweep.zarr")], "bucket does not exist",
             monkeypatch)
    _refused(env, ["status", "s3://dmsweep-no-such-bucket/sweep.zarr"], "bucket does not exist", monkeypatch)
    closed = s3_environment(f"http://127.0.0.1:{free_port()}")
    _refused(closed, ["run", _spec(tmp_path, f"s3://{s3_server.bucket}/unreached.zarr"), "--no-progress"],
             "does not answer", monkeypatch)
    assert not [key for key in s3_server.keys() if key.startswith("unreached.zarr")]
