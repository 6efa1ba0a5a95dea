"""The driver SIGKILLed at random points, again and again, then resumed to the end.

Each kill lands wherever it lands: during start-up, store creation, actor
set-up, between a chunk write and its ledger entry, or mid-ledger. The final
store must hold every row exactly once and equal an uninterrupted run's store.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections import Counter
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

SPEC = {
    "recipe": {"name": "noop", "params": {"n_train": 40, "n_test": 10, "n_classes": 10, "sleep": 0.25}},
    "alpha": 0.5,
    "num_models": 120,
    "block": 2,
    "seed": 5,
    "timeout_s": 60,
}
KILLS = 10
DMSWEEP = str(Path(sys.executable).with_name("dmsweep"))


def write_spec(path: Path, store: Path, *, sleep: float | None = None) -> Path:
    spec = {**SPEC, "store": str(store)}
    if sleep is not None:  # the recipe's outputs never depend on how long it sleeps
        spec["recipe"] = {**SPEC["recipe"], "params": {**SPEC["recipe"]["params"], "sleep": sleep}}
    path.write_text(yaml.safe_dump(spec))
    return path


def completed(store: Path) -> int:
    return int(SweepStore.open(store).ledger.completed_blocks().size) if probe_store(store) is StoreProbe.STORE else 0


def at_random_moment(rng: random.Random, low: float, high: float) -> None:
    """Let a random time pass: the moment a fault lands, never something the test waits for."""
    threading.Event().wait(rng.uniform(low, high))


@pytest.mark.slow
def test_sigkilled_driver_resumes_to_an_identical_store(ray_session, tmp_path: Path) -> None:
    store_path = tmp_path / "killed.zarr"
    spec_path = write_spec(tmp_path / "killed.yaml", store_path)
    address = ray_session.get_runtime_context().gcs_address
    command = [DMSWEEP, "run", str(spec_path), "--address", address, "--no-progress"]
    rng = random.Random(20240501)
    num_blocks = SPEC["num_models"] // SPEC["block"]
    progress_at_kill = []
    for kill in range(KILLS):
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill % 2 == 0:
            # A random moment of start-up: interpreter, Ray connect, store, lease, actor set-up.
            at_random_moment(rng, 0.2, 2.0)
        else:
            # Mid-sweep: once a random number of further blocks is ledgered, plus a
            # random fraction of a block, so kills land between write and ledger too.
            target = completed(store_path) + rng.randint(1, 4)
            wait_until(lambda: completed(store_path) >= target or driver.poll() is not None,
                       timeout=60, what=f"{target} completed blocks", interval=0.02)
            at_random_moment(rng, 0.0, 0.3)
        assert driver.poll() is None, "the driver ended before its kill: " + driver.stderr.read().decode()[-2000:]
        driver.kill()
        driver.wait()  # reaped: its pid is dead, so its lease is abandoned
        progress_at_kill.append(completed(store_path))
    assert 0 < progress_at_kill[-1] < num_blocks, progress_at_kill
    assert len(set(progress_at_kill)) > 3, progress_at_kill  # kills landed at different points

    result = run_sweep(load_spec(spec_path), progress=False)
    assert result.done and not result.failed_blocks
    assert read_lease(store_path) is None

    store = SweepStore.open(store_path)
    assert store.completed_rows().tolist() == list(range(SPEC["num_models"]))
    assert verify_store(store).ok
    assert np.array_equal(store.read("masks", slice(None)), block_masks(5, range(SPEC["num_models"]), 40, 0.5))
    # A block is ledgered once: after that no run trains it again.
    completions = Counter(e["block"] for e in read_events(store_path) if e["event"] == "block_completed")
    assert max(completions.values()) == 1

    fresh_path = tmp_path / "fresh.zarr"
    assert run_sweep(load_spec(write_spec(tmp_path / "fresh.yaml", fresh_path, sleep=0.0)), progress=False).done
    fresh = SweepStore.open(fresh_path)
    for name in ("masks", "margins/test"):
        assert np.array_equal(store.read(name, slice(None)), fresh.read(name, slice(None))), name
    assert np.array_equal(store.ledger.table()["checksum"], fresh.ledger.table()["checksum"])
