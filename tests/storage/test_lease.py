from __future__ import annotations

import json
import time

import pytest

from storage.errors import LeaseHeldError
from storage.lease import LEASE_FILE, Lease, read_lease


def test_second_driver_refused_while_fresh(tmp_path) -> None:
    with Lease(tmp_path, ttl_s=30):
        with pytest.raises(LeaseHeldError, match="holds the lease"):
            Lease(tmp_path, ttl_s=30).acquire()
    assert read_lease(tmp_path) is None  # released on exit


def test_stale_lease_is_taken_over(tmp_path) -> None:
    first = Lease(tmp_path, ttl_s=0.6, heartbeat_s=0.1)
    first.acquire()
    # The first driver's heartbeat stops (as if its process froze)...
    first._stop.set()
    first._thread.join()
    time.sleep(0.7)
    second = Lease(tmp_path, ttl_s=0.6, heartbeat_s=0.1)
    second.acquire()
    assert read_lease(tmp_path).holder == second._holder
    second.release()


def test_torn_lease_file_is_no_lease(tmp_path) -> None:
    (tmp_path / LEASE_FILE).write_text("{not json")
    with Lease(tmp_path, ttl_s=5) as lease:
        assert json.loads((tmp_path / LEASE_FILE).read_text())["holder"] == lease._holder
