"""Submit any dmsweep command to a running Ray cluster as a Ray job, and follow it.

``dmsweep submit --address http://HEAD:8265 -- run sweep.yaml`` sends the sweep's
driver to the cluster through the Jobs API; ``-- fit STORE --name NAME`` sends a
regression as its own, separate job. The job runs ``python -m orchestrator
COMMAND...`` on the head node, with this repository shipped as the job's
``working_dir`` (or, with ``working_dir=None``, the package installed on the
cluster). Clusters with Ray's token authentication are supported: the token is
read as Ray reads it (``RAY_AUTH_TOKEN``, then the file named by
``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.location import is_uri
from storage.errors import DmsweepError, InputError

__all__ = [
    "AuthToken",
    "SubmittedJob",
    "JobOutcome",
    "find_auth_token",
    "default_working_dir",
    "build_entrypoint",
    "submit_command",
    "follow_job",
    "WORKING_DIR_EXCLUDES",
]

#: What never ships in a job's working_dir: environments, history, stores, caches.
WORKING_DIR_EXCLUDES = [
    ".venv/", "venv/", ".git/", "**/__pycache__/", ".pytest_cache/", "runs/", "*.zarr/", "*.zarr", "data/",
]

#: Job states after which nothing changes.
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class AuthToken:
    """A Ray authentication token and where it was found (for messages; never the token itself)."""

    value: str
    source: str


@dataclass(frozen=True)
class SubmittedJob:
    """A job submitted to the cluster."""

    address: str
    job_id: str
    entrypoint: str
    working_dir: str | None


@dataclass(frozen=True)
class JobOutcome:
    """How a followed job ended; ``exit_code`` is what ``dmsweep submit --follow`` exits with."""

    job_id: str
    status: str
    exit_code: int
    message: str


def find_auth_token(environ: dict[str, str] | None = None, home: Path | None = None) -> AuthToken | None:
    """The Ray auth token, looked up where Ray looks; ``None`` if there is none.

    Order: ``RAY_AUTH_TOKEN``; the file named by ``RAY_AUTH_TOKEN_PATH``;
    ``~/.ray/auth_token``. ``RAY_AUTH_MODE=disabled`` turns the lookup off.
    """
    env = dict(os.environ if environ is None else environ)
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return AuthToken(env["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            return AuthToken(path.read_text().strip(), f"RAY_AUTH_TOKEN_PATH ({path})")
        except OSError as exc:
            raise InputError(f"RAY_AUTH_TOKEN_PATH names {str(path)!r}, which cannot be read: {exc.strerror}") from None
    default = (home or Path.home()) / ".ray" / "auth_token"
    if default.is_file():
        return AuthToken(default.read_text().strip(), str(default))
    return None


def default_working_dir() -> Path | None:
    """The checkout this dmsweep runs from (it holds ``pyproject.toml``), or None if installed."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "dmsweep"' in pyproject.read_text():
        return root
    return None


def build_entrypoint(command: Sequence[str]) -> str:
    """The job's shell command for a dmsweep command line (``['run', 'sweep.yaml']``)."""
    if not command:
        raise InputError("give the dmsweep command to submit after '--', e.g. `dmsweep submit --address URL -- run sweep.yaml`")
    if command[0] == "submit":
        raise InputError("`submit` cannot submit itself; give the command the job should run (run, fit, ...)")
    if command[0].startswith("-"):
        raise InputError(f"the submitted command must start with a dmsweep command name (run, fit, ...), got {command[0]!r}")
    return "python -m orchestrator " + " ".join(shlex.quote(arg) for arg in command)


def _check_sweep_store_is_absolute(command: Sequence[str]) -> None:
    """For ``run SPEC`` with a spec readable here: refuse a relative store path before submitting.

    The job refuses it too, on the cluster; failing here saves a round trip.
    """
    if len(command) < 2 or command[0] != "run" or not Path(command[1]).is_file():
        return
    from orchestrator.spec import load_spec

    spec = load_spec(command[1], check_recipe=False)
    if not is_uri(spec.store) and not Path(spec.store).expanduser().is_absolute():
        raise InputError(
            f"store {spec.store!r} in {command[1]} is a relative path; a job on a cluster needs an absolute path "
            "on a filesystem every node mounts, or an s3:// URI"
        )


def _client(address: str, token: AuthToken | None):  # -> JobSubmissionClient
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        raise _auth_error(address, token, exc) from None
    except ConnectionError as exc:
        raise DmsweepError(f"cannot reach the Ray dashboard at {address}: {exc}") from None


def _auth_error(address: str, token: AuthToken | None, exc: Exception) -> InputError:
    text = str(exc)
    if token is None or "Authentication required" in text:
        return InputError(
            f"the Ray cluster at {address} requires an authentication token and none was found: set RAY_AUTH_TOKEN, "
            "or RAY_AUTH_TOKEN_PATH to a file holding it, or write it to ~/.ray/auth_token "
            "(`ray get-auth-token` on the head prints it)"
        )
    return InputError(
        f"the Ray cluster at {address} rejected the authentication token from {token.source} "
        "(invalid or incorrect); use the token of that cluster (`ray get-auth-token` on its head)"
    )


#: How long a submission waits for a just-started head's job agent.
AGENT_WAIT_S = 60.0


def submit_command(
    address: str,
    command: Sequence[str],
    *,
    working_dir: Path | None,
    submission_id: str | None = None,
    env_vars: dict[str, str] | None = None,
    token: AuthToken | None = None,
) -> SubmittedJob:
    """Submit ``dmsweep COMMAND...`` as a Ray job.

    Parameters
    ----------
    address : the dashboard's HTTP address (``http://HEAD:8265``).
    command : the dmsweep command line to run, without ``dmsweep``.
    working_dir : a directory shipped to the cluster as the job's working_dir
        (``None``: use the dmsweep installed on the cluster).
    submission_id : the job id to use (default: Ray picks one).
    env_vars : extra environment of the job (and of its workers).
    token : the auth token (default: :func:`find_auth_token`).

    Raises
    ------
    InputError : bad command, missing or rejected token.
    DmsweepError : the cluster cannot be reached or refused the job.
    """
    from ray.exceptions import AuthenticationError

    entrypoint = build_entrypoint(command)
    _check_sweep_store_is_absolute(command)
    if working_dir is not None and not Path(working_dir).is_dir():
        raise InputError(f"--working-dir {str(working_dir)!r} is not a directory")
    token = token if token is not None else find_auth_token()
    client = _client(address, token)
    runtime_env: dict[str, object] = {}
    if working_dir is not None:
        runtime_env["working_dir"] = str(working_dir)
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    # A head that has just started answers 500 "No available agent" until its job
    # agent registers (seconds); that is worth waiting for, any other refusal is not.
    deadline = time.monotonic() + AGENT_WAIT_S
    delay = 0.5
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None, submission_id=submission_id)
            break
        except AuthenticationError as exc:
            raise _auth_error(address, token, exc) from None
        except RuntimeError as exc:  # the job server answered with an error status
            if "No available agent" in str(exc) and time.monotonic() + delay < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            raise DmsweepError(f"the Ray cluster at {address} refused the job: {exc}") from None
    return SubmittedJob(address=address, job_id=job_id, entrypoint=entrypoint,
                        working_dir=str(working_dir) if working_dir is not None else None)


def follow_job(
    address: str, job_id: str, *, write: Callable[[str], object], token: AuthToken | None = None
) -> JobOutcome:
    """Stream a job's logs through ``write`` until it ends; return how it ended.

    The exit code is the job driver's own when Ray reports it (so a submitted
    command that exits 2 on bad input makes ``submit --follow`` exit 2), else
    0 for SUCCEEDED and 1 otherwise.
    """
    from ray.exceptions import AuthenticationError

    token = token if token is not None else find_auth_token()
    client = _client(address, token)
    # Ray's SDK logs every websocket open/close at INFO; the job's own lines are what the user follows.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    try:
        asyncio.run(tail())
    except AuthenticationError as exc:
        raise _auth_error(address, token, exc) from None
    except RuntimeError as exc:
        # The log stream can close early (head restart); the job's state below is what counts.
        write(f"dmsweep: log stream ended: {exc}\n")
    info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    if status not in _TERMINAL:
        # The stream closed before the job ended: wait for the state to settle.
        status = _wait_terminal(client, job_id)
        info = client.get_job_info(job_id)
    code = info.driver_exit_code
    if status == "SUCCEEDED":
        exit_code = 0
    elif code is not None and code != 0:
        exit_code = int(code)
    else:
        exit_code = 1
    return JobOutcome(job_id=job_id, status=status, exit_code=exit_code, message=str(info.message or ""))


def _wait_terminal(client: object, job_id: str, *, poll_s: float = 2.0) -> str:
    """Poll a job's state until it is terminal (the Jobs API offers no push for state)."""
    import time

    while True:
        status = str(getattr(client.get_job_status(job_id), "value", ""))  # type: ignore[attr-defined]
        if status in _TERMINAL:
            return status
        time.sleep(poll_s)
