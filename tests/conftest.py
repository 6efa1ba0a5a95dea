"""Fixtures shared by the whole suite.

One real local Ray per test session (``num_cpus=2``), started on first use and
always shut down. Tests that need a multi-node ``ray.cluster_utils.Cluster``
run it in a subprocess so that it never meets the session's Ray.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
BENCH_DIR = TESTS_DIR.parent / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))  # the chaos harness: its fast cases run here, all of them in bench/chaos.py


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


@pytest.fixture(scope="session")
def chaos(ray_session) -> Iterator[object]:
    """The chaos harness (bench/chaos_support.py) on the session's Ray: driver processes that join it,
    the tests' recipes importable, reference stores of uninterrupted runs made once."""
    from chaos_support import ChaosContext, short_tempdir

    # A short path: the local Rays some cases start put their sockets under it.
    workdir = short_tempdir("tchaos")
    try:
        yield ChaosContext(workdir, address=ray_session.get_runtime_context().gcs_address, pythonpath=[str(TESTS_DIR)])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
