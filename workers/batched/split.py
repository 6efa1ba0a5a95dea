"""Splitting a block into sub-batches of models that fit in memory.

A part that runs out of memory is retried at half the size. What counts as out
of memory (:func:`is_out_of_memory`): torch's ``OutOfMemoryError`` (CUDA's
caching allocator, or an :class:`ActivationBudget`), and the allocation
failures that cuBLAS, cuDNN and the host allocator report as plain
``RuntimeError`` s. On the CPU an exhausted host usually meets the kernel's OOM
killer rather than an exception, so a CPU worker bounds its memory with an
:class:`ActivationBudget` instead.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["ActivationBudget", "is_out_of_memory", "run_in_parts"]

#: Lower-cased fragments of the messages torch and the CUDA libraries raise when an allocation fails.
_OOM_MESSAGES = (
    "out of memory",  # CUDA runtime and caching allocator, "CUDA error: out of memory"
    "can't allocate memory",  # the host allocator (DefaultCPUAllocator)
    "cublas_status_alloc_failed",  # cuBLAS could not allocate its workspace or handle
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",  # cuDNN's workspace did not fit
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    "cudaerrormemoryallocation",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA, its libraries, or host) worth retrying smaller."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    message = str(exc).lower()
    return any(fragment in message for fragment in _OOM_MESSAGES)


class ActivationBudget:
    """A bound on the bytes one training step keeps for its backward pass.

    Inside :meth:`step`, every tensor autograd saves for backward is counted
    (each storage once) and the step raises :class:`torch.OutOfMemoryError` as
    soon as the count passes ``max_bytes``, before more is allocated. That is
    the memory that grows with the number of models trained at once, so a block
    whose part raises is split and retried like any out-of-memory part.

    Parameters
    ----------
    max_bytes : the budget, in bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.peak_bytes = 0

    @contextmanager
    def step(self) -> Iterator[None]:
        """Count what autograd saves inside this block (one forward pass)."""
        seen: set[int] = set()
        held = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal held
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                held += storage.nbytes()
                self.peak_bytes = max(self.peak_bytes, held)
                if held > self.max_bytes:
                    raise torch.OutOfMemoryError(
                        f"the training step saves more than the activation budget of "
                        f"{self.max_bytes / 2**20:.1f} MiB for its backward pass"
                    )
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield


def run_in_parts(
    train_part: Callable[[slice], dict[str, np.ndarray]],
    *,
    num_models: int,
    max_models: int | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """Train models ``0..num_models-1`` in consecutive parts and join the results.

    Models are independent, so training them in parts changes nothing but the
    memory needed. A part that runs out of memory is retried at half the size
    (down to one model, where the error is raised as it is).

    Parameters
    ----------
    train_part : trains the models of a slice of the block and returns arrays
        whose first axis is that slice.
    num_models : K, the block's size.
    max_models : the largest part to try first (``None``: the whole block).

    Returns
    -------
    results : dict of arrays with first axis ``num_models``, in model order.
    part_size : the part size that fit, to start the next block with.
    """
    part = num_models if max_models is None else max(1, min(max_models, num_models))
    results: list[dict[str, np.ndarray]] = []
    start = 0
    while start < num_models:
        stop = min(start + part, num_models)
        failed = False
        try:
            results.append(train_part(slice(start, stop)))
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if part == 1 or not is_out_of_memory(exc):
                raise
            failed = True
        if failed:
            # Out of the except block: the traceback (and the tensors its frames
            # hold) is gone, so the cache can really give the memory back.
            part = max(1, part // 2)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    joined = {name: np.concatenate([r[name] for r in results], axis=0) for name in results[0]}
    return joined, part
