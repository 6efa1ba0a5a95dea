"""Benchmarks of the regression engine; prints one JSON document. Never run as a test.

Modes (``--mode``, default all three):

* ``cpu``: the full path (k=100, eps=1e-6) on mnist1d-like data (``--models`` ×
  ``--features`` masks from :func:`workers.masks.block_masks`, margins from a planted
  sparse linear model plus noise, or a real ``--store``) against scikit-learn's
  ``lasso_path`` on the same standardised data, the same λ grid per target and the
  same ``tol`` value. scikit-learn runs on ``--sk-targets`` targets, over the grid
  prefix our early stopping walked for that target (its λ choice needs no more),
  and its time is extrapolated linearly to all targets — reported as measured
  (one process) and as an ideal 2-process split.
* ``memory``: a child process fits a store whose masks are ≥ 4× ``--max-memory-mib``
  with ``max_memory`` set to that bound and reports its peak RSS.
* ``gpu``: 50,000 × 10,000 × 1,000 on CUDA: FLOP/s of the SAGA products vs a
  measured matmul of the same shape and dtype, and seconds per λ step; skipped with
  a line when CUDA is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model, git_commit  # bench/, next to this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]


def _meta() -> dict[str, Any]:
    import scipy
    import sklearn
    import torch
    import zarr

    return {
        "code_version": git_commit() or "unknown",
        "hardware": {
            "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg(),
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "zarr": zarr.__version__},
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def _planted(m: int, n: int, t: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from workers.masks import block_masks

    rng = np.random.default_rng(seed)
    masks = block_masks(seed, range(m), n, 0.5)
    beta = np.zeros((n, t), dtype=np.float32)
    for j in range(t):
        beta[rng.choice(n, 30, replace=False), j] = rng.normal(0, 0.05, 30)
    margins = masks.astype(np.float32) @ beta + rng.normal(0, 0.5, (m, t)).astype(np.float32) + 1.0
    return masks, margins.astype(np.float16).astype(np.float32)


def bench_cpu(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.linear_model import lasso_path

    from regression import SolverConfig, saga_lasso_path

    if args.store:
        from storage.sweep_store import SweepStore

        store = SweepStore.open(args.store)
        rows = store.completed_rows()[: args.models]
        masks = store.read("masks", rows)
        margins = store.read("margins/test", rows)[:, : args.targets].astype(np.float32)
        source = f"store {args.store}"
    else:
        masks, margins = _planted(args.models, args.features, args.targets, seed=0)
        source = "block_masks + planted sparse linear margins (30 nonzeros/target, noise sd 0.5)"
    n_val = len(masks) // 10
    x, y, xv, yv = masks[:-n_val], margins[:-n_val], masks[-n_val:], margins[-n_val:]
    settings = dict(n_alphas=100, eps=1e-6, lr=args.lr, batch_size=2000, tol=args.tol, max_epochs=100, patience=5)
    config = SolverConfig(**settings)
    ours, result = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = saga_lasso_path(x, y, X_val=xv, Y_val=yv, config=config, device="cpu")
        ours.append(time.perf_counter() - start)
    assert result is not None

    # scikit-learn: same standardisation, same per-target grid, same tol number.
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    xs = ((x - mu) / sd).astype(np.float64)
    xvs = ((xv - mu) / sd).astype(np.float64)
    subset = np.linspace(0, args.targets - 1, args.sk_targets).astype(int)
    sk_seconds, sk_mse, ours_mse, walked = [], [], [], []
    warnings.filterwarnings("ignore")
    for t in subset:
        steps = min(100, int(result.lam_index[t]) + config.patience + 1)
        yt = y[:, t].astype(np.float64)
        start = time.perf_counter()
        _, coefs, _ = lasso_path(xs, yt - yt.mean(), alphas=result.lambdas[:steps, t].astype(np.float64), tol=args.tol)
        sk_seconds.append(time.perf_counter() - start)
        mse = (((xvs @ coefs) + yt.mean() - yv[:, t : t + 1]) ** 2).mean(0)
        sk_mse.append(float(mse.min()))
        ours_mse.append(float(result.val_mse[t]))
        walked.append(steps)
    sk_total = sum(sk_seconds) * args.targets / len(subset)
    ours_mean = statistics.fmean(ours)
    mse_ratio = statistics.fmean(ours_mse) / statistics.fmean(sk_mse)
    return {
        "data": {"models": len(masks), "train": len(x), "val": n_val, "features": x.shape[1], "targets": y.shape[1],
                 "source": source},
        "params": {**settings, "device": "cpu",
                   "sklearn": "lasso_path(precompute=auto), standardised X, centred y, alphas = our grid prefix"},
        "ours_seconds": _spread(ours),
        "ours": {"step_size": result.step_size, "lipschitz": result.lipschitz, "mean_epochs_per_target":
                 float(result.n_epochs.mean()), "mean_lambda_index": float(result.lam_index.mean()),
                 "lambda_steps_walked": result.extra["n_steps_walked"], "mean_nnz": float(result.nnz.mean()),
                 "unconverged_steps": int(result.n_unconverged.sum()),
                 "achieved_gflops": result.extra["saga_flops"] / ours[-1] / 1e9},
        "sklearn": {"targets_timed": len(subset), "seconds_per_target": _spread(sk_seconds),
                    "grid_steps_per_target": statistics.fmean(walked),
                    "extrapolated_seconds_1_process": sk_total,
                    "extrapolated_seconds_2_processes_ideal": sk_total / 2,
                    "note": "extrapolated linearly from the timed subset to all targets"},
        "val_mse_on_subset": {"ours": statistics.fmean(ours_mse), "sklearn": statistics.fmean(sk_mse),
                              "ratio": mse_ratio, "within_1_percent": abs(mse_ratio - 1) <= 0.01},
        "speedup_vs_sklearn_1_process": sk_total / ours_mean,
        "speedup_vs_sklearn_2_processes": sk_total / 2 / ours_mean,
    }


def _memory_child(store: str, max_memory: int, targets: int) -> None:
    # Runs in a fresh process so ru_maxrss is this fit's alone.
    from regression import SolverConfig
    from regression.fit import fit_datamodels
    from regression.memory import current_rss, peak_rss

    baseline = current_rss()
    start = time.perf_counter()
    config = SolverConfig(n_alphas=3, eps=1e-2, lr="auto", tol=1e-2, max_epochs=2, batch_size=2000)
    result = fit_datamodels(store, name="membench", targets=slice(0, targets), config=config, max_memory=max_memory,
                            device="cpu", overwrite=True)
    print(json.dumps({"baseline_rss": baseline, "peak_rss": peak_rss(), "seconds": time.perf_counter() - start,
                      "mean_nnz": result.mean_nnz}))


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
        "definition": "max_memory bounds the whole process's resident memory (peak RSS via getrusage)",
        **out, "peak_under_bound": out["peak_rss"] <= bound,
    }


def bench_gpu(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from regression import SolverConfig, solve_source
    from regression.loader import TensorSource, split_batches

    m, n, t, b = 50_000, 10_000, 1_000, 2_000
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    # Generated on the device: block_masks on the host would dominate the run.
    masks = torch.rand((m, n), generator=gen, device=dev) < 0.5
    beta = torch.zeros((n, t), device=dev)
    beta[:30] = torch.randn((30, t), generator=gen, device=dev) * 0.05
    y = masks[:, :30].float() @ beta[:30] + 0.5 * torch.randn((m, t), generator=gen, device=dev)
    a = torch.randn((b, n), device=dev)
    w = torch.randn((n, t), device=dev)
    for _ in range(3):
        a @ w
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ w
    torch.cuda.synchronize()
    matmul = 2 * b * n * t * reps / (time.perf_counter() - start)
    src = TensorSource(masks, y)
    cuts = src.cut_points()
    train, val = split_batches(cuts, 0, 45_000, b), split_batches(cuts, 45_000, m, b)
    cfg = SolverConfig(n_alphas=args.gpu_steps, eps=1e-2, lr="auto", tol=1e-3, max_epochs=20)
    times = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        res = solve_source(src, train=train, val=val, config=cfg)
        times.append(time.perf_counter() - start)
    return {"shape": [m, n, t], "dtype": "float32", "matmul_flops": matmul,
            "saga_flops_per_s": res.extra["saga_flops"] / times[-1], "fraction_of_matmul":
            res.extra["saga_flops"] / times[-1] / matmul, "seconds": _spread(times),
            "seconds_per_lambda_step": statistics.fmean(times) / res.extra["n_steps_walked"],
            "lambda_steps": res.extra["n_steps_walked"], "device": torch.cuda.get_device_name(0)}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-child"]:
        _memory_child(argv[1], int(argv[2]), int(argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["cpu", "memory", "gpu", "all"], default="all")
    p.add_argument("--store", default=None, help="use a real store for the cpu mode")
    p.add_argument("--models", type=int, default=4_500)
    p.add_argument("--features", type=int, default=4_000)
    p.add_argument("--targets", type=int, default=1_000)
    p.add_argument("--sk-targets", type=int, default=8)
    p.add_argument("--lr", default="auto", type=lambda s: s if s == "auto" else float(s))
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-memory-mib", type=int, default=2048)
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--tmp", default=None)
    args = p.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "regression", **_meta()}
    modes = ["cpu", "memory", "gpu"] if args.mode == "all" else [args.mode]
    for mode in modes:
        report[mode] = {"cpu": bench_cpu, "memory": bench_memory, "gpu": bench_gpu}[mode](args)
    report["hardware"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
