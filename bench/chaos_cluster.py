"""The lost-node chaos case: SIGKILL of a worker node's raylet mid-sweep, on a ``ray.cluster_utils.Cluster``.

Run by ``bench/chaos.py`` in a subprocess of its own, so that this cluster
never meets the Ray the other cases use:

    python bench/chaos_cluster.py WORKDIR TRIALS SEED

A head without CPUs and two 1-CPU worker nodes; each trial runs a sweep on a
thread (Ray starts a node's processes from the main thread only, so the main
thread kills and replaces nodes), SIGKILLs the raylet of one worker node at a
random moment, lets the driver redo that node's blocks on the other, checks
the store, and adds a fresh node for the next trial. Prints ``RESULT`` and a
JSON list of trial results.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from chaos_support import ChaosContext, TrialResult, check_store, completed_blocks, kill_pid, poll

__all__: list[str] = []

#: A raylet that stops answering is declared dead in about a second.
_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300, "health_check_failure_threshold": 3}


def _raylet_pid(node: Any) -> int:
    from ray._private import ray_constants

    return int(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def _trial(ctx: ChaosContext, cluster: Any, nodes: list[Any], rng: random.Random) -> TrialResult:
    from orchestrator.api import run_sweep
    from orchestrator.run_options import DriverOptions
    from orchestrator.spec import load_spec

    trial, sweep, reference = ctx.start_trial("raylet_sigkill", blocks=30, sleep=0.2)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = run_sweep(load_spec(sweep.spec_path), progress=False,
                                          options=DriverOptions(actor_start_timeout_s=60))
        except BaseException as exc:  # reported as the trial's problem
            outcome["error"] = repr(exc)

    runner = threading.Thread(target=run)
    runner.start()
    target = rng.randint(1, sweep.num_blocks - 8)
    poll(lambda: completed_blocks(sweep.store) >= target or not runner.is_alive(), timeout=300,
         what=f"{target} completed blocks")
    time.sleep(rng.uniform(0.0, 0.2))  # the fault's moment within a block
    doomed = rng.choice(nodes)
    fault_at = time.monotonic()
    killed = runner.is_alive() and kill_pid(_raylet_pid(doomed))
    runner.join()
    recover = time.monotonic() - fault_at
    cluster.remove_node(doomed, allow_graceful=False)  # its other processes
    nodes.remove(doomed)
    nodes.append(cluster.add_node(num_cpus=1))
    cluster.wait_for_nodes()
    result = outcome.get("result")
    ok = killed and result is not None and result.done
    return TrialResult.from_check(
        "raylet_sigkill", check_store(sweep.store, reference), recover_s=recover, ok=ok,
        detail={"killed": killed, "retries": getattr(result, "retries", None)},
        why_not=f"killed {killed}, outcome {outcome}",
    )


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    workdir, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": _HEALTH})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    results = []
    try:
        ctx = ChaosContext(workdir, address=cluster.address)
        for _ in range(trials):
            results.append(_trial(ctx, cluster, nodes, rng).to_dict())
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
