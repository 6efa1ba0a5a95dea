"""What every chaos trial shares: small real sweeps, driver processes, the reference store, the final check.

A trial runs real ``dmsweep run`` processes (``python -m orchestrator``) on a
real Ray and a real store, injects one fault at a random moment, recovers the
way a user would (run the same command again, ``verify --repair``, free the
disk), and then checks the store against an uninterrupted run of the same
spec: masks and every output bit-exact, the ledger's checksums equal,
``verify`` clean, and each block ledgered once (a repaired block twice).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO",
    "ChaosContext",
    "Sweep",
    "TrialResult",
    "StoreCheck",
    "DriverProcess",
    "check_store",
    "complete_blocks",
    "completed_blocks",
    "poll",
    "free_port",
    "short_tempdir",
]


def poll(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02) -> Any:
    """The first truthy ``predicate()``; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(interval)
    return value


def free_port() -> int:
    """A TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_tempdir(prefix: str) -> Path:
    """A fresh directory under /tmp with a short path (Ray's socket paths must fit in 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass(frozen=True)
class Sweep:
    """One small ``noop`` sweep: its spec file and its store."""

    spec_path: Path
    store: Path
    spec: dict[str, Any]

    @property
    def num_blocks(self) -> int:
        return int(self.spec["num_models"]) // int(self.spec["block"])

    @property
    def block(self) -> int:
        return int(self.spec["block"])


def write_sweep(directory: Path, name: str, *, store: Path | None = None, blocks: int = 24, block: int = 2,
                n_train: int = 40, n_test: int = 10, sleep: float = 0.15, seed: int = 5,
                recipe: str = "noop", extra_params: dict[str, Any] | None = None) -> Sweep:
    """Write the spec of a ``noop`` sweep (outputs are a pure function of the seed; ``sleep`` changes none).

    ``recipe`` may name a subclass of ``noop`` with the same outputs (the tests'
    gated one, with its ``extra_params``); ``store`` defaults to ``NAME.zarr``
    in ``directory`` (a relative one is taken from there too).
    """
    directory.mkdir(parents=True, exist_ok=True)
    store = directory / (store or f"{name}.zarr")  # a relative store goes in the directory
    params = {"n_train": n_train, "n_test": n_test, "n_classes": 10, "sleep": sleep, **(extra_params or {})}
    spec = {
        "store": str(store),
        "recipe": {"name": recipe, "params": params},
        "alpha": 0.5, "num_models": blocks * block, "block": block, "seed": seed, "timeout_s": 120, "retries": 3,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Sweep(spec_path=path, store=store, spec=spec)


def complete_blocks(store: Path) -> set[int]:
    """The blocks the store's ledger marks complete (none while the store is absent or its init unfinished)."""
    from storage.sweep_store import StoreProbe, SweepStore, probe_store

    try:
        if probe_store(store) is not StoreProbe.STORE:
            return set()
        return {int(b) for b in SweepStore.open(store).ledger.completed_blocks()}
    except Exception:  # mid-creation, or a damaged store under test: not yet countable
        return set()


def completed_blocks(store: Path) -> int:
    """How many blocks the store's ledger marks complete."""
    return len(complete_blocks(store))


def read_events(store: Path) -> list[dict[str, Any]]:
    from storage.events import read_events as read

    return list(read(store))


class DriverProcess:
    """A ``dmsweep`` command in its own process, stderr kept in a file.

    Parameters
    ----------
    args : the dmsweep arguments (``["run", SPEC, ...]``).
    env : the process's environment.
    prefix : what runs the command (default ``python -m orchestrator``).
    new_session : start it in a new session, so that its process group is its own.
    """

    def __init__(self, args: Sequence[str], *, env: dict[str, str], log: Path,
                 prefix: Sequence[str] | None = None, new_session: bool = False) -> None:
        self.log = log
        self._log_file = log.open("wb")
        command = [*(prefix or [sys.executable, "-m", "orchestrator"]), *args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._log_file, env=env,
                                     cwd=str(REPO), start_new_session=new_session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int, *, group: bool = False) -> None:
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TimeoutError(f"{self.log.name}: the driver did not end within {timeout:g}s") from None
        finally:
            self._log_file.close()

    def stderr_lines(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]


@dataclass
class StoreCheck:
    """How a store compares with an uninterrupted run's."""

    complete: bool
    equal: bool
    verify_ok: bool
    rows_lost: int
    rows_duplicated: int
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return self.complete and self.equal and self.verify_ok and not self.rows_lost and not self.rows_duplicated


def check_store(store: Path, reference: Path, *, repaired: Iterable[int] = ()) -> StoreCheck:
    """Compare ``store`` with ``reference`` (an uninterrupted run of the same spec).

    ``repaired``: blocks sent back by ``verify --repair`` (ledgered twice by right).
    """
    from storage.sweep_store import SweepStore
    from storage.verify import verify_store

    problems: list[str] = []
    got, want = SweepStore.open(store), SweepStore.open(reference)
    status = got.ledger.statuses()
    incomplete = np.flatnonzero(status != 1)
    rows_lost = int(incomplete.size) * got.block
    if incomplete.size:
        problems.append(f"blocks not complete: {incomplete.tolist()}")
    differing_rows: set[int] = set()
    for name in ("masks", *want.outputs):
        a, b = got.read(name, slice(None)), want.read(name, slice(None))
        rows = np.flatnonzero(np.any((a != b).reshape(a.shape[0], -1), axis=1))
        if rows.size:
            problems.append(f"{name}: {rows.size} rows differ from the uninterrupted run")
            differing_rows.update(int(r) for r in rows)
    complete_rows = {int(r) for r in got.completed_rows()}
    rows_lost += len(differing_rows & complete_rows)  # incomplete ones are counted already
    checksums_equal = bool(np.array_equal(got.ledger.table()["checksum"], want.ledger.table()["checksum"]))
    if not checksums_equal:
        problems.append("ledger checksums differ from the uninterrupted run's")
    report = verify_store(got)
    if not report.ok:
        problems.append(f"verify: {[(p.block_id, p.reason) for p in report.problems]}")
    allowed = Counter({int(b): 1 for b in repaired})
    completions = Counter(e["block"] for e in read_events(store) if e["event"] == "block_completed")
    extra = sum(max(0, count - 1 - allowed[block]) for block, count in completions.items())
    if extra:
        problems.append(f"{extra} blocks ledgered again after they were complete")
    return StoreCheck(
        complete=not incomplete.size, equal=not differing_rows and checksums_equal, verify_ok=report.ok,
        rows_lost=rows_lost, rows_duplicated=extra * got.block, problems=problems,
    )


@dataclass
class TrialResult:
    """One trial: did the store end as an uninterrupted run's, and how long recovery took."""

    case: str
    survived: bool
    rows_lost: int
    rows_duplicated: int
    recover_s: float
    detail: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_check(cls, case: str, check: StoreCheck, *, recover_s: float, ok: bool = True,
                   detail: dict[str, Any] | None = None, why_not: str = "") -> TrialResult:
        """``ok``: the case's own expectations (exit codes, messages) held as well; ``why_not`` says how not."""
        return cls(case=case, survived=check.survived and ok, rows_lost=check.rows_lost,
                   rows_duplicated=check.rows_duplicated, recover_s=round(recover_s, 3), detail=detail or {},
                   problems=[*([] if ok else [why_not]), *check.problems])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ChaosContext:
    """Where trials run: a work directory, the Ray cluster drivers join, and the reference stores.

    Parameters
    ----------
    workdir : scratch space (each trial gets its own subdirectory).
    address : the GCS address of a running Ray that drivers join with ``--address``;
        this process must be connected to it too (the reference runs here).
    pythonpath : extra entries for the drivers' ``PYTHONPATH`` (the repository is always first).
    """

    def __init__(self, workdir: Path, *, address: str, pythonpath: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.address = address
        paths = [str(REPO), *pythonpath, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
        self.env.pop("RAY_ADDRESS", None)
        self._references: dict[str, Path] = {}
        self._trials = Counter[str]()

    def trial_dir(self, case: str) -> Path:
        self._trials[case] += 1
        path = self.workdir / f"{case}-{self._trials[case]}"
        path.mkdir(parents=True)
        return path

    def start_trial(self, case: str, **shape: Any) -> tuple[Path, Sweep, Path]:
        """A new trial of ``case``: its directory, its sweep (:func:`write_sweep`'s ``shape``), the reference store."""
        trial = self.trial_dir(case)
        sweep = write_sweep(trial, "sweep", **shape)
        return trial, sweep, self.reference(sweep)

    def reference(self, sweep: Sweep) -> Path:
        """The store of an uninterrupted run of ``sweep``'s spec (run once, here, on the joined Ray)."""
        from orchestrator.api import run_sweep
        from orchestrator.spec import parse_spec

        identity = {k: v for k, v in sweep.spec.items() if k != "store"}
        identity["recipe"] = {**identity["recipe"], "params": {
            k: v for k, v in identity["recipe"]["params"].items() if k != "sleep"}}
        key = json.dumps(identity, sort_keys=True)
        if key not in self._references:
            store = self.workdir / "references" / f"ref-{len(self._references)}.zarr"
            store.parent.mkdir(parents=True, exist_ok=True)
            spec = parse_spec({**sweep.spec, "store": str(store),
                               "recipe": {**sweep.spec["recipe"], "params": {**sweep.spec["recipe"]["params"], "sleep": 0.0}}})
            result = run_sweep(spec, progress=False)
            if not result.done:
                raise RuntimeError(f"the uninterrupted reference run did not finish: {result}")
            self._references[key] = store
        return self._references[key]

    def driver(self, args: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
               prefix: Sequence[str] | None = None, new_session: bool = False) -> DriverProcess:
        return DriverProcess(args, env=env or self.env, log=log, prefix=prefix, new_session=new_session)

    def run_args(self, sweep: Sweep, *extra: str, address: bool = True) -> list[str]:
        """``run SPEC --no-progress [--address A] EXTRA...``."""
        return ["run", str(sweep.spec_path), "--no-progress", *(["--address", self.address] if address else []), *extra]

    def resume(self, sweep: Sweep, log: Path, *extra: str) -> int:
        """Run the same command again (on the joined Ray) until it ends; its exit status."""
        return self.driver(self.run_args(sweep, *extra), log=log).wait()


def fault_moment(rng: random.Random, sweep: Sweep, driver: DriverProcess, *, startup_share: float = 0.3) -> str:
    """Let a random moment of the driver's life pass: start-up, or mid-sweep; say which.

    Mid-sweep moments wait for a random number of ledgered blocks and then a
    random fraction of a block, so faults land between a write and its
    ledger entry too.
    """
    pause = threading.Event()
    if rng.random() < startup_share:
        pause.wait(rng.uniform(0.2, 2.5))
        return "start-up"
    target = rng.randint(1, max(1, sweep.num_blocks - 4))
    poll(lambda: completed_blocks(sweep.store) >= target or not driver.running(), timeout=300,
         what=f"{target} completed blocks")
    pause.wait(rng.uniform(0.0, 0.3))
    return f"after {completed_blocks(sweep.store)} blocks"


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def wait_gone(pgid: int, *, timeout: float = 30) -> int:
    """How many processes of group ``pgid`` are left once they are gone or ``timeout`` passed (0: all gone)."""
    try:
        poll(lambda: not _group_members(pgid), timeout=timeout, what=f"process group {pgid} to be gone", interval=0.2)
    except TimeoutError:
        return len(_group_members(pgid))
    return 0


def kill_pid(pid: int, signum: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
