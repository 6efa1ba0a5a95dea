"""Sweeps whose store is s3://: killed and resumed, one driver at a time, corruption found and redone."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from waiting import wait_until

from orchestrator.api import load_spec, run_sweep
from storage.events import read_events
from storage.lease import read_lease
from storage.sweep_store import StoreProbe, SweepStore, probe_store
from storage.verify import verify_store
from workers.masks import block_masks

DMSWEEP = str(Path(sys.executable).with_name("dmsweep"))
NOOP = {"n_train": 48, "n_test": 12, "n_classes": 10, "sleep": 0.0}
GATE_FROM = 3


def s3_store(server, name: str) -> str:  # type: ignore[no-untyped-def]
    return f"s3://{server.bucket}/sweeps-{uuid.uuid4().hex[:8]}/{name}"


def write_spec(path: Path, store: str, recipe: dict[str, object], **changes: object) -> Path:
    spec = {"store": store, "recipe": recipe, "alpha": 0.5, "num_models": 48, "block": 4, "seed": 5,
            "timeout_s": 60, **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


def completed_blocks(store: str) -> int:
    if probe_store(store) is not StoreProbe.STORE:
        return 0
    return int(SweepStore.open(store).ledger.completed_blocks().size)


def test_killed_s3_sweep_resumes_exactly_and_a_second_driver_is_refused(ray_session, s3_server,
                                                                         tmp_path: Path) -> None:
    store = s3_store(s3_server, "sweep.zarr")
    gate = tmp_path / "gate"
    gated = {"name": "gated_recipe:GatedNoop", "params": {**NOOP, "gate_file": str(gate), "gate_from_block": GATE_FROM}}
    spec_path = write_spec(tmp_path / "spec.yaml", store, gated)
    address = ray_session.get_runtime_context().gcs_address
    first = subprocess.Popen([DMSWEEP, "run", str(spec_path), "--address", address, "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: completed_blocks(store) >= GATE_FROM or first.poll() is not None, timeout=120,
                   what=f"{GATE_FROM} blocks ledgered in S3")
        assert first.poll() is None, first.stderr.read()[-2000:]
        second = subprocess.run([DMSWEEP, "run", str(spec_path), "--no-progress"], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "holds the lease" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()  # SIGKILL mid-block: blocks from the gate on are running or queued
        first.wait()
    assert SweepStore.open(store).ledger.completed_blocks().tolist() == list(range(GATE_FROM))
    assert read_lease(store) is not None  # left behind by the killed driver

    gate.touch()
    result = run_sweep(load_spec(spec_path), progress=False)  # a dead pid on this host: taken over at once
    assert result.done and result.newly_completed_blocks == 12 - GATE_FROM and not result.failed_blocks
    events = list(read_events(store))
    resumed = max(i for i, e in enumerate(events) if e["event"] == "run_started")
    assert {e["block"] for e in events[resumed:] if e["event"] == "block_completed"} == set(range(GATE_FROM, 12))

    swept = SweepStore.open(store)
    assert swept.completed_rows().tolist() == list(range(48)) and verify_store(swept).ok
    assert np.array_equal(swept.read("masks", slice(0, 48)), block_masks(5, range(48), 48, 0.5))
    fresh_store = s3_store(s3_server, "fresh.zarr")
    run_sweep(load_spec(write_spec(tmp_path / "fresh.yaml", fresh_store, {"name": "noop", "params": NOOP})),
              progress=False)
    fresh = SweepStore.open(fresh_store)
    for name in ("masks", "margins/test"):  # every row once, equal to an uninterrupted sweep
        assert np.array_equal(swept.read(name, slice(0, 48)), fresh.read(name, slice(0, 48))), name


def test_corrupted_object_found_repaired_and_redone(ray_session, s3_server, tmp_path: Path) -> None:
    store = s3_store(s3_server, "sweep.zarr")
    spec_path = write_spec(tmp_path / "spec.yaml", store, {"name": "noop", "params": NOOP}, num_models=16)
    assert run_sweep(load_spec(spec_path), progress=False).done
    before = SweepStore.open(store).read("margins/test", slice(0, 16))
    prefix = store[len(f"s3://{s3_server.bucket}/"):]
    client = s3_server.client()
    key = f"{prefix}/margins/test/c/1/0"
    raw = bytearray(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
    raw[len(raw) // 2] ^= 0xFF
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=bytes(raw))

    found = subprocess.run([DMSWEEP, "verify", store, "--json"], capture_output=True, text=True, timeout=120)
    assert found.returncode == 1 and '"block": 1' in found.stdout, found.stdout + found.stderr
    repaired = subprocess.run([DMSWEEP, "verify", store, "--repair"], capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0 and "marked for recomputation" in repaired.stdout, repaired.stderr
    assert SweepStore.open(store).ledger.pending_blocks().tolist() == [1]
    result = run_sweep(load_spec(spec_path), progress=False)
    assert result.done and result.newly_completed_blocks == 1
    again = SweepStore.open(store)
    assert verify_store(again).ok
    assert np.array_equal(again.read("margins/test", slice(0, 16)), before)


def test_extend_on_s3_fills_only_the_new_blocks(ray_session, s3_server, tmp_path: Path) -> None:
    store = s3_store(s3_server, "sweep.zarr")
    spec_path = write_spec(tmp_path / "spec.yaml", store, {"name": "noop", "params": NOOP}, num_models=8)
    assert run_sweep(load_spec(spec_path), progress=False).done
    grown = subprocess.run([DMSWEEP, "extend", store, "--num-models", "16"], capture_output=True, text=True,
                           timeout=120)
    assert grown.returncode == 0, grown.stderr
    result = run_sweep(load_spec(spec_path), progress=False)
    assert result.done and result.num_models == 16 and result.newly_completed_blocks == 2
    assert SweepStore.open(store).completed_rows().tolist() == list(range(16))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_xarray_opens_a_swept_store_without_warnings(ray_session, s3_server, tmp_path: Path, where: str) -> None:
    import warnings

    import xarray as xr

    store = str(tmp_path / "sweep.zarr") if where == "local" else s3_store(s3_server, "sweep.zarr")
    spec_path = write_spec(tmp_path / "spec.yaml", store, {"name": "noop", "params": NOOP}, num_models=8,
                           outputs={"train_margins": True, "test_logits": True})
    assert run_sweep(load_spec(spec_path), progress=False).done
    swept = SweepStore.open(store)
    target = store if where == "local" else swept.location.zarr_store(read_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about any object outside the hierarchy
        root = xr.open_zarr(target, consolidated=False)
        margins = xr.open_zarr(target, group="margins", consolidated=False)
        logits = xr.open_zarr(target, group="logits", consolidated=False)
        ledger = xr.open_zarr(target, group="ledger", consolidated=False)
    assert root.masks.dims == ("model", "train") and root.masks.dtype == bool
    assert margins.test.dims == ("model", "test") and margins.train.dims == ("model", "train")
    assert logits.test.dims == ("model", "test", "class")
    assert ledger.status.dims == ("block",) and ledger.status.values.tolist() == [1, 1]
    assert np.array_equal(root.masks.values, swept.read("masks", slice(0, 8)))
    assert np.array_equal(margins.test.values, swept.read("margins/test", slice(0, 8)))
