"""The object API, the lease and the ledger journal on a real S3 server, and on a disk the same way."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from storage.errors import LeaseHeldError
from storage.layout import DatasetInfo
from storage.lease import LEASE_FILE, Lease, read_lease
from storage.ledger import COMPACT_EVERY, JOURNAL_PREFIX, BlockStatus
from storage.location import LocalLocation, S3Location, StoreLocation, store_location
from storage.metadata import ImportProvenance, import_metadata
from storage.objects import ConditionalWritesError, LocalObjects, _probe_conditional_writes
from storage.sweep_store import SweepStore


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    """A store location that does not exist yet, on a disk or in the test bucket."""
    if request.param == "local":
        return store_location(tmp_path / "s.zarr")
    server = request.getfixturevalue("s3_server")
    return store_location(f"s3://{server.bucket}/objects-{uuid.uuid4().hex[:8]}/s.zarr")


def test_conditional_create_and_replace(location: StoreLocation) -> None:
    objects = location.state
    objects.check_conditional_writes()  # moto honours If-None-Match and If-Match
    first = objects.put_if_absent("a/x.json", b"1")
    assert first is not None and objects.put_if_absent("a/x.json", b"2") is None
    second = objects.put_if_match("a/x.json", b"3", first)
    assert second is not None and second != first
    assert objects.put_if_match("a/x.json", b"4", first) is None  # a stale version is refused
    assert objects.get("a/x.json").data == b"3" and objects.get("a/x.json").etag == second
    objects.put("b.json", b"5")
    assert objects.list() == ["a/x.json", "b.json"] and objects.list("a/") == ["a/x.json"]
    objects.delete("a/x.json")
    assert objects.get("a/x.json") is None and objects.list() == ["b.json"]
    objects.delete_all()
    assert objects.list() == []


class _IgnoresConditions(LocalObjects):
    """What a server that ignores If-None-Match / If-Match does: every write lands."""

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        return self.put(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        return self.put(key, data)


def test_a_server_without_conditional_writes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConditionalWritesError, match="does not honour conditional writes"):
        _probe_conditional_writes(_IgnoresConditions(tmp_path / "area"))
    assert not list((tmp_path / "area").glob("*"))  # the probe cleans up after itself


def test_second_driver_refused_and_stale_lease_taken_over(location: StoreLocation) -> None:
    clock = FakeClock()
    first = Lease(location, ttl_s=30, clock=clock)
    first.acquire(heartbeat=False)
    clock.now += 29.0
    with pytest.raises(LeaseHeldError, match="heartbeat 29s ago"):
        Lease(location, ttl_s=30, clock=clock).acquire(heartbeat=False)
    clock.now += 2.0  # stale now
    second = Lease(location, ttl_s=30, clock=clock)
    second.acquire(heartbeat=False)
    assert read_lease(location).holder == second.holder
    assert not first.renew() and first.lost  # the compare-and-swap on its old version fails
    first.release()
    assert read_lease(location).holder == second.holder  # a lost lease releases nothing
    assert second.renew()
    second.release()
    assert read_lease(location) is None


def test_two_drivers_racing_for_a_stale_lease_one_wins(location: StoreLocation) -> None:
    clock = FakeClock()
    Lease(location, ttl_s=30, clock=clock).acquire(heartbeat=False)
    clock.now += 60.0
    stale = location.state.get(LEASE_FILE)
    # Both saw the same stale version; the replace is conditional on it, so only one lands.
    a, b = Lease(location, ttl_s=30, clock=clock), Lease(location, ttl_s=30, clock=clock)
    assert location.state.put_if_match(LEASE_FILE, a._payload(), stale.etag) is not None
    assert location.state.put_if_match(LEASE_FILE, b._payload(), stale.etag) is None
    with pytest.raises(LeaseHeldError):
        b.acquire(heartbeat=False)
    assert read_lease(location).holder == a.holder


def _store(location: StoreLocation, num_blocks: int) -> SweepStore:
    dataset = DatasetInfo(name="tiny", n_train=8, n_test=4, n_classes=2)
    return SweepStore.create(location, import_metadata(
        ImportProvenance(source="test"), dataset=dataset, num_models=2 * num_blocks, block=2,
        outputs=("margins/test",)))


def test_ledger_journal_records_compaction_and_readers(location: StoreLocation) -> None:
    blocks = COMPACT_EVERY + 10
    writer = _store(location, blocks)
    for block in range(COMPACT_EVERY - 1):
        writer.ledger.mark_complete(block, checksum=block, seconds=0.5, node="n")
    journal = location.state.list(JOURNAL_PREFIX)
    assert len(journal) == COMPACT_EVERY - 1  # one immutable record per change
    reader = SweepStore.open(location)
    assert reader.ledger.completed_blocks().tolist() == list(range(COMPACT_EVERY - 1))
    writer.ledger.mark_failed(COMPACT_EVERY - 1, error="boom", attempts=3)  # the compacting record
    assert location.state.list(JOURNAL_PREFIX) == []
    writer.ledger.mark_complete(blocks - 1, checksum=7, seconds=1.0, node="m")
    writer.ledger.mark_pending(np.array([0, 1]))
    fresh = SweepStore.open(location).ledger
    statuses = fresh.statuses()
    assert statuses[blocks - 1] == BlockStatus.COMPLETE and statuses[COMPACT_EVERY - 1] == BlockStatus.FAILED
    assert statuses[:2].tolist() == [BlockStatus.PENDING] * 2 and fresh.record(2).checksum == 2
    assert fresh.record(COMPACT_EVERY - 1).error == "boom" and fresh.record(blocks - 1).node == "m"
    # The arrays Zarr tools read hold the compacted records; the last two are in the journal until compaction.
    arrays = writer.group["ledger/status"][:]
    assert arrays[5] == BlockStatus.COMPLETE and arrays[blocks - 1] == BlockStatus.PENDING
    writer.ledger.compact()
    assert writer.group["ledger/status"][:].tolist() == statuses.tolist()
    assert SweepStore.open(location).ledger.statuses().tolist() == statuses.tolist()


def test_a_second_writer_takes_the_next_record_and_compactions_never_lose_one(location: StoreLocation) -> None:
    first = _store(location, 8)
    second = SweepStore.open(location, mode="r+")
    first.ledger.mark_complete(0, checksum=1, seconds=1.0, node="a")
    second.ledger.mark_complete(1, checksum=2, seconds=1.0, node="b")  # read the journal: its record goes after
    first.ledger.mark_complete(2, checksum=3, seconds=1.0, node="a")  # collides with the second's seq, goes on
    assert SweepStore.open(location).ledger.completed_blocks().tolist() == [0, 1, 2]
    second.ledger.compact()  # knew records 1 and 2: record 3 stays in the journal
    assert [key.rsplit("/", 1)[1] for key in location.state.list(JOURNAL_PREFIX)] == ["000000000003.json"]
    # The first writer's view is stale: its conditional writes fail, it reads again and compacts all three.
    first.ledger.compact()
    assert location.state.list(JOURNAL_PREFIX) == []
    assert first.group["ledger/status"][:].tolist()[:4] == [1, 1, 1, 0]
    assert SweepStore.open(location).ledger.completed_blocks().tolist() == [0, 1, 2]


def test_kind_of_location(tmp_path: Path) -> None:
    assert isinstance(store_location(tmp_path / "x"), LocalLocation)
    s3 = store_location("s3://my-bucket/a/b/run.zarr/")
    assert isinstance(s3, S3Location) and s3.uri == "s3://my-bucket/a/b/run.zarr" and s3.name == "run.zarr"
    for bad, message in [("s3://my-bucket", "prefix"), ("s3://My_Bucket/x", "bucket name"),
                         ("s3://key:secret@my-bucket/x", "credentials"), ("gs://b/x", "scheme")]:
        with pytest.raises(Exception, match=message):
            store_location(bad)
