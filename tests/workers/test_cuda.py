"""The CUDA paths of the stacked recipes (skipped without CUDA; bench/gpu_check.sh runs them on a GPU).

Nothing here imports Ray: the GPU check machine has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_block

from workers.recipe import build_recipe

pytestmark = pytest.mark.cuda

TINY: dict[str, Any] = {"dataset": "digits32", "n_train": 512, "n_test": 128, "widths": [16, 32, 32],
                        "batch_size": 64, "epochs": 2, "whiten_images": 128, "torch_compile": "off"}


@pytest.fixture
def memory_budget() -> Iterator[None]:
    """Whatever a test does to the allocator's limit is undone."""
    torch.cuda.empty_cache()
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_data_is_resident_bf16_channels_last_and_logits_float32() -> None:
    recipe = build_recipe("cifar10-airbench", TINY)
    recipe.setup("cuda")
    x = recipe._tensors["x_train"]
    assert x.is_cuda and x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    out = recipe.train_block(make_block(512, rows=range(4), outputs=("margins/test", "logits/test")))
    logits = out["logits/test"]
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    # Float32 logits, not bf16 ones widened: most values are not representable in bf16.
    as_bf16 = torch.as_tensor(logits).to(torch.bfloat16).float().numpy()
    assert (as_bf16 != logits).mean() > 0.5
    cpu = build_recipe("cifar10-airbench", TINY)
    cpu.setup("cpu")
    theirs = cpu.train_block(make_block(512, rows=range(4)))["margins/test"]
    assert np.corrcoef(out["margins/test"].ravel(), theirs.ravel())[0, 1] > 0.9


def test_out_of_memory_splits_the_block_under_a_memory_budget(memory_budget: None) -> None:
    """A budget of about three models' peak: a block of 16 is split and every model still trains."""
    params = {"dataset": "digits32", "n_train": 4096, "n_test": 256, "epochs": 1, "tta_level": 0,
              "eval_batch_size": 128, "torch_compile": "off"}
    probe = build_recipe("cifar10-airbench", params)
    probe.setup("cuda")
    probe.train_block(make_block(4096, rows=range(1)))  # warm: cuDNN handles, autotuning
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    probe.train_block(make_block(4096, rows=range(1, 2)))
    one_model = torch.cuda.max_memory_allocated() - baseline
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (baseline + 3 * one_model) / total))
    block = make_block(4096, rows=range(16))
    split = probe.train_block(block)["margins/test"]
    assert probe._part_limit is not None and probe._part_limit < 16
    assert np.isfinite(split).all() and split.shape == (16, 256)
    torch.cuda.set_per_process_memory_fraction(1.0)
    alone = np.stack([probe.train_block(make_block(4096, rows=range(k, k + 1)))["margins/test"][0] for k in (0, 7)])
    # bf16 kernels chosen per part size differ in rounding only.
    assert np.corrcoef(alone.ravel(), split[[0, 7]].ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_compiled_stack_matches_eager_on_cuda() -> None:
    eager = build_recipe("cifar10-airbench", TINY)
    compiled = build_recipe("cifar10-airbench", {**TINY, "torch_compile": "on"})
    block = make_block(512, rows=range(4))
    margins = []
    for recipe in (eager, compiled):
        recipe.setup("cuda")
        margins.append(recipe.train_block(block)["margins/test"])
    assert np.corrcoef(margins[0].ravel(), margins[1].ravel())[0, 1] > 0.95
    second = compiled.train_block(make_block(512, rows=range(4, 8)))["margins/test"]  # the compiled stack, reused
    assert np.isfinite(second).all()


def test_resnet9_runs_channels_last_on_cuda() -> None:
    recipe = build_recipe("cifar10-resnet9", {"dataset": "digits32", "n_train": 256, "n_test": 64, "width": 8,
                                              "epochs": 1, "batch_size": 32, "torch_compile": "off"})
    recipe.setup("cuda")
    out = recipe.train_block(make_block(256, rows=range(3)))["margins/test"]
    assert out.shape == (3, 64) and np.isfinite(out).all()
