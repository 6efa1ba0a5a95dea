"""Where torch work runs: the project's one device picker, and the torch thread count."""

from __future__ import annotations

import math

import torch

from storage.errors import InputError

__all__ = ["resolve_device", "configure_threads"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as torch reads it.

    Raises
    ------
    InputError
        A string torch does not read as a device, or CUDA asked for where there is none.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device={device!r} is not a torch device (use 'auto', 'cpu' or 'cuda[:i]')",
                         params=("device",)) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} asked for, but CUDA is not available here", params=("device",))
    return resolved


def configure_threads(cpus: float) -> int:
    """Set torch's intra-op thread count from the worker's CPU allotment.

    A worker given ``cpus`` cores must not start one thread per machine core:
    several workers on one node would oversubscribe it and each would slow down.

    Parameters
    ----------
    cpus : the number of CPU cores reserved for this worker (fractions round
        down, at least 1 thread).

    Returns
    -------
    int
        The thread count now in effect.
    """
    threads = max(1, int(math.floor(cpus)))
    torch.set_num_threads(threads)
    try:
        # Inter-op threads can only be set before the first parallel work; a
        # worker that already ran something keeps its pool, which is harmless.
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    return torch.get_num_threads()
