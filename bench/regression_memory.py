"""bench_regression.py's ``import`` and ``memory`` modes: each measures a fresh child process.

Run as a script only as those children (``--import-child`` / ``--memory-child``);
``bench_regression.py`` is the benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["bench_import", "bench_memory"]


def _peak_rss() -> int:
    """This process's own high-water mark (``ru_maxrss`` survives ``execve``: a child would report its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (these benchmarks need Linux)")


def _import_child(folder: str, store: str) -> None:
    # A fresh process that never imports torch; its high-water mark is the import's alone.
    from storage.published import PUBLISHED_EVAL_MODELS, import_npy, published_files

    baseline = _peak_rss()
    files = published_files(folder, 50)
    result = import_npy(files["masks"], files["margins"], store, block=1000, eval_models=PUBLISHED_EVAL_MODELS,
                        source="published")
    print(json.dumps({"baseline_rss": baseline, "peak_rss": _peak_rss(), **result.to_dict()}))


def bench_import(args: argparse.Namespace) -> dict[str, Any]:
    from numpy.lib.format import open_memmap

    m, n_train, n_test, block = args.import_models, args.import_train, args.import_test, 1000
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="dmsweep-import-") as tmp:
        folder = Path(tmp) / "cifar" / "data"
        folder.mkdir(parents=True)
        started = time.perf_counter()
        masks = open_memmap(folder / "train_masks_50pct.npy", mode="w+", dtype=bool, shape=(m, n_train))
        margins = open_memmap(folder / "test_margins_50pct.npy", mode="w+", dtype=np.float16, shape=(m, n_test))
        for a in range(0, m, block):
            b = min(a + block, m)
            masks[a:b] = rng.integers(0, 2, (b - a, n_train), dtype=np.uint8).view(bool)
            margins[a:b] = rng.normal(0, 3, (b - a, n_test)).astype(np.float16)
            masks.flush()
            margins.flush()
        del masks, margins
        written = time.perf_counter() - started
        input_bytes = m * n_train + 2 * m * n_test
        child = subprocess.run([sys.executable, __file__, "--import-child", str(folder), str(Path(tmp) / "s.zarr")],
                               capture_output=True, text=True, cwd=ROOT)
        if child.returncode:
            return {"error": child.stderr.strip().splitlines()[-1:], "shape": [m, n_train, n_test]}
        out = json.loads(child.stdout.strip().splitlines()[-1])
        stored = sum(f.stat().st_size for f in (Path(tmp) / "s.zarr").rglob("*") if f.is_file())
    return {
        "files": {"masks": [m, n_train], "masks_dtype": "bool", "margins": [m, n_test], "margins_dtype": "float16",
                  "layout": "train_masks_50pct.npy / test_margins_50pct.npy (the release's names)"},
        "input_bytes": input_bytes, "write_inputs_seconds": written, "seconds": out["seconds"],
        "gb_per_s": input_bytes / out["seconds"] / 1e9, "baseline_rss": out["baseline_rss"],
        "peak_rss": out["peak_rss"], "peak_rss_over_input": out["peak_rss"] / input_bytes,
        "store_bytes_on_disk": stored, "eval_rows": out["eval_rows"], "block": out["block"],
        "definition": "input bytes / seconds of import_npy in a fresh process; peak RSS = its VmHWM",
    }


def _memory_child(store: str, max_memory: int, targets: int) -> None:
    # Runs in a fresh process so ru_maxrss is this fit's alone.
    from regression import SolverConfig
    from regression.fit import fit_datamodels
    from regression.memory import current_rss

    baseline = current_rss()
    start = time.perf_counter()
    config = SolverConfig(n_alphas=3, eps=1e-2, tol=1e-2, max_epochs=2, batch_size=2000)  # refit on, the default
    result = fit_datamodels(store, name="membench", targets=slice(0, targets), config=config, max_memory=max_memory,
                            device="cpu", overwrite=True)
    print(json.dumps({"baseline_rss": baseline, "peak_rss": _peak_rss(), "seconds": time.perf_counter() - start,
                      "mean_nnz": result.mean_nnz, "refit": config.refit}))


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    from storage.layout import DatasetInfo
    from storage.metadata import ImportProvenance, import_metadata
    from storage.sweep_store import SweepStore

    bound = args.max_memory_mib << 20
    n_features = 10_000
    block = 1000
    rows = -(-4 * bound // n_features // block) * block
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "mem.zarr"
        store = SweepStore.create(path, import_metadata(
            ImportProvenance(source="benchmark", description="Bernoulli(1/2) masks for the memory bound"),
            dataset=DatasetInfo(name="bench", n_train=n_features, n_test=16, n_classes=2), num_models=rows,
            block=block, outputs=("margins/test",)))
        rng = np.random.default_rng(0)
        beta = np.zeros((n_features, 16), dtype=np.float32)
        beta[:20] = rng.normal(0, 0.1, (20, 16))
        start = time.perf_counter()
        for b in range(rows // block):
            # Bernoulli(1/2) bits: block_masks would take minutes at this size, and
            # only the bytes matter for the memory bound.
            masks = rng.integers(0, 2, (block, n_features), dtype=np.uint8).astype(bool)
            margins = masks[:, :20].astype(np.float32) @ beta[:20] + rng.normal(0, 0.5, (block, 16))
            written = store.write_block(b, {"masks": masks, "margins/test": margins.astype(np.float16)})
            store.ledger.mark_complete(b, checksum=written.checksum, seconds=0.0, node="bench")
        build = time.perf_counter() - start
        child = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(bound), "8"],
                               capture_output=True, text=True, cwd=ROOT)
        if child.returncode:
            return {"error": child.stderr.strip().splitlines()[-1:], "rows": rows}
        out = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "max_memory_bytes": bound, "masks_bytes": rows * n_features, "masks_over_bound": rows * n_features / bound,
        "rows": rows, "features": n_features, "targets": 8, "store_build_seconds": build,
        "definition": "max_memory bounds the whole process's resident memory (peak RSS = its VmHWM)",
        **out, "peak_under_bound": out["peak_rss"] <= bound,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-child"]:
        _memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["--import-child"]:
        _import_child(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("this module runs only as bench_regression.py's child; run bench/bench_regression.py")
