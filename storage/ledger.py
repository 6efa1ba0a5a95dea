"""The completion ledger: per-block status, attempts, timings, node, checksum, error.

The ledger has a single writer, the process holding the store's lease (the
driver; ``verify --repair``, ``extend`` and an import while they run). A worker
writes its block's chunks and returns a receipt; only then does the driver
record the block complete. The ledger is correct without POSIX (no rename, no
append, no lock), the same way on a disk and on S3:

* **Every change is one immutable journal record**, ``<state>/ledger/<seq>.json``
  in the store's state area, created with a conditional PUT (If-None-Match): a
  record is never rewritten, so no read-modify-write can lose another writer's
  change. A record holds the whole new row of each block it changes, so
  applying records in ``seq`` order gives the ledger.
* **The journal is compacted into Zarr arrays** ``ledger/<field>`` (dimension
  ``block``) every :data:`COMPACT_EVERY` records and when a run ends. The
  writer reads the chunks with their versions, applies the records, and
  replaces each changed chunk whole with a conditional PUT on the version it
  read (zarr encodes the bytes, in memory); then the group's attributes
  (``through_seq``, ``generation``) the same way; then it deletes the
  compacted records. A write that finds another version (a second writer
  compacted meanwhile) starts the compaction over from what is there now, so
  no compaction can overwrite another's newer chunk.
* **A reader** reads the attributes, the arrays, the records after
  ``through_seq``, and the attributes again; if a compaction ended in between
  (another generation) it reads again. A block is complete once the record
  saying so exists, before and after compaction alike.

Zarr tools read ``ledger/`` as it was at the last compaction (at most
:data:`COMPACT_EVERY` records behind a running sweep, current once it ends).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import zarr

from storage.codecs import ARRAY_CONFIG, checked_compressors
from storage.errors import StoreError
from storage.objects import Objects

__all__ = ["BlockStatus", "BlockRecord", "Ledger", "LEDGER_CHUNK", "COMPACT_EVERY", "JOURNAL_PREFIX"]

#: Blocks per chunk of the compacted arrays.
LEDGER_CHUNK = 4096
#: Journal records between two compactions (a reader fetches at most this many).
COMPACT_EVERY = 256
#: Where the journal records are in the state area.
JOURNAL_PREFIX = "ledger/"
_ATTRS = "ledger"
_READ_TRIES = 8


class BlockStatus(IntEnum):
    PENDING = 0
    COMPLETE = 1
    FAILED = 2


@dataclass(frozen=True)
class BlockRecord:
    """One block's ledger entry."""

    block_id: int
    status: BlockStatus
    attempts: int
    seconds: float
    checksum: int
    finished_at: float
    node: str
    error: str


_NUMERIC_FIELDS: dict[str, tuple[str, Any]] = {
    "status": ("int8", 0),
    "attempts": ("int32", 0),
    "seconds": ("float32", 0.0),
    "checksum": ("int64", -1),
    "finished_at": ("float64", 0.0),
}
_TEXT_FIELDS = ("node", "error")
_FIELDS = (*_NUMERIC_FIELDS, *_TEXT_FIELDS)


def _record_key(seq: int) -> str:
    return f"{JOURNAL_PREFIX}{seq:012d}.json"


def _record_seq(key: str) -> int | None:
    name = key[len(JOURNAL_PREFIX):]
    stem = name[: -len(".json")] if name.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None


@dataclass
class _Field:
    """One ledger array mirrored in memory: its chunks' bytes as read, their versions, and zarr's codecs."""

    path: str
    array: zarr.Array
    chunks: dict[str, Any]  # the memory store's dict: zarr.json and chunk key -> Buffer
    versions: dict[str, str | None]  # chunk key -> ETag as read (None: the chunk was absent)


def _buffer(data: bytes) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def _read_field(root: Objects, path: str) -> _Field:
    """Fetch a ledger array's metadata and every chunk, with versions, into a memory store."""
    from zarr.storage import MemoryStore

    meta = root.get(f"{path}/zarr.json")
    if meta is None:
        raise StoreError(f"the ledger array {path} is missing from {root.where}")
    chunks: dict[str, Any] = {"zarr.json": _buffer(meta.data)}
    array = zarr.open_array(MemoryStore(chunks), mode="r+").with_config(ARRAY_CONFIG)
    size, chunk = int(array.shape[0]), int(array.chunks[0])
    keys = [array.metadata.encode_chunk_key((i,)) for i in range(-(-size // chunk))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        blobs = list(pool.map(lambda key: root.get(f"{path}/{key}"), keys))
    versions: dict[str, str | None] = {}
    for key, blob in zip(keys, blobs):
        versions[key] = None if blob is None else blob.etag
        if blob is not None:
            chunks[key] = _buffer(blob.data)
    return _Field(path=path, array=array, chunks=chunks, versions=versions)


class Ledger:
    """The ledger of one store: the ``ledger/`` arrays plus the journal in the state area.

    Parameters
    ----------
    group : zarr.Group
        The store's ``ledger`` group (resized through zarr by ``extend``).
    root : Objects
        The hierarchy's objects by key: the arrays' chunks and the group's
        ``zarr.json`` are read and replaced through it, conditionally.
    state : Objects
        The store's state area (the journal).

    The table is read once per handle and then kept up to date by this
    handle's own writes; :meth:`refresh` reads it again.
    """

    def __init__(self, group: zarr.Group, *, root: Objects, state: Objects) -> None:
        self._group = group
        self._root = root
        self._state = state
        self._path = group.path
        self._meta_key = f"{self._path}/zarr.json"
        self._table: dict[str, np.ndarray] | None = None
        self._fields: dict[str, _Field] = {}
        self._through = 0  # the last seq the arrays include
        self._next_seq = 1
        self._uncompacted: list[str] = []  # journal keys after ``_through``
        self._journal_blocks: set[int] = set()  # blocks those records change
        self._meta_etag: str | None = None  # the group metadata's version as read

    @classmethod
    def create(cls, parent: zarr.Group, num_blocks: int, *, root: Objects, state: Objects) -> Ledger:
        group = parent.create_group("ledger", attributes={_ATTRS: {"through_seq": 0, "generation": 0}})
        chunk = (min(LEDGER_CHUNK, max(num_blocks, 1)),)
        for name, (dtype, fill) in _NUMERIC_FIELDS.items():
            group.create_array(
                name, shape=(num_blocks,), chunks=chunk, dtype=dtype, fill_value=fill, dimension_names=("block",),
                compressors=checked_compressors(), config=ARRAY_CONFIG,
            )
        for name in _TEXT_FIELDS:
            group.create_array(name, shape=(num_blocks,), chunks=chunk, dtype=str, fill_value="",
                               dimension_names=("block",), config=ARRAY_CONFIG)
        return cls(group, root=root, state=state)

    # -- reading -----------------------------------------------------------------
    def _attrs(self) -> tuple[dict[str, int], str]:
        blob = self._root.get(self._meta_key)
        if blob is None:
            raise StoreError(f"the ledger's metadata ({self._meta_key}) is missing from {self._root.where}")
        meta = json.loads(blob.data).get("attributes", {}).get(_ATTRS, {"through_seq": 0, "generation": 0})
        return {"through_seq": int(meta["through_seq"]), "generation": int(meta["generation"])}, blob.etag

    def _journal(self, after: int) -> list[tuple[int, str]]:
        keys = [(seq, key) for key in self._state.list(JOURNAL_PREFIX) if (seq := _record_seq(key)) is not None]
        return sorted((seq, key) for seq, key in keys if seq > after)

    def _fetch(self, keys: list[str]) -> list[dict[str, Any]]:
        def one(key: str) -> dict[str, Any]:
            blob = self._state.get(key)
            if blob is None:
                raise KeyError(key)  # compacted away meanwhile: the caller reads again
            try:
                return json.loads(blob.data)
            except ValueError:
                raise StoreError(f"ledger journal record {key} in {self._state.where} is not valid JSON") from None

        if len(keys) <= 4:
            return [one(key) for key in keys]
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, keys))

    def _load(self) -> dict[str, np.ndarray]:
        """Arrays plus journal, consistent: read again while a compaction ends in between."""
        for _ in range(_READ_TRIES):
            before, _ = self._attrs()
            fields = {name: _read_field(self._root, f"{self._path}/{name}") for name in _FIELDS}
            journal = self._journal(before["through_seq"])
            try:
                records = self._fetch([key for _, key in journal])
            except KeyError:
                continue
            after, etag = self._attrs()
            if after["generation"] != before["generation"]:
                continue
            table = {name: np.asarray(field.array[:]) for name, field in fields.items()}
            for name in _TEXT_FIELDS:
                table[name] = table[name].astype(object)
            for record in records:
                _apply(table, record)
            self._fields = fields
            self._through = before["through_seq"]
            self._uncompacted = [key for _, key in journal]
            self._journal_blocks = {int(e["block"]) for record in records for e in record["entries"]}
            self._next_seq = max([before["through_seq"], *(seq for seq, _ in journal)]) + 1
            self._meta_etag = etag
            return table
        raise StoreError(f"the ledger of {self._root.where} kept changing while being read; try again")

    def _rows(self) -> dict[str, np.ndarray]:
        if self._table is None:
            self._table = self._load()
        return self._table

    def refresh(self) -> None:
        """Forget the table read so far (the next read fetches it again)."""
        self._table = None

    @property
    def num_blocks(self) -> int:
        return int(self._rows()["status"].shape[0])

    def statuses(self) -> np.ndarray:
        """int8 [num_blocks] of :class:`BlockStatus` values."""
        return self._rows()["status"].copy()

    def completed_blocks(self) -> np.ndarray:
        return np.flatnonzero(self._rows()["status"] == BlockStatus.COMPLETE).astype(np.int64)

    def pending_blocks(self) -> np.ndarray:
        """Blocks not complete (pending or failed): the work a run does."""
        return np.flatnonzero(self._rows()["status"] != BlockStatus.COMPLETE).astype(np.int64)

    def record(self, block_id: int) -> BlockRecord:
        table = self._rows()
        return BlockRecord(
            block_id=block_id, status=BlockStatus(int(table["status"][block_id])),
            attempts=int(table["attempts"][block_id]), seconds=float(table["seconds"][block_id]),
            checksum=int(table["checksum"][block_id]), finished_at=float(table["finished_at"][block_id]),
            node=str(table["node"][block_id]), error=str(table["error"][block_id]),
        )

    def table(self) -> dict[str, np.ndarray]:
        """Every ledger field as a whole array (text fields as object arrays of str)."""
        return {name: values.copy() for name, values in self._rows().items()}

    # -- writing -------------------------------------------------------------------
    def _entry(self, block_id: int, **changes: Any) -> dict[str, Any]:
        table = self._rows()
        entry: dict[str, Any] = {"block": int(block_id)}
        for name in _FIELDS:
            value = changes[name] if name in changes else table[name][block_id]
            entry[name] = str(value) if name in _TEXT_FIELDS else value.item() if hasattr(value, "item") else value
        return entry

    def _append(self, entries: list[dict[str, Any]]) -> None:
        """Write one journal record (a conditional create), then apply it here."""
        table = self._rows()
        for _ in range(100):
            seq = self._next_seq
            record = {"seq": seq, "written_at": time.time(), "entries": entries}
            if self._state.put_if_absent(_record_key(seq), json.dumps(record).encode()) is not None:
                break
            # Another writer took this seq (a driver that lost its lease and does not know yet):
            # its record stands, ours goes after it.
            journal = self._journal(self._through)
            self._next_seq = max([seq, *(s for s, _ in journal)]) + 1
        else:
            raise StoreError(f"could not append to the ledger journal in {self._state.where}")
        self._next_seq = seq + 1
        self._uncompacted.append(_record_key(seq))
        self._journal_blocks.update(entry["block"] for entry in entries)
        _apply(table, record)
        if len(self._uncompacted) >= COMPACT_EVERY:
            self.compact()

    def mark_complete(self, block_id: int, *, checksum: int, seconds: float, node: str, attempts: int = 1) -> None:
        """Record a block's receipt: one journal record; from then on the block is complete."""
        self._append([self._entry(block_id, status=int(BlockStatus.COMPLETE), checksum=int(checksum),
                                  seconds=float(seconds), attempts=int(attempts), node=node, error="",
                                  finished_at=time.time())])

    def mark_failed(self, block_id: int, *, error: str, attempts: int, node: str = "") -> None:
        """Record a block that ran out of retries; the next run tries it again."""
        self._append([self._entry(block_id, status=int(BlockStatus.FAILED), error=error, attempts=int(attempts),
                                  node=node, finished_at=time.time())])

    def mark_pending(self, block_ids: Iterable[int] | np.ndarray) -> None:
        """Send blocks back to be recomputed (verify --repair): one record for all of them."""
        blocks = [int(b) for b in np.asarray(block_ids, dtype=np.int64).reshape(-1)]
        if blocks:
            self._append([self._entry(b, status=int(BlockStatus.PENDING)) for b in blocks])

    def compact(self) -> None:
        """Write the journal into the arrays (whole chunks, conditionally), advance ``through_seq``, drop the records.

        Raises
        ------
        StoreError
            Other writers kept compacting meanwhile (two drivers on one store).
        """
        for _ in range(_READ_TRIES):
            if not self._uncompacted:
                return
            if self._write_compaction():
                return
            self._table = self._load()  # another writer compacted: start over from what is there now
        raise StoreError(f"another process keeps compacting the ledger of {self._root.where} "
                         "(does another driver hold the lease?); stopping")

    def _write_compaction(self) -> bool:
        """One attempt; False if a conditional write found a version other than the one read."""
        table = self._rows()
        through = max(_record_seq(key) or 0 for key in self._uncompacted)
        for name, field in self._fields.items():
            chunk = int(field.array.chunks[0])
            for index in sorted({block // chunk for block in self._journal_blocks}):
                start, stop = index * chunk, min((index + 1) * chunk, int(field.array.shape[0]))
                values = table[name][start:stop]
                field.array[start:stop] = values.astype(str) if name in _TEXT_FIELDS else values
                key = field.array.metadata.encode_chunk_key((index,))
                data = field.chunks[key].to_bytes()
                version = field.versions.get(key)
                full = f"{field.path}/{key}"
                written = (self._root.put_if_absent(full, data) if version is None
                           else self._root.put_if_match(full, data, version))
                if written is None:
                    return False
                field.versions[key] = written
        blob = self._root.get(self._meta_key)
        if blob is None:
            raise StoreError(f"the ledger's metadata ({self._meta_key}) is missing from {self._root.where}")
        document = json.loads(blob.data)
        previous = document.setdefault("attributes", {}).get(_ATTRS, {"through_seq": 0, "generation": 0})
        document["attributes"][_ATTRS] = {"through_seq": through, "generation": int(previous["generation"]) + 1}
        etag = self._root.put_if_match(self._meta_key, json.dumps(document, indent=2).encode(), self._meta_etag or "")
        if etag is None:
            return False
        for key in self._uncompacted:
            self._state.delete(key)
        self._meta_etag = etag
        self._through = through
        self._uncompacted = []
        self._journal_blocks = set()
        return True

    def resize(self, num_blocks: int) -> None:
        """Grow every field (the lease holder only, during extend); the table is read again after."""
        for name in _FIELDS:
            self._group[name].resize((num_blocks,))  # type: ignore[union-attr]
        self._table = None


def _apply(table: dict[str, np.ndarray], record: dict[str, Any]) -> None:
    for entry in record["entries"]:
        block = int(entry["block"])
        if block >= table["status"].shape[0]:
            continue  # a record of a larger ledger cannot exist; ignore rather than crash a reader
        for name in _FIELDS:
            table[name][block] = entry[name]
