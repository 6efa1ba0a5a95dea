"""The driver on a 3-node fake cluster (``ray.cluster_utils.Cluster``) with fake GPUs.

The cluster runs in a subprocess so that it never meets the session's Ray. One
cluster serves four checks: per-node slot counting for fractional GPUs, a
64-block sweep spread over every node with every block done once, a sweep that
loses a node mid-way and still completes every block exactly once, and a sweep
during which a node joins (an autoscaler's new node) and gets a worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r'''
import json, sys, threading
from collections import Counter
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from waiting import wait_until

from orchestrator.api import run_sweep
from orchestrator.run_options import DriverOptions
from orchestrator.scheduling import worker_slots
from orchestrator.spec import ResourcesSpec, parse_spec
from storage.events import read_events
from storage.sweep_store import StoreProbe, SweepStore, probe_store

tmp = Path(sys.argv[1])
# Fast health checks: a removed node is declared dead in about a second.
system_config = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
                 "health_check_failure_threshold": 3}
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "num_gpus": 1, "include_dashboard": False, "_system_config": system_config})
workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
out = {}
try:
    out["slots"] = {
        "half_gpu": worker_slots(ResourcesSpec(num_cpus=0.5, num_gpus=0.5)),
        "cpu_bound": worker_slots(ResourcesSpec(num_cpus=1, num_gpus=0.4)),
        "quarter": worker_slots(ResourcesSpec(num_cpus=0.25, num_gpus=0.4)),
        "whole": worker_slots(ResourcesSpec(num_cpus=1, num_gpus=1)),
    }

    def sweep(name, num_blocks, sleep):
        return parse_spec({
            "store": str(tmp / name), "alpha": 0.5, "num_models": 4 * num_blocks, "block": 4, "seed": 3,
            "recipe": {"name": "noop", "params": {"n_train": 64, "n_test": 16, "n_classes": 10, "sleep": sleep}},
            "resources": {"num_cpus": 1, "num_gpus": 1}, "retries": 2, "timeout_s": 30,
        })

    def summary(store_path):
        events = list(read_events(store_path))
        actor_node = {e["actor"]: e["node_id"] for e in events if e["event"] == "actor_started"}
        done = [e for e in events if e["event"] == "block_completed"]
        store = SweepStore.open(store_path)
        return {
            "completed": store.ledger.completed_blocks().tolist(),
            "num_blocks": store.num_blocks,
            "completions_per_block": sorted(Counter(e["block"] for e in done).values()),
            "blocks_per_node": Counter(actor_node[e["actor"]] for e in done),
            "lost_actor_nodes": sorted({actor_node.get(e["actor"], "?") for e in events if e["event"] == "actor_lost"}),
            "retried": [e for e in events if e["event"] == "block_retried"],
        }

    result = run_sweep(sweep("spread.zarr", 64, 0.02), progress=False)
    out["spread"] = {**summary(tmp / "spread.zarr"), "done": result.done, "actors": result.actors}

    # A node removed mid-sweep: its blocks are redone on the others.
    spec = sweep("lost.zarr", 36, 0.3)
    doomed = workers[1]
    doomed_id = doomed.node_id

    def completed(store):
        if probe_store(store) is not StoreProbe.STORE:
            return 0  # not created yet
        return SweepStore.open(store).ledger.completed_blocks().size

    def remove_when_started():
        wait_until(lambda: completed(spec.store) >= 6, timeout=60, what="6 completed blocks")
        cluster.remove_node(doomed, allow_graceful=False)

    killer = threading.Thread(target=remove_when_started)
    killer.start()
    result = run_sweep(spec, progress=False, options=DriverOptions(actor_start_timeout_s=60))
    killer.join()
    out["lost"] = {**summary(tmp / "lost.zarr"), "done": result.done, "doomed": doomed_id,
                   "failed": result.failed_blocks}

    # A node that joins mid-sweep (an autoscaler's new GPU node) gets a worker too.
    # Ray starts a node's processes from the main thread only, so the sweep runs
    # in a thread here and the main thread adds the node.
    spec = sweep("grow.zarr", 60, 0.5)
    outcome = {}

    def grow_sweep():
        try:
            outcome["result"] = run_sweep(spec, progress=False, options=DriverOptions(rescan_s=0.5))
        except BaseException as exc:
            outcome["error"] = repr(exc)

    runner = threading.Thread(target=grow_sweep)
    runner.start()
    wait_until(lambda: completed(spec.store) >= 2 or not runner.is_alive(), timeout=60, what="2 completed blocks")
    joined = cluster.add_node(num_cpus=1, num_gpus=1).node_id
    runner.join()
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    result = outcome["result"]
    grown = summary(tmp / "grow.zarr")
    added = [e for e in read_events(tmp / "grow.zarr") if e["event"] == "actor_added"]
    out["grow"] = {**grown, "done": result.done, "joined": joined, "added": len(added)}
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_three_node_cluster_spreads_blocks_and_survives_a_lost_node(tmp_path: Path) -> None:
    script = tmp_path / "cluster_sweep.py"
    script.write_text(_SCRIPT)
    tests = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT "):])

    # Slots are counted node by node: fractions never straddle nodes, CPUs bound them too.
    assert out["slots"] == {"half_gpu": 6, "cpu_bound": 3, "quarter": 6, "whole": 3}

    spread = out["spread"]
    assert spread["done"] and spread["completed"] == list(range(64))
    assert spread["completions_per_block"] == [1] * 64  # every block done once
    assert len(spread["blocks_per_node"]) == 3, spread["blocks_per_node"]  # on every node

    lost = out["lost"]
    assert lost["done"] and not lost["failed"]
    assert lost["completed"] == list(range(36))
    assert lost["completions_per_block"] == [1] * 36  # nothing lost, nothing ledgered twice
    assert lost["lost_actor_nodes"] == [lost["doomed"]]
    redone = [r for r in lost["retried"] if r["kind"] == "worker_lost"]
    assert redone, "the lost node's running block was retried"
    assert all(r["attempt"] == 1 for r in redone)
    assert set(lost["blocks_per_node"]) >= {n for n in spread["blocks_per_node"] if n != lost["doomed"]}

    grow = out["grow"]
    assert grow["done"] and grow["completed"] == list(range(60))
    assert grow["completions_per_block"] == [1] * 60
    assert grow["added"] >= 1, f"no worker was started for the joining node: {grow}"
    assert grow["blocks_per_node"].get(grow["joined"], 0) > 0, grow["blocks_per_node"]
