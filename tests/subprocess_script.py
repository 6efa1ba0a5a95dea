"""Run a test's Python script in a fresh interpreter and read back its ``RESULT <json>`` line.

For scenarios that must not meet the session's Ray (a ``ray.cluster_utils.Cluster``):
the script runs with the tests folder on its path and Ray's token auth off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["run_result_script", "report", "local_cluster"]

TESTS_DIR = Path(__file__).resolve().parent


def run_result_script(source: str, tmp_path: Path, *, timeout: float = 300) -> dict[str, Any]:
    """Write ``source`` under ``tmp_path``, run it with ``tmp_path`` as its argument, return its last RESULT."""
    script = tmp_path / "scenario.py"
    script.write_text(source)
    path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def report(result: dict[str, Any]) -> None:
    """What a scenario script prints last, for :func:`run_result_script`."""
    print("RESULT " + json.dumps(result), flush=True)


@contextmanager
def local_cluster(**head_args: Any) -> Iterator[object]:
    """Inside a scenario script: a ``ray.cluster_utils.Cluster`` head joined by this process, always shut down."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head_args})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
