"""What a run of the sweep driver is told (scheduling options) and what it reports (the run's result)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.errors import InputError

__all__ = ["DriverOptions", "RunResult"]


@dataclass(frozen=True)
class DriverOptions:
    """How the driver schedules (not part of the spec: it never changes what is written).

    Attributes
    ----------
    max_in_flight_per_actor : blocks queued on one actor, the running one
        included; two keeps an actor busy while its next receipt travels.
    actor_start_timeout_s : give up when no actor has become ready for this
        long (a cluster without room for the spec's resources).
    max_actor_start_failures : abort after this many actors in a row failed in
        their setup (a recipe whose dataset cannot load).
    max_actors : upper bound on the number of worker actors (``None``: one per slot).
    workers : keep exactly this many worker actors, whether or not the cluster
        has room for them now. On an autoscaling cluster the actors still pending
        are the resource demand that makes it add nodes. ``None``: one per slot of
        the live nodes, recounted every ``rescan_s`` so that nodes joining
        mid-sweep get workers too.
    rescan_s : seconds between two counts of the cluster's slots.
    drain_timeout_s : once asked to stop (SIGTERM, SIGINT, a fault of the
        store), how long to wait for the running blocks' receipts before
        stopping without them (they are redone by the next run). Fits within
        the 30 s SLURM (``KillWait``) and Kubernetes give before SIGKILL.
    """

    max_in_flight_per_actor: int = 2
    actor_start_timeout_s: float = 600.0
    max_actor_start_failures: int = 3
    max_actors: int | None = None
    workers: int | None = None
    rescan_s: float = 15.0
    drain_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_in_flight_per_actor < 1:
            problems.append(f"max_in_flight_per_actor must be >= 1, got {self.max_in_flight_per_actor}")
        if self.actor_start_timeout_s <= 0:
            problems.append(f"actor_start_timeout_s must be > 0, got {self.actor_start_timeout_s}")
        if self.max_actor_start_failures < 1:
            problems.append(f"max_actor_start_failures must be >= 1, got {self.max_actor_start_failures}")
        if self.max_actors is not None and self.max_actors < 1:
            problems.append(f"max_actors must be >= 1 or None, got {self.max_actors}")
        if self.workers is not None and self.workers < 1:
            problems.append(f"workers must be >= 1 or None, got {self.workers}")
        if self.rescan_s <= 0:
            problems.append(f"rescan_s must be > 0, got {self.rescan_s}")
        if self.drain_timeout_s < 0:
            problems.append(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if problems:
            raise InputError("; ".join(problems), params=tuple(p.split(" ", 1)[0] for p in problems))


@dataclass
class RunResult:
    """What one run of the driver did.

    ``stopped`` names what stopped the run before every block was done
    (``"SIGTERM"``, ``"SIGINT"``); the blocks whose receipts came back while it
    was stopping (``ledgered_while_stopping``) are complete, the rest pending.
    """

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
    stopped: str | None = None
    ledgered_while_stopping: int = 0

    @property
    def done(self) -> bool:
        return self.completed_blocks == self.num_blocks

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "done": self.done}
