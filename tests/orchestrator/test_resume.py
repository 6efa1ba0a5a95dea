"""A real sweep through `dmsweep run`, its driver SIGKILLed mid-sweep at a known point, then resumed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from waiting import wait_until

from orchestrator.api import load_spec, run_sweep
from storage.events import read_events
from storage.sweep_store import StoreProbe, SweepStore, probe_store
from storage.verify import verify_store
from workers.masks import block_masks

#: Blocks before the gate complete; the rest wait for the gate file.
GATE_FROM = 3


def write_spec(path: Path, store: Path, gate: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "store": str(store),
        "recipe": {"name": "gated_recipe:GatedMnist1dCnn", "params": {
            "epochs": 2, "width": 8, "n_train": 400, "n_test": 100,
            "gate_file": str(gate), "gate_from_block": GATE_FROM}},
        "alpha": 0.5, "num_models": 96, "block": 8, "seed": 7, "timeout_s": 120,
    }))
    return path


def dmsweep() -> list[str]:
    return [str(Path(sys.executable).with_name("dmsweep"))] if shutil.which("dmsweep") is None else ["dmsweep"]


def completed_blocks(store_path: Path) -> int:
    if probe_store(store_path) is not StoreProbe.STORE:
        return 0  # not created yet
    return int(SweepStore.open(store_path).ledger.completed_blocks().size)


def test_killed_driver_resumes_without_losing_or_redoing_rows(ray_session, tmp_path: Path) -> None:
    store_path = tmp_path / "sweep.zarr"
    gate = tmp_path / "gate"
    spec_path = write_spec(tmp_path / "spec.yaml", store_path, gate)
    address = ray_session.get_runtime_context().gcs_address
    command = [*dmsweep(), "run", str(spec_path), "--address", address, "--no-progress", "--lease-ttl", "30"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        wait_until(lambda: completed_blocks(store_path) >= GATE_FROM or driver.poll() is not None,
                   timeout=240, what=f"{GATE_FROM} completed blocks")
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    finally:
        driver.kill()  # SIGKILL: no cleanup, the lease stays behind
        driver.wait()
    done_before = SweepStore.open(store_path).ledger.completed_blocks()
    assert done_before.tolist() == list(range(GATE_FROM))  # every later block is held at the gate

    gate.touch()
    # The dead driver's lease names a dead pid on this host: the resume takes it over at once.
    result = run_sweep(load_spec(spec_path), progress=False)
    assert result.done and result.newly_completed_blocks == 12 - GATE_FROM
    assert not result.failed_blocks

    store = SweepStore.open(store_path)
    assert store.completed_rows().tolist() == list(range(96))
    assert verify_store(store).ok
    assert np.array_equal(store.read("masks", slice(0, 96)), block_masks(7, range(96), 400, 0.5))
    events = list(read_events(store_path))
    resumed = max(i for i, e in enumerate(events) if e["event"] == "run_started")
    redone = {e["block"] for e in events[resumed:] if e["event"] == "block_completed"}
    # Blocks ledgered before the kill were never trained again: the resumed run did exactly the others.
    assert redone == set(range(GATE_FROM, 12))

    # Equal, row for row, to an uninterrupted sweep of the same spec.
    fresh_path = tmp_path / "fresh.zarr"
    run_sweep(load_spec(write_spec(tmp_path / "fresh.yaml", fresh_path, gate)), progress=False)
    fresh = SweepStore.open(fresh_path)
    for name in ("masks", "margins/test"):
        assert np.array_equal(store.read(name, slice(0, 96)), fresh.read(name, slice(0, 96))), name
