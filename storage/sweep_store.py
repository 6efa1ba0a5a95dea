"""A sweep's Zarr v3 store: created at full size, written a whole block at a time.

Layout (DESIGN.md; docs/store-layout.md for Zarr, xarray, dask and tensorstore users)::

    <store>/            attrs["dmsweep"]: the store's metadata (storage.metadata: kind, spec or
                        provenance, spec_hash, format_version, dataset, num_models, block, outputs)
      masks             bool    [M, N_train]      (model, train)        chunks (block, N_train)
      margins/test      float16 [M, N_test]       (model, test)         chunks (block, N_test)
      margins/train     float16 [M, N_train]      (model, train)        (optional)
      logits/test       float16 [M, N_test, C]    (model, test, class)  (optional)
      ledger/...        per-block status, attempts, seconds, node, checksum, error   (block)
      datamodels/<name>/...
    <store>.dmsweep/    the state area, not Zarr: lease, event log, ledger journal (storage.location)

The store is a local path or ``s3://bucket/prefix`` (:mod:`storage.location`);
chunk writes are whole chunks, one PUT each on S3.

A block is the unit of work and of storage: block ``b`` is rows
``[b*block, (b+1)*block)``, exactly one chunk of every per-model array. A sweep's
``num_models`` is a multiple of its block; an imported store may end in a shorter
last block (published files have whatever row count they have).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from storage.checksum import block_checksum
from storage.codecs import ARRAY_CONFIG, checked_compressors
from storage.errors import BlockFailedError, InputError, StoreMismatchError
from storage.layout import MASKS, DatasetInfo, output_dimensions, output_dtype, output_row_shape
from storage.ledger import Ledger
from storage.location import LocalLocation, StoreLocation, store_location
from storage.metadata import ATTRS_KEY, ImportMetadata, SweepMetadata, dump_metadata, parse_metadata
from storage.spec import SweepSpec
from storage.store_probe import CREATING, StoreProbe, claim_creation, probe_store, refuse_existing, remove_hierarchy

__all__ = ["SweepStore", "BlockWrite", "StoreProbe", "probe_store", "ATTRS_KEY"]


@dataclass(frozen=True)
class BlockWrite:
    """What writing one block produced: the data's crc32c and its raw size."""

    checksum: int
    nbytes: int


def _rows_to_index(rows: slice | np.ndarray | Sequence[int], num_models: int) -> np.ndarray:
    if isinstance(rows, slice):
        return np.arange(num_models, dtype=np.int64)[rows]
    index = np.asarray(rows, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= num_models):
        raise InputError(f"rows must lie in [0, {num_models}); got {index.min()}..{index.max()}")
    return index


def _contiguous_runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """(position in index, start row, stop row) for each run of consecutive rows."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [index.size]])
    return [(int(a), int(index[a]), int(index[b - 1]) + 1) for a, b in zip(starts, stops)]


class SweepStore:
    """A handle on a sweep store. Build one with :meth:`create` or :meth:`open`.

    Array handles are looked up afresh for every read and write, so a handle
    never outlives a resize (a stale zarr handle silently drops writes past its
    old shape). The ledger is read once per handle (and kept current by the
    handle's own writes): a reader sees the blocks complete when it first
    asked; :meth:`reopen` sees the store as it is now.
    """

    def __init__(
        self, group: zarr.Group, location: StoreLocation, mode: Literal["r", "r+"],
        metadata: SweepMetadata | ImportMetadata,
    ) -> None:
        self._group = group
        self._location = location
        self._mode = mode
        self._meta = metadata
        self._ledger: Ledger | None = None

    # -- creation and opening ------------------------------------------------
    @classmethod
    def create(cls, location: str | Path | StoreLocation, metadata: SweepMetadata | ImportMetadata) -> SweepStore:
        """Create a store with every array at full size; it exists once all of it does.

        Everything is written first and the marker (the root ``zarr.json`` with
        dmsweep attributes) last, so an interrupted init leaves no store:
        opening says so, and creating again starts over. The same on a disk and
        on S3 (where there is no rename to make it atomic otherwise).

        Parameters
        ----------
        location : where the store goes (absent, an empty directory, or an
            interrupted init): a path or ``s3://bucket/prefix``.
        metadata : what the store is (:func:`storage.metadata.sweep_metadata` or
            :func:`storage.metadata.import_metadata`).
        """
        location = store_location(location)
        num_models, block = metadata.num_models, metadata.block
        if isinstance(metadata, SweepMetadata) and num_models % block:
            raise InputError(f"num_models ({num_models}) must be a positive multiple of block ({block})",
                             params=("num_models", "block"))
        if isinstance(location, LocalLocation) and not location.path.parent.is_dir():
            raise InputError(f"parent directory of the store {str(location.path.parent)!r} does not exist",
                             params=("store",))
        refuse_existing(location, probe_store(location))
        # Two creators at once: the second is refused rather than let to delete the
        # first one's store; what is there is looked at again under the claim.
        claim_creation(location)
        probe = probe_store(location)
        if probe not in (StoreProbe.ABSENT, StoreProbe.EMPTY, StoreProbe.PARTIAL):
            location.state.delete(CREATING)
            refuse_existing(location, probe)
        if probe is StoreProbe.PARTIAL:
            remove_hierarchy(location)
        for key in location.state.list():  # the state of an earlier store at this path (its lease, log, journal)
            if key != CREATING:
                location.state.delete(key)
        try:
            group = zarr.open_group(location.zarr_store(read_only=False), mode="a")
            for name in (MASKS, *metadata.outputs):
                row_shape = output_row_shape(name, metadata.dataset)
                dtype = output_dtype(name)
                group.create_array(
                    name,
                    shape=(num_models, *row_shape),
                    chunks=(block, *row_shape),
                    dtype=dtype,
                    fill_value=False if dtype == np.dtype(bool) else 0.0,
                    dimension_names=output_dimensions(name),
                    compressors=checked_compressors(),
                    config=ARRAY_CONFIG,
                )
            Ledger.create(group, metadata.num_blocks, root=location.root, state=location.state)
            group.attrs[ATTRS_KEY] = dump_metadata(metadata)  # the marker: the store exists from here on
        except BaseException:
            remove_hierarchy(location, keep_dir=probe is StoreProbe.EMPTY)
            location.state.delete_all()
            raise
        location.state.delete(CREATING)
        return cls.open(location, mode="r+")

    @classmethod
    def open(cls, location: str | Path | StoreLocation, *, mode: Literal["r", "r+"] = "r") -> SweepStore:
        """Open an existing store and validate its metadata.

        Raises
        ------
        InputError
            Nothing at ``location``, or an init that did not finish.
        StoreMismatchError
            Not a dmsweep store, another layout version, or metadata that fails
            validation or whose spec hash no longer matches.
        StoreError
            The location cannot be read.
        """
        location = store_location(location)
        probe = probe_store(location)
        if probe is StoreProbe.ABSENT:
            raise InputError(f"no store at {location.uri!r}", params=("store",))
        if probe is StoreProbe.PARTIAL:
            raise InputError(f"{location.uri!r} holds an init that did not finish; `dmsweep init` or `run` "
                             "creates the store again", params=("store",))
        if probe is not StoreProbe.STORE:
            raise StoreMismatchError(f"{location.uri!r} is not a dmsweep store", params=("store",))
        group = zarr.open_group(location.zarr_store(read_only=mode == "r"), mode=mode)
        return cls(group, location, mode, parse_metadata(group.attrs, where=location.uri))

    def discard(self, *, keep_dir: bool = False) -> None:
        """Delete this store and its state area: for a creator that failed before finishing it (an import
        whose input turned out bad part-way). ``keep_dir`` leaves the empty directory the user made."""
        self._location.state.delete_all()
        remove_hierarchy(self._location, keep_dir=keep_dir)

    def reopen(self) -> SweepStore:
        """A fresh handle (after another process resized or re-ledgered the store)."""
        return SweepStore.open(self._location, mode=self._mode)

    # -- metadata ------------------------------------------------------------
    @property
    def location(self) -> StoreLocation:
        """Where the store is; ``str()`` of it is the path or ``s3://`` URI."""
        return self._location

    @property
    def path(self) -> StoreLocation:
        """The same as :attr:`location` (``str(store.path)`` and ``store.path.name`` read as before)."""
        return self._location

    @property
    def group(self) -> zarr.Group:
        return self._group

    @property
    def metadata(self) -> SweepMetadata | ImportMetadata:
        """What the store is: a sweep with its spec, or an import with its provenance."""
        return self._meta

    @property
    def kind(self) -> Literal["sweep", "import"]:
        return self._meta.kind

    @property
    def spec(self) -> SweepSpec | None:
        """The sweep's spec; None for an imported store."""
        return self._meta.spec if isinstance(self._meta, SweepMetadata) else None

    @property
    def spec_hash(self) -> str:
        return self._meta.spec_hash

    @property
    def dataset(self) -> DatasetInfo:
        return self._meta.dataset

    @property
    def num_models(self) -> int:
        return self._meta.num_models

    @property
    def block(self) -> int:
        return self._meta.block

    @property
    def num_blocks(self) -> int:
        return self._meta.num_blocks

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self._meta.outputs)

    @property
    def ledger(self) -> Ledger:
        """The store's ledger (one per handle: it keeps the table it read and what it wrote)."""
        if self._ledger is None:
            self._ledger = Ledger(self._group["ledger"], root=self._location.root,  # type: ignore[arg-type]
                                  state=self._location.state)
        return self._ledger

    def array(self, name: str) -> zarr.Array:
        """A fresh handle on a per-model array (``masks`` or an output name)."""
        if name != MASKS and name not in self.outputs:
            raise InputError(f"store has no array {name!r}; it has {[MASKS, *self.outputs]}")
        # The creation-time config is not stored: an opened array needs it again, or an
        # all-fill chunk would be deleted instead of written.
        return zarr.open_array(self._group.store, path=name, mode=self._mode).with_config(ARRAY_CONFIG)

    def block_rows(self, block_id: int) -> range:
        """Rows of block ``block_id`` (the last block of an import may be short)."""
        if not 0 <= block_id < self.num_blocks:
            raise InputError(f"block {block_id} is outside [0, {self.num_blocks})")
        return range(block_id * self.block, min((block_id + 1) * self.block, self.num_models))

    # -- writing ---------------------------------------------------------------
    def write_block(self, block_id: int, arrays: Mapping[str, np.ndarray]) -> BlockWrite:
        """Write block ``block_id``'s rows of every per-model array as whole chunks.

        ``arrays`` maps ``masks`` and every output name to [block, ...] data.
        The returned checksum goes into the driver's ledger through the receipt;
        writing is idempotent (a retry writes the same chunks again).
        """
        rows = self.block_rows(block_id)
        names = (MASKS, *self.outputs)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise BlockFailedError(f"block {block_id}: outputs missing {missing}")
        dataset = self.dataset
        prepared: list[tuple[str, np.ndarray]] = []
        for name in names:
            data = np.asarray(arrays[name])
            expected = (len(rows), *output_row_shape(name, dataset))
            if data.shape != expected:
                raise BlockFailedError(f"block {block_id}: {name} has shape {data.shape}, expected {expected}")
            if name == MASKS and data.dtype != np.bool_:
                raise BlockFailedError(f"block {block_id}: masks must be bool, got {data.dtype}")
            prepared.append((name, data.astype(output_dtype(name), copy=False)))
        checksum = block_checksum(data for _, data in prepared)
        nbytes = 0
        for name, data in prepared:
            self.array(name)[rows.start : rows.stop] = data
            nbytes += data.nbytes
        return BlockWrite(checksum=checksum, nbytes=nbytes)

    def resize(self, spec: SweepSpec) -> None:
        """Grow every per-model array and the ledger to ``spec.num_models`` (the driver's ``extend``)."""
        meta = self._meta
        if not isinstance(meta, SweepMetadata):
            raise InputError(f"{self._location.uri!r} is an imported store: nothing can be trained into it, so it cannot grow")
        num_models = spec.num_models
        if num_models < self.num_models:
            raise InputError(f"num_models can only grow: the store has {self.num_models}, asked {num_models}",
                             params=("num_models",))
        if num_models % self.block:
            raise InputError(f"num_models ({num_models}) must be a multiple of block ({self.block})",
                             params=("num_models",))
        for name in (MASKS, *self.outputs):
            array = self.array(name)
            array.resize((num_models, *array.shape[1:]))
        self.ledger.resize(num_models // self.block)
        grown = meta.model_copy(update={"num_models": int(num_models), "spec": spec})
        self._group.attrs[ATTRS_KEY] = dump_metadata(grown)
        self._meta = grown

    # -- reading -----------------------------------------------------------------
    def completed_rows(self) -> np.ndarray:
        """Sorted int64 rows of every completed block."""
        blocks = self.ledger.completed_blocks()
        rows = (blocks[:, None] * self.block + np.arange(self.block)[None, :]).reshape(-1)
        return rows[rows < self.num_models]

    def read(self, name: str, rows: slice | np.ndarray | Sequence[int]) -> np.ndarray:
        """Read completed rows of ``masks`` or an output, in the order given.

        Raises :class:`InputError` if any requested row is not in a completed
        block: readers never see rows the ledger has not confirmed.
        """
        index = _rows_to_index(rows, self.num_models)
        complete = np.zeros(self.num_blocks, dtype=bool)
        blocks = self.ledger.completed_blocks()
        complete[blocks[blocks < self.num_blocks]] = True
        incomplete = index[~complete[index // self.block]]
        if incomplete.size:
            raise InputError(
                f"{incomplete.size} requested rows of {name!r} are not completed (first: row {incomplete[0]})"
            )
        array = self.array(name)
        out = np.empty((index.size, *array.shape[1:]), dtype=array.dtype)
        for position, start, stop in _contiguous_runs(index):
            out[position : position + stop - start] = array[start:stop]
        return out
