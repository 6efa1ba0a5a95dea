"""What keeps training honest on any device: OOM handling, float32 logits, non-finite outputs, compile, backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_block

from storage.errors import BlockFailedError
from workers.batched import (
    ActivationBudget,
    FullPrecision,
    GroupedLinear,
    configure_backend,
    cpu_has_amx,
    init_stack,
    is_out_of_memory,
    keep_host_allocations,
    model_generators,
    training_dtype,
    use_compile,
)
from workers.block_runner import check_finite_outputs
from workers.recipe import build_recipe
from workers.recipes.mnist1d_cnn import _Stack as Mnist1dStack

MNIST_TINY: dict[str, Any] = {"epochs": 1, "width": 8, "n_train": 200, "n_test": 50}


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx`"), False),
        (RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"), False),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_classifier(exc: BaseException, oom: bool) -> None:
    assert is_out_of_memory(exc) is oom


def test_activation_budget_splits_a_block_into_parts_that_fit() -> None:
    """A budget that one model's step fits but two models' do not: the block trains one model at a time."""
    probe = ActivationBudget(1 << 40)
    stack = Mnist1dStack(1, 8)
    init_stack(stack, model_generators(np.array([0])))
    with probe.step():
        stack(torch.zeros(32, 1, 1, 40)).sum()
    one_model_mib = probe.peak_bytes / 2**20
    # The probe measured a float32 step (bf16 autocast, "auto" on AMX CPUs, saves about half).
    float32 = {**MNIST_TINY, "cpu_precision": "float32"}
    budgeted = build_recipe("mnist1d-cnn", {**float32, "max_activation_mib": 1.5 * one_model_mib})
    plain = build_recipe("mnist1d-cnn", float32)
    for recipe in (budgeted, plain):
        recipe.setup("cpu")
    block = make_block(200, rows=range(4))
    split = budgeted.train_block(block)["margins/test"]
    assert budgeted._part_limit == 1  # halved from 4 to 2 to 1, and remembered for later blocks
    whole = plain.train_block(block)["margins/test"]
    np.testing.assert_allclose(split, whole, atol=1e-4 * float(np.abs(whole).max()))


def test_the_head_computes_float32_logits_under_bf16_autocast() -> None:
    head = FullPrecision(GroupedLinear(2, 16, 3))
    init_stack(head, model_generators(np.array([1, 2])))
    features = torch.randn(5, 32)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = head(features.to(torch.bfloat16))
        plain = head.module(features.to(torch.bfloat16))
    assert logits.dtype == torch.float32 and plain.dtype == torch.bfloat16
    torch.testing.assert_close(logits, head.module(features.to(torch.bfloat16).float()))


def test_non_finite_outputs_fail_the_block_naming_the_rows() -> None:
    good = {"margins/test": np.zeros((3, 4), np.float32), "masks": np.ones((3, 5), bool)}
    check_finite_outputs(0, 64, good)
    bad = {"margins/test": np.zeros((3, 4), np.float32)}
    bad["margins/test"][1, 2] = np.nan
    with pytest.raises(BlockFailedError, match=r"block 7: margins/test of 1 model\(s\) \(rows 65\) are not finite"):
        check_finite_outputs(7, 64, bad)


def test_a_diverging_model_really_gives_non_finite_margins() -> None:
    recipe = build_recipe("digits-mlp", {"epochs": 1, "hidden": 8, "n_train": 100, "optimizer": "sgd", "lr": 1e30})
    recipe.setup("cpu")
    out = recipe.train_block(make_block(100, rows=range(2)))
    with pytest.raises(BlockFailedError, match="training diverged"):
        check_finite_outputs(0, 0, out)


@pytest.mark.slow
def test_compiled_stack_equals_eager_and_is_reused_across_blocks() -> None:
    params = {"epochs": 2, "hidden": 16, "n_train": 300}
    compiled = build_recipe("digits-mlp", {**params, "torch_compile": "on"})
    eager = build_recipe("digits-mlp", params)
    for recipe in (compiled, eager):
        recipe.setup("cpu")
    first, second = make_block(300, rows=range(3)), make_block(300, rows=range(3, 6))
    np.testing.assert_allclose(compiled.train_block(first)["margins/test"], eager.train_block(first)["margins/test"],
                               atol=1e-5)
    cached = compiled._cached
    np.testing.assert_allclose(compiled.train_block(second)["margins/test"], eager.train_block(second)["margins/test"],
                               atol=1e-5)
    assert compiled._cached is cached  # the same compiled stack, re-initialised in place


def test_compile_decision_and_backend() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_compile("auto", cuda, pays_on_cuda=True) and not use_compile("auto", cuda, pays_on_cuda=False)
    assert not use_compile("auto", cpu, pays_on_cuda=True)
    assert use_compile("on", cpu, pays_on_cuda=False) and not use_compile("off", cuda, pays_on_cuda=True)
    configure_backend(cpu)
    assert keep_host_allocations() is True  # glibc Linux (the CI machine)


def test_training_dtype_decision() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert training_dtype(cuda, "float32", bf16_pays_on_amx=False) == torch.bfloat16  # CUDA: always bf16 autocast
    assert training_dtype(cpu, "float32", bf16_pays_on_amx=True) == torch.float32
    assert training_dtype(cpu, "bfloat16", bf16_pays_on_amx=False) == torch.bfloat16
    assert training_dtype(cpu, "auto", bf16_pays_on_amx=False) == torch.float32
    auto = training_dtype(cpu, "auto", bf16_pays_on_amx=True)
    assert auto == (torch.bfloat16 if cpu_has_amx() else torch.float32)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "amx_tile" not in cpuinfo.read_text().split():
        assert not cpu_has_amx()  # AMD EPYC, older Xeons: float32 under "auto"
    recipe = build_recipe("mnist1d-cnn", MNIST_TINY)
    recipe.setup("cpu")
    assert recipe._dtype == auto


def test_data_resident_channels_last_for_image_recipes() -> None:
    recipe = build_recipe("mnist1d-cnn", MNIST_TINY)
    recipe.setup("cpu")
    x = recipe._tensors["x_train"]
    assert x.shape == (200, 1, 1, 40) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
