"""The Ray driver: keeps one worker actor per slot busy until every block is complete.

Scheduling follows Ray's ActorPool, taken further: each actor holds at most
``max_in_flight_per_actor`` blocks; blocks are pulled lazily from the ledger's
pending list only when an actor has room, so the driver holds a few receipts,
never data, and nothing on it grows with the sweep. Every block has a
driver-side deadline (a task on a lost node can hang rather than fail); a
block that times out, whose actor died, or whose recipe raised is retried up
to ``spec.retries`` times and then ledgered as failed, with its error.

The driver is the ledger's only writer: a block becomes complete only after
its worker wrote every chunk and its receipt came back here.

Stopping early (:mod:`orchestrator.run_lifecycle`): once its :class:`RunStop`
says so (a signal, or a fault of the store's environment), the driver hands
out no more blocks, cancels the ones queued behind running ones, and waits up
to ``drain_timeout_s`` for the running blocks' receipts, ledgering each that
arrives; then it returns (a requested stop) or raises the fault.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import ray
import ray.exceptions

from orchestrator.block_outcomes import BlockOutcomes
from orchestrator.metrics import SweepMetrics
from orchestrator.progress import SweepProgress
from orchestrator.run_lifecycle import RunStop
from orchestrator.run_options import DriverOptions, RunResult
from orchestrator.scheduling import InFlight, Slot, WorkQueue, worker_slots
from orchestrator.task_errors import format_task_error, one_line
from orchestrator.worker_actor import SweepWorker
from storage.errors import DmsweepError, EnvironmentFault
from storage.events import EventLog
from storage.lease import Lease
from storage.spec import SweepSpec
from storage.sweep_store import SweepStore
from workers.block_runner import BlockReceipt

__all__ = ["SweepDriver"]

#: Longest single wait on Ray: the loop wakes at least this often to check the
#: lease, a stop request and actor start-up, even when no block is due.
_MAX_WAIT_S = 1.0
#: The event log writes what it holds when a later event comes; while every
#: actor is busy with a long block none comes, so the loop writes it this often.
_EVENTS_FLUSH_S = 5.0
#: How long a stopping run waits for the results of the blocks it gave up on (killed
#: actors' blocks resolve at once; a block that started before its cancel may not).
ABANDONED_SETTLE_S = 5.0


class SweepDriver:
    """Runs the pending blocks of one store. Use :meth:`run` once, under the store's lease.

    Parameters
    ----------
    store : the sweep's store, opened for writing (the driver writes its ledger).
    spec : the sweep spec (resources, retries and timeout are read from it).
    lease : the store's lease, held by the caller; the driver stops if it is lost.
    events : the store's event log, opened by the caller.
    progress : the live view to update, if any.
    options : scheduling options.
    stop : why to stop early, set by signal handlers and the lease's heartbeat
        (default: a stop nobody requests).
    clock : monotonic seconds (the block deadlines, the drain's bound).
    """

    def __init__(
        self,
        store: SweepStore,
        spec: SweepSpec,
        *,
        lease: Lease,
        events: EventLog,
        progress: SweepProgress | None = None,
        options: DriverOptions | None = None,
        stop: RunStop | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._spec = spec
        self._lease = lease
        self._events = events
        self._progress = progress
        self._options = options or DriverOptions()
        self._stop = stop or RunStop()
        self._clock = clock
        self._drain_deadline: float | None = None
        self._ledger = store.ledger
        self._metrics = SweepMetrics(store=store.path.name)
        self._run_id = uuid.uuid4().hex[:6]
        self._slots: list[Slot] = []
        # Blocks given up on (cancelled, or on an actor killed): their results are collected at the end.
        self._abandoned: list[ray.ObjectRef] = []
        self._actor_counter = 0
        self._start_failures = 0
        self._work = WorkQueue(np.empty(0, dtype=np.int64))
        self._outcomes = self._outcomes_for(self._work)

    def _outcomes_for(self, work: WorkQueue) -> BlockOutcomes:
        return BlockOutcomes(ledger=self._ledger, events=self._events, metrics=self._metrics, progress=self._progress,
                             work=work, retries=self._spec.retries, block=self._store.block)

    # -- actors ------------------------------------------------------------------
    def _start_actor(self) -> Slot:
        self._actor_counter += 1
        name = f"dmsweep-{self._run_id}-worker-{self._actor_counter:03d}"
        resources = self._spec.resources
        # max_restarts=0: a dead actor is replaced by the driver, which knows
        # which blocks it held; a silent Ray restart would hide that.
        actor = SweepWorker.options(
            name=name, num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0
        ).remote(str(self._store.path), resources.num_cpus)
        slot = Slot(name=name, actor=actor, ready_ref=actor.ready.remote(), created_at=self._clock())
        self._slots.append(slot)
        return slot

    def _has_work(self) -> bool:
        return len(self._work) > 0

    def _drop_actor(self, slot: Slot, reason: str, *, kind: str) -> None:
        """Kill an actor, requeue its blocks (the running head counts an attempt), replace it.

        While draining nothing is requeued or replaced: its blocks stay pending for the next run.
        """
        self._slots.remove(slot)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass  # already dead, or its node is gone: nothing left to kill
        self._events.write("actor_lost", actor=slot.name, node=slot.node_ip, reason=reason)
        queued = list(slot.queue)
        slot.queue.clear()
        self._abandoned.extend(item.ref for item in queued)
        # Queued blocks never ran: they go back first, in order, without an attempt.
        for item in reversed(queued[1:]):
            self._work.push(item.block_id, front=True)
        if queued:
            self._outcomes.attempt_failed(queued[0].block_id, reason, node=slot.node_ip, kind=kind,
                                          stopping=self._draining)
        if self._has_work() and not self._draining:
            self._start_actor()

    # -- blocks --------------------------------------------------------------------
    def _start_head(self, slot: Slot) -> None:
        """The slot's head block starts running now: its deadline counts from here."""
        head = slot.queue[0]
        head.started_at = self._clock()
        self._events.write("block_started", block=head.block_id, actor=slot.name, node=slot.node_ip)

    def _submit(self, slot: Slot, block_id: int) -> None:
        # The task name shows on the dashboard next to the actor that runs it.
        ref = slot.actor.train.options(name=f"block-{block_id:06d}").remote(block_id)
        slot.queue.append(InFlight(block_id=block_id, ref=ref))
        if len(slot.queue) == 1:
            self._start_head(slot)

    def _pop_head(self, slot: Slot) -> InFlight:
        head = slot.queue.popleft()
        if slot.queue:
            self._start_head(slot)
        return head

    # -- stopping early ------------------------------------------------------------
    @property
    def _draining(self) -> bool:
        return self._drain_deadline is not None

    def _begin_drain(self) -> None:
        """Hand out nothing more; cancel the blocks queued behind running ones; wait for the running ones."""
        self._drain_deadline = self._clock() + self._options.drain_timeout_s
        for slot in self._slots:
            while len(slot.queue) > 1:
                queued = slot.queue.pop()
                self._abandoned.append(queued.ref)
                try:
                    ray.cancel(queued.ref)  # not started yet, usually: then it never runs, and stays pending
                except Exception:
                    pass  # its actor or node is gone: it will not run either
        running = sorted(slot.queue[0].block_id for slot in self._slots if slot.queue)
        self._events.write("run_stopping", reason=self._stop.reason, running_blocks=running,
                           drain_timeout_s=self._options.drain_timeout_s)
        self._events.flush()  # whoever stopped the run may be watching for this

    def _settle_abandoned(self) -> None:
        """Collect the results of the blocks given up on, so that Ray does not print their errors as unhandled.

        A cancel can come too late (the block had started: with the store refusing
        writes it then fails too) and a killed actor's blocks fail with it; none of
        them is ledgered, so the next run redoes them, and why they failed no longer
        matters. Without this, each such error would be printed, traceback and all,
        when its reference is dropped: many lines where the run says one.
        """
        refs, self._abandoned = self._abandoned, []
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ABANDONED_SETTLE_S)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:
                pass  # not ledgered: the next run redoes the block

    def _check_stop(self) -> None:
        if self._lease.lost:
            raise DmsweepError("another driver took over this store's lease; stopping")
        if self._stop.stopping and not self._draining:
            self._begin_drain()

    # -- the loop --------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every block not yet complete; return what was done (failed blocks stay for the next run).

        Raises
        ------
        EnvironmentFault : the store refused a write (disk full, permission, read-only), after the drain.
        DmsweepError : the lease was taken over, or no worker could start.
        """
        try:
            return self._run()
        except OSError as exc:
            # A ledger or event-log write refused by the store: stop at once (the ledger
            # cannot record receipts), saying the first fault seen if a worker saw one.
            fault = self._stop.fault or EnvironmentFault.classify(
                exc, store=self._store.location.uri, action="writing the ledger or the event log")
            if fault is None:
                raise
            raise fault from exc

    def _run(self) -> RunResult:
        started = self._clock()
        pending = self._ledger.pending_blocks()
        self._work = WorkQueue(pending)
        self._outcomes = self._outcomes_for(self._work)
        completed_before = self._store.num_blocks - pending.size
        if self._progress:
            self._progress.start(
                total_models=self._store.num_models,
                done_models=completed_before * self._store.block,
                total_blocks=self._store.num_blocks,
            )
        self._events.write("run_started", pending_blocks=int(pending.size), run_id=self._run_id)
        self._check_stop()  # a signal during start-up: stop before any actor starts
        if pending.size and not self._draining:
            slots = self._options.workers or worker_slots(self._spec.resources)
            if self._options.max_actors is not None:
                slots = min(slots, self._options.max_actors)
            for _ in range(min(slots, int(pending.size))):
                self._start_actor()
            try:
                self._loop()
            finally:
                for slot in self._slots:
                    self._abandoned.extend(item.ref for item in slot.queue)
                    try:
                        ray.kill(slot.actor, no_restart=True)
                    except Exception:
                        pass  # its node is gone
                self._slots.clear()
                self._settle_abandoned()
                self._metrics.set_running(0)
                if self._progress:
                    self._progress.update_running(0)
        wall = self._clock() - started
        completed = int(self._ledger.completed_blocks().size)
        if self._stop.fault is not None:
            raise self._stop.fault
        outcomes = self._outcomes
        self._events.write(
            "run_stopped" if self._draining else "run_finished", completed_blocks=completed,
            failed_blocks=sorted(outcomes.failed), wall_seconds=round(wall, 3),
            **({"reason": self._stop.reason, "ledgered_while_stopping": outcomes.ledgered_while_stopping}
               if self._draining else {}),
        )
        return RunResult(
            store=str(self._store.path),
            num_models=self._store.num_models,
            num_blocks=self._store.num_blocks,
            completed_blocks=completed,
            newly_completed_blocks=outcomes.newly_completed,
            failed_blocks=sorted(outcomes.failed),
            wall_seconds=wall,
            models_per_second=outcomes.newly_completed * self._store.block / wall if wall > 0 else 0.0,
            actors=self._actor_counter,
            retries=outcomes.retries,
            stopped=self._stop.requested if self._draining and completed < self._store.num_blocks else None,
            ledgered_while_stopping=outcomes.ledgered_while_stopping,
        )

    def _in_flight(self) -> int:
        return sum(len(slot.queue) for slot in self._slots)

    def _fill(self) -> None:
        """Hand blocks to every ready actor with room: the only place work is pulled."""
        for slot in self._slots:
            while slot.ready and len(slot.queue) < self._options.max_in_flight_per_actor:
                block_id = self._work.pop()
                if block_id is None:
                    return
                self._submit(slot, block_id)

    def _grow(self) -> None:
        """Start workers for the slots of nodes that joined since the last count."""
        if self._options.workers is not None:
            return  # a fixed count: its pending actors already wait for nodes
        want = worker_slots(self._spec.resources, require_one=False)
        if self._options.max_actors is not None:
            want = min(want, self._options.max_actors)
        for _ in range(min(want - len(self._slots), len(self._work))):
            slot = self._start_actor()
            self._events.write("actor_added", actor=slot.name, actors=len(self._slots))

    def _finished(self) -> bool:
        """Nothing left to wait for: all work done, or (stopping) the running blocks returned or ran out of time."""
        if self._drain_deadline is not None:
            return not self._in_flight() or self._clock() >= self._drain_deadline
        return not (self._has_work() or self._in_flight())

    def _loop(self) -> None:
        timeout = self._spec.timeout_s
        last_ready = self._clock()
        last_scan = last_flush = self._clock()
        while True:
            self._check_stop()
            if self._finished():
                return
            if self._clock() - last_flush >= _EVENTS_FLUSH_S:
                last_flush = self._clock()
                self._events.flush()
            if not self._draining:
                if self._clock() - last_scan >= self._options.rescan_s:
                    last_scan = self._clock()
                    self._grow()
                self._fill()
            running = sum(1 for s in self._slots if s.queue)
            self._metrics.set_running(running)
            if self._progress:
                self._progress.update_running(running)
            # What to wait on: a starting actor's ready(), or a busy actor's head block.
            refs: dict[ray.ObjectRef, Slot] = {}
            deadlines: list[float] = [] if self._drain_deadline is None else [self._drain_deadline]
            for slot in self._slots:
                if slot.ready_ref is not None:
                    if not self._draining:
                        refs[slot.ready_ref] = slot
                elif slot.queue:
                    head = slot.queue[0]
                    refs[head.ref] = slot
                    deadlines.append((head.started_at or self._clock()) + timeout)
            now = self._clock()
            if any(s.ready for s in self._slots) or self._draining:
                last_ready = now
            elif now - last_ready > self._options.actor_start_timeout_s:
                raise DmsweepError(
                    f"no worker actor could start within {self._options.actor_start_timeout_s:.0f}s; "
                    "does the cluster have the resources the spec asks for?"
                )
            if not refs:
                if self._draining:
                    return
                # Work is left but every actor is gone (lost without replacement): start one.
                self._start_actor()
                continue
            wait_s = min(_MAX_WAIT_S, max(0.0, min(deadlines) - now) if deadlines else _MAX_WAIT_S)
            ready, rest = ray.wait(list(refs), num_returns=1, timeout=wait_s)
            if ready and rest:
                # Under load several receipts land together: take them all in one pass.
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                slot = refs[ref]
                if slot not in self._slots:
                    continue  # dropped while handling an earlier ref of this pass
                if ref is slot.ready_ref:
                    self._on_actor_ready(slot)
                else:
                    self._on_block_done(slot)
            self._check_deadlines(timeout)

    def _on_actor_ready(self, slot: Slot) -> None:
        try:
            info = ray.get(slot.ready_ref)
        except ray.exceptions.RayError as exc:
            self._slots.remove(slot)
            self._events.write("actor_start_failed", actor=slot.name, error=str(exc))
            # An exception in the actor's setup (the recipe's dataset load) will
            # happen again on every actor: give up after a few in a row. Any
            # other start failure (its node died) is the cluster's, not the recipe's.
            setup_failed = isinstance(exc, ray.exceptions.RayTaskError) or (
                isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed
            )
            if setup_failed:
                self._start_failures += 1
                if self._start_failures >= self._options.max_actor_start_failures:
                    raise DmsweepError(
                        f"worker actors fail in their setup ({self._start_failures} in a row): {one_line(str(exc))}"
                    ) from None
            if self._has_work() or not self._slots:
                self._start_actor()
            return
        slot.ready_ref = None
        slot.node_ip = str(info["node_ip"])
        self._start_failures = 0
        self._events.write("actor_started", actor=slot.name, **info)

    def _on_block_done(self, slot: Slot) -> None:
        head = slot.queue[0]
        try:
            receipt: BlockReceipt = ray.get(head.ref)
        except ray.exceptions.RayTaskError as exc:
            self._pop_head(slot)
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EnvironmentFault):
                # The store refused the block's write (disk full...): every block would
                # fail the same way, so the sweep stops instead of burning retries.
                self._events.write("block_environment_fault", block=head.block_id, node=slot.node_ip, error=str(cause))
                self._stop.fail(cause)
                return
            # The recipe (or the write) raised: the actor is fine, the block is not.
            self._outcomes.attempt_failed(head.block_id, format_task_error(exc), node=slot.node_ip, kind="error",
                                          stopping=self._draining)
            return
        except ray.exceptions.RayError as exc:
            # The actor died (its process crashed, or its node was lost).
            self._drop_actor(slot, f"worker lost: {type(exc).__name__}: {one_line(str(exc))}", kind="worker_lost")
            return
        self._pop_head(slot)
        if not self._lease.confirm():
            # Fenced: the driver that took the lease over runs this block itself.
            raise DmsweepError("another driver took over this store's lease; stopping")
        self._outcomes.completed(receipt, actor=slot.name, stopping=self._draining)

    def _check_deadlines(self, timeout: float) -> None:
        now = self._clock()
        for slot in list(self._slots):
            head = slot.queue[0] if slot.queue else None
            if head is not None and head.started_at is not None and now - head.started_at > timeout:
                # Kill rather than cancel: a hung recipe ignores cancellation, and
                # a task on a lost node may never answer at all.
                self._drop_actor(slot, f"block {head.block_id} timed out after {timeout:g}s", kind="timeout")
