"""How a run starts and stops: an address no Ray answers at, SIGTERM and SIGINT, a store that refuses writes.

Real driver processes on the session's Ray (or their own local one), held at a
known block by the gated recipe; the faults are real: signals, a read-only
bind mount, permission bits enforced on a root process that lost the
capabilities that bypass them. After each, the store is resumed and compared
with an uninterrupted run (bench/chaos_support.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chaos_support import ChaosContext, DriverProcess, Sweep, check_store, completed_blocks, free_port, write_sweep
from chaos_trials import tmpfs_unavailable
from gated_recipe import held_blocks
from waiting import wait_until

from orchestrator.api import load_spec, run_sweep
from orchestrator.ray_runtime import check_reachable
from storage.errors import InputError
from storage.events import read_events
from storage.lease import read_lease
from storage.sweep_store import SweepStore

#: Blocks before the gate complete; the rest wait for the gate file.
GATE_FROM = 3
BLOCKS = 10


def gated_sweep(chaos: ChaosContext, name: str) -> tuple[Sweep, Path, Path]:
    """A gated noop sweep, the gate file (absent: closed), and an uninterrupted run's store of the same data."""
    trial = chaos.trial_dir(name)
    gate = trial / "gate"
    sweep = write_sweep(trial, "gated", blocks=BLOCKS, sleep=0.0, recipe="gated_recipe:GatedNoop",
                        extra_params={"gate_file": str(gate), "gate_from_block": GATE_FROM})
    return sweep, gate, chaos.reference(write_sweep(trial, "plain", blocks=BLOCKS, sleep=0.0))


def events(store: Path, kind: str) -> list[dict]:
    return [e for e in read_events(store) if e["event"] == kind]


def held_at_gate(sweep: Sweep, gate: Path, driver: DriverProcess, *, before: set[int] = frozenset()) -> set[int]:
    """Wait until the blocks before the gate are ledgered and both actors hold a gated block; return those."""

    def held() -> set[int]:
        new = held_blocks(gate) - before
        return new if len(new) >= 2 and completed_blocks(sweep.store) >= GATE_FROM else set()

    blocks = wait_until(lambda: held() or not driver.running(), timeout=180, what="two actors held at the gate")
    assert driver.running(), driver.stderr_lines()[-5:]
    return blocks


def stopping(sweep: Sweep, driver: DriverProcess, count: int = 1) -> dict:
    wait_until(lambda: len(events(sweep.store, "run_stopping")) >= count or not driver.running(), timeout=60,
               what="the driver to start stopping")
    return events(sweep.store, "run_stopping")[count - 1]


def test_an_address_no_ray_answers_at_is_one_line_exit_2_before_anything_is_written(chaos, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, "sweep")
    dead = f"127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(sweep.spec_path), "--address", dead],
                          capture_output=True, text=True, timeout=120, env=chaos.env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "no Ray cluster answers at" in lines[0] and "--address" in lines[0], lines
    assert not sweep.store.exists()  # bad input: nothing written

    # Something that answers, but not as a Ray GCS does: an HTTP server.
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(InputError) as raised:
            check_reachable(f"127.0.0.1:{server.server_address[1]}", timeout_s=1.0)
    finally:
        server.shutdown()
    assert raised.value.params == ("address",) and f"127.0.0.1:{server.server_address[1]}" in str(raised.value)


@pytest.mark.slow
def test_sigterm_ledgers_the_running_blocks_then_exits_3_and_a_second_sigint_interrupts_at_once(chaos) -> None:
    sweep, gate, reference = gated_sweep(chaos, "sigterm")
    driver = chaos.driver(chaos.run_args(sweep), log=sweep.store.parent / "first.log")
    first_held = held_at_gate(sweep, gate, driver)
    driver.signal(signal.SIGTERM)
    stop = stopping(sweep, driver)
    running = stop["running_blocks"]
    assert stop["reason"] == "SIGTERM" and set(running) == first_held
    gate.touch()  # the running blocks finish while the driver stops: their receipts are ledgered
    assert driver.wait(timeout=120) == 3
    lines = driver.stderr_lines()
    assert len(lines) == 1 and lines[0].startswith("dmsweep: stopped by SIGTERM") and "resume" in lines[0], lines
    assert read_lease(sweep.store) is None  # released, not left to go stale
    ledgered = SweepStore.open(sweep.store).ledger.completed_blocks().tolist()
    assert ledgered == sorted([*range(GATE_FROM), *running])
    # The blocks queued behind the running ones were cancelled: nothing else ran.
    assert {e["block"] for e in events(sweep.store, "block_completed")} == set(ledgered)

    # Again with the gate closed, stopped by Ctrl-C twice: the second one does not wait for the held blocks.
    gate.unlink()
    second = chaos.driver(chaos.run_args(sweep), log=sweep.store.parent / "second.log")
    held_at_gate(sweep, gate, second, before=first_held)
    second.signal(signal.SIGINT)
    assert stopping(sweep, second, count=2)["reason"] == "SIGINT"
    second.signal(signal.SIGINT)
    assert second.wait(timeout=60) == 130
    assert second.stderr_lines()[-1:] == ["dmsweep: interrupted"]
    assert read_lease(sweep.store) is None
    assert SweepStore.open(sweep.store).ledger.completed_blocks().tolist() == ledgered

    gate.touch()
    assert run_sweep(load_spec(sweep.spec_path), progress=False).done
    check = check_store(sweep.store, reference)
    assert check.survived, check.problems


def _bind_read_only(path: Path) -> None:
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True, capture_output=True)


@pytest.mark.slow
def test_a_read_only_store_stops_the_sweep_with_one_line_and_resumes_once_writable(chaos) -> None:
    if why := tmpfs_unavailable(chaos.workdir):
        pytest.skip(f"a read-only filesystem here is a read-only bind mount, and {why}")
    sweep, gate, reference = gated_sweep(chaos, "read_only")
    driver = chaos.driver(chaos.run_args(sweep), log=sweep.store.parent / "driver.log")
    held_at_gate(sweep, gate, driver)
    margins = sweep.store / "margins"
    _bind_read_only(margins)  # a real read-only filesystem under the blocks' margins
    try:
        gate.touch()
        assert driver.wait(timeout=120) == 4
    finally:
        subprocess.run(["umount", str(margins)], capture_output=True)
    lines = driver.stderr_lines()
    assert len(lines) == 1 and f"read-only file system at {sweep.store}" in lines[0], lines
    assert not events(sweep.store, "block_retried") and not events(sweep.store, "block_failed")
    assert run_sweep(load_spec(sweep.spec_path), progress=False).done
    check = check_store(sweep.store, reference)
    assert check.survived, check.problems


@pytest.mark.slow
def test_permission_denied_stops_the_sweep_with_one_line_and_resumes_once_fixed(chaos) -> None:
    """As root, permission bits bind only without CAP_DAC_OVERRIDE: the driver (and the local Ray it
    starts, whose workers write the blocks) runs with that and its two siblings dropped from its
    capability bounding set (``setpriv``), like any unprivileged user, while still able to read a
    checkout in root's home."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and util-linux's setpriv to drop the capabilities that bypass permission bits")
    sweep, gate, reference = gated_sweep(chaos, "permission")
    ray_tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    env = {**chaos.env, "RAY_TMPDIR": str(ray_tmp / f"tperm-{time.monotonic_ns()}")}
    driver = chaos.driver(chaos.run_args(sweep, address=False), log=sweep.store.parent / "driver.log", env=env,
                          prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--",
                                  sys.executable, "-m", "orchestrator"])
    try:
        held_at_gate(sweep, gate, driver)
        locked = [sweep.store / "margins" / "test", sweep.store / "margins" / "test" / "c"]
        for path in locked:
            path.chmod(0o555)  # no new block directories
        gate.touch()
        code = driver.wait(timeout=180)
        for path in locked:
            path.chmod(0o755)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    lines = driver.stderr_lines()
    assert code == 4, lines[-5:]
    assert len(lines) == 1 and f"permission denied at {sweep.store}" in lines[0], lines
    assert run_sweep(load_spec(sweep.spec_path), progress=False).done
    check = check_store(sweep.store, reference)
    assert check.survived, check.problems
