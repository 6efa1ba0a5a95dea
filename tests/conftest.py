"""Fixtures shared by the whole suite.

One real local Ray per test session (``num_cpus=2``), started on first use and
always shut down. Tests that need a multi-node ``ray.cluster_utils.Cluster``
run it in a subprocess so that it never meets the session's Ray.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """A real local Ray with 2 CPUs for the whole session.

    Test-only recipes live under tests/; Ray's local workers inherit the
    driver's environment, so PYTHONPATH makes them importable there too.
    """
    import ray

    paths = [str(TESTS_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime, to prove nothing was written."""
    snapshot: dict[str, tuple[int, int]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            snapshot[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
        else:
            snapshot[str(path.relative_to(root)) + "/"] = (0, 0)
    return snapshot
