"""Chaos benchmark: faults at random moments, each trial's store checked against an uninterrupted run's.

Prints one JSON object: per case, the trials run, how many survived (the store
ended equal to an uninterrupted run's: masks and margins bit-exact, ledger
checksums equal, ``verify`` clean, no block ledgered twice), the rows lost and
duplicated over all trials, and the time to recover (from the fault until the
store was complete again, the recovery run included). Cases
(bench/chaos_trials.py, bench/chaos_cluster.py):

* ``worker_sigkill``: SIGKILL of a worker actor's process;
* ``raylet_sigkill``: SIGKILL of a worker node's raylet (a lost node), on a
  ``ray.cluster_utils.Cluster`` in a subprocess;
* ``driver_group_sigkill``: SIGKILL of the driver's process group, its own
  local Ray included;
* ``driver_sigterm``: SIGTERM to the driver (exit 3, receipts ledgered, lease
  released), then a rerun;
* ``disk_full``: the store on a tmpfs too small for the sweep (exit 4, one
  line), grown, then a rerun;
* ``stale_ray_address``: a ``ray start`` head SIGKILLed, its address file left
  behind, then ``run`` without ``--address``;
* ``corrupt_chunk``: a completed chunk's bytes flipped, truncated or deleted,
  then ``verify``, ``verify --repair`` and a rerun;
* ``clock_jump``: the driver's wall clock stepped by ±12 s to 2 h under its
  lease, then a second driver on the store;
* ``two_drivers``: two drivers started at once on one store.

Run (as root for ``disk_full``, which mounts a tmpfs):

    .venv/bin/python bench/chaos.py [--trials 10] [--cases a,b,...] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chaos_support import REPO, ChaosContext, short_tempdir
from chaos_trials import CASES, tmpfs_unavailable
from machine import cpu_model, git_commit  # bench/, next to this script

__all__ = ["main"]

ALL_CASES = (*CASES, "raylet_sigkill")


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    recover = [r["recover_s"] for r in results]
    return {
        "trials": len(results),
        "survived": sum(1 for r in results if r["survived"]),
        "rows_lost": sum(r["rows_lost"] for r in results),
        "rows_duplicated": sum(r["rows_duplicated"] for r in results),
        "recover_s_median": round(statistics.median(recover), 2) if recover else None,
        "recover_s_max": round(max(recover), 2) if recover else None,
        "failures": [{"problems": r["problems"], "detail": r["detail"]} for r in results if not r["survived"]],
        "details": [r["detail"] for r in results],
    }


def _trial(case: str, ctx: ChaosContext, rng: random.Random) -> dict[str, Any]:
    """One trial; one that raises (the harness's or the product's surprise) counts as not survived."""
    started = time.monotonic()
    try:
        return CASES[case](ctx, rng).to_dict()
    except Exception as exc:
        return {"case": case, "survived": False, "rows_lost": 0, "rows_duplicated": 0,
                "recover_s": round(time.monotonic() - started, 3), "detail": {},
                "problems": [f"the trial raised {type(exc).__name__}: {exc}"]}


def _cluster_trials(workdir: Path, trials: int, seed: int) -> list[dict[str, Any]]:
    bench = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), bench, os.environ.get("PYTHONPATH")])),
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(Path(bench) / "chaos_cluster.py"), str(workdir), str(trials), str(seed)],
                          capture_output=True, text=True, env=env, timeout=60 * (5 + trials))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"chaos_cluster.py failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per case (default 10)")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated, of {', '.join(ALL_CASES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(ALL_CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}")

    import ray

    workdir = short_tempdir("chaos")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.monotonic()
    report: dict[str, Any] = {"cases": {}, "skipped": {}}
    try:
        ctx = ChaosContext(workdir, address=ray.get_runtime_context().gcs_address)
        for case in cases:
            if case == "disk_full" and (why := tmpfs_unavailable(workdir)):
                report["skipped"][case] = why
                continue
            if case == "raylet_sigkill":
                results = _cluster_trials(workdir / "cluster", args.trials, args.seed)
            else:
                rng = random.Random(f"{args.seed}-{case}")
                results = [_trial(case, ctx, rng) for _ in range(args.trials)]
            report["cases"][case] = _summary(results)
            print(f"chaos: {case}: {report['cases'][case]['survived']}/{len(results)} survived", file=sys.stderr)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    import ray as ray_module
    import torch
    import zarr

    report.update({
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray_module.__version__, "torch": torch.__version__, "zarr": zarr.__version__},
        "commit": git_commit(short=True),
        "trials_per_case": args.trials,
        "seed": args.seed,
    })
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
