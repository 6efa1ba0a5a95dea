"""Benchmark batched training; prints one JSON document.

CPU mode (default): ``mnist1d-cnn`` models/s trained in blocks of 32 and 64
versus the same recipe one model at a time (same params, same epochs), with
the mean test accuracy of each, mean ± std over ``--repeats``.

GPU mode (``--gpu``, only with CUDA; prints a skip otherwise): ``cifar10-resnet9``
on random CIFAR-shaped data: models per GPU-hour (extrapolated to the recipe's
epochs), and achieved FLOP/s against a measured bf16 matmul FLOP/s.

Usage::

    python bench/bench_training.py [--repeats 3] [--threads 1] [--params '{"epochs": 8}']
    python bench/bench_training.py --gpu [--block 64] [--epochs 2]
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
from machine import cpu_model, git_commit  # noqa: E402  (bench/, next to this script)
import torch  # noqa: E402

from storage.layout import DatasetInfo  # noqa: E402
from workers.masks import block_masks, block_seeds  # noqa: E402
from workers.recipe import Recipe, TrainingBlock, build_recipe  # noqa: E402
from workers.recipes.cifar10_resnet9 import Cifar10Resnet9, Cifar10Resnet9Params, resnet9_flops_per_image  # noqa: E402
from workers.recipes._stacked import ArrayDataset  # noqa: E402
from workers.recipes.mnist1d_cnn import FAST_PARAMS  # noqa: E402

__all__ = ["main"]


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
    """Code version, hardware and library versions."""
    return {
        "commit": git_commit() or "unknown",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
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
    """Seconds to train ``block`` and its models' test accuracies [K]."""
    start = time.perf_counter()
    margins = recipe.train_block(block)["margins/test"]
    return time.perf_counter() - start, (margins > 0).mean(axis=1)


def bench_cpu(*, params: dict[str, Any], repeats: int, single_models: int, alpha: float) -> dict[str, Any]:
    recipe = build_recipe("mnist1d-cnn", params)
    recipe.setup("cpu")
    n_train = recipe.dataset_info().n_train
    timed_block(recipe, block_of(n_train, range(2), alpha))  # warm-up: allocator, oneDNN kernels
    results: dict[str, Any] = {}
    for k in (32, 64):
        rates, accs = [], []
        for r in range(repeats):
            seconds, acc = timed_block(recipe, block_of(n_train, range(r * k, (r + 1) * k), alpha))
            rates.append(k / seconds)
            accs.extend(acc.tolist())
        results[f"batched_k{k}"] = {"models_per_s": asdict(Summary.of(rates)), "test_accuracy": _acc(accs)}
    rates, accs = [], []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(single_models):
            _, acc = timed_block(recipe, block_of(n_train, range(r * single_models + i, r * single_models + i + 1), alpha))
            accs.extend(acc.tolist())
        rates.append(single_models / (time.perf_counter() - start))
    results["one_at_a_time"] = {"models_per_s": asdict(Summary.of(rates)), "test_accuracy": _acc(accs)}
    base = results["one_at_a_time"]["models_per_s"]["mean"]
    for k in (32, 64):
        results[f"batched_k{k}"]["speedup"] = results[f"batched_k{k}"]["models_per_s"]["mean"] / base
    return {"mode": "cpu", "recipe": "mnist1d-cnn", "params": recipe.params.model_dump(), "alpha": alpha,
            "repeats": repeats, "single_models_per_repeat": single_models, "results": results}


def _acc(values: list[float]) -> dict[str, float | int]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "models": len(values)}


class _RandomCifar(Cifar10Resnet9):
    """ResNet-9 recipe on random CIFAR-shaped data (the bench needs no dataset)."""

    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo(name="random-cifar", n_train=self.params.n_train or 50_000,
                           n_test=self.params.n_test or 10_000, n_classes=10)

    def load_arrays(self) -> ArrayDataset:
        info = self.dataset_info()
        rng = np.random.default_rng(0)
        return ArrayDataset(
            x_train=rng.standard_normal((info.n_train, 3, 32, 32), dtype=np.float32),
            y_train=rng.integers(0, 10, info.n_train),
            x_test=rng.standard_normal((info.n_test, 3, 32, 32), dtype=np.float32),
            y_test=rng.integers(0, 10, info.n_test),
            n_classes=10,
        )


def matmul_bf16_flops(size: int = 8192, iters: int = 50) -> float:
    """Measured dense bf16 matmul FLOP/s on the current CUDA device."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2.0 * size**3 * iters / (start.elapsed_time(end) / 1e3)


def bench_gpu(*, block: int, epochs: int, repeats: int, width: int, batch_size: int,
              models_per_pass: int | None) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"mode": "gpu", "skipped": "no CUDA device: the GPU benchmark runs only where torch.cuda.is_available()"}
    # model_construct skips the data_dir check: this recipe generates its data.
    params = Cifar10Resnet9Params.model_construct(
        **{**Cifar10Resnet9Params.model_construct().__dict__, "data_dir": Path("."), "epochs": epochs,
           "width": width, "batch_size": batch_size, "models_per_pass": models_per_pass, "n_train": None,
           "n_test": None}
    )
    recipe = _RandomCifar(params)
    recipe.setup("cuda")
    n_train = recipe.dataset_info().n_train
    alpha = 0.5
    timed_block(recipe, block_of(n_train, range(block), alpha))  # warm-up, and finds the part size that fits
    seconds = []
    for r in range(repeats):
        torch.cuda.synchronize()
        t, _ = timed_block(recipe, block_of(n_train, range((r + 1) * block, (r + 2) * block), alpha))
        torch.cuda.synchronize()
        seconds.append(t)
    per_image = resnet9_flops_per_image(width)
    subset = int(round(alpha * n_train))
    steps = (subset // batch_size) * epochs
    # Training: forward + backward ≈ 3× forward; evaluation: test set twice (flip averaging).
    flops_per_model = 3.0 * per_image * steps * batch_size + 2.0 * per_image * recipe.dataset_info().n_test
    achieved = [block * flops_per_model / t for t in seconds]
    peak = matmul_bf16_flops()
    full_epochs = Cifar10Resnet9Params.model_fields["epochs"].default
    per_model_epoch = [t / block / epochs for t in seconds]
    return {
        "mode": "gpu", "recipe": "cifar10-resnet9 (random CIFAR-shaped data)", "block": block, "epochs_run": epochs,
        "width": width, "batch_size": batch_size, "part_size": recipe._part_limit or block,
        "models_per_gpu_hour_at_run_epochs": asdict(Summary.of([3600.0 * block / t for t in seconds])),
        f"models_per_gpu_hour_at_{full_epochs}_epochs": asdict(
            Summary.of([3600.0 / (s * full_epochs) for s in per_model_epoch])),
        "achieved_flops": asdict(Summary.of(achieved)),
        "bf16_matmul_flops": peak,
        "fraction_of_matmul": statistics.fmean(achieved) / peak,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run the CUDA cifar10-resnet9 benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU mode)")
    parser.add_argument("--params", default=json.dumps(FAST_PARAMS), help="mnist1d-cnn params as JSON")
    parser.add_argument("--single-models", type=int, default=8, help="models per repeat trained one at a time")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--block", type=int, default=64, help="GPU mode: models per block")
    parser.add_argument("--epochs", type=int, default=2, help="GPU mode: epochs actually run")
    parser.add_argument("--width", type=int, default=64, help="GPU mode: ResNet-9 width")
    parser.add_argument("--batch-size", type=int, default=512, help="GPU mode: batch size per model")
    parser.add_argument("--models-per-pass", type=int, default=None, help="GPU mode: cap on models at once")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.gpu:
        result = bench_gpu(block=args.block, epochs=args.epochs, repeats=args.repeats, width=args.width,
                           batch_size=args.batch_size, models_per_pass=args.models_per_pass)
    else:
        result = bench_cpu(params=json.loads(args.params), repeats=args.repeats,
                           single_models=args.single_models, alpha=args.alpha)
    print(json.dumps({"benchmark": "training", "environment": environment(), **result}, indent=2))


if __name__ == "__main__":
    main()
