"""A sweep's Zarr v3 store: created at full size, written a whole block at a time.

Layout (DESIGN.md)::

    <store>/            attrs["dmsweep"]: the store's metadata (storage.metadata: kind, spec or
                        provenance, spec_hash, format_version, dataset, num_models, block, outputs)
      masks             bool    [M, N_train]      chunks (block, N_train)
      margins/test      float16 [M, N_test]       chunks (block, N_test)
      margins/train     float16 [M, N_train]      (optional)
      logits/test       float16 [M, N_test, C]    (optional)
      ledger/...        per-block status, attempts, seconds, node, checksum, error
      datamodels/<name>/...

A block is the unit of work and of storage: block ``b`` is rows
``[b*block, (b+1)*block)``, exactly one chunk of every per-model array. A sweep's
``num_models`` is a multiple of its block; an imported store may end in a shorter
last block (published files have whatever row count they have).
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from storage.checksum import block_checksum
from storage.codecs import ARRAY_CONFIG, checked_compressors
from storage.errors import BlockFailedError, InputError, StoreError, StoreMismatchError
from storage.layout import MASKS, DatasetInfo, output_dtype, output_row_shape
from storage.ledger import Ledger
from storage.metadata import ATTRS_KEY, ImportMetadata, SweepMetadata, dump_metadata, parse_metadata
from storage.spec import SweepSpec

__all__ = ["SweepStore", "BlockWrite", "StoreProbe", "probe_store", "ATTRS_KEY"]


@dataclass(frozen=True)
class BlockWrite:
    """What writing one block produced: the data's crc32c and its raw size."""

    checksum: int
    nbytes: int


class StoreProbe(enum.Enum):
    """What is at a store path."""

    ABSENT = "absent"  # nothing there
    EMPTY = "empty"  # an empty directory: a store may be created in it
    STORE = "store"  # a Zarr group with dmsweep metadata (validated when opened)
    OTHER = "other"  # something that is not a dmsweep store


def probe_store(path: str | Path) -> StoreProbe:
    """Look at ``path`` without opening it as a store.

    Raises
    ------
    StoreError
        The path cannot be read (permission denied, an I/O error): that is
        never mistaken for "not a store".
    """
    path = Path(path)
    try:
        if not path.exists():
            return StoreProbe.ABSENT
        if path.is_dir() and not any(path.iterdir()):
            return StoreProbe.EMPTY
        marker = path / "zarr.json"
        if not marker.is_file():
            return StoreProbe.OTHER
        document = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return StoreProbe.OTHER
    except OSError as exc:
        raise StoreError(f"cannot read the store at {str(path)!r}: {exc.strerror or exc}") from None
    attrs = document.get("attributes") if isinstance(document, dict) else None
    return StoreProbe.STORE if isinstance(attrs, dict) and ATTRS_KEY in attrs else StoreProbe.OTHER


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
    old shape).
    """

    def __init__(
        self, group: zarr.Group, path: Path, mode: Literal["r", "r+"], metadata: SweepMetadata | ImportMetadata
    ) -> None:
        self._group = group
        self._path = path
        self._mode = mode
        self._meta = metadata

    # -- creation and opening ------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, metadata: SweepMetadata | ImportMetadata) -> SweepStore:
        """Create a store with every array at full size, atomically.

        The store is built in a hidden sibling directory and renamed into
        place, so a crash during creation leaves nothing at ``path``.

        Parameters
        ----------
        path : where the store goes (absent, or an empty directory).
        metadata : what the store is (:func:`storage.metadata.sweep_metadata` or
            :func:`storage.metadata.import_metadata`).
        """
        path = Path(path)
        probe = probe_store(path)
        if probe not in (StoreProbe.ABSENT, StoreProbe.EMPTY):
            what = "a dmsweep store" if probe is StoreProbe.STORE else "something else"
            raise StoreMismatchError(f"store path {str(path)!r} already exists and holds {what}")
        num_models, block = metadata.num_models, metadata.block
        if isinstance(metadata, SweepMetadata) and num_models % block:
            raise InputError(f"num_models ({num_models}) must be a positive multiple of block ({block})",
                             params=("num_models", "block"))
        parent = path.parent
        if not parent.is_dir():
            raise InputError(f"parent directory of the store {str(parent)!r} does not exist", params=("store",))
        staging = parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
        try:
            group = zarr.open_group(str(staging), mode="w-")
            for name in (MASKS, *metadata.outputs):
                row_shape = output_row_shape(name, metadata.dataset)
                dtype = output_dtype(name)
                group.create_array(
                    name,
                    shape=(num_models, *row_shape),
                    chunks=(block, *row_shape),
                    dtype=dtype,
                    fill_value=False if dtype == np.dtype(bool) else 0.0,
                    compressors=checked_compressors(),
                    config=ARRAY_CONFIG,
                )
            Ledger.create(group, metadata.num_blocks)
            group.attrs[ATTRS_KEY] = dump_metadata(metadata)
            if path.exists():
                path.rmdir()  # an empty directory the user made for us
            os.rename(staging, path)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | Path, *, mode: Literal["r", "r+"] = "r") -> SweepStore:
        """Open an existing store and validate its metadata.

        Raises
        ------
        InputError
            Nothing at ``path``.
        StoreMismatchError
            Not a dmsweep store, another layout version, or metadata that fails
            validation or whose spec hash no longer matches.
        StoreError
            The path cannot be read.
        """
        path = Path(path)
        probe = probe_store(path)
        if probe is StoreProbe.ABSENT:
            raise InputError(f"no store at {str(path)!r}", params=("store",))
        if probe is not StoreProbe.STORE:
            raise StoreMismatchError(f"{str(path)!r} is not a dmsweep store", params=("store",))
        group = zarr.open_group(str(path), mode=mode)
        return cls(group, path, mode, parse_metadata(group.attrs, where=str(path)))

    def reopen(self) -> SweepStore:
        """A fresh handle (after another process resized or re-ledgered the store)."""
        return SweepStore.open(self._path, mode=self._mode)

    # -- metadata ------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

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
        return Ledger(self._group["ledger"])  # type: ignore[arg-type]

    def array(self, name: str) -> zarr.Array:
        """A fresh handle on a per-model array (``masks`` or an output name)."""
        if name != MASKS and name not in self.outputs:
            raise InputError(f"store has no array {name!r}; it has {[MASKS, *self.outputs]}")
        return zarr.open_array(str(self._path / name), mode=self._mode)

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
            raise InputError(f"{str(self._path)!r} is an imported store: nothing can be trained into it, so it cannot grow")
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
        complete[self.ledger.completed_blocks()] = True
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
