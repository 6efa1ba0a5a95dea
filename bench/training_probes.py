"""Where batched training's time goes: the measurements behind the recipes' layout, allocator and compile choices.

Imported by ``bench_training.py`` (``--probes`` on the CPU; the step timings of
``--gpu``); run as a script only as its own child process for the allocator
probe (glibc's thresholds are per process, so each setting gets a fresh one).

CPU probes, at ``mnist1d-cnn``'s default shape (K=64 models, batch 32, width 32,
length 40) unless said otherwise:

* ``conv_layout``: the middle convolution (32→32, k=3, stride 2), forward +
  backward, as a grouped NCL ``conv1d``, a grouped NCHW and a grouped
  channels-last ``conv2d`` (height 1), and a dense convolution of the same
  shape and FLOPs (one model, batch K×32);
* ``vmap_vs_grouped``: ``torch.func.vmap`` over K models' ``conv2d`` against
  the grouped convolution, at a CIFAR block's shape;
* ``threads``: a whole training step at K=1 and K=64 with 1 and 2 torch threads;
* ``compile``: the K=64 step eager against ``torch.compile`` (and its compile time);
* ``allocator``: the K=64 step and its minor page faults with glibc's default
  thresholds and with :func:`workers.batched.keep_host_allocations`.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

__all__ = ["cpu_probes", "time_cuda", "stack_step"]

_CL = torch.channels_last


def _ms(fn: Callable[[], object], *, repeats: int = 5, number: int = 5) -> float:
    """Median over ``repeats`` of the mean milliseconds of ``number`` calls, after a warm-up."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e3)
    return statistics.median(samples)


def _forward_backward(conv: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = conv(xx, ww)
        y.backward(torch.ones_like(y))

    return run


def conv_layout(k: int = 64, batch: int = 32, width: int = 32, length: int = 40) -> dict[str, float]:
    """Forward + backward milliseconds of the middle mnist1d convolution in four layouts."""
    gen = torch.Generator().manual_seed(0)
    x_ncl = torch.randn(batch, k * width, length, generator=gen)
    w = torch.randn(k * width, width, 3, generator=gen) * 0.1
    x_nchw, w_nchw = x_ncl[:, :, None, :].contiguous(), w[:, :, None, :].contiguous()
    x_cl, w_cl = x_nchw.contiguous(memory_format=_CL), w_nchw.contiguous(memory_format=_CL)
    dense_x = torch.randn(batch * k, width, 1, length, generator=gen).contiguous(memory_format=_CL)
    dense_w = (torch.randn(width, width, 1, 3, generator=gen) * 0.1).contiguous(memory_format=_CL)
    conv1d = lambda x, w: F.conv1d(x, w, stride=2, padding=1, groups=k)  # noqa: E731
    conv2d = lambda x, w: F.conv2d(x, w, stride=(1, 2), padding=(0, 1), groups=k)  # noqa: E731
    dense = lambda x, w: F.conv2d(x, w, stride=(1, 2), padding=(0, 1))  # noqa: E731
    return {
        "grouped_ncl_conv1d_ms": _ms(_forward_backward(conv1d, x_ncl, w)),
        "grouped_nchw_conv2d_ms": _ms(_forward_backward(conv2d, x_nchw, w_nchw)),
        "grouped_channels_last_conv2d_ms": _ms(_forward_backward(conv2d, x_cl, w_cl)),
        "dense_same_shape_channels_last_ms": _ms(_forward_backward(dense, dense_x, dense_w)),
    }


def vmap_vs_grouped(k: int = 8, batch: int = 32, channels: int = 64, side: int = 16) -> dict[str, float]:
    """``torch.func.vmap`` over per-model ``conv2d`` against one grouped convolution (forward + backward ms)."""
    gen = torch.Generator().manual_seed(1)
    per_model_x = torch.randn(k, batch, channels, side, side, generator=gen)
    per_model_w = torch.randn(k, channels, channels, 3, 3, generator=gen) * 0.05
    vmapped = torch.func.vmap(lambda x, w: F.conv2d(x, w, padding=1))
    grouped_x = per_model_x.transpose(0, 1).reshape(batch, k * channels, side, side).contiguous(memory_format=_CL)
    grouped_w = per_model_w.reshape(k * channels, channels, 3, 3).contiguous(memory_format=_CL)
    grouped = lambda x, w: F.conv2d(x, w, padding=1, groups=k)  # noqa: E731
    return {
        "vmap_conv2d_ms": _ms(_forward_backward(vmapped, per_model_x, per_model_w)),
        "grouped_conv2d_channels_last_ms": _ms(_forward_backward(grouped, grouped_x, grouped_w)),
    }


def stack_step(recipe_name: str, params: dict[str, Any], num_models: int, batch: int, device: str,
               *, compiled: bool = False, configure: bool = True) -> Callable[[], None]:
    """One training step (forward, backward, optimiser) of a recipe's stack on random inputs of its shape.

    ``configure=False`` leaves the process's backend settings as they are (the allocator probe).
    """
    from workers.batched import autocast_for, configure_backend, from_grouped, init_stack, model_generators
    from workers.recipe import build_recipe

    recipe = build_recipe(recipe_name, params)
    dev = torch.device(device)
    if configure:
        configure_backend(dev)
    layout = _CL if recipe.channels_last else torch.preserve_format  # type: ignore[attr-defined]
    stack = recipe.build_stack(num_models).to(dev, memory_format=layout)  # type: ignore[attr-defined]
    init_stack(stack, model_generators(np.arange(num_models)))
    shape = {"mnist1d-cnn": (1, 1, 40)}.get(recipe_name, (3, 32, 32))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    x = torch.randn(batch, num_models * shape[0], *shape[1:], device=dev).to(dtype)
    x = x.contiguous(memory_format=_CL) if recipe.channels_last else x  # type: ignore[attr-defined]
    y = torch.randint(0, 10, (num_models, batch), device=dev)
    run = torch.compile(stack) if compiled else stack
    optimizer = torch.optim.SGD([p for p in stack.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                                nesterov=True, fused=True)

    def step() -> None:
        with autocast_for(dev):
            logits = from_grouped(run(x), num_models)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_cuda(step: Callable[[], None], *, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds of ``step`` timed with CUDA events, after a warm-up (cuDNN autotuning included there)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def _mnist_step_ms(num_models: int, threads: int, *, compiled: bool = False) -> float:
    torch.set_num_threads(threads)
    step = stack_step("mnist1d-cnn", {}, num_models, 32, "cpu", compiled=compiled)
    return _ms(step, repeats=3, number=max(2, 128 // num_models)) / num_models


def threads_probe() -> dict[str, float]:
    """Milliseconds per model-step of the default mnist1d stack at K=1 and K=64 with 1 and 2 threads."""
    before = torch.get_num_threads()
    try:
        return {f"k{k}_threads{t}_ms_per_model": _mnist_step_ms(k, t) for t in (1, 2) for k in (1, 64)}
    finally:
        torch.set_num_threads(before)


def compile_probe() -> dict[str, float]:
    """Eager against compiled K=64 mnist1d steps on one thread (ms per model-step), and the compile seconds."""
    torch.set_num_threads(1)
    eager = _mnist_step_ms(64, 1)
    start = time.perf_counter()
    step = stack_step("mnist1d-cnn", {}, 64, 32, "cpu", compiled=True)
    step()
    compile_s = time.perf_counter() - start
    compiled = _ms(step, repeats=3, number=2) / 64
    return {"eager_ms_per_model": eager, "compiled_ms_per_model": compiled, "compile_s": compile_s}


def allocator_probe() -> dict[str, dict[str, float]]:
    """The K=64 step with glibc's default thresholds and with keep_host_allocations, each in a fresh process."""
    results = {}
    for keep in (False, True):
        proc = subprocess.run([sys.executable, __file__, "--allocator-child", "1" if keep else "0"],
                              capture_output=True, text=True, timeout=600, check=True)
        results["kept" if keep else "glibc_default"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _allocator_child(keep: bool) -> dict[str, float]:
    from workers.batched import keep_host_allocations

    torch.set_num_threads(1)
    if keep:
        keep_host_allocations()
    step = stack_step("mnist1d-cnn", {}, 64, 32, "cpu", configure=False)
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ms = _ms(step, repeats=3, number=4)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (3 * 4 + 2)
    return {"ms_per_step": ms, "minor_faults_per_step": faults}


def cpu_probes() -> dict[str, Any]:
    """Every CPU probe (a few minutes on 2 cores)."""
    torch.set_num_threads(1)
    return {"conv_layout": conv_layout(), "vmap_vs_grouped": vmap_vs_grouped(), "threads": threads_probe(),
            "compile": compile_probe(), "allocator": allocator_probe()}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--allocator-child":
        print(json.dumps(_allocator_child(sys.argv[2] == "1")))
    else:
        print(json.dumps(cpu_probes(), indent=2))
