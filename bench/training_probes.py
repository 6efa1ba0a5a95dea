"""Where batched training's time goes: what the recipes' layout, precision, part size and allocator rest on.

Imported by ``bench_training.py`` (``--probes`` on the CPU; the step timings of
``--gpu``); run as a script only as its own child process for the allocator
probe (glibc's thresholds are per process, so each setting gets a fresh one).

Single-thread CPU probes report the *CPU time of the calling thread*
(``cpu_ms``): on a shared machine a process that is descheduled loses wall time
but not CPU time, so these stay comparable while the load changes (the thread
probe, the only one with two threads, reports wall milliseconds). At
``mnist1d-cnn``'s default shape (K=64 models, batch 32, width 32, length 40)
unless said otherwise:

* ``conv_layout``: the middle convolution (32→32, k=3, stride 2), forward +
  backward, as a grouped NCL ``conv1d``, a grouped NCHW and a grouped
  channels-last ``conv2d`` (height 1), and a dense convolution of the same
  shape and FLOPs (one model, batch K×32);
* ``vmap_vs_grouped``: ``torch.func.vmap`` over K models' ``conv2d`` against
  the grouped convolution, at a CIFAR block's shape;
* ``step_per_model``: a whole training step of the recipe's stack (its Adam,
  its loss) per model, at K = 1, 16, 32, 48, 64, in float32 and under bf16
  autocast (where oneDNN has a bf16 path): what ``cpu_precision`` and
  ``cpu_models_per_pass`` are set from;
* ``step_breakdown``: one 32-model step at the recipe's own precision, operation
  by operation (aten ops, forward, backward and optimiser), the largest first;
* ``relu_backward_layout``: the ReLU backward of the last convolution's output
  (32 models) when its gradient comes in its own channels-last layout and in
  NCHW (the old head's flatten);
* ``evaluation``: test-set outputs per model at K=1 and K=32 with 1,000
  examples per pass and with 1,000 // K (what the recipes do on the CPU);
* ``threads``: a whole training step at K=1 and K=64 with 1 and 2 torch threads;
* ``compile``: the K=64 float32 step eager against ``torch.compile`` (and its compile time);
* ``allocator``: the K=64 float32 step and its minor page faults with glibc's default
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


def _ms(fn: Callable[[], object], *, repeats: int = 5, number: int = 5,
        clock: Callable[[], float] = time.perf_counter) -> float:
    """Median over ``repeats`` of the mean milliseconds of ``number`` calls, after a warm-up."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(number):
            fn()
        samples.append((clock() - start) / number * 1e3)
    return statistics.median(samples)


def _cpu_ms(fn: Callable[[], object], *, repeats: int = 5, number: int = 5) -> float:
    """:func:`_ms` in CPU milliseconds of this thread (one-thread probes on a shared machine)."""
    return _ms(fn, repeats=repeats, number=number, clock=time.thread_time)


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
        "grouped_ncl_conv1d_cpu_ms": _cpu_ms(_forward_backward(conv1d, x_ncl, w)),
        "grouped_nchw_conv2d_cpu_ms": _cpu_ms(_forward_backward(conv2d, x_nchw, w_nchw)),
        "grouped_channels_last_conv2d_cpu_ms": _cpu_ms(_forward_backward(conv2d, x_cl, w_cl)),
        "dense_same_shape_channels_last_cpu_ms": _cpu_ms(_forward_backward(dense, dense_x, dense_w)),
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
        "vmap_conv2d_cpu_ms": _cpu_ms(_forward_backward(vmapped, per_model_x, per_model_w)),
        "grouped_conv2d_channels_last_cpu_ms": _cpu_ms(_forward_backward(grouped, grouped_x, grouped_w)),
    }


def stack_step(recipe_name: str, params: dict[str, Any], num_models: int, batch: int, device: str,
               *, compiled: bool = False, configure: bool = True,
               dtype: torch.dtype | None = None) -> Callable[[], None]:
    """One training step (forward, backward, optimiser) of a recipe's stack on random inputs of its shape.

    The step is the recipe's: its optimiser (fused Adam or Nesterov SGD) and the
    sum over models of each model's mean loss, under autocast to ``dtype``
    (default: bf16 on CUDA, float32 elsewhere). ``configure=False`` leaves the
    process's backend settings as they are (the allocator probe).
    """
    from workers.batched import autocast_for, configure_backend, from_grouped, init_stack, model_generators
    from workers.recipe import build_recipe

    recipe: Any = build_recipe(recipe_name, params)
    dev = torch.device(device)
    if configure:
        configure_backend(dev)
    layout = _CL if recipe.channels_last else torch.preserve_format
    stack = recipe.build_stack(num_models).to(dev, memory_format=layout)
    init_stack(stack, model_generators(np.arange(num_models)))
    shape = {"mnist1d-cnn": (1, 1, 40)}.get(recipe_name, (3, 32, 32))
    data_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    x = torch.randn(batch, num_models * shape[0], *shape[1:], device=dev).to(data_dtype)
    x = x.contiguous(memory_format=_CL) if recipe.channels_last else x
    y = torch.randint(0, 10, (num_models, batch), device=dev)
    run = torch.compile(stack) if compiled else stack
    trained = [p for p in stack.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if recipe.train_config().optimizer == "adam":
        optimizer = torch.optim.Adam(trained, lr=1e-3, fused=True)
    else:
        optimizer = torch.optim.SGD(trained, lr=1e-3, momentum=0.9, nesterov=True, fused=True)

    def step() -> None:
        with autocast_for(dev, dtype):
            logits = from_grouped(run(x), num_models)
        losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        loss = losses.view(num_models, -1).mean(dim=1).sum()
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


def _mnist_step_ms(num_models: int, threads: int, *, compiled: bool = False, dtype: torch.dtype | None = None,
                   cpu_time: bool = False) -> float:
    """Milliseconds (wall, or this thread's CPU with ``cpu_time``) per model-step of the default mnist1d stack."""
    torch.set_num_threads(threads)
    step = stack_step("mnist1d-cnn", {}, num_models, 32, "cpu", compiled=compiled, dtype=dtype)
    measure = _cpu_ms if cpu_time else _ms
    return measure(step, repeats=3, number=max(2, 128 // num_models)) / num_models


def _bf16_dtypes() -> tuple[torch.dtype, ...]:
    """float32, and bf16 where oneDNN has a bf16 path on this CPU."""
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


def step_per_model_probe(sizes: tuple[int, ...] = (1, 16, 32, 48, 64)) -> dict[str, float]:
    """CPU milliseconds per model-step of the default mnist1d stack by block size and precision, one thread."""
    torch.set_num_threads(1)
    return {f"{str(dtype).removeprefix('torch.')}_k{k}_cpu_ms_per_model":
            _mnist_step_ms(k, 1, dtype=dtype, cpu_time=True) for dtype in _bf16_dtypes() for k in sizes}


def step_breakdown_probe(num_models: int = 32, top: int = 14) -> dict[str, Any]:
    """One mnist1d step of ``num_models`` models at the recipe's precision, aten operation by operation (CPU ms)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from workers.batched import training_dtype
    from workers.recipes.mnist1d_cnn import Mnist1dCnn

    torch.set_num_threads(1)
    dtype = training_dtype(torch.device("cpu"), "auto", bf16_pays_on_amx=Mnist1dCnn.bf16_pays_on_amx)
    step = stack_step("mnist1d-cnn", {}, num_models, 32, "cpu", dtype=dtype)
    spent: dict[str, float] = {}

    class OperationClock(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            start = time.thread_time()
            out = func(*args, **(kwargs or {}))
            shapes = ",".join("x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))
            key = f"{func.__name__} {shapes}"
            spent[key] = spent.get(key, 0.0) + time.thread_time() - start
            return out

    steps = 10
    whole = _cpu_ms(step, repeats=3, number=steps)
    with OperationClock():
        for _ in range(steps):
            step()
    ops = sorted(((key, seconds / steps * 1e3) for key, seconds in spent.items()), key=lambda kv: -kv[1])
    return {"models": num_models, "dtype": str(dtype).removeprefix("torch."), "step_cpu_ms": whole,
            "operations_cpu_ms": dict(ops[:top]), "other_operations_cpu_ms": sum(ms for _, ms in ops[top:])}


def relu_backward_layout_probe(num_models: int = 32, width: int = 32) -> dict[str, float]:
    """ReLU backward on the last mnist1d convolution's output [32, K*w, 1, 10], gradient channels-last or NCHW."""
    torch.set_num_threads(1)
    output = torch.randn(32, num_models * width, 1, 10).contiguous(memory_format=_CL).relu_()
    matched = torch.randn(output.shape).contiguous(memory_format=_CL)
    nchw = matched.contiguous()
    return {"gradient_channels_last_cpu_ms": _cpu_ms(lambda: torch.ops.aten.threshold_backward(matched, output, 0)),
            "gradient_nchw_cpu_ms": _cpu_ms(lambda: torch.ops.aten.threshold_backward(nchw, output, 0))}


def evaluation_probe() -> dict[str, float]:
    """CPU milliseconds per model of the default mnist1d outputs on 1,000 test signals, by examples per pass."""
    from workers.batched import init_stack, model_generators, predict_logits, training_dtype
    from workers.recipes.mnist1d_cnn import Mnist1dCnn

    torch.set_num_threads(1)
    recipe = Mnist1dCnn(Mnist1dCnn.Params())
    dtype = training_dtype(torch.device("cpu"), "auto", bf16_pays_on_amx=Mnist1dCnn.bf16_pays_on_amx)
    x = torch.randn(1000, 1, 1, 40).contiguous(memory_format=_CL)
    results = {}
    for k in (1, 32):
        stack = recipe.build_stack(k).to(memory_format=_CL)
        init_stack(stack, model_generators(np.arange(k)))
        for per_pass in sorted({1000, max(1, 1000 // k)}, reverse=True):
            results[f"k{k}_{per_pass}_per_pass_cpu_ms_per_model"] = _cpu_ms(
                lambda stack=stack, k=k, per_pass=per_pass: predict_logits(
                    stack, x, num_models=k, batch_size=per_pass, channels_last=True, dtype=dtype),
                repeats=3, number=2) / k
    return results


def threads_probe() -> dict[str, float]:
    """Milliseconds per model-step of the default mnist1d stack at K=1 and K=64 with 1 and 2 threads."""
    before = torch.get_num_threads()
    try:
        return {f"k{k}_threads{t}_ms_per_model": _mnist_step_ms(k, t) for t in (1, 2) for k in (1, 64)}
    finally:
        torch.set_num_threads(before)


def compile_probe() -> dict[str, float]:
    """Eager against compiled K=64 float32 mnist1d steps, one thread (CPU ms per model-step); the compile seconds."""
    torch.set_num_threads(1)
    eager = _mnist_step_ms(64, 1, cpu_time=True)
    start = time.perf_counter()
    step = stack_step("mnist1d-cnn", {}, 64, 32, "cpu", compiled=True)
    step()
    compile_s = time.perf_counter() - start
    compiled = _cpu_ms(step, repeats=3, number=2) / 64
    return {"eager_cpu_ms_per_model": eager, "compiled_cpu_ms_per_model": compiled, "compile_s": compile_s}


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
    ms = _cpu_ms(step, repeats=3, number=4)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (3 * 4 + 2)
    return {"cpu_ms_per_step": ms, "minor_faults_per_step": faults}


def cpu_probes() -> dict[str, Any]:
    """Every CPU probe (a few minutes on 2 cores)."""
    torch.set_num_threads(1)
    return {"conv_layout": conv_layout(), "vmap_vs_grouped": vmap_vs_grouped(),
            "step_per_model": step_per_model_probe(), "step_breakdown": step_breakdown_probe(),
            "relu_backward_layout": relu_backward_layout_probe(), "evaluation": evaluation_probe(),
            "threads": threads_probe(), "compile": compile_probe(), "allocator": allocator_probe()}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--allocator-child":
        print(json.dumps(_allocator_child(sys.argv[2] == "1")))
    else:
        print(json.dumps(cpu_probes(), indent=2))
