"""Fixtures of the orchestrator tests: the chaos harness (bench/chaos_support.py) on the session's Ray."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))  # the chaos cases run here once each, many times in bench/chaos.py

from chaos_support import ChaosContext, short_tempdir  # noqa: E402


@pytest.fixture(scope="session")
def chaos(ray_session) -> Iterator[ChaosContext]:
    """Drivers that join the session's Ray, the tests' recipes importable, reference stores made once."""
    # A short path: the local Rays some cases start put their sockets under it.
    workdir = short_tempdir("tchaos")
    try:
        yield ChaosContext(workdir, address=ray_session.get_runtime_context().gcs_address, pythonpath=[str(TESTS)])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
