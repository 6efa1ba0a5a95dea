"""The Ray driver: keeps one worker actor per slot busy until every block is complete.

Scheduling follows Ray's ActorPool, taken further: each actor holds at most
``max_in_flight_per_actor`` blocks; blocks are pulled from the pending list
only when an actor has room, so the driver holds a few receipts, never data.
Every block has a driver-side deadline (a task on a lost node can hang rather
than fail); a block that times out, whose actor died, or whose recipe raised
is retried up to ``spec.retries`` times and then ledgered as failed.

The driver is the ledger's only writer: a block becomes complete only after
its worker wrote every chunk and its receipt came back here.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray
import ray.exceptions

from orchestrator.metrics import SweepMetrics
from orchestrator.progress import SweepProgress
from orchestrator.spec import SweepSpec
from orchestrator.worker_actor import SweepWorker
from storage.errors import DmsweepError, InputError
from storage.events import EventLog
from storage.lease import Lease
from storage.sweep_store import SweepStore
from workers.block_runner import BlockReceipt

__all__ = ["DriverOptions", "RunResult", "SweepDriver", "worker_slots"]


@dataclass(frozen=True)
class DriverOptions:
    """How the driver schedules (not part of the spec: it never changes what is written)."""

    max_in_flight_per_actor: int = 2
    #: Give up when no actor has become ready for this long (cluster without room).
    actor_start_timeout_s: float = 600.0
    #: Abort after this many actors in a row failed to start (a broken recipe setup).
    max_actor_start_failures: int = 3
    #: Upper bound on the number of worker actors (None: one per slot).
    max_actors: int | None = None


@dataclass
class RunResult:
    """What one run of the driver did."""

    store: str
    num_models: int
    num_blocks: int
    completed_blocks: int
    newly_completed_blocks: int
    failed_blocks: list[int]
    wall_seconds: float
    models_per_second: float
    actors: int
    retries: int

    @property
    def done(self) -> bool:
        return self.completed_blocks == self.num_blocks

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "done": self.done}


@dataclass
class _InFlight:
    block_id: int
    ref: ray.ObjectRef
    started_at: float | None = None


@dataclass
class _Slot:
    """One worker actor and the blocks queued on it, head first."""

    name: str
    actor: ray.actor.ActorHandle
    ready_ref: ray.ObjectRef | None
    created_at: float
    node_ip: str = ""
    queue: deque[_InFlight] = field(default_factory=deque)

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


def worker_slots(spec: SweepSpec) -> int:
    """How many worker actors the cluster's resources allow for this spec."""
    resources = ray.cluster_resources()
    if spec.resources.num_gpus > 0:
        slots = int(resources.get("GPU", 0.0) / spec.resources.num_gpus + 1e-9)
        if slots == 0:
            raise InputError(f"the spec asks for {spec.resources.num_gpus} GPU per worker but the Ray cluster has no GPU")
    else:
        slots = int(resources.get("CPU", 0.0) / spec.resources.num_cpus + 1e-9)
        if slots == 0:
            raise InputError(
                f"the spec asks for {spec.resources.num_cpus} CPUs per worker but the Ray cluster has {resources.get('CPU', 0)}"
            )
    return slots


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


class SweepDriver:
    """Runs the pending blocks of one store. Use :meth:`run` once, under the store's lease."""

    def __init__(
        self,
        store: SweepStore,
        spec: SweepSpec,
        *,
        lease: Lease,
        events: EventLog,
        progress: SweepProgress | None = None,
        options: DriverOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._spec = spec
        self._lease = lease
        self._events = events
        self._progress = progress
        self._options = options or DriverOptions()
        self._clock = clock
        self._ledger = store.ledger
        self._metrics = SweepMetrics()
        self._run_id = uuid.uuid4().hex[:6]
        self._slots: list[_Slot] = []
        self._actor_counter = 0
        self._start_failures = 0
        self._attempts: dict[int, int] = {}
        self._retry: deque[int] = deque()
        self._failed: list[int] = []
        self._retries = 0
        self._newly_completed = 0

    # -- actors ------------------------------------------------------------------
    def _start_actor(self) -> _Slot:
        self._actor_counter += 1
        name = f"dmsweep-{self._run_id}-worker-{self._actor_counter:03d}"
        resources = self._spec.resources
        actor = SweepWorker.options(
            name=name, num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0
        ).remote(str(self._store.path), resources.num_cpus)
        slot = _Slot(name=name, actor=actor, ready_ref=actor.ready.remote(), created_at=self._clock())
        self._slots.append(slot)
        return slot

    def _drop_actor(self, slot: _Slot, reason: str) -> None:
        """Kill an actor, requeue its blocks (the running head counts an attempt), replace it."""
        self._slots.remove(slot)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass  # already dead
        self._events.write("actor_lost", actor=slot.name, node=slot.node_ip, reason=reason)
        for position, item in enumerate(slot.queue):
            if position == 0:
                self._block_attempt_failed(item.block_id, reason, node=slot.node_ip)
            else:
                self._retry.appendleft(item.block_id)
        slot.queue.clear()
        self._start_actor()

    # -- blocks --------------------------------------------------------------------
    def _block_attempt_failed(self, block_id: int, error: str, *, node: str) -> None:
        attempts = self._attempts.get(block_id, 0) + 1
        self._attempts[block_id] = attempts
        self._metrics.block_failed()
        if attempts <= self._spec.retries:
            self._retries += 1
            self._events.write("block_retried", block=block_id, attempt=attempts, node=node, error=error)
            self._retry.append(block_id)
            if self._progress:
                self._progress.block_retried()
        else:
            self._ledger.mark_failed(block_id, error=error, attempts=attempts, node=node)
            self._events.write("block_failed", block=block_id, attempts=attempts, node=node, error=error)
            self._failed.append(block_id)
            if self._progress:
                self._progress.block_failed()

    def _block_completed(self, receipt: BlockReceipt) -> None:
        attempts = self._attempts.pop(receipt.block_id, 0) + 1
        self._ledger.mark_complete(
            receipt.block_id, checksum=receipt.checksum, seconds=receipt.seconds, node=receipt.node, attempts=attempts
        )
        self._newly_completed += 1
        self._events.write(
            "block_completed", block=receipt.block_id, node=receipt.node, pid=receipt.pid,
            train_seconds=round(receipt.train_seconds, 4), write_seconds=round(receipt.write_seconds, 4),
            nbytes=receipt.nbytes, attempt=attempts,
        )
        self._metrics.block_completed(self._store.block, receipt.seconds, receipt.nbytes, receipt.node)
        if self._progress:
            self._progress.block_completed(self._store.block, receipt.node)

    def _next_block(self, pending: deque[int]) -> int | None:
        if self._retry:
            return self._retry.popleft()
        if pending:
            return pending.popleft()
        return None

    def _submit(self, slot: _Slot, block_id: int) -> None:
        ref = slot.actor.train.options(name=f"block-{block_id:06d}").remote(block_id)
        item = _InFlight(block_id=block_id, ref=ref)
        if not slot.queue:
            item.started_at = self._clock()
        slot.queue.append(item)
        self._events.write("block_started", block=block_id, actor=slot.name, node=slot.node_ip)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> RunResult:
        started = self._clock()
        pending = deque(int(b) for b in self._ledger.pending_blocks())
        total_todo = len(pending)
        completed_before = self._store.num_blocks - total_todo
        if self._progress:
            self._progress.start(
                total_models=self._store.num_models, done_models=completed_before * self._store.block
            )
        self._events.write("run_started", pending_blocks=total_todo, run_id=self._run_id)
        if pending:
            slots = worker_slots(self._spec)
            if self._options.max_actors is not None:
                slots = min(slots, self._options.max_actors)
            for _ in range(min(slots, total_todo)):
                self._start_actor()
            try:
                self._loop(pending)
            finally:
                for slot in self._slots:
                    ray.kill(slot.actor, no_restart=True)
                self._slots.clear()
        wall = self._clock() - started
        completed = int(self._ledger.completed_blocks().size)
        self._events.write("run_finished", completed_blocks=completed, failed_blocks=self._failed, wall_seconds=wall)
        return RunResult(
            store=str(self._store.path),
            num_models=self._store.num_models,
            num_blocks=self._store.num_blocks,
            completed_blocks=completed,
            newly_completed_blocks=self._newly_completed,
            failed_blocks=sorted(self._failed),
            wall_seconds=wall,
            models_per_second=self._newly_completed * self._store.block / wall if wall > 0 else 0.0,
            actors=self._actor_counter,
            retries=self._retries,
        )

    def _in_flight(self) -> int:
        return sum(len(slot.queue) for slot in self._slots)

    def _loop(self, pending: deque[int]) -> None:
        timeout = self._spec.timeout_s
        last_ready = self._clock()
        while pending or self._retry or self._in_flight():
            if self._lease.lost:
                raise DmsweepError("another driver took over this store's lease; stopping")
            for slot in self._slots:
                while slot.ready and len(slot.queue) < self._options.max_in_flight_per_actor:
                    block_id = self._next_block(pending)
                    if block_id is None:
                        break
                    self._submit(slot, block_id)
            if self._progress:
                self._progress.update_running(sum(1 for s in self._slots if s.queue))
            refs: dict[ray.ObjectRef, _Slot] = {}
            deadlines: list[float] = []
            for slot in self._slots:
                if slot.ready_ref is not None:
                    refs[slot.ready_ref] = slot
                elif slot.queue:
                    head = slot.queue[0]
                    refs[head.ref] = slot
                    deadlines.append((head.started_at or self._clock()) + timeout)
            now = self._clock()
            if not any(s.ready for s in self._slots) and now - last_ready > self._options.actor_start_timeout_s:
                raise DmsweepError(
                    f"no worker actor could start within {self._options.actor_start_timeout_s:.0f}s; "
                    "does the cluster have the resources the spec asks for?"
                )
            wait_s = max(0.0, min(deadlines) - now) if deadlines else 5.0
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=min(wait_s, 5.0))
            for ref in ready:
                slot = refs[ref]
                if ref is slot.ready_ref:
                    self._on_actor_ready(slot)
                    last_ready = self._clock()
                else:
                    self._on_block_done(slot)
            self._check_deadlines(timeout)

    def _on_actor_ready(self, slot: _Slot) -> None:
        try:
            info = ray.get(slot.ready_ref)
        except ray.exceptions.RayTaskError as exc:
            self._start_failures += 1
            self._events.write("actor_start_failed", actor=slot.name, error=str(exc))
            self._slots.remove(slot)
            if self._start_failures >= self._options.max_actor_start_failures:
                raise DmsweepError(f"worker actors fail to start: {_one_line(str(exc))}") from None
            self._start_actor()
            return
        except ray.exceptions.RayError as exc:
            self._slots.remove(slot)
            self._events.write("actor_start_failed", actor=slot.name, error=str(exc))
            self._start_actor()
            return
        slot.ready_ref = None
        slot.node_ip = str(info["node_ip"])
        self._start_failures = 0
        self._events.write("actor_started", actor=slot.name, **info)

    def _on_block_done(self, slot: _Slot) -> None:
        head = slot.queue[0]
        try:
            receipt: BlockReceipt = ray.get(head.ref)
        except ray.exceptions.RayTaskError as exc:
            # The recipe (or the write) raised: the actor is fine, the block is not.
            slot.queue.popleft()
            if slot.queue:
                slot.queue[0].started_at = self._clock()
            self._block_attempt_failed(head.block_id, _format_task_error(exc), node=slot.node_ip)
            return
        except ray.exceptions.RayError as exc:
            self._drop_actor(slot, f"worker lost: {type(exc).__name__}: {_one_line(str(exc))}")
            return
        slot.queue.popleft()
        if slot.queue:
            slot.queue[0].started_at = self._clock()
        self._block_completed(receipt)

    def _check_deadlines(self, timeout: float) -> None:
        now = self._clock()
        for slot in list(self._slots):
            if slot.queue and slot.queue[0].started_at is not None and now - slot.queue[0].started_at > timeout:
                self._drop_actor(slot, f"block {slot.queue[0].block_id} timed out after {timeout:g}s")


def _format_task_error(exc: ray.exceptions.RayTaskError) -> str:
    """The worker's traceback, as the ledger keeps it for `dmsweep status`."""
    cause = exc.cause if getattr(exc, "cause", None) is not None else None
    if cause is not None:
        text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        return text.strip() or repr(cause)
    return str(exc)
