"""Process-wide settings a training worker applies once, and the torch.compile decision.

A worker process trains block after block on one device, so the backend's
switches are set for the process in :func:`configure_backend` (called by the
stacked recipes' ``setup``), not around each call:

* CUDA: ``cudnn.benchmark`` (a block's shapes are fixed, so cuDNN autotunes
  each convolution once and reuses the choice), TF32 for float32 convolutions
  (PyTorch's default, kept explicitly) and IEEE float32 for matmuls. Training
  runs under bf16 autocast, where neither applies; the float32 left is the head
  that computes the stored logits (:class:`~workers.batched.layers.FullPrecision`),
  and TF32 there would round its inputs to 10 bits, coarser than the float16 store.
* CPU: glibc keeps freed activation buffers for reuse
  (:func:`keep_host_allocations`).

Which arithmetic a stack trains in (:func:`training_dtype`) is decided here
too: bf16 autocast on CUDA; on the CPU float32, or bf16 autocast on CPUs with
AMX tiles for the recipes that measured it pays there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Literal

import torch

__all__ = ["CompileSetting", "CpuPrecision", "configure_backend", "cpu_has_amx", "keep_host_allocations",
           "training_dtype", "use_compile"]

CompileSetting = Literal["auto", "on", "off"]
CpuPrecision = Literal["auto", "float32", "bfloat16"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def configure_backend(device: torch.device) -> None:
    """Set the process's fast paths for training on ``device`` (idempotent)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        if hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
            conv.fp32_precision = "tf32"
            matmul.fp32_precision = "ieee"
        else:  # torch before the fp32_precision switches
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = False
    elif device.type == "cpu":
        keep_host_allocations()


def keep_host_allocations() -> bool:
    """Ask glibc to keep freed buffers of up to 32 MiB in the heap for reuse.

    A training step allocates activations of a few MiB each and frees them at
    the end of the step. By default glibc serves such blocks with ``mmap`` (or
    trims the heap top) and hands them back to the kernel when freed, so every
    step page-faults all of its activation memory in again: on ``mnist1d-cnn`` at
    its default width, 64 models at once took about 5,800 minor page faults per
    step, and about 200 with these thresholds, 13 % less time per step
    (``bench/bench_training.py --probes``). Raising the mmap and trim
    thresholds keeps that memory in the process, which is what a long-lived
    worker wants. A no-op (returning ``False``) off glibc.

    Returns
    -------
    bool
        Whether both thresholds were set.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def use_compile(setting: CompileSetting, device: torch.device, *, pays_on_cuda: bool) -> bool:
    """Whether a recipe's stack is run through ``torch.compile`` on ``device``.

    ``"auto"`` compiles on CUDA for the recipes that say it pays there
    (``pays_on_cuda``: the CIFAR-sized networks, whose batch-norm and activation
    chains inductor fuses; the compiled stack is reused for every later block of
    the same size, so its start-up is paid once per worker) and never on the CPU,
    where it was measured slower than eager for ``mnist1d-cnn`` (see
    docs/benchmarks.md). ``"on"``/``"off"`` force it.
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.type == "cuda" and pays_on_cuda


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles that the process may use (Intel Sapphire Rapids and later).

    oneDNN then runs bf16 convolutions and matmuls on the tile units, several
    times the float32 FMA rate; without AMX (AMD EPYC, older Xeons) bf16 is
    converted on the vector units and gains little or nothing.
    """
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def training_dtype(device: torch.device, cpu_precision: CpuPrecision, *, bf16_pays_on_amx: bool) -> torch.dtype:
    """The dtype a recipe's stack trains and predicts in under autocast on ``device``.

    CUDA always trains under bf16 autocast. On the CPU, ``"float32"`` is plain
    float32 (the reference), ``"bfloat16"`` is bf16 autocast, and ``"auto"`` is
    bf16 autocast on a CPU with AMX for the recipes that measured it pays
    there (``bf16_pays_on_amx``: ``mnist1d-cnn``, see docs/benchmarks.md) and
    float32 everywhere else. Either way the
    head that computes the stored logits runs in float32
    (:class:`~workers.batched.layers.FullPrecision`).
    """
    if device.type == "cuda":
        return torch.bfloat16
    if device.type != "cpu" or cpu_precision == "float32":
        return torch.float32
    if cpu_precision == "bfloat16" or (bf16_pays_on_amx and cpu_has_amx()):
        return torch.bfloat16
    return torch.float32
