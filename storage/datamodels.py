"""The ``datamodels/<name>/`` groups of a store: fitted weights and their ledger.

Layout (DESIGN.md, "The store")::

    datamodels/<name>/            attrs["datamodels"]: fit description, shard ledger, results
      weight    float32 [N_train, T]   (train, target)   chunks (row_chunk, target_chunk)
      bias      float32 [T]            (target)          chunks (target_chunk,)
      lam       float32 [T]
      val_mse   float32 [T]
      nnz       int32   [T]
      n_epochs  int32   [T]

Targets are cut into **shards of whole target chunks**: shard ``s`` owns columns
``[s·target_chunk, (s+1)·target_chunk)`` of every array, so shards written by
concurrent processes never touch the same chunk (unaligned concurrent writes lose
data in zarr). The attributes have one writer, the process that runs the fit: a
shard only writes its columns and returns a receipt; the fit then records the
shard as finished, so a re-run skips it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from storage.codecs import ARRAY_CONFIG, checked_compressors
from storage.errors import InputError, StoreError

__all__ = [
    "DATAMODELS_GROUP",
    "ATTRS_KEY",
    "COLUMN_ARRAYS",
    "Datamodels",
    "create_datamodels",
    "open_datamodels",
    "list_datamodels",
    "shard_ranges",
    "write_columns",
    "read_datamodels",
    "finished_shards",
    "mark_shard_finished",
    "update_attrs",
    "delete_datamodels",
]

DATAMODELS_GROUP = "datamodels"
ATTRS_KEY = "datamodels"
COLUMN_ARRAYS: dict[str, np.dtype] = {
    "bias": np.dtype(np.float32),
    "lam": np.dtype(np.float32),
    "val_mse": np.dtype(np.float32),
    "nnz": np.dtype(np.int32),
    "n_epochs": np.dtype(np.int32),
}
# Weight chunks hold at most this many values (16 MiB of float32), so a shard of
# many targets over a large training set still writes moderate chunks.
_MAX_CHUNK_VALUES = 4 << 20


@dataclass
class Datamodels:
    """A datamodels group read into memory.

    Attributes
    ----------
    name : str
    weight : ndarray of float32, shape [N_train, T]
        Raw-indicator-space weights: ``masks @ weight + bias`` predicts outputs.
    bias, lam, val_mse : ndarray of float32, shape [T]
    nnz, n_epochs : ndarray of int32, shape [T]
    targets : range
        Which columns of the store's output these T targets are.
    attrs : dict
        The fit description, shard ledger and evaluation results.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    lam: np.ndarray
    val_mse: np.ndarray
    nnz: np.ndarray
    n_epochs: np.ndarray
    targets: range
    attrs: dict[str, Any]


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise InputError(f"datamodels name {name!r} is invalid (no '/', no leading '.', not empty)")


def list_datamodels(root: zarr.Group) -> list[str]:
    """Names of the datamodels groups in the store, sorted."""
    if DATAMODELS_GROUP not in root:
        return []
    group = root[DATAMODELS_GROUP]
    return sorted(name for name, _ in group.groups())  # type: ignore[union-attr]


def open_datamodels(root: zarr.Group, name: str) -> zarr.Group:
    """The group ``datamodels/<name>``; InputError naming the available ones if absent."""
    _check_name(name)
    names = list_datamodels(root)
    if name not in names:
        have = ", ".join(names) if names else "none"
        raise InputError(f"no datamodels named {name!r} in this store (available: {have})")
    return root[f"{DATAMODELS_GROUP}/{name}"]  # type: ignore[return-value]


def shard_ranges(n_targets: int, target_chunk: int) -> list[range]:
    """Column ranges of the shards: one per target chunk, the last one possibly short."""
    return [range(s, min(s + target_chunk, n_targets)) for s in range(0, n_targets, target_chunk)]


def create_datamodels(
    root: zarr.Group,
    name: str,
    *,
    n_train: int,
    n_targets: int,
    target_chunk: int,
    attrs: Mapping[str, Any],
    overwrite: bool = False,
) -> zarr.Group:
    """Create ``datamodels/<name>`` with every array at full size.

    Parameters
    ----------
    root : zarr.Group
        The store's root group (opened writable).
    name : str
        Group name.
    n_train : int
        Rows of ``weight`` (the mask width).
    n_targets : int
        Columns of ``weight`` / length of the per-target arrays.
    target_chunk : int
        Targets per chunk = per shard.
    attrs : mapping
        The fit description stored under ``attrs["datamodels"]``; JSON-able.
    overwrite : bool
        Replace an existing group of that name; otherwise refuse.

    Returns
    -------
    zarr.Group

    Raises
    ------
    InputError
        Invalid name or sizes, or the group exists and ``overwrite`` is False.
    """
    _check_name(name)
    if n_train <= 0 or n_targets <= 0 or not 1 <= target_chunk <= n_targets:
        raise InputError(f"invalid datamodels shape: n_train={n_train}, n_targets={n_targets}, target_chunk={target_chunk}")
    if name in list_datamodels(root):
        if not overwrite:
            raise InputError(f"datamodels {name!r} already exist in this store; pass overwrite to replace them")
        delete_datamodels(root, name)
    parent = root.require_group(DATAMODELS_GROUP)
    group = parent.create_group(name)
    row_chunk = max(1, min(n_train, _MAX_CHUNK_VALUES // target_chunk))
    group.create_array(
        "weight", shape=(n_train, n_targets), chunks=(row_chunk, target_chunk), dtype=np.float32,
        fill_value=0.0, dimension_names=("train", "target"), compressors=checked_compressors(), config=ARRAY_CONFIG,
    )
    for array_name, dtype in COLUMN_ARRAYS.items():
        fill = float("nan") if dtype.kind == "f" else 0
        group.create_array(
            array_name, shape=(n_targets,), chunks=(target_chunk,), dtype=dtype,
            fill_value=fill, dimension_names=("target",), compressors=checked_compressors(), config=ARRAY_CONFIG,
        )
    group.attrs[ATTRS_KEY] = {**dict(attrs), "target_chunk": int(target_chunk), "finished_shards": {}}
    return group


def delete_datamodels(root: zarr.Group, name: str) -> None:
    """Remove ``datamodels/<name>`` (must exist)."""
    open_datamodels(root, name)
    del root[f"{DATAMODELS_GROUP}/{name}"]


def _meta(group: zarr.Group) -> dict[str, Any]:
    try:
        return dict(group.attrs[ATTRS_KEY])  # type: ignore[arg-type]
    except KeyError as exc:
        raise StoreError(f"datamodels group {group.path!r} has no {ATTRS_KEY!r} attributes") from exc


def write_columns(group: zarr.Group, start: int, *, weight: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
    """Write targets ``[start, start + T_shard)`` of every array: whole chunks only.

    Parameters
    ----------
    group : zarr.Group
        A datamodels group (opened writable).
    start : int
        First column; must be a multiple of the target chunk.
    weight : ndarray, shape [N_train, T_shard]
    columns : mapping of str to ndarray, shape [T_shard]
        One entry per name in :data:`COLUMN_ARRAYS`.

    Raises
    ------
    StoreError
        A range that is not chunk-aligned (a concurrent writer could lose data), or
        arrays of the wrong shape.
    """
    chunk = int(_meta(group)["target_chunk"])
    w = group["weight"]
    n_train, n_targets = w.shape  # type: ignore[misc]
    stop = start + int(weight.shape[1])
    if start % chunk or not (stop % chunk == 0 or stop == n_targets) or stop > n_targets:
        raise StoreError(f"columns [{start}, {stop}) are not whole chunks of {chunk} targets (of {n_targets})")
    if weight.shape[0] != n_train:
        raise StoreError(f"weight has {weight.shape[0]} rows, the group {n_train}")
    missing = set(COLUMN_ARRAYS) - set(columns)
    if missing:
        raise StoreError(f"write_columns: missing {sorted(missing)}")
    w[:, start:stop] = np.asarray(weight, dtype=np.float32)  # type: ignore[index]
    for name, dtype in COLUMN_ARRAYS.items():
        values = np.asarray(columns[name], dtype=dtype)
        if values.shape != (stop - start,):
            raise StoreError(f"{name} has shape {values.shape}, expected ({stop - start},)")
        group[name][start:stop] = values  # type: ignore[index]


def finished_shards(group: zarr.Group) -> dict[int, dict[str, Any]]:
    """Receipts of the shards already written, by shard index."""
    return {int(k): dict(v) for k, v in _meta(group).get("finished_shards", {}).items()}


def mark_shard_finished(group: zarr.Group, shard: int, receipt: Mapping[str, Any]) -> None:
    """Record shard ``shard`` as written (single writer: the fitting process)."""
    meta = _meta(group)
    ledger = dict(meta.get("finished_shards", {}))
    ledger[str(int(shard))] = dict(receipt)
    meta["finished_shards"] = ledger
    group.attrs[ATTRS_KEY] = meta


def update_attrs(group: zarr.Group, **values: Any) -> None:
    """Merge ``values`` into the group's description (results, evaluations)."""
    group.attrs[ATTRS_KEY] = {**_meta(group), **values}


def read_datamodels(root: zarr.Group, name: str) -> Datamodels:
    """Read a datamodels group into memory.

    Raises
    ------
    InputError
        Unknown name (the message lists the available ones).
    """
    group = open_datamodels(root, name)
    meta = _meta(group)
    targets = meta.get("targets", [0, int(group["bias"].shape[0])])  # type: ignore[union-attr]
    return Datamodels(
        name=name,
        weight=np.asarray(group["weight"][...]),  # type: ignore[index]
        **{k: np.asarray(group[k][...]) for k in COLUMN_ARRAYS},  # type: ignore[index]
        targets=range(int(targets[0]), int(targets[1])),
        attrs=meta,
    )
