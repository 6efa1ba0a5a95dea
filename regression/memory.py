"""Where the fit's buffers live, planned against a memory bound before anything runs.

``max_memory`` bounds the **resident memory of the whole process** during a fit:
the plan budgets ``max_memory`` minus what the process already holds when the
fit starts (interpreter, torch, zarr) and refuses with an
:class:`~storage.errors.InputError` when even the leanest plan (masks streamed, one
batch read ahead, SAGA table on the host) does not fit, rather than swapping.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

import torch

from regression.gram import gram_bytes
from storage.errors import InputError

__all__ = ["MemoryPlan", "plan_memory", "state_units", "current_rss", "peak_rss", "available_host", "usable_memory"]

_F32 = 4
# Transient copies the estimate cannot see exactly (allocator slack, zarr's
# compressed and decoded chunk buffers, a batch converted to float): the plan keeps
# this fraction of the budget free.
_HEADROOM = 0.25
_MAX_QUEUE = 4


def current_rss() -> int:
    """Resident bytes of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    """Peak resident bytes of this process so far.

    On Linux, ``VmHWM`` of /proc/self/status: the high-water mark of this
    program's own memory. ``getrusage``'s ``ru_maxrss`` (used elsewhere) survives
    ``execve``, so a fresh child process would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass(frozen=True)
class MemoryPlan:
    """Decisions for one shard's fit.

    Attributes
    ----------
    masks_resident : bool
        Load the fit rows' masks and targets once onto the device and keep them.
    table_on_device : bool
        Keep the SAGA table on the device (else in pinned host memory).
    table_on_disk : bool
        Keep the SAGA table in a file in the store: the last resort when neither
        the device nor the bounded host can hold it.
    queue_depth : int
        Batches the reader thread may hold ahead of the solver.
    host_bytes, device_bytes : int
        The plan's estimate of what it allocates on the host and the device (equal
        places on CPU: everything is host memory there).
    budget : int or None
        Host bytes the plan had (``max_memory`` − resident memory at start).
    cache_bytes : int
        Device bytes left for keeping standardised batches between epochs.
    """

    masks_resident: bool
    table_on_device: bool
    queue_depth: int
    host_bytes: int
    device_bytes: int
    budget: int | None
    cache_bytes: int = 0
    table_on_disk: bool = False


def state_units(*, refit: bool = True, average: int = 0, debias: str = "none", engine: str = "saga") -> int:
    """Solver buffers of one [N_train, T] float32 matrix each, live at the fit's peak.

    The path holds the moments' ``c``, the weights, Ḡ, the best weights, and in an
    epoch the working copies of W and Ḡ, the epoch's W copy, the gradient product
    and the validation pass's copy of W: 9. Recomputing the moments (the refit)
    holds float64 ``Xᵀy`` and its centred copy and ``c`` (6) beside the path's 4
    that stay referenced; the refit's own W, Ḡ and ``c`` and its epoch
    temporaries (4) make 12, and an average keeps a running sum (13). The
    least-squares debias's conjugate gradients hold x, r, p, A·p, b, the support,
    the masked p and the pass's sum (8) beside the LASSO weights and what the
    refit left (7): 16, one more for the relaxed blend's training-row solution.
    The Gram engine's λ step holds, for its targets as rows, the iterate and the
    one before, their gradients, the reference point and its gradient, the
    extrapolated point and its gradient, the new iterate, its gradient and
    product, the step and the move (13), beside the path's 4, the last
    solutions and the kept references (3): 20.
    """
    units = 9
    if refit or average:
        units = max(units, 4 + 6, 4 + 3 + 4 + 1 + (1 if average else 0))
    if debias != "none":
        units = max(units, 8 + 8 + (1 if debias == "relaxed" else 0))
    if engine == "gram":
        units = max(units, 4 + 13 + 3)
    return units


def plan_memory(
    *,
    n_rows: int,
    n_features: int,
    n_targets: int,
    output_width: int,
    batch_rows: int,
    device: torch.device,
    max_memory: int | None,
    units: int | None = None,
    engine: str = "saga",
) -> MemoryPlan:
    """Plan residency of masks and SAGA table for a fit of ``n_targets`` targets.

    Parameters
    ----------
    n_rows : int
        Fit rows (train + validation).
    n_features : int
        ``N_train``, the mask width.
    n_targets : int
        Targets solved together (one shard).
    output_width : int
        Columns of the stored output read per row (a read gets whole rows).
    batch_rows : int
        Rows of the largest batch.
    device : torch.device
        The solver's device.
    max_memory : int or None
        Bound on the process's resident bytes; None: no bound (the plan still
        keeps masks streamed when they would not fit in available memory).
    units : int, optional
        [N_train, T] buffers live at the fit's peak (:func:`state_units` of the
        settings; default: the default settings', a refit).
    engine : {"saga", "gram"}
        The Gram engine keeps no table and holds :func:`regression.gram.gram_bytes`.

    Returns
    -------
    MemoryPlan

    Raises
    ------
    InputError
        When ``max_memory`` cannot hold the leanest plan (masks streamed, the table
    in a file).
    """
    cuda = device.type == "cuda"
    # Solver state per target column, the path's and what follows it (state_units).
    state = (state_units() if units is None else int(units)) * n_features * n_targets * _F32
    # One batch in flight on the device: bool masks, the standardised float copy,
    # targets, residuals and their differences.
    batch = batch_rows * (n_features * (1 + 2 * _F32) + 6 * n_targets * _F32)
    gram = engine == "gram"
    table = 0 if gram else n_rows * n_targets * _F32
    # The Gram engine's matrices are fixed device memory; it has no table to spill.
    state += gram_bytes(n_features) if gram else 0
    resident = n_rows * (n_features + n_targets * _F32)
    # A batch read ahead on the host: decoded chunks, the bool rows, the full
    # output rows (float16 → float32) and the selected targets.
    read_ahead = batch_rows * (2 * n_features + output_width * (2 + _F32) + n_targets * _F32)
    # With the table in a file, a batch's rows of it are read, updated and written back.
    table_io = 0 if gram else 2 * batch_rows * n_targets * _F32

    budget = None if max_memory is None else int(max_memory) - current_rss()
    usable = None if budget is None else int(budget * (1 - _HEADROOM))
    if usable is None:
        usable = int(available_host() * 0.5)

    if cuda:
        free_device = int(torch.cuda.mem_get_info(device)[0] * 0.8)
        device_need = state + 2 * batch
        if device_need > free_device:
            raise InputError(
                f"{n_targets} targets need about {_gib(device_need)} of GPU memory, {_gib(free_device)} is free: "
                "use more shards",
                params=("shards",),
            )
        table_on_device = device_need + table <= free_device
        masks_resident = device_need + table * table_on_device + resident <= free_device
        host_fixed = (0 if table_on_device else table)
        on_disk = not table_on_device and host_fixed + 2 * read_ahead > usable
        if on_disk:
            host_fixed = table_io
        lean = host_fixed + 2 * read_ahead
        if lean > usable:
            raise _too_small(max_memory, budget, lean)
        depth = _depth(usable - host_fixed, read_ahead)
        # Loading resident masks streams them once through the same queue.
        device_total = device_need + table * table_on_device + resident * masks_resident
        return MemoryPlan(masks_resident, table_on_device, depth, host_fixed + (depth + 1) * read_ahead,
                          device_total, budget, cache_bytes=max(0, free_device - device_total),
                          table_on_disk=on_disk)

    fixed = state + 2 * batch + table
    on_disk = fixed + 2 * read_ahead > usable
    if on_disk:
        fixed = state + 2 * batch + table_io
    lean = fixed + 2 * read_ahead
    if lean > usable:
        raise _too_small(max_memory, budget, lean)
    masks_resident = fixed + resident + 2 * read_ahead <= usable
    depth = _depth(usable - fixed - resident * masks_resident, read_ahead)
    host = fixed + resident * masks_resident + (depth + 1) * read_ahead
    return MemoryPlan(masks_resident, not on_disk, depth, host, host, budget, cache_bytes=max(0, usable - host),
                      table_on_disk=on_disk)


def usable_memory(device: torch.device, max_memory: int | None) -> int:
    """Bytes a fit on ``device`` may plan with: free GPU memory, else ``max_memory`` less what is resident, else half the available host memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.8)
    if max_memory is not None:
        return int((int(max_memory) - current_rss()) * (1 - _HEADROOM))
    return int(available_host() * 0.5)


def _depth(room: int, read_ahead: int) -> int:
    """Batches the reader may hold ahead in ``room`` bytes (1 to the cap)."""
    return max(1, min(_MAX_QUEUE, room // max(read_ahead, 1) - 1))


def available_host() -> int:
    """Bytes the OS reports as available (MemAvailable; 4 GiB when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 4 << 30


def _gib(n: int) -> str:
    """``n`` bytes as GiB with two decimals."""
    return f"{n / 2**30:.2f} GiB"


def _too_small(max_memory: int | None, budget: int | None, need: int) -> InputError:
    """The refusal when even the leanest plan needs ``need`` bytes more than the budget."""
    if max_memory is None or budget is None:
        return InputError(
            f"the fit needs at least {_gib(need)} of host memory; not available: use more shards", params=("shards",)
        )
    return InputError(
        f"max_memory={_gib(max_memory)} is too small: {_gib(max_memory - budget)} is already resident and the "
        f"leanest plan needs about {_gib(int(need / (1 - _HEADROOM)))} more; raise max_memory, use more shards "
        "(fewer targets at once) or a smaller batch_size",
        params=("max_memory",),
    )
