"""A real sweep through `dmsweep run`, its driver SIGKILLed mid-sweep, then resumed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from orchestrator.api import load_spec, run_sweep
from storage.sweep_store import SweepStore
from storage.verify import verify_store
from workers.masks import block_masks

SPEC = {
    "recipe": {"name": "mnist1d-cnn", "params": {"epochs": 2, "width": 8, "n_train": 400, "n_test": 100}},
    "alpha": 0.5,
    "num_models": 96,
    "block": 8,
    "seed": 7,
    "timeout_s": 120,
}


def write_spec(path: Path, store: Path) -> Path:
    path.write_text(yaml.safe_dump({**SPEC, "store": str(store)}))
    return path


def dmsweep() -> list[str]:
    return [str(Path(sys.executable).with_name("dmsweep"))] if shutil.which("dmsweep") is None else ["dmsweep"]


def completed_blocks(store_path: Path) -> int:
    try:
        return int(SweepStore.open(store_path).ledger.completed_blocks().size)
    except Exception:
        return 0  # not created yet


def test_killed_driver_resumes_without_losing_or_redoing_rows(ray_session, tmp_path: Path) -> None:
    store_path = tmp_path / "sweep.zarr"
    spec_path = write_spec(tmp_path / "spec.yaml", store_path)
    address = ray_session.get_runtime_context().gcs_address
    command = [*dmsweep(), "run", str(spec_path), "--address", address, "--no-progress", "--lease-ttl", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.monotonic() + 240
    while completed_blocks(store_path) < 3 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    driver.kill()  # SIGKILL: no cleanup, the lease stays behind until stale
    driver.wait()
    done_before = SweepStore.open(store_path).ledger.completed_blocks()
    assert 3 <= done_before.size < 12, driver.stderr.read().decode()[-2000:]
    time.sleep(2.5)  # the dead driver's lease goes stale

    result = run_sweep(load_spec(spec_path), progress=False)
    assert result.done and result.newly_completed_blocks == 12 - done_before.size
    assert not result.failed_blocks

    store = SweepStore.open(store_path)
    assert store.completed_rows().tolist() == list(range(96))
    assert verify_store(store).ok
    assert np.array_equal(store.read("masks", slice(0, 96)), block_masks(7, range(96), 400, 0.5))
    completions = [e["block"] for e in map(json.loads, (store_path / "events.jsonl").read_text().splitlines())
                   if e["event"] == "block_completed"]
    # Blocks ledgered before the kill were never trained again.
    assert all(completions.count(int(b)) == 1 for b in done_before)

    # Equal, row for row, to an uninterrupted sweep of the same spec.
    fresh_path = tmp_path / "fresh.zarr"
    run_sweep(load_spec(write_spec(tmp_path / "fresh.yaml", fresh_path)), progress=False)
    fresh = SweepStore.open(fresh_path)
    for name in ("masks", "margins/test"):
        assert np.array_equal(store.read(name, slice(0, 96)), fresh.read(name, slice(0, 96))), name
