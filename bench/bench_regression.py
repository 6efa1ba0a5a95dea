"""Benchmarks of the regression engine; prints one JSON document. Never run as a test.

Modes (``--mode``; ``all`` runs every one, ``gpu`` skipping without CUDA):

* ``cpu``, the documented side-by-side on a real sweep: ``bench/specs/mnist1d_4608.yaml``
  (4,608 ``mnist1d-cnn`` models; made with ``dmsweep run`` when the store is absent,
  resumed when partial, reused when complete). Every variant is fitted with
  ``fit_datamodels`` on rows ``[0, --fit-rows)`` (its default 10 % validation
  split) for ``--targets`` targets and scored by LDS on the held-out rows
  ``[--fit-rows, 4608)``; the defaults first. scikit-learn runs on the first
  ``--sk-targets`` of the same targets (so does ``before``, dmsweep's defaults
  until issue 12, too slow for all), tuned as a practitioner would (``bench/sklearn_lasso.py``:
  the same grid, warm starts, the same early stopping on the same validation rows,
  Gram matrix once with ``precompute=``/``Xy=`` or plain descent, one thread, with
  and without a refit at the chosen λ), in the same run.
* ``select``: the defaults chosen on validation rows only: each candidate setting
  (one change from the defaults) fitted on rows ``[0, --select-rows)`` and scored
  by LDS on ``[--select-rows, --fit-rows)``, rows inside the documented fit's, never
  the held-out ones.
* ``import``: a published-format pair of ``--import-models`` × ``--import-train``
  masks and × ``--import-test`` float16 margins (synthetic files in the release's
  names, written to ``--tmp``) imported by a child process, keeping the release's
  10,000 evaluation models; GB/s and the child's peak RSS. The files and the store
  are deleted afterwards.
* ``memory``: a child process fits a store whose masks are ≥ 4× ``--max-memory-mib``
  with ``max_memory`` set to that bound (default settings, so the refit's buffers
  count) and reports its peak RSS.
* ``gpu``: 50,000 × 10,000 × 1,000 on CUDA, both engines in fp32, TF32 and bf16:
  seconds per phase and validation MSE against fp32, the products' FLOP/s against
  same-shape fp32 / TF32 / bf16 matmuls; skipped with a line without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model, git_commit  # bench/, next to this script
from regression_memory import bench_import, bench_memory  # bench/, next to this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

__all__ = ["main"]

SWEEP_SPEC = ROOT / "bench" / "specs" / "mnist1d_4608.yaml"
SWEEP_STORE = ROOT / "runs" / "bench-mnist1d-4608.zarr"


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


#: Variants fitted on the scikit-learn targets only (too slow for all of them).
_ON_SKLEARN_TARGETS = ("before",)


def _variants() -> dict[str, Any]:
    """The settings compared on the real sweep, by name (the defaults first)."""
    from regression import SolverConfig

    return {
        "default": SolverConfig(),
        # dmsweep's defaults before issue 12: SAGA at the published step, no refit, tol 1e-4, batch 2000, patience 5.
        "before": SolverConfig(engine="saga", lr=5e-3, refit=False, tol=1e-4, batch_size=2000, patience=5,
                               path_tol=1e-4, n_alphas=100, noise_factors=0),
        # Plain LASSO on the stored outputs (the shared noise left in).
        "no-factors": SolverConfig(noise_factors=0),
        # The SAGA engine at the same settings (the default engine before the Gram engine).
        "saga": SolverConfig(engine="saga"),
        "no-refit": SolverConfig(refit=False),
        "average-1": SolverConfig(average=1),
        "ls": SolverConfig(debias="ls"),
        "relaxed": SolverConfig(debias="relaxed"),
    }


def _candidates() -> dict[str, Any]:
    """One change at a time from the defaults: what ``select`` measures on validation rows.

    ``tol=1e-4``, ``batch_size=2000`` and ``patience=5`` are the defaults before
    issue 12; ``val_fraction`` is ``fit_datamodels``' own parameter.
    """
    from regression import SolverConfig

    base = SolverConfig().model_dump()
    changes: dict[str, dict[str, Any]] = {
        "default": {}, "tol=1e-4": {"tol": 1e-4}, "tol=3e-3": {"tol": 3e-3}, "tol=1e-2": {"tol": 1e-2},
        "batch_size=2000": {"batch_size": 2000}, "batch_size=500": {"batch_size": 500},
        "patience=5": {"patience": 5}, "patience=10": {"patience": 10}, "n_alphas=50": {"n_alphas": 50}, "n_alphas=200": {"n_alphas": 200},
        "eps=1e-3": {"eps": 1e-3}, "average=1": {"average": 1}, "average=2": {"average": 2},
        "debias=ls": {"debias": "ls"}, "debias=relaxed": {"debias": "relaxed"},
        "debias=ls,ridge=0.1": {"debias": "ls", "ridge": 0.1}, "refit=False": {"refit": False},
        "lr=5e-3": {"lr": 5e-3}, "choose=1se": {"choose": "1se"}, "l2=0.1": {"l2": 0.1},
        "val_fraction=0.2": {"val_fraction": 0.2}, "path_tol=1e-3": {"path_tol": 1e-3},
        "path_tol=3e-3": {"path_tol": 3e-3}, "engine=saga": {"engine": "saga"},
        "noise_factors=0": {"noise_factors": 0}, "noise_factors=1": {"noise_factors": 1},
        "noise_factors=3": {"noise_factors": 3}, "noise_factors=10": {"noise_factors": 10},
    }
    return {name: SolverConfig(**{**base, **{k: v for k, v in change.items() if k != "val_fraction"}})
            for name, change in changes.items()}


def _parse_setting(text: str) -> dict[str, Any]:
    """``tol=1e-3,patience=3`` as settings (values read by SolverConfig's lax mode); a plain name gives none."""
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _ensure_sweep(store: Path) -> dict[str, Any]:
    """The benchmark sweep: reused when complete, else made (or resumed) with ``dmsweep run``."""
    from storage.sweep_store import SweepStore

    made = 0.0
    if store == SWEEP_STORE:
        complete = store.exists() and SweepStore.open(store).completed_rows().size == SweepStore.open(store).num_models
        if not complete:
            store.parent.mkdir(parents=True, exist_ok=True)  # runs/ is not in a fresh clone
            started = time.perf_counter()
            env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
            subprocess.run([sys.executable, "-m", "orchestrator", "run", str(SWEEP_SPEC)], cwd=ROOT, env=env,
                           check=True, stdout=sys.stderr)
            made = time.perf_counter() - started
    opened = SweepStore.open(store)
    return {"store": str(store), "models": opened.num_models, "completed": int(opened.completed_rows().size),
            "spec": str(SWEEP_SPEC.relative_to(ROOT)) if store == SWEEP_STORE else None,
            "sweep_seconds_this_run": made}


def _held_out_spearman(masks: np.ndarray, actual: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    from regression.lds import column_correlations

    spearman, _, _ = column_correlations(masks.astype(np.float32) @ weight + bias, actual)
    return spearman


def _fit_variant(store: Path, name: str, config: Any, rows: slice, targets: int, masks_h: np.ndarray,
                 y_h: np.ndarray, val_fraction: float = 0.1) -> tuple[dict[str, Any], np.ndarray, Any]:
    """Fit one setting with ``fit_datamodels`` and score it on the held-out rows."""
    from regression.fit import fit_datamodels
    from storage.datamodels import delete_datamodels, list_datamodels, read_datamodels
    from storage.sweep_store import SweepStore

    root = SweepStore.open(store, mode="r+").group
    if f"bench-{name}" in list_datamodels(root):
        delete_datamodels(root, f"bench-{name}")  # a fit with the same settings would resume, not run
    started = time.perf_counter()
    fit = fit_datamodels(store, name=f"bench-{name}", rows=rows, targets=slice(0, targets), config=config,
                         device="cpu", overwrite=True, val_fraction=val_fraction)
    seconds = time.perf_counter() - started
    dm = read_datamodels(SweepStore.open(store).group, f"bench-{name}")
    spearman = _held_out_spearman(masks_h, y_h, dm.weight, dm.bias)
    receipt = next(iter(dm.attrs["finished_shards"].values()))
    report = {"config": config.model_dump(mode="json"), "val_fraction": val_fraction, "seconds": seconds, "seconds_per_target": seconds / targets,
              "lds": float(np.nanmean(spearman)), "lds_spread": float(np.nanstd(spearman)),
              "mean_val_mse": fit.mean_val_mse, "mean_nnz": fit.mean_nnz, "train_rows": fit.n_train_rows,
              "val_rows": fit.n_val_rows, "epochs_per_target": receipt["epochs"] / targets,
              "gflop_per_target": receipt["flops"] / targets / 1e9, "step_size": receipt["step_size"]}
    return report, spearman, fit


def bench_cpu(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn_lasso import fit_targets, standardise  # bench/, next to this script

    from storage.sweep_store import SweepStore

    store = Path(args.store)
    sweep = _ensure_sweep(store)
    opened = SweepStore.open(store)
    fit_rows, t_all = slice(0, args.fit_rows), args.targets
    held = slice(args.fit_rows, opened.num_models)
    masks_h = opened.read("masks", held)
    y_h = opened.read("margins/test", held)[:, :t_all].astype(np.float32)
    variants = _variants()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(variants)}")
    ours: dict[str, Any] = {}
    spearman: dict[str, np.ndarray] = {}
    fit = None
    subset = np.arange(min(args.sk_targets, t_all))  # the targets scikit-learn fits too
    for name in ["default", *[n for n in names if n != "default"]]:
        count = subset.size if name in _ON_SKLEARN_TARGETS else t_all
        ours[name], spearman[name], result = _fit_variant(store, name, variants[name], fit_rows, count, masks_h,
                                                          y_h[:, :count])
        ours[name]["targets"] = count
        fit = result if name == "default" else fit
        print(f"bench_regression cpu: {name} {ours[name]['seconds']:.0f}s LDS {ours[name]['lds']:.4f}", file=sys.stderr)
    assert fit is not None, "the default variant is always fitted"

    # scikit-learn on the first targets, the same train / validation split.
    n_train = fit.n_train_rows
    masks = opened.read("masks", fit_rows)
    y = opened.read("margins/test", fit_rows)[:, :t_all].astype(np.float64)
    cfg = variants["default"]
    sk: dict[str, Any] = {}
    for how in ("gram", "direct"):
        train = standardise(masks[:n_train], gram=how == "gram")
        both = standardise(masks, gram=how == "gram")
        yc = y[:n_train] - y[:n_train].mean(0)
        lam_max = np.abs(train.xs.T @ yc).max(0) / n_train
        grid = lam_max[None, :] * cfg.eps ** (np.arange(cfg.n_alphas) / (cfg.n_alphas - 1))[:, None]
        res = fit_targets(train, y[:n_train], masks[n_train:], y[n_train:], grid, targets=subset,
                          patience=cfg.patience, refit=both, y_refit=y, how=how)
        shared = (train.seconds + both.seconds + res.shared_seconds) / t_all
        path_lds = _held_out_spearman(masks_h, y_h[:, subset], res.weight.astype(np.float32), res.bias)
        refit_lds = _held_out_spearman(masks_h, y_h[:, subset], res.weight_refit.astype(np.float32), res.bias_refit)
        per_target = statistics.fmean(res.seconds) + shared
        sk[how] = {"seconds_per_target": per_target,
                   "seconds_per_target_with_refit": per_target + statistics.fmean(res.seconds_refit),
                   "path_seconds_per_target": _spread(res.seconds), "refit_seconds_per_target": _spread(res.seconds_refit),
                   "shared_seconds_per_target": shared, "gram_seconds": train.seconds + both.seconds,
                   "lambda_steps": statistics.fmean(res.steps), "lds": float(np.nanmean(path_lds)),
                   "lds_refit": float(np.nanmean(refit_lds)), "mean_nnz": float((res.weight != 0).sum(0).mean())}
        spearman[f"sklearn-{how}"], spearman[f"sklearn-{how}-refit"] = path_lds, refit_lds
        print(f"bench_regression cpu: sklearn {how} {per_target:.2f}s/target LDS {sk[how]['lds']:.4f} / "
              f"refit {sk[how]['lds_refit']:.4f}", file=sys.stderr)

    # The tuned baseline: scikit-learn's best LDS, at its fastest descent.
    best_key = max((k for k in spearman if k.startswith("sklearn-")), key=lambda k: float(np.nanmean(spearman[k])))
    fastest = min(sk, key=lambda how: sk[how]["seconds_per_target"])
    diff = spearman["default"][subset] - spearman[best_key]
    comparison = {
        "targets_compared": int(subset.size),
        "sklearn_best": best_key, "sklearn_best_lds": float(np.nanmean(spearman[best_key])),
        "ours_default_lds_same_targets": float(np.nanmean(spearman["default"][subset])),
        "lds_gain": float(np.nanmean(diff)),
        "lds_gain_stderr": float(np.nanstd(diff) / np.sqrt(max(1, np.isfinite(diff).sum()))),
        "sklearn_fastest": fastest,
        "speedup_per_target": sk[fastest]["seconds_per_target"] / ours["default"]["seconds_per_target"],
        "speedup_per_target_vs_sklearn_with_refit":
            sk[fastest]["seconds_per_target_with_refit"] / ours["default"]["seconds_per_target"],
        "targets": {"lds_gain_at_least": 0.01, "speedup_at_least": 10.0},
    }
    comparison["targets_met"] = bool(comparison["lds_gain"] >= 0.01 and comparison["speedup_per_target"] >= 10)
    for name in ours:
        ours[name]["lds_same_targets_as_sklearn"] = float(np.nanmean(spearman[name][subset]))
    return {
        "data": {**sweep, "fit_rows": [0, args.fit_rows], "held_out_rows": [held.start, held.stop],
                 "targets": t_all, "features": int(masks_h.shape[1])},
        "ours": ours,
        "sklearn": {"targets": subset.tolist(), "tol": 1e-4, "threads": 1, **sk},
        "comparison": comparison,
        "note": "ours: fit_datamodels from the store (2 torch threads); scikit-learn: one thread, float64",
    }


def bench_select(args: argparse.Namespace) -> dict[str, Any]:
    from storage.sweep_store import SweepStore

    store = Path(args.store)
    _ensure_sweep(store)
    opened = SweepStore.open(store)
    rows, scored = slice(0, args.select_rows), slice(args.select_rows, args.fit_rows)
    masks_s = opened.read("masks", scored)
    y_s = opened.read("margins/test", scored)[:, : args.select_targets].astype(np.float32)
    out: dict[str, Any] = {}
    per_target: dict[str, np.ndarray] = {}
    from regression import SolverConfig

    candidates = _candidates()
    if args.candidates:
        candidates = {name: candidates.get(name) for name in ["default", *args.candidates.split(";")]}
    base = SolverConfig().model_dump()
    for name, config in candidates.items():
        settings = _parse_setting(name)
        val_fraction = float(settings.pop("val_fraction", 0.1))  # fit_datamodels' own, not a solver setting
        config = config or SolverConfig(**{**base, **settings})
        report, per_target[name], _ = _fit_variant(store, f"select-{name}", config, rows, args.select_targets,
                                                   masks_s, y_s, val_fraction=val_fraction)
        out[name] = {k: report[k] for k in ("seconds", "seconds_per_target", "lds", "mean_val_mse", "mean_nnz",
                                            "epochs_per_target", "gflop_per_target")}
        print(f"bench_regression select: {name} {report['seconds']:.0f}s {report['gflop_per_target']:.1f} GFLOP/target "
              f"LDS {report['lds']:.4f}", file=sys.stderr)
    base = out["default"]
    for name, report in out.items():
        diff = per_target[name] - per_target["default"]
        report["lds_change"] = report["lds"] - base["lds"]
        report["lds_change_stderr"] = float(np.nanstd(diff) / np.sqrt(max(1, np.isfinite(diff).sum())))
        report["time_ratio"] = report["seconds"] / base["seconds"]
        report["flop_ratio"] = report["gflop_per_target"] / base["gflop_per_target"]
    return {"fit_rows": [0, args.select_rows], "scored_rows": [scored.start, scored.stop],
            "targets": args.select_targets,
            "protocol": "rows inside the documented fit's rows; the held-out rows of the cpu mode are never read",
            "candidates": out}


def _matmul_rate(a: Any, b: Any, *, precision: str, reps: int = 20) -> float:
    """FLOP/s of ``a @ b`` at the products' precision, measured with CUDA events."""
    import torch

    from regression.products import tf32_matmul

    def run() -> Any:
        if precision == "bf16":
            return torch.mm(a.bfloat16(), b.bfloat16(), out_dtype=torch.float32)
        if precision == "tf32":
            with tf32_matmul():
                return a @ b
        return a @ b

    if precision == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    for _ in range(3):
        run()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * reps / (begin.elapsed_time(end) / 1e3)


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
    references = {p: _matmul_rate(a, w, precision=p) for p in ("fp32", "tf32", "bf16")}
    src = TensorSource(masks, y)
    cuts = src.cut_points()
    train, val = split_batches(cuts, 0, 45_000, b), split_batches(cuts, 45_000, m, b)
    runs: dict[str, Any] = {}
    for engine, precision in [(e, p) for e in ("saga", "gram") for p in ("fp32", "tf32", "bf16")]:
        cfg = SolverConfig(n_alphas=args.gpu_steps, eps=1e-2, tol=1e-3, max_epochs=20, precision=precision,
                           engine=engine)
        times = []
        res = None
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            res = solve_source(src, train=train, val=val, config=cfg)
            times.append(time.perf_counter() - start)
        assert res is not None
        rate = res.extra["saga_flops"] / times[-1]
        runs[f"{engine}-{precision}"] = {
            "seconds": _spread(times), "seconds_per_phase": {k: res.extra[k] for k in
                                                             ("seconds_moments", "seconds_path", "seconds_final")},
            "seconds_per_lambda_step": res.extra["seconds_path"] / res.extra["n_steps_walked"],
            "lambda_steps": res.extra["n_steps_walked"], "saga_flops_per_s": rate,
            "fraction_of_same_precision_matmul": rate / references[precision],
            "mean_val_mse": float(np.mean(res.val_mse)), "mean_nnz": float(np.mean(res.nnz)),
        }
    for engine in ("saga", "gram"):
        fp32 = runs[f"{engine}-fp32"]
        for precision in ("tf32", "bf16"):
            run = runs[f"{engine}-{precision}"]
            run["val_mse_vs_fp32"] = run["mean_val_mse"] / fp32["mean_val_mse"]
            run["speedup_vs_fp32"] = fp32["seconds"]["mean"] / run["seconds"]["mean"]
    runs["gram_speedup_vs_saga_fp32"] = runs["saga-fp32"]["seconds"]["mean"] / runs["gram-bf16"]["seconds"]["mean"]
    return {"shape": [m, n, t], "batch": b, "matmul_flops": references, "runs": runs,
            "device": torch.cuda.get_device_name(0)}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["cpu", "select", "import", "memory", "gpu", "all"], default="all")
    p.add_argument("--store", default=str(SWEEP_STORE), help="the sweep (made from bench/specs/mnist1d_4608.yaml)")
    p.add_argument("--fit-rows", type=int, default=4096, help="rows [0, N) are fitted, the rest held out")
    p.add_argument("--targets", type=int, default=1_000)
    p.add_argument("--variants", default=",".join(_variants()), help="comma-separated settings for the cpu mode")
    p.add_argument("--sk-targets", type=int, default=256, help="the first N targets, fitted by scikit-learn too")
    p.add_argument("--select-rows", type=int, default=3584)
    p.add_argument("--select-targets", type=int, default=250)
    p.add_argument("--candidates", default="", help="select only these ';'-separated settings, e.g. 'tol=1e-2;patience=3'")
    p.add_argument("--import-models", type=int, default=100_000)
    p.add_argument("--import-train", type=int, default=50_000)
    p.add_argument("--import-test", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-memory-mib", type=int, default=2048)
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--tmp", default=None)
    args = p.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "regression", **_meta()}
    modes = ["cpu", "select", "import", "memory", "gpu"] if args.mode == "all" else [args.mode]
    run = {"cpu": bench_cpu, "select": bench_select, "import": bench_import, "memory": bench_memory, "gpu": bench_gpu}
    for mode in modes:
        started = time.perf_counter()
        report[mode] = run[mode](args)
        report[mode]["mode_seconds"] = time.perf_counter() - started
    report["hardware"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
