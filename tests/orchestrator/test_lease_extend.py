"""One driver per store (the lease), resume refusing another spec, and extend-then-run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from waiting import wait_until

from orchestrator.api import load_spec, run_sweep
from storage.errors import LeaseHeldError
from storage.events import read_events
from storage.lease import LEASE_FILE, read_lease
from storage.location import store_location
from storage.sweep_store import SweepStore

BASE = {
    "recipe": {"name": "noop", "params": {"n_train": 48, "n_test": 12, "n_classes": 10, "sleep": 0.0}},
    "alpha": 0.5,
    "num_models": 16,
    "block": 4,
    "seed": 11,
    "timeout_s": 60,
}
DMSWEEP = str(Path(sys.executable).with_name("dmsweep"))


def write_spec(path: Path, store: Path, **changes: object) -> Path:
    spec = {**BASE, "store": str(store), **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DMSWEEP, *args], capture_output=True, text=True, timeout=timeout)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_second_driver_is_refused_while_the_first_runs(ray_session, tmp_path: Path) -> None:
    store = tmp_path / "sweep.zarr"
    gate = tmp_path / "gate"
    # The first driver's blocks wait at the gate, so it is surely still running when the others try.
    held = {"name": "gated_recipe:GatedNoop", "params": {**BASE["recipe"]["params"], "gate_file": str(gate)}}
    spec_path = write_spec(tmp_path / "spec.yaml", store, recipe=held, num_models=24)
    address = ray_session.get_runtime_context().gcs_address
    first = subprocess.Popen([DMSWEEP, "run", str(spec_path), "--address", address, "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: read_lease(store) is not None or first.poll() is not None, timeout=60,
                   what="the first driver's lease")
        assert read_lease(store) is not None, "the first driver never took the lease: " + first.stderr.read()[-2000:]

        with pytest.raises(LeaseHeldError, match="holds the lease"):
            run_sweep(load_spec(spec_path), progress=False)
        second = cli("run", str(spec_path), "--no-progress")
        assert second.returncode == 2
        assert "holds the lease" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None, "the refused drivers must not disturb the first"
        gate.touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert read_lease(store) is None  # released on a clean exit
    assert SweepStore.open(store).ledger.completed_blocks().size == 6


def test_stale_and_abandoned_leases_are_taken_over_and_extend_fills_only_new_blocks(
    ray_session, tmp_path: Path
) -> None:
    store_path = tmp_path / "sweep.zarr"
    spec_path = write_spec(tmp_path / "spec.yaml", store_path)
    assert run_sweep(load_spec(spec_path), progress=False).done
    store = SweepStore.open(store_path)
    old_masks = store.read("masks", slice(0, 16))
    old_margins = store.read("margins/test", slice(0, 16))
    old_ledger = store.ledger.table()

    # A driver that died on this host without releasing: taken over at once.
    lease = {"holder": "x", "host": socket.gethostname(), "pid": dead_pid(), "heartbeat": time.time(), "ttl_s": 30.0}
    store_location(store_path).state.put(LEASE_FILE, json.dumps(lease).encode())
    grown = cli("extend", str(store_path), "--num-models", "24", "--json")
    assert grown.returncode == 0, grown.stderr
    assert json.loads(grown.stdout)["num_models"] == 24

    # A driver on another host whose heartbeat stopped long ago: taken over (stale).
    lease = {"holder": "y", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 120, "ttl_s": 30.0}
    store_location(store_path).state.put(LEASE_FILE, json.dumps(lease).encode())
    # A fresh one from another host is respected.
    # The spec as written before the extend (num_models 16) runs the extended store.
    extended = load_spec(spec_path)
    fresh = {**lease, "heartbeat": time.time()}
    store_location(store_path).state.put(LEASE_FILE, json.dumps(fresh).encode())
    with pytest.raises(LeaseHeldError):
        run_sweep(extended, progress=False)
    store_location(store_path).state.put(LEASE_FILE, json.dumps(lease).encode())

    events_before = len(list(read_events(store_path)))
    result = run_sweep(extended, progress=False)
    assert result.done and result.num_models == 24 and result.newly_completed_blocks == 2

    store = SweepStore.open(store_path)
    assert store.completed_rows().tolist() == list(range(24))
    assert np.array_equal(store.read("masks", slice(0, 16)), old_masks)
    assert np.array_equal(store.read("margins/test", slice(0, 16)), old_margins)
    table = store.ledger.table()
    for name in ("finished_at", "checksum", "attempts"):
        assert np.array_equal(table[name][:4], old_ledger[name][:4]), name
    redone = [e["block"] for e in list(read_events(store_path))[events_before:] if e["event"] == "block_completed"]
    assert sorted(redone) == [4, 5]
    assert np.any(store.read("margins/test", slice(16, 24)) != 0)

    # A spec with a larger num_models is the one allowed change: run grows the store.
    bigger = write_spec(tmp_path / "bigger.yaml", store_path, num_models=32)
    result = run_sweep(load_spec(bigger), progress=False)
    assert result.done and result.num_models == 32 and result.newly_completed_blocks == 2


def test_resume_with_a_different_spec_names_the_fields_and_exits_2(tmp_path: Path) -> None:
    store = tmp_path / "sweep.zarr"
    assert cli("init", str(write_spec(tmp_path / "a.yaml", store))).returncode == 0
    before = sorted(p.name for p in store.iterdir())
    changed = write_spec(tmp_path / "b.yaml", store, alpha=0.25, seed=12,
                         recipe={"name": "noop", "params": {**BASE["recipe"]["params"], "n_test": 13}})
    proc = cli("run", str(changed), "--no-progress")
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1
    for field in ("alpha: 0.5 -> 0.25", "seed: 11 -> 12", "recipe.params.n_test: 12 -> 13"):
        assert field in message, message
    assert sorted(p.name for p in store.iterdir()) == before
    assert store_location(store).state.get(LEASE_FILE) is None
    assert os.path.isdir(store)
