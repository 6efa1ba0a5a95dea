"""Splitting a block into sub-batches of models that fit in memory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["is_out_of_memory", "run_in_parts"]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA or host) worth retrying smaller."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


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
        try:
            results.append(train_part(slice(start, stop)))
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if part == 1 or not is_out_of_memory(exc):
                raise
            part = max(1, part // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    joined = {name: np.concatenate([r[name] for r in results], axis=0) for name in results[0]}
    return joined, part
