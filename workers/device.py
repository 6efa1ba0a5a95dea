"""Where a worker trains: device choice and the torch thread count."""

from __future__ import annotations

import math

import torch

__all__ = ["pick_device", "configure_threads"]


def pick_device(prefer: str | None = None) -> str:
    """``cuda`` when a CUDA device is usable, else ``cpu``.

    Parameters
    ----------
    prefer : a device string to use as it is (``"cpu"`` forces the CPU even on a
        GPU machine); ``None`` picks automatically.
    """
    if prefer is not None:
        return prefer
    return "cuda" if torch.cuda.is_available() else "cpu"


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
