"""Fault injection with the ``faulty`` recipe on the session's real Ray.

A worker process that crashes, a recipe that raises, a block that hangs past
the driver's timeout, outputs of the wrong shape: each is retried or recorded
as failed exactly as the spec's ``retries`` says, and a failure's traceback
reaches ``dmsweep status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.api import run_sweep
from orchestrator.spec import parse_spec
from storage.status import store_status
from storage.events import read_events
from storage.ledger import BlockStatus
from storage.sweep_store import SweepStore
from storage.verify import verify_store

DMSWEEP = str(Path(sys.executable).with_name("dmsweep"))


def faulty_spec(tmp_path: Path, name: str, *, faults: dict[int, str], fail_attempts: int | None,
                retries: int, timeout_s: float = 60.0, num_blocks: int = 8) -> Any:
    state = tmp_path / f"{name}-state"
    state.mkdir()
    return parse_spec({
        "store": str(tmp_path / f"{name}.zarr"), "alpha": 0.5, "num_models": 2 * num_blocks, "block": 2, "seed": 4,
        "recipe": {"name": "faulty", "params": {
            "n_train": 20, "n_test": 5, "n_classes": 10, "faults": faults, "fail_attempts": fail_attempts,
            "state_dir": str(state),
        }},
        "retries": retries, "timeout_s": timeout_s,
    })


def events_of(store: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_events(store) if e["event"] == kind]


def test_crash_and_hang_on_a_first_attempt_are_retried_and_complete(ray_session, tmp_path: Path) -> None:
    spec = faulty_spec(tmp_path, "transient", faults={1: "crash", 4: "hang", 6: "raise"}, fail_attempts=1,
                       retries=1, timeout_s=4.0)
    result = run_sweep(spec, progress=False)
    assert result.done and not result.failed_blocks
    assert result.retries == 3

    store = SweepStore.open(spec.store)
    assert verify_store(store).ok
    table = store.ledger.table()
    assert table["attempts"].tolist() == [1, 2, 1, 1, 2, 1, 2, 1]
    retried = {e["block"]: e for e in events_of(Path(spec.store), "block_retried")}
    assert {b: e["kind"] for b, e in retried.items()} == {1: "worker_lost", 4: "timeout", 6: "error"}
    assert "timed out after 4s" in retried[4]["error"]
    assert "injected" in retried[6]["error"] or "RuntimeError" in retried[6]["error"]
    # A crashed or hung worker is replaced, and the block queued behind it is not charged an attempt.
    lost = events_of(Path(spec.store), "actor_lost")
    assert len(lost) == 2
    assert Counter(e["block"] for e in events_of(Path(spec.store), "block_completed")) == Counter(range(8))


def test_persistent_failures_are_ledgered_failed_with_traceback_and_left_for_the_next_run(
    ray_session, tmp_path: Path
) -> None:
    spec = faulty_spec(tmp_path, "persistent", faults={2: "raise", 5: "bad_shape"}, fail_attempts=None, retries=2)
    result = run_sweep(spec, progress=False)
    assert not result.done and result.failed_blocks == [2, 5]
    assert result.completed_blocks == 6 and result.retries == 4

    store = SweepStore.open(spec.store)
    table = store.ledger.table()
    assert table["status"][[2, 5]].tolist() == [BlockStatus.FAILED] * 2
    assert table["attempts"][[2, 5]].tolist() == [3, 3]  # 1 + retries, exactly
    # The other blocks' rows are complete and readable; failed ones are not served.
    assert np.array_equal(store.completed_rows(), np.array([0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]))

    status = subprocess.run([DMSWEEP, "status", spec.store, "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["failed_blocks"] == 2 and report["completed_blocks"] == 6
    failures = {f["block"]: f for f in report["failures"]}
    assert failures[2]["attempts"] == 3
    assert "Traceback" in failures[2]["error"] and "train_block" in failures[2]["error"]
    assert "RuntimeError" in failures[2]["error"]
    assert "shape" in failures[5]["error"]
    assert store_status(spec.store).failures[0].block == 2

    # The next run tries them again (and, the fault being permanent, fails them again).
    again = run_sweep(spec, progress=False)
    assert again.failed_blocks == [2, 5] and again.newly_completed_blocks == 0
    assert len(events_of(Path(spec.store), "block_failed")) == 4
