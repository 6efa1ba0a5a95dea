from __future__ import annotations

import json

import pytest

from storage.errors import LeaseHeldError
from storage.lease import LEASE_FILE, Lease, read_lease
from storage.location import store_location


class FakeClock:
    """Wall-clock seconds that only move when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_second_driver_refused_while_fresh(tmp_path) -> None:
    with Lease(tmp_path, ttl_s=30):
        with pytest.raises(LeaseHeldError, match="holds the lease"):
            Lease(tmp_path, ttl_s=30).acquire()
    assert read_lease(tmp_path) is None  # released on exit


def test_stale_lease_is_taken_over_and_the_first_driver_learns_it_lost(tmp_path) -> None:
    clock = FakeClock()
    first = Lease(tmp_path, ttl_s=30, clock=clock)
    first.acquire(heartbeat=False)
    clock.now += 29.0  # still fresh: refused
    with pytest.raises(LeaseHeldError, match="heartbeat 29s ago"):
        Lease(tmp_path, ttl_s=30, clock=clock).acquire(heartbeat=False)
    clock.now += 2.0  # the first driver's heartbeat is now 31 s old
    second = Lease(tmp_path, ttl_s=30, clock=clock)
    second.acquire(heartbeat=False)
    assert read_lease(tmp_path).holder == second.holder
    assert not first.renew() and first.lost  # its next heartbeat sees the new holder and stops
    first.release()
    assert read_lease(tmp_path).holder == second.holder  # releasing a lost lease removes nothing
    second.release()
    assert read_lease(tmp_path) is None


def test_confirm_fences_a_holder_whose_lease_was_taken_between_heartbeats(tmp_path) -> None:
    clock = FakeClock()
    first = Lease(tmp_path, ttl_s=30, clock=clock)
    first.acquire(heartbeat=False)
    assert first.confirm()
    clock.now += 31.0  # no heartbeat for longer than the TTL (the holder's clock stepped back, say)
    second = Lease(tmp_path, ttl_s=30, clock=clock)
    second.acquire(heartbeat=False)
    assert not first.confirm() and first.lost  # before its next ledger write, not its next heartbeat
    assert second.confirm()
    second.release()
    assert not second.confirm()  # a released lease confirms nothing


def test_renewed_lease_stays_fresh(tmp_path) -> None:
    clock = FakeClock()
    lease = Lease(tmp_path, ttl_s=30, clock=clock)
    lease.acquire(heartbeat=False)
    for _ in range(5):
        clock.now += 20.0
        assert lease.renew()
    with pytest.raises(LeaseHeldError):
        Lease(tmp_path, ttl_s=30, clock=clock).acquire(heartbeat=False)
    lease.release()


def test_torn_lease_file_is_no_lease(tmp_path) -> None:
    state = store_location(tmp_path / "s.zarr").state
    state.put(LEASE_FILE, b"{not json")
    with Lease(tmp_path / "s.zarr", ttl_s=5) as lease:
        assert json.loads(state.get(LEASE_FILE).data)["holder"] == lease.holder
    assert read_lease(tmp_path / "s.zarr") is None  # released: replaced by a lease nobody holds
