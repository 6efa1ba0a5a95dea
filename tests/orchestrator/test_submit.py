"""`dmsweep submit` against a real `ray start --head` on 127.0.0.1 with token auth on.

The head is this module's own: its own temp dir, its own ports, its own token
file, started with ``--block`` and stopped by terminating that process group
(never ``ray stop``, which would kill every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from waiting import wait_until

from storage.sweep_store import SweepStore

BIN = Path(sys.executable).parent
DMSWEEP = str(BIN / "dmsweep")


@dataclass(frozen=True)
class Head:
    dashboard: str
    metrics_port: int
    token_file: Path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def dashboard_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401 without a token: it is up, and enforcing auth
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    root = Path(tempfile.mkdtemp(prefix="dmsw-head-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    token_file = root / "token"
    token_file.write_text(secrets.token_hex(32))
    (gcs, dash, client, manager, objects, metrics, agent, agent_grpc, runtime_env) = free_ports(9)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2",
        "--port", str(gcs), "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
        "--node-manager-port", str(manager), "--object-manager-port", str(objects),
        "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
        "--temp-dir", str(root / "ray"), "--disable-usage-stats",
    ]
    log = (root / "head.log").open("w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_until(lambda: dashboard_answers(url) or head.poll() is not None, timeout=90,
                   what="the ray head's dashboard", interval=0.5)
        if head.poll() is not None:
            pytest.fail("ray head did not come up:\n" + (root / "head.log").read_text()[-3000:])
        yield Head(dashboard=url, metrics_port=metrics, token_file=token_file)
    finally:
        head.terminate()  # --block: the head stops its own processes on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of this group outlived it
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def client_env(head: Head, **changes: str | None) -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(head.token_file)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def submit(head: Head, *command: str, env: dict[str, str], follow: bool = True) -> subprocess.CompletedProcess[str]:
    args = [DMSWEEP, "submit", "--address", head.dashboard, *(["--follow"] if follow else []), "--", *command]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow
def test_submit_a_sweep_then_a_fit_and_follow_each(ray_head: Head, tmp_path: Path) -> None:
    store = tmp_path / "sweep.zarr"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "store": str(store), "alpha": 0.5, "num_models": 48, "block": 8, "seed": 1, "timeout_s": 60,
        "recipe": {"name": "noop", "params": {"n_train": 30, "n_test": 6, "n_classes": 10, "sleep": 0.0}},
    }))
    env = client_env(ray_head)

    sweep = submit(ray_head, "run", str(spec), env=env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    job_id = sweep.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "6/6 blocks complete" in sweep.stderr  # the job's own output, followed
    assert f"job {job_id} SUCCEEDED" in sweep.stderr
    assert SweepStore.open(store).completed_rows().size == 48

    # The driver's custom metrics reach the node's Prometheus endpoint.
    def metrics() -> str:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ray_head.metrics_port}/metrics", timeout=5).read().decode()
        return text if "ray_dmsweep_models_completed" in text else ""

    text = wait_until(metrics, timeout=30, what="the driver's metrics on the node's endpoint", interval=1.0)
    assert "ray_dmsweep_models_completed" in text and 'store="sweep.zarr"' in text

    fit = submit(ray_head, "fit", str(store), "--name", "dm", "--k", "3", "--max-epochs", "2",
                 "--no-progress", "--json", env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    fit_id = fit.stdout.strip().splitlines()[0]
    assert fit_id.startswith("raysubmit_") and fit_id != job_id  # a separate job
    assert (store / "datamodels" / "dm").is_dir()

    # A command the job refuses (no such store) comes back as the job's exit status.
    failing = submit(ray_head, "status", str(tmp_path / "no-such-store"), env=env)
    assert failing.returncode == 2, failing.stderr[-2000:]
    assert "FAILED" in failing.stderr


def test_wrong_or_missing_token_is_a_clear_error(ray_head: Head, tmp_path: Path) -> None:
    wrong = submit(ray_head, "status", "/nowhere", follow=False,
                   env=client_env(ray_head, RAY_AUTH_TOKEN="0" * 64))
    assert wrong.returncode == 2
    assert "rejected the authentication token from RAY_AUTH_TOKEN" in wrong.stderr
    assert "invalid or incorrect" in wrong.stderr

    missing = submit(ray_head, "status", "/nowhere", follow=False,
                     env=client_env(ray_head, RAY_AUTH_TOKEN_PATH=None, HOME=str(tmp_path)))
    assert missing.returncode == 2
    assert "requires an authentication token and none was found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_submit_refuses_bad_commands_before_contacting_anyone(tmp_path: Path) -> None:
    spec = tmp_path / "rel.yaml"
    spec.write_text(yaml.safe_dump({
        "store": "relative/sweep.zarr", "alpha": 0.5, "num_models": 8, "block": 8,
        "recipe": {"name": "noop", "params": {"n_train": 10, "n_test": 2, "n_classes": 10}},
    }))
    address = "http://127.0.0.1:9"  # nothing listens: these must fail before connecting
    for command, reason in ((["run", str(spec)], "relative path"), (["submit", "x"], "cannot submit itself"), ([], "after '--'")):
        proc = subprocess.run([DMSWEEP, "submit", "--address", address, "--", *command],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (command, proc.stderr)
        assert reason in proc.stderr, (command, proc.stderr)
