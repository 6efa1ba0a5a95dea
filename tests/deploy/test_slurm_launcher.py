"""deploy/slurm/ray-sbatch.sh on a real SLURM cluster (munged, slurmctld, slurmd on this machine), requeued twice.

The launcher is submitted with ``sbatch`` as a lab would. Its sweep (the
gated recipe holds blocks from GATE_FROM on) is interrupted twice at a known
point: first the way a time limit does it (USR1 to the batch shell, which
stops the driver while Ray is up and runs ``scontrol requeue`` itself), then
the way preemption does (``scontrol requeue``: SIGTERM to every process of the
job). Each start appends to the same log and resumes the sweep, which ends
with every row once and the store equal to an uninterrupted run's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_support import check_store, completed_blocks, free_port, read_events, short_tempdir, write_sweep
from gated_recipe import held_blocks
from slurm_cluster import SlurmCluster, missing_slurm
from waiting import wait_until

from storage.lease import read_lease

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "deploy" / "slurm" / "ray-sbatch.sh"
GATE_FROM = 2
BLOCKS = 8


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    if why := missing_slurm():
        pytest.skip(why)
    root = short_tempdir("slurm")
    cluster = SlurmCluster(root)
    try:
        yield cluster.start()
    except Exception:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def work() -> Iterator[Path]:
    """The job's directory: its spec, store, log and Ray temp dir (short: Ray's socket paths live under it)."""
    path = short_tempdir("sbatch")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def events(store: Path, kind: str) -> list[dict]:
    return [e for e in read_events(store) if e["event"] == kind] if store.exists() else []


@pytest.mark.slow
def test_requeued_launcher_resumes_the_sweep_and_completes_every_row_once(
    slurm: SlurmCluster, chaos, work: Path
) -> None:
    gate = work / "gate"
    sweep = write_sweep(work, "gated", blocks=BLOCKS, sleep=0.0, recipe="gated_recipe:GatedNoop",
                        extra_params={"gate_file": str(gate), "gate_from_block": GATE_FROM})
    reference = chaos.reference(write_sweep(work, "plain", blocks=BLOCKS, sleep=0.0))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **slurm.env,
        "PYTHONPATH": chaos.env["PYTHONPATH"],  # dmsweep and the tests' gated recipe
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "HOME": str(work),  # the job's ~/.ray/auth_token
        "RAY_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port()), "RAY_METRICS_PORT": str(free_port()),
        "RAY_TMPDIR_ROOT": str(work / "ray"),
        "DMSWEEP_DRAIN_S": "5",  # the held blocks never finish while the gate is closed: stop waiting soon
    }
    cpus = slurm.run("sinfo", "-h", "-o", "%c").strip()
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={cpus}", "--gpus-per-task=1", str(LAUNCHER),
         str(sweep.spec_path)], capture_output=True, text=True, env=env, cwd=str(work), timeout=60, check=True)
    job = submitted.stdout.strip().split(";")[0]
    log = work / f"dmsweep-{job}.out"

    def job_log() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    def wait_for(predicate, what: str, timeout: float = 240) -> None:
        try:
            wait_until(lambda: predicate() or slurm.job_field(job, "JobState") in ("FAILED", "CANCELLED", "TIMEOUT"),
                       timeout=timeout, what=what)
        except AssertionError:
            raise AssertionError(f"{what}: job log:\n{job_log()[-4000:]}\n{slurm.logs()}") from None
        assert predicate(), f"{what}: the job ended: {job_log()[-4000:]}"

    # Start 1, held at the gate: the time limit approaches (USR1 to the batch shell).
    wait_for(lambda: completed_blocks(sweep.store) == GATE_FROM and len(held_blocks(gate)) == 2, "start 1 at the gate")
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    wait_for(lambda: events(sweep.store, "run_stopping"), "start 1 to stop")
    gate.touch()  # the two running blocks finish while the driver stops, and are ledgered
    wait_for(lambda: events(sweep.store, "run_stopped"), "start 1's driver to end")
    stopped = completed_blocks(sweep.store)
    gate.unlink()  # start 2 is held at the gate again
    assert stopped == GATE_FROM + 2
    wait_for(lambda: "requeueing job" in job_log(), "the launcher to requeue itself")

    # Start 2, held at the gate: preempted (scontrol requeue signals every process of the job).
    wait_for(lambda: len(held_blocks(gate)) == 4, "start 2 at the gate")  # the next two blocks
    assert slurm.job_field(job, "Restarts") == "1"
    slurm.run("scontrol", "requeue", job)
    wait_for(lambda: slurm.job_field(job, "Restarts") == "2", "the job to be requeued")
    gate.touch()

    # Start 3 finishes the sweep.
    wait_for(lambda: slurm.job_field(job, "JobState") == "COMPLETED", "the job to complete", timeout=300)
    assert slurm.job_field(job, "ExitCode") == "0:0", job_log()
    text = job_log()
    for start in (1, 2, 3):
        assert f"ray-sbatch.sh: job {job}, start {start}," in text, text  # one log, appended
    assert "dmsweep run exited 3" in text  # the time-limit stop, resumable
    assert read_lease(sweep.store) is None
    check = check_store(sweep.store, reference)
    assert check.survived, (check.problems, text[-3000:])
