"""Where torch work runs: the project's one device picker, and the torch thread count.

:func:`resolve_device` is the only place that turns a user's device string into a
:class:`torch.device`; the workers and the regression both call it, so ``"auto"``
means the same thing everywhere and a bad value fails the same way.
"""

from __future__ import annotations

import math

import torch

from storage.errors import InputError

__all__ = ["resolve_device", "configure_threads"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device a user asked for.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA when a CUDA device is usable, else the CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``... or a :class:`torch.device`, returned as it is.

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        With ``params=("device",)``: a string torch cannot read as a device, or
        CUDA asked for on a machine without it.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"device={device!r} is not a torch device (use 'auto', 'cpu' or 'cuda[:i]')", params=("device",)
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} asked for, but CUDA is not available here", params=("device",))
    return resolved


def configure_threads(cpus: float) -> int:
    """Set torch's intra-op thread count from the worker's CPU allotment.

    A worker given ``cpus`` cores must not start one thread per machine core:
    several workers on one node would oversubscribe it and each would slow down.

    Parameters
    ----------
    cpus : float
        The number of CPU cores reserved for this worker (fractions round down,
        at least 1 thread).

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
