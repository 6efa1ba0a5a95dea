"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd started on this machine.

Everything lives in one temporary directory: a generated munge key, the
daemons' sockets, pid files, logs and state, a ``slurm.conf`` for this host
(its CPUs and memory as ``slurmd -C`` reports them) with one GPU that exists
only for Slurm's accounting (its device file is /dev/null, so that the
launcher's GPU arithmetic runs as it does on a GPU node), and free ports.
Nothing under /etc is touched; client commands find the cluster through
``SLURM_CONF``. Needs root (slurmd launches jobs) and Debian's ``slurm-wlm``
and ``munge`` packages, which ``.ci/run`` installs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chaos_support import free_port, poll

__all__ = ["SlurmCluster", "missing_slurm"]

_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo", "srun")


def missing_slurm() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    missing = [c for c in _COMMANDS if shutil.which(c) is None]
    if missing:
        return (f"Debian's slurm-wlm and munge are not installed (no {', '.join(missing)}); "
                ".ci/run installs them with `apt-get install slurm-wlm munge` as root")
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


@dataclass
class SlurmCluster:
    """The running cluster; :meth:`start` it, :meth:`stop` it."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        """What client commands (sbatch, scontrol...) need to find this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def run(self, *command: str) -> str:
        return subprocess.run(command, check=True, capture_output=True, text=True, env=self.env, timeout=60).stdout

    def _conf(self, node_line: str, ports: tuple[int, int]) -> str:
        root = self.root
        return "\n".join([
            "ClusterName=dmsweeptest",
            f"SlurmctldHost={os.uname().nodename.split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire is also how long a requeued job waits before it starts again (default 120 s).
            f"AuthInfo=socket={root}/munge/munge.socket,cred_expire=5",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/log/slurmctld.log",
            f"SlurmdLogFile={root}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=1",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2",
            "GresTypes=gpu",
            f"{node_line} NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN",
            f"PartitionName=debug Nodes={node_line.split()[0].split('=')[1]} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def start(self) -> SlurmCluster:
        root = self.root
        for sub in ("munge", "state", "spool", "log", "dev"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={root}/munge/munge.socket",
                        f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
                        f"--seed-file={root}/munge/munged.seed"], check=True, capture_output=True, timeout=60)
        (root / "dev" / "gpu0").symlink_to("/dev/null")
        (root / "gres.conf").write_text(f"Name=gpu File={root}/dev/gpu0\n")
        node = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout.splitlines()[0]
        (root / "slurm.conf").write_text(self._conf(node, (free_port(), free_port())))
        conf = str(root / "slurm.conf")
        subprocess.run(["slurmctld", "-f", conf], check=True, capture_output=True, env=self.env, timeout=60)
        subprocess.run(["slurmd", "-f", conf], check=True, capture_output=True, env=self.env, timeout=60)
        poll(lambda: self.run("sinfo", "-h", "-o", "%t").strip() == "idle", timeout=60, what="the node to be idle",
             interval=0.2)
        return self

    def job_field(self, job_id: str, field: str) -> str:
        """One field of ``scontrol show job`` (JobState, Restarts, ExitCode...)."""
        for word in self.run("scontrol", "show", "job", job_id).split():
            if word.startswith(field + "="):
                return word.split("=", 1)[1]
        return ""

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((self.root / "log").glob("*")))

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, env=self.env, timeout=60)
        try:
            poll(lambda: not self.run("squeue", "-h").strip(), timeout=60, what="the jobs to end", interval=0.2)
        except (TimeoutError, subprocess.SubprocessError):
            pass  # the daemons go anyway
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            try:
                pid = int((self.root / pid_file).read_text())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                poll(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=30, what=f"{pid_file} to exit")
            except (ProcessLookupError, TimeoutError):
                pass
