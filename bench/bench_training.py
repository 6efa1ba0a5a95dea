"""Benchmark batched training; prints one JSON document. Never run as a test.

CPU mode (default): ``mnist1d-cnn`` at the recipe's defaults (or ``--params``;
``'{"cpu_precision": "float32"}'`` for the float32 reference on a CPU where
"auto" picks bf16): models/s trained in blocks of 32 and 64 against the same
recipe training them one at a time (same params, same epochs, same seeds'
kind), with the mean test accuracy of each and the seconds per model in each
phase of a block. The three are interleaved within every repeat, so a change
of load on a shared machine hits them alike. ``--probes`` adds the
measurements of ``training_probes.py`` (convolution layouts, vmap against
grouped convolutions, the step by block size and precision and operation by
operation, evaluation passes, threads, torch.compile, the allocator).

GPU mode (``--gpu``; only with CUDA, otherwise a skip line): ``cifar10-airbench``
and ``cifar10-resnet9`` at their published settings, on CIFAR-shaped data:
``digits32`` (a learnable generated task: its accuracy shows the models learn,
not what they reach on CIFAR-10) or real CIFAR-10 with ``--cifar-dir``. Per
recipe: the setup, a first block (torch.compile and cuDNN autotuning included),
then timed blocks at the recipe's full epochs: models per GPU-hour and per
GPU-day at α, the block's phases (init and whitening, training, evaluation),
mean test accuracy; and one training step of the K-model stack against the
dense reference of the same shape (one model at batch K·B) and one model at
batch B, with the FLOP/s each achieves.

Usage::

    python bench/bench_training.py [--repeats 2] [--single-models 4] [--params '{}'] [--probes]
    python bench/bench_training.py --gpu [--block 16] [--repeats 1] [--cifar-dir DIR] [--compile auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_model, git_commit  # noqa: E402  (bench/, next to this script)
from training_probes import cpu_probes, stack_step, time_cuda  # noqa: E402

from workers.batched import cpu_has_amx, total_steps  # noqa: E402
from workers.masks import block_masks, block_seeds, subset_size  # noqa: E402
from workers.recipe import Recipe, TrainingBlock, build_recipe  # noqa: E402
from workers.recipes.cifar10_airbench import airbench_flops_per_image  # noqa: E402
from workers.recipes.cifar10_resnet9 import resnet9_flops_per_image  # noqa: E402

__all__ = ["main"]

#: The issue's GPU target for the airbench-class recipe (models per H100-day at α = 0.5).
AIRBENCH_TARGET_PER_DAY = 60_000


@dataclass(frozen=True)
class Summary:
    """Mean ± std of a measurement over repeats."""

    mean: float
    std: float
    runs: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, values)


def environment() -> dict[str, Any]:
    """Code version, hardware, library versions and the load when the run started."""
    return {
        "commit": git_commit() or "unknown",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def block_of(n_train: int, rows: range, alpha: float, outputs: tuple[str, ...] = ("margins/test",)) -> TrainingBlock:
    return TrainingBlock(
        block_id=0,
        indices=np.arange(rows.start, rows.stop, dtype=np.int64),
        masks=block_masks(0, rows, n_train, alpha),
        seeds=block_seeds(0, rows),
        outputs=outputs,
        workdir=Path("."),
    )


def timed_block(recipe: Recipe, block: TrainingBlock) -> tuple[float, np.ndarray]:
    """Seconds to train ``block`` (device work included) and its models' test accuracies [K]."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    margins = recipe.train_block(block)["margins/test"]
    return time.perf_counter() - start, (margins > 0).mean(axis=1)


def _acc(values: list[float]) -> dict[str, float | int]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "models": len(values)}


def bench_cpu(*, params: dict[str, Any], repeats: int, single_models: int, alpha: float) -> dict[str, Any]:
    recipe: Any = build_recipe("mnist1d-cnn", params)
    recipe.setup("cpu")
    n_train = recipe.dataset_info().n_train
    timed_block(recipe, block_of(n_train, range(2), alpha))  # warm-up: allocator, oneDNN kernels
    blocks = (32, 64)
    rates: dict[str, list[float]] = {f"batched_k{k}": [] for k in blocks} | {"one_at_a_time": []}
    accs: dict[str, list[float]] = {name: [] for name in rates}
    # Seconds per model in each phase of a block (prepare: init; train; evaluate: the outputs).
    phases: dict[str, dict[str, list[float]]] = {name: {"prepare": [], "train": [], "evaluate": []} for name in rates}

    def record_phases(name: str) -> None:
        timings = recipe.last_timings
        for phase in ("prepare", "train", "evaluate"):
            phases[name][phase].append(getattr(timings, phase) / timings.models)

    next_row = 1000
    for _ in range(repeats):
        for k in blocks:
            seconds, acc = timed_block(recipe, block_of(n_train, range(next_row, next_row + k), alpha))
            next_row += k
            rates[f"batched_k{k}"].append(k / seconds)
            accs[f"batched_k{k}"].extend(acc.tolist())
            record_phases(f"batched_k{k}")
        start = time.perf_counter()
        for _ in range(single_models):
            _, acc = timed_block(recipe, block_of(n_train, range(next_row, next_row + 1), alpha))
            next_row += 1
            accs["one_at_a_time"].extend(acc.tolist())
            record_phases("one_at_a_time")
        rates["one_at_a_time"].append(single_models / (time.perf_counter() - start))
    results: dict[str, Any] = {
        name: {"models_per_s": asdict(Summary.of(values)), "test_accuracy": _acc(accs[name]),
               "seconds_per_model_by_phase": {phase: statistics.fmean(v) for phase, v in phases[name].items()}}
        for name, values in rates.items()
    }
    base = results["one_at_a_time"]["models_per_s"]["mean"]
    for k in blocks:
        results[f"batched_k{k}"]["speedup"] = results[f"batched_k{k}"]["models_per_s"]["mean"] / base
    return {"mode": "cpu", "recipe": "mnist1d-cnn", "params": recipe.params.model_dump(mode="json"),
            "training_dtype": str(recipe._dtype).removeprefix("torch."), "cpu_has_amx": cpu_has_amx(),
            "models_per_pass": recipe.params.models_per_pass or recipe.cpu_models_per_pass,
            "alpha": alpha, "repeats": repeats, "single_models_per_repeat": single_models,
            "load_average_at_end": os.getloadavg(), "results": results}


def _gpu_params(name: str, args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"dataset": "digits32"}
    if args.cifar_dir:
        data = {"dataset": "cifar10", "data_dir": args.cifar_dir}
    overrides = json.loads(args.airbench_params if name == "cifar10-airbench" else args.resnet9_params)
    return {**data, "torch_compile": args.compile, **overrides}


def _flops_per_model(recipe: Recipe, n_train: int, n_test: int, alpha: float) -> float:
    """Training (forward + backward = 3 forwards per image-step) plus the test-time views."""
    p = recipe.params
    if recipe.name == "cifar10-airbench":
        per_image, views = airbench_flops_per_image(p.widths), (1, 2, 6)[p.tta_level]  # type: ignore[attr-defined]
    else:
        per_image, views = resnet9_flops_per_image(p.width), 2 if p.flip_test else 1  # type: ignore[attr-defined]
    config = recipe.train_config()  # type: ignore[attr-defined]
    n_subset = subset_size(n_train, alpha)
    _, steps = total_steps(n_subset, config)
    return 3.0 * per_image * steps * min(config.batch_size, n_subset) + views * per_image * n_test


def bench_gpu_recipe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    params = _gpu_params(name, args)
    block = args.resnet9_block if name == "cifar10-resnet9" and args.resnet9_block else args.block
    start = time.perf_counter()
    recipe = build_recipe(name, params)
    recipe.setup("cuda")
    torch.cuda.synchronize()
    setup_s = time.perf_counter() - start
    info = recipe.dataset_info()
    first_s, _ = timed_block(recipe, block_of(info.n_train, range(block), args.alpha))
    seconds, accs = [], []
    for r in range(args.repeats):
        rows = range((r + 1) * block, (r + 2) * block)
        t, acc = timed_block(recipe, block_of(info.n_train, rows, args.alpha))
        seconds.append(t)
        accs.extend(acc.tolist())
    part = recipe._part_limit or block  # type: ignore[attr-defined]
    per_hour = [3600.0 * block / t for t in seconds]
    flops = _flops_per_model(recipe, info.n_train, info.n_test, args.alpha)
    timings = recipe.last_timings  # type: ignore[attr-defined]
    out: dict[str, Any] = {
        "recipe": name, "params": recipe.params.model_dump(mode="json"), "dataset": info.name,
        "n_train": info.n_train, "n_test": info.n_test, "alpha": args.alpha, "block": block, "part_size": part,
        "setup_s": setup_s, "first_block_s": first_s, "block_s": asdict(Summary.of(seconds)),
        "models_per_gpu_hour": asdict(Summary.of(per_hour)),
        "models_per_gpu_day": 24 * statistics.fmean(per_hour),
        "phases_last_block_s": {"prepare": timings.prepare, "train": timings.train, "evaluate": timings.evaluate},
        "flops_per_model": flops,
        "achieved_tflops_per_s": block * flops / statistics.fmean(seconds) / 1e12,
        "test_accuracy": _acc(accs),
    }
    if name == "cifar10-airbench":
        out["target_models_per_gpu_day"] = AIRBENCH_TARGET_PER_DAY
    del recipe
    torch.cuda.empty_cache()
    out["step"] = _step_reference(name, params, part)
    return out


def _step_reference(name: str, params: dict[str, Any], k: int) -> dict[str, Any]:
    """One eager training step: K models at batch B, the dense reference (1 model, batch K·B), 1 model at batch B."""
    recipe = build_recipe(name, params)
    batch = recipe.params.batch_size  # type: ignore[attr-defined]
    p: Any = recipe.params
    per_image = airbench_flops_per_image(p.widths) if name == "cifar10-airbench" else resnet9_flops_per_image(p.width)
    step_flops = 3.0 * per_image * k * batch
    times = {}
    for label, models, b in (("grouped", k, batch), ("dense_reference", 1, k * batch), ("one_model", 1, batch)):
        times[label] = time_cuda(stack_step(name, params, models, b, "cuda"))
        torch.cuda.empty_cache()
    return {
        "models": k, "batch_per_model": batch, "flops_per_step": step_flops, "eager": True,
        "ms": times,
        "tflops_per_s": {"grouped": step_flops / times["grouped"] / 1e9,
                         "dense_reference": step_flops / times["dense_reference"] / 1e9,
                         "one_model": step_flops / k / times["one_model"] / 1e9},
        "grouped_over_dense_speed": times["dense_reference"] / times["grouped"],
        "grouped_over_one_at_a_time_speed": k * times["one_model"] / times["grouped"],
    }


def bench_gpu(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"mode": "gpu", "skipped": "no CUDA device: the GPU benchmark runs only where torch.cuda.is_available()"}
    recipes = [name for name in ("cifar10-airbench", "cifar10-resnet9") if name in args.recipes.split(",")]
    results = {}
    for name in recipes:
        results[name] = bench_gpu_recipe(name, args)
        print(json.dumps({"partial": name, **results[name]}), file=sys.stderr, flush=True)
    return {"mode": "gpu", "cifar_dir": args.cifar_dir, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run the CUDA CIFAR benchmark")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU mode)")
    parser.add_argument("--params", default="{}", help="mnist1d-cnn params as JSON (default: the recipe's defaults)")
    parser.add_argument("--single-models", type=int, default=4, help="models per repeat trained one at a time")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--probes", action="store_true", help="CPU mode: add the layout/threads/compile probes")
    parser.add_argument("--block", type=int, default=16, help="GPU mode: models per block")
    parser.add_argument("--resnet9-block", type=int, default=None, help="GPU mode: resnet9's block (default --block)")
    parser.add_argument("--recipes", default="cifar10-airbench,cifar10-resnet9", help="GPU mode: which recipes")
    parser.add_argument("--cifar-dir", default=None, help="GPU mode: a real CIFAR-10 folder (else digits32)")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="GPU mode: torch_compile")
    parser.add_argument("--airbench-params", default="{}", help="GPU mode: cifar10-airbench param overrides (JSON)")
    parser.add_argument("--resnet9-params", default="{}", help="GPU mode: cifar10-resnet9 param overrides (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment()  # before the run: the load it started under
    if args.gpu:
        result = bench_gpu(args)
    else:
        result = bench_cpu(params=json.loads(args.params), repeats=args.repeats,
                           single_models=args.single_models, alpha=args.alpha)
        if args.probes:
            result["probes"] = cpu_probes()
    print(json.dumps({"benchmark": "training", "environment": env, **result}, indent=2))


if __name__ == "__main__":
    main()
