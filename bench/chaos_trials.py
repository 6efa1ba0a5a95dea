"""The chaos cases, one function per fault: each runs one trial and returns a :class:`TrialResult`.

Every trial injects its fault at a random moment (drawn from ``rng``), then
recovers as a user would, then compares the store with an uninterrupted run
(:func:`chaos_support.check_store`). ``recover_s`` is the time from the fault
until the store is complete again, the recovery run included.

``bench/chaos.py`` runs many trials of each; ``tests/orchestrator/test_chaos.py``
runs one of each fast case.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chaos_support import (
    REPO,
    ChaosContext,
    TrialResult,
    check_store,
    complete_blocks,
    completed_blocks,
    fault_moment,
    free_port,
    kill_pid,
    poll,
    read_events,
    short_tempdir,
    wait_gone,
    write_sweep,
)

__all__ = ["CASES", "FAST_CASES", "mount_tmpfs", "tmpfs_unavailable"]


# -- a real small filesystem -------------------------------------------------------------
def mount_tmpfs(path: Path, size_bytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                   check=True, capture_output=True, text=True)


def _remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True, text=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, text=True)


def tmpfs_unavailable(scratch: Path) -> str | None:
    """Why a tmpfs cannot be mounted here (not root, no CAP_SYS_ADMIN, a container without it), or None."""
    probe = scratch / "mount-probe"
    try:
        mount_tmpfs(probe, 1 << 20)
    except FileNotFoundError:
        return "no mount command on this machine"
    except subprocess.CalledProcessError as exc:
        return f"mounting a tmpfs is not permitted here: {exc.stderr.strip() or exc.returncode}"
    _umount(probe)
    probe.rmdir()
    return None


def _disk_usage(path: Path) -> int:
    """Bytes a tree occupies (allocated blocks: what fills a filesystem)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def _worker_pids() -> list[int]:
    """The processes of the sweep's live worker actors, from the GCS's actor table (this process joined that Ray;
    the state API would need a dashboard)."""
    from ray._private.state import actors

    return [int(a["Pid"]) for a in actors().values()
            if a.get("State") == "ALIVE" and str(a.get("Name") or "").startswith("dmsweep-") and a.get("Pid")]


# -- the cases ---------------------------------------------------------------------------------
def worker_sigkill(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """SIGKILL of a worker actor's process mid-sweep: the driver retries its block on a new actor."""
    trial, sweep, reference = ctx.start_trial("worker_sigkill", sleep=0.2)
    driver = ctx.driver(ctx.run_args(sweep), log=trial / "driver.log")
    target = rng.randint(1, sweep.num_blocks - 6)
    poll(lambda: completed_blocks(sweep.store) >= target or not driver.running(), timeout=300,
         what=f"{target} completed blocks")
    time.sleep(rng.uniform(0.0, 0.2))
    pids = _worker_pids()
    fault_at = time.monotonic()
    killed = kill_pid(rng.choice(pids)) if pids and driver.running() else False
    code = driver.wait()
    recover = time.monotonic() - fault_at
    lost = [e for e in read_events(sweep.store) if e["event"] == "actor_lost"]
    ok = code == 0 and killed and bool(lost)
    return TrialResult.from_check("worker_sigkill", check_store(sweep.store, reference), recover_s=recover, ok=ok,
                                  detail={"exit": code, "killed": killed, "actors_lost": len(lost)},
                                  why_not=f"exit {code}, killed {killed}, actors lost {len(lost)}")


def driver_sigterm(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """SIGTERM to the driver: it ledgers the running blocks' receipts, releases the lease, exits 3; rerun resumes."""
    from storage.lease import read_lease

    trial, sweep, reference = ctx.start_trial("driver_sigterm")
    driver = ctx.driver(ctx.run_args(sweep), log=trial / "driver.log")
    moment = fault_moment(rng, sweep, driver)
    fault_at = time.monotonic()
    driver.signal(signal.SIGTERM)
    code = driver.wait()
    existed = sweep.store.exists()  # before the rerun, which creates it
    lease_left = existed and read_lease(sweep.store) is not None
    stopping = [e for e in read_events(sweep.store) if e["event"] == "run_stopping"] if sweep.store.exists() else []
    running = stopping[0]["running_blocks"] if stopping else []
    done_after_stop = completed_blocks(sweep.store)
    undrained = [b for b in running if b not in complete_blocks(sweep.store)]
    resumed = ctx.resume(sweep, trial / "resume.log")
    recover = time.monotonic() - fault_at
    last = driver.stderr_lines()[-1:] or [""]
    # Before its handlers are installed (Python still importing, the spec being read) the
    # driver has written nothing yet, and SIGTERM's default action ends it: right too.
    ended_unstarted = code == -signal.SIGTERM and not existed
    ok = (code in (0, 3) or ended_unstarted) and not lease_left and not undrained and resumed == 0
    if code == 3:
        ok = ok and "stopped by SIGTERM" in last[0]
    return TrialResult.from_check(
        "driver_sigterm", check_store(sweep.store, reference), recover_s=recover, ok=ok,
        detail={"moment": moment, "exit": code, "running_at_stop": running, "complete_after_stop": done_after_stop},
        why_not=f"exit {code}, lease left {lease_left}, not ledgered while stopping {undrained}, "
                f"resume exit {resumed}, last line {last[0]!r}",
    )


def driver_group_sigkill(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """SIGKILL of the driver's whole process group (it and the local Ray it started); rerun resumes."""
    trial, sweep, reference = ctx.start_trial("driver_group_sigkill")
    ray_tmp = short_tempdir("cg")
    env = {**ctx.env, "RAY_TMPDIR": str(ray_tmp)}
    try:
        driver = ctx.driver(ctx.run_args(sweep, address=False), log=trial / "driver.log", env=env, new_session=True)
        moment = fault_moment(rng, sweep, driver, startup_share=0.2)
        fault_at = time.monotonic()
        alive = driver.running()
        driver.signal(signal.SIGKILL, group=True)
        driver.wait()
        left = wait_gone(driver.pid)
        resumed = ctx.driver(ctx.run_args(sweep, address=False), log=trial / "resume.log", env=env).wait()
        recover = time.monotonic() - fault_at
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    ok = alive and left == 0 and resumed == 0
    return TrialResult.from_check(
        "driver_group_sigkill", check_store(sweep.store, reference), recover_s=recover, ok=ok,
        detail={"moment": moment, "processes_left": left, "resume_exit": resumed},
        why_not=f"alive at kill {alive}, processes left {left}, resume exit {resumed}",
    )


def disk_full(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """The store's filesystem fills up mid-sweep: exit 4 with one line; after it grows, rerun resumes."""
    shape = {"n_train": 20_000, "n_test": 20_000, "blocks": 20, "block": 4, "sleep": 0.05}
    trial, sweep, reference = ctx.start_trial("disk_full", store=Path("fs/sweep.zarr"), **shape)
    mount = trial / "fs"
    empty = write_sweep(trial / "empty", "empty", **shape)
    from orchestrator.api import init_sweep, load_spec

    init_sweep(load_spec(empty.spec_path))
    base, data = _disk_usage(empty.store), _disk_usage(reference) - _disk_usage(empty.store)
    size = base + int(rng.uniform(0.15, 0.8) * data)
    mount_tmpfs(mount, size)
    try:
        driver = ctx.driver(ctx.run_args(sweep), log=trial / "driver.log")
        code = driver.wait()
        fault_at = time.monotonic()
        lines = driver.stderr_lines()
        one_line = len(lines) == 1 and f"no space left on device at {sweep.store}" in lines[0]
        _remount(mount, f"size={base + 2 * data}")
        resumed = ctx.resume(sweep, trial / "resume.log")
        recover = time.monotonic() - fault_at
        events = read_events(sweep.store)
        retried = [e for e in events if e["event"] in ("block_retried", "block_failed")]
        check = check_store(sweep.store, reference)
    finally:
        _umount(mount)
    ok = code == 4 and one_line and resumed == 0 and not retried
    return TrialResult.from_check(
        "disk_full", check, recover_s=recover, ok=ok,
        detail={"fs_bytes": size, "exit": code, "stderr": lines[-1:], "attempts_retried": len(retried)},
        why_not=f"exit {code}, stderr {lines}, resume exit {resumed}, retried {len(retried)}",
    )


def _dead_head_address_file(ray_tmp: Path, log: Path) -> str:
    """Start a real Ray head with ``ray start`` and SIGKILL it: its address file stays behind, naming a dead GCS."""
    port = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    with log.open("wb") as out:
        head = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={port}", f"--temp-dir={ray_tmp / 'ray'}", "--num-cpus=1",
             "--include-dashboard=false"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
        address_file = ray_tmp / "ray" / "ray_current_cluster"
        try:
            poll(lambda: address_file.exists() or head.poll() is not None, timeout=120, what="the head's address file")
        finally:
            os.killpg(head.pid, signal.SIGKILL)  # no cleanup: the file stays
            head.wait()
    wait_gone(head.pid)
    return address_file.read_text().strip()


def stale_ray_address(ctx: ChaosContext, rng: random.Random, *, real_head: bool = True) -> TrialResult:
    """A head died without cleanup, its address file left behind: `run` without --address still runs locally.

    ``real_head``: leave the file the way it happens (a ``ray start`` head
    SIGKILLed); else write it, naming a port nobody listens on (what the test
    suite does, a ``ray start`` cheaper).
    """
    from ray._private.services import get_ray_address_from_environment

    trial, sweep, reference = ctx.start_trial("stale_ray_address", sleep=0.0)
    ray_tmp = short_tempdir("cs")
    try:
        if real_head:
            dead = _dead_head_address_file(ray_tmp, trial / "dead-head.log")
        else:
            dead = f"127.0.0.1:{free_port()}"
            (ray_tmp / "ray").mkdir()
            (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        # What plain ray.init() would join (it would retry this dead address for good).
        plain_init_joins = get_ray_address_from_environment(None, str(ray_tmp / "ray"))
        fault_at = time.monotonic()
        code = ctx.driver(ctx.run_args(sweep, address=False), log=trial / "driver.log",
                          env={**ctx.env, "RAY_TMPDIR": str(ray_tmp)}).wait(timeout=300)
        recover = time.monotonic() - fault_at
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    ok = code == 0 and plain_init_joins == dead
    return TrialResult.from_check(
        "stale_ray_address", check_store(sweep.store, reference), recover_s=recover, ok=ok,
        detail={"dead_address": dead, "plain_ray_init_joins": plain_init_joins, "exit": code},
        why_not=f"exit {code}; plain ray.init would join {plain_init_joins!r}, the file names {dead!r}",
    )


def corrupt_chunk(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """A completed block's chunk damaged on disk: verify names it, --repair sends it back, rerun redoes it."""
    trial, sweep, reference = ctx.start_trial("corrupt_chunk", sleep=0.0)
    from orchestrator.api import load_spec, run_sweep

    first = run_sweep(load_spec(sweep.spec_path), progress=False).done  # on the joined Ray, in this process
    block = rng.randrange(sweep.num_blocks)
    array = rng.choice(["masks", "margins/test"])
    chunk = sweep.store / array / "c" / str(block) / "0"
    how = rng.choice(["flip bytes", "truncate", "delete"])
    fault_at = time.monotonic()
    if how == "delete":
        chunk.unlink()
    else:
        data = bytearray(chunk.read_bytes())
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        chunk.write_bytes(bytes(data))
    verify = subprocess.run([sys.executable, "-m", "orchestrator", "verify", str(sweep.store), "--repair", "--json"],
                            capture_output=True, text=True, env=ctx.env, cwd=str(REPO))
    try:
        report = json.loads(verify.stdout)
    except ValueError:
        report = {}
    named = [p["block"] for p in report.get("problems", [])]
    resumed = ctx.resume(sweep, trial / "resume.log")
    recover = time.monotonic() - fault_at
    ok = first and verify.returncode == 0 and named == [block] and report.get("repaired") is True and resumed == 0
    return TrialResult.from_check(
        "corrupt_chunk", check_store(sweep.store, reference, repaired=[block]), recover_s=recover, ok=ok,
        detail={"block": block, "array": array, "damage": how},
        why_not=f"verify --repair exit {verify.returncode} named {named} (damaged {block}), "
                f"resume exit {resumed}: {verify.stderr[-500:]}",
    )


def clock_jump(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """The driver's wall clock steps by minutes to hours under its lease, and a second driver then tries the store.

    Forward, the holder's heartbeats lie in the future and the second driver
    is refused. Backward by more than the TTL, they look stale and the second
    driver takes the lease over: the first must notice and stop, and the store
    must still end as an uninterrupted run's.
    """
    from storage.lease import read_lease

    # Blocks long enough (40 x 1 s over 2 actors) that the first driver is still running when the
    # second one has started: with 0.2 s blocks it often finished first, and a forward jump then
    # ended (0, 0), the second finding nothing to do, without the lease ever being tested.
    trial, sweep, reference = ctx.start_trial("clock_jump", blocks=40, sleep=1.0)
    offset = trial / "clock-offset"
    offset.write_text("0")
    ttl = 4.0
    first = ctx.driver(ctx.run_args(sweep, "--lease-ttl", str(ttl)), log=trial / "first.log",
                       prefix=[sys.executable, str(REPO / "bench" / "jumping_clock.py"), str(offset)])
    target = rng.randint(2, sweep.num_blocks // 2)
    poll(lambda: completed_blocks(sweep.store) >= target or not first.running(), timeout=300,
         what=f"{target} completed blocks")
    jump = rng.choice([-1, 1]) * rng.uniform(3 * ttl, 7200)
    offset.write_text(f"{jump:.3f}")
    fault_at = time.monotonic()

    def stepped_heartbeat() -> bool:  # the holder has renewed its lease at its new time
        info = read_lease(sweep.store)
        return info is not None and abs(info.heartbeat - (time.time() + jump)) < ttl

    poll(lambda: stepped_heartbeat() or not first.running(), timeout=60, what="a heartbeat at the stepped time")
    second = ctx.driver(ctx.run_args(sweep, "--lease-ttl", str(ttl)), log=trial / "second.log")
    codes = (first.wait(), second.wait())
    resumed = None if completed_blocks(sweep.store) == sweep.num_blocks else ctx.resume(sweep, trial / "resume.log")
    recover = time.monotonic() - fault_at
    expected = {(0, 2)} if jump > 0 else {(1, 0), (0, 0)}  # forward: refused; backward: taken over
    ok = codes in expected and resumed in (None, 0)
    return TrialResult.from_check(
        "clock_jump", check_store(sweep.store, reference), recover_s=recover, ok=ok,
        detail={"jump_s": round(jump, 1), "exits": list(codes), "resume_exit": resumed},
        why_not=f"jump {jump:+.0f}s: exits {codes}, expected one of {sorted(expected)}; "
                f"first: {first.stderr_lines()[-1:]}, second: {second.stderr_lines()[-1:]}",
    )


def two_drivers(ctx: ChaosContext, rng: random.Random) -> TrialResult:
    """Two drivers started at the same moment on one store (new or existing): one runs it, the other is refused.

    A new store is created by both at once: the one that loses that race uses
    the winner's. Started together, they can still miss each other on a loaded
    machine (one finished before the other read the lease): both then exit 0,
    and the trial records that they did not overlap.
    """
    trial, sweep, reference = ctx.start_trial("two_drivers", sleep=0.4)
    if rng.random() < 0.5:
        ctx.driver(["init", str(sweep.spec_path)], log=trial / "init.log").wait()  # the store exists already
    fault_at = time.monotonic()
    drivers = [ctx.driver(ctx.run_args(sweep), log=trial / f"driver-{i}.log") for i in range(2)]
    codes = sorted(d.wait() for d in drivers)
    resumed = None if completed_blocks(sweep.store) == sweep.num_blocks else ctx.resume(sweep, trial / "resume.log")
    recover = time.monotonic() - fault_at
    # A refused driver writes no events; two that both ran overlapped if the second started before the first ended.
    runs = [e["event"] for e in read_events(sweep.store) if e["event"] in ("run_started", "run_finished")]
    overlapped = codes != [0, 0] or runs[:2] == ["run_started", "run_started"]
    ok = resumed is None and (codes == [0, 2] or (codes == [0, 0] and not overlapped))
    return TrialResult.from_check(
        "two_drivers", check_store(sweep.store, reference), recover_s=recover, ok=ok,
        detail={"exits": codes, "overlapped": overlapped, "store_existed": (trial / "init.log").exists()},
        why_not=f"exits {codes} (want one 0, one 2), resume {resumed}: {[d.stderr_lines()[-1:] for d in drivers]}",
    )


#: Every case by name; ``raylet_sigkill`` runs in its own process (bench/chaos_cluster.py).
CASES: dict[str, Callable[[ChaosContext, random.Random], TrialResult]] = {
    "worker_sigkill": worker_sigkill,
    "driver_sigterm": driver_sigterm,
    "driver_group_sigkill": driver_group_sigkill,
    "disk_full": disk_full,
    "stale_ray_address": stale_ray_address,
    "corrupt_chunk": corrupt_chunk,
    "clock_jump": clock_jump,
    "two_drivers": two_drivers,
}
#: The cases the test suite runs once each: those that join the session's Ray (the
#: stale address written, not left by a real head); starting fresh Rays twice
#: per trial (driver_group_sigkill) is left to the benchmark.
FAST_CASES: dict[str, Callable[[ChaosContext, random.Random], TrialResult]] = {
    **{name: CASES[name] for name in ("worker_sigkill", "driver_sigterm", "disk_full", "corrupt_chunk",
                                      "clock_jump", "two_drivers")},
    "stale_ray_address": functools.partial(stale_ray_address, real_head=False),
}
