"""The driver's bookkeeping: worker slots on the cluster, the blocks queued on each actor, the work left.

Nothing here talks to the store; :mod:`orchestrator.driver` owns the loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray

from storage.errors import InputError
from storage.spec import ResourcesSpec

__all__ = ["InFlight", "Slot", "WorkQueue", "worker_slots"]


@dataclass
class InFlight:
    block_id: int
    ref: ray.ObjectRef
    started_at: float | None = None


@dataclass
class Slot:
    """One worker actor and the blocks queued on it, head (the running one) first."""

    name: str
    actor: ray.actor.ActorHandle
    ready_ref: ray.ObjectRef | None
    created_at: float
    node_ip: str = ""
    queue: deque[InFlight] = field(default_factory=deque)

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


class WorkQueue:
    """Blocks still to hand out: retries first, then the pending blocks in order.

    The pending blocks stay one int64 array walked by a cursor, so the driver's
    memory is 8 bytes per block however many blocks the sweep has.
    """

    def __init__(self, pending: np.ndarray) -> None:
        self._pending = np.asarray(pending, dtype=np.int64)
        self._cursor = 0
        self._retry: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._retry) + self._pending.size - self._cursor

    def pop(self) -> int | None:
        if self._retry:
            return self._retry.popleft()
        if self._cursor < self._pending.size:
            self._cursor += 1
            return int(self._pending[self._cursor - 1])
        return None

    def push(self, block_id: int, *, front: bool = False) -> None:
        if front:
            self._retry.appendleft(block_id)
        else:
            self._retry.append(block_id)


def worker_slots(resources: ResourcesSpec, *, require_one: bool = True) -> int:
    """How many worker actors fit on the live nodes of the cluster, node by node.

    Counting per node (not on the cluster's totals) matters for fractional
    GPUs: 0.4 GPU per actor fits twice on each 1-GPU node, not 7 times on 3 GPUs.
    With ``require_one``, a cluster where not one fits is an :class:`InputError`.
    """
    slots = 0
    for node in ray.nodes():
        if not node.get("Alive", False):
            continue
        have = node.get("Resources", {})
        fit = int(have.get("CPU", 0.0) / resources.num_cpus + 1e-9)
        if resources.num_gpus > 0:
            fit = min(fit, int(have.get("GPU", 0.0) / resources.num_gpus + 1e-9))
        slots += fit
    if slots == 0 and require_one:
        total = ray.cluster_resources()
        raise InputError(
            f"no node of the Ray cluster fits one worker with num_cpus={resources.num_cpus}, "
            f"num_gpus={resources.num_gpus} (cluster has CPU={total.get('CPU', 0):g}, GPU={total.get('GPU', 0):g})"
        )
    return slots
