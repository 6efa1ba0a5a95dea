"""Scheduler benchmark: models/s through the whole driver + store path, against process-per-model.

Prints one JSON object. Three measurements, in one run:

1. ``sweep``: the ``noop`` recipe at CIFAR-10 shapes (N_train 50,000, N_test
   10,000, 10 classes), block 64, on a local Ray with every CPU: the real
   driver (actors, bounded in-flight, ledger, events, metrics) and the real
   store (exact-size masks generated, whole zstd+crc32c chunks written).
   Repeated; mean ± std of the end-to-end rate (actor start-up included) and
   of the steady rate (between the first and the last ledgered block).
2. ``overhead``: blocks that take one second (noop ``sleep``) at small shapes;
   the driver's own CPU seconds per block, and the wall gap per block beyond
   one second on each actor, both as a fraction of the 1-second block.
3. ``baseline``: one fresh Python process per model that imports torch,
   generates its mask and writes its row (as many at once as there are cores).

Run: ``.venv/bin/python bench/bench_scheduler.py [--repeats 3] [--blocks 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from machine import cpu_model, git_commit  # bench/, next to this script

__all__ = ["main"]

CIFAR = {"n_train": 50_000, "n_test": 10_000, "n_classes": 10}

_BASELINE_CHILD = r"""
import sys, time
t0 = time.perf_counter()
import torch  # what every real training script pays first
import numpy as np, zarr
from workers.masks import subset_mask
index, path, n_train, n_test = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mask = subset_mask(0, index, n_train, 0.5)
margins = torch.randn(n_test).numpy().astype(np.float16)
zarr.open_array(path + "/masks", mode="r+")[index] = mask
zarr.open_array(path + "/margins", mode="r+")[index] = margins
"""


def _environment() -> dict[str, object]:
    import ray
    import torch
    import zarr

    return {
        "commit": git_commit(short=True), "cpu": cpu_model(), "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__,
        "zarr": zarr.__version__, "numpy": np.__version__,
    }


def _spec(store: Path, *, num_models: int, block: int, params: dict[str, object]):
    from orchestrator.spec import parse_spec

    return parse_spec({
        "store": str(store), "alpha": 0.5, "num_models": num_models, "block": block, "seed": 0,
        "recipe": {"name": "noop", "params": params}, "timeout_s": 600, "retries": 0,
    })


def _steady_rate(store_path: Path) -> float:
    from storage.sweep_store import SweepStore

    store = SweepStore.open(store_path)
    finished = np.sort(store.ledger.table()["finished_at"])
    span = float(finished[-1] - finished[0])
    return (finished.size - 1) * store.block / span if span > 0 else float("nan")


def _sweep(root: Path, *, repeats: int, blocks: int) -> dict[str, object]:
    from orchestrator.api import run_sweep

    end_to_end, steady, driver_cpu = [], [], []
    for repeat in range(repeats):
        store = root / f"sweep-{repeat}.zarr"
        spec = _spec(store, num_models=64 * blocks, block=64, params={**CIFAR, "sleep": 0.0})
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result = run_sweep(spec, progress=False)
        wall = time.perf_counter() - t0
        driver_cpu.append((time.process_time() - cpu0) / blocks)
        if not result.done:
            raise RuntimeError(f"benchmark sweep incomplete: {result.to_dict()}")
        end_to_end.append(spec.num_models / wall)
        steady.append(_steady_rate(store))
        shutil.rmtree(store)
    return {
        "models": 64 * blocks, "block": 64, "repeats": repeats, **CIFAR,
        "models_per_s_end_to_end": _stats(end_to_end),
        "models_per_s_steady": _stats(steady),
        "driver_cpu_s_per_block": _stats(driver_cpu),
    }


def _overhead(root: Path, *, blocks: int) -> dict[str, object]:
    from orchestrator.api import run_sweep
    from storage.events import read_events

    store = root / "overhead.zarr"
    spec = _spec(store, num_models=4 * blocks, block=4,
                 params={"n_train": 1000, "n_test": 100, "n_classes": 10, "sleep": 1.0})
    cpu0 = time.process_time()
    result = run_sweep(spec, progress=False)
    cpu_per_block = (time.process_time() - cpu0) / blocks
    if not result.done:
        raise RuntimeError(f"overhead sweep incomplete: {result.to_dict()}")
    # Per actor, the time between consecutive receipts minus the block's own second.
    by_actor: dict[str, list[float]] = {}
    for event in read_events(store):
        if event["event"] == "block_completed":
            by_actor.setdefault(event["actor"], []).append(float(event["time"]))
    gaps = [b - a - 1.0 for times in by_actor.values() for a, b in zip(times, times[1:])]
    return {
        "blocks": blocks, "block_seconds": 1.0,
        "driver_cpu_s_per_block": round(cpu_per_block, 5),
        "driver_cpu_fraction_of_block": round(cpu_per_block / 1.0, 5),
        "wall_gap_s_per_block": _stats(gaps),
        "wall_gap_fraction_of_block": round(statistics.mean(gaps) / 1.0, 5) if gaps else None,
    }


def _baseline(root: Path, *, models: int) -> dict[str, object]:
    import zarr

    store = root / "baseline.zarr"
    zarr.create_array(str(store / "masks"), shape=(models, CIFAR["n_train"]), chunks=(1, CIFAR["n_train"]), dtype=bool)
    zarr.create_array(str(store / "margins"), shape=(models, CIFAR["n_test"]), chunks=(1, CIFAR["n_test"]), dtype="float16")
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}

    def one(index: int) -> None:
        subprocess.run([sys.executable, "-c", _BASELINE_CHILD, str(index), str(store),
                        str(CIFAR["n_train"]), str(CIFAR["n_test"])], check=True, env=env)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(models)))
    wall = time.perf_counter() - t0
    written = zarr.open_array(str(store / "masks"), mode="r")[:].sum(axis=1)
    if not np.all(written == round(0.5 * CIFAR["n_train"])):
        raise RuntimeError("baseline rows were not all written")
    return {"models": models, "parallel": os.cpu_count(), "models_per_s": round(models / wall, 3),
            "seconds_per_model": round(wall / models * (os.cpu_count() or 1), 3)}


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.mean(values), 4) if values else float("nan"),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the CIFAR-shape sweep")
    parser.add_argument("--blocks", type=int, default=48, help="blocks of 64 models per sweep")
    parser.add_argument("--overhead-blocks", type=int, default=12, help="1-second blocks in the overhead run")
    parser.add_argument("--baseline-models", type=int, default=8, help="models in the process-per-model baseline")
    args = parser.parse_args(argv)

    import ray

    root = Path(tempfile.mkdtemp(prefix="dmsweep-bench-"))
    try:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            sweep = _sweep(root, repeats=args.repeats, blocks=args.blocks)
            overhead = _overhead(root, blocks=args.overhead_blocks)
        finally:
            ray.shutdown()
        baseline = _baseline(root, models=args.baseline_models)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = sweep["models_per_s_end_to_end"]["mean"]  # type: ignore[index]
    out = {
        "benchmark": "scheduler",
        "environment": _environment(),
        "sweep": sweep,
        "overhead": overhead,
        "baseline": baseline,
        "speedup_vs_process_per_model": round(rate / baseline["models_per_s"], 1),  # type: ignore[operator]
        "targets": {"models_per_s": 500, "speedup": 100, "overhead_fraction": 0.05},
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
