"""The published datamodels data formats: ``.npy`` masks/margins in, ``.pt``/``.npy`` weights out.

The MadryLab datamodels data release (github.com/MadryLab/datamodels-data, README
"Training data") stores, per dataset and subset fraction, under
``{DATASET}/data/``::

    train_masks_{PCT}pct.npy     # [M x N_train] boolean
    test_margins_{PCT}pct.npy    # [M x N_test]  np.float16
    train_margins_{PCT}pct.npy   # [M x N_train] np.float16

where every matrix holds the models the datamodels were estimated from *plus
10,000 more kept for evaluation*; the published pipeline
(MadryLab/datamodels ``compute_datamodels.py``) fits on rows ``[0, num_train +
num_val)``, so those extra models are the last rows. Datamodels are a ``.pt``
dict ``{"weight": [N_train, T], "bias": [T], "lam": [T]}``.

:func:`import_npy` reads any such file (or any other ``.npy`` pair): any row count
(the store's last block is then short), bool or 0/1 uint8 masks, float16, float32
or float64 margins, optional train margins, and evaluation models kept either in
the same store (their row range recorded in the provenance: ``fit`` leaves them
out, ``eval`` uses them) or in a store of their own. Every input is read through
:func:`storage.npy_rows.open_npy`, a block of rows at a time, so memory stays at a
few blocks whatever the file size, and
a bad input found part-way (NaN margins, a non-0/1 mask, replicates that differ)
discards what was written, so it leaves nothing behind. Inputs and stores may be
local or ``s3://`` (range reads, ``requester_pays`` for the release's buckets).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from storage.datamodels import read_datamodels
from storage.errors import InputError
from storage.layout import DatasetInfo
from storage.metadata import ImportProvenance, import_metadata
from storage.location import LocalLocation, StoreLocation, is_uri, store_location
from storage.npy_rows import RowArray, open_npy
from storage.sweep_store import StoreProbe, SweepStore, probe_store

__all__ = ["ImportResult", "PUBLISHED_EVAL_MODELS", "published_files", "import_npy", "export"]

#: Models per setting the release keeps for evaluation, after the ones the datamodels were fitted on.
PUBLISHED_EVAL_MODELS = 10_000

#: Receives ``(rows done, rows in all)`` as an import goes.
ImportProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_npy` wrote.

    Attributes
    ----------
    store : str
        The store created.
    num_models, n_train, n_test, block : int
        Its rows, mask and margin widths, and rows per block (the last block may be shorter).
    outputs : list of str
        The outputs it records (``margins/test``, and ``margins/train`` when given).
    eval_rows : [int, int] or None
        The evaluation models' rows in ``store`` (None: none, or in ``eval_store``).
    eval_store : str or None
        The store holding the evaluation models, when they went to one of their own.
    replicates : int
        Models per mask recorded.
    bytes_read : int
        Bytes of input read.
    seconds : float
    """

    store: str
    num_models: int
    n_train: int
    n_test: int
    block: int
    outputs: list[str]
    eval_rows: list[int] | None
    eval_store: str | None
    replicates: int
    bytes_read: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def published_files(directory: str | Path, pct: int) -> dict[str, str]:
    """The release's training-data files for subset fraction ``pct`` (%) in ``directory``.

    Returns ``{"masks": .../train_masks_{pct}pct.npy, "margins": .../test_margins_{pct}pct.npy}``
    (``train_margins_{pct}pct.npy``, as large again as the masks, is read only when
    passed to :func:`import_npy` explicitly). ``directory`` may be an ``s3://``
    prefix: the objects are then looked for when they are opened.

    Raises
    ------
    InputError
        A local ``directory`` is not a folder, or the masks or test margins are
        missing from it (``params=("published",)``).
    """
    names = {"masks": f"train_masks_{pct}pct.npy", "margins": f"test_margins_{pct}pct.npy"}
    if is_uri(directory):
        return {key: f"{str(directory).rstrip('/')}/{name}" for key, name in names.items()}
    folder = Path(directory)
    if not folder.is_dir():
        raise InputError(f"published={str(directory)!r} is not a directory", params=("published",))
    missing = [name for name in names.values() if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"published={str(directory)!r} has no {', '.join(missing)} (the release's names for pct={pct})",
            params=("published", "pct"),
        )
    return {key: str(folder / name) for key, name in names.items()}


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_inputs(arrays: dict[str, RowArray], block: object, eval_models: object, replicates: object) -> tuple[int, int]:
    """Shapes, dtypes and counts, before anything is written; returns (rows, N_train)."""
    masks, margins = arrays["masks"], arrays["margins"]
    for param, array in arrays.items():
        if len(array.shape) != 2:
            raise InputError(f"{param} must be 2-D [models, examples]; got shape {array.shape}", params=(param,))
    if masks.dtype not in (np.dtype(bool), np.dtype(np.uint8)):
        raise InputError(f"masks must be bool or 0/1 uint8, got dtype {masks.dtype}", params=("masks",))
    for param in ("margins", "train_margins"):
        if param in arrays and (arrays[param].dtype.kind != "f" or arrays[param].dtype.itemsize > 8):
            raise InputError(f"{param} must be float16, float32 or float64, got dtype {arrays[param].dtype}",
                             params=(param,))
    m, n_train = masks.shape
    for param, array in arrays.items():
        if array.shape[0] != m:
            raise InputError(f"masks have {m} rows, {param} {array.shape[0]}: every file needs one row per model",
                             params=("masks", param))
    if "train_margins" in arrays and arrays["train_margins"].shape[1] != n_train:
        raise InputError(f"train_margins have {arrays['train_margins'].shape[1]} columns, the masks {n_train}",
                         params=("train_margins",))
    if m == 0 or n_train == 0 or margins.shape[1] == 0:
        raise InputError(f"masks {masks.shape} and margins {margins.shape} must be non-empty", params=("masks", "margins"))
    if not _is_count(block, 1):
        raise InputError(f"block={block!r} (expected an int >= 1)", params=("block",))
    if not _is_count(eval_models, 0) or eval_models >= m:  # type: ignore[operator]
        raise InputError(f"eval_models={eval_models!r} must be an int in [0, {m}): at least one model must remain "
                         "to fit on", params=("eval_models",))
    if not _is_count(replicates, 1) or m % replicates or eval_models % replicates:  # type: ignore[operator]
        raise InputError(
            f"replicates={replicates!r} does not match: it must be an int >= 1 dividing the {m} models and the "
            f"{eval_models} evaluation models (rows [i*R, (i+1)*R) share a mask)",
            params=("replicates",),
        )
    if block % replicates and block < m:  # type: ignore[operator]
        raise InputError(f"block={block} must be a multiple of replicates={replicates}: a block holds whole "
                         "replicate groups", params=("block", "replicates"))
    return int(m), int(n_train)


@dataclass
class _Target:
    """One store being built: the input rows it takes and where it goes."""

    first: int
    stop: int
    location: StoreLocation
    param: str
    store: SweepStore | None = None
    was_empty_dir: bool = False


def _row_bytes(array: RowArray) -> int:
    return int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize


def _source_name(source: str | Path) -> str:
    """How an input file is recorded in the provenance: a URI as given, a path made absolute."""
    return str(source) if is_uri(source) else str(Path(source).expanduser().resolve())


def _check_targets(targets: list[_Target]) -> None:
    """Every store to create must be creatable, before any is written."""
    for target in targets:
        probe = probe_store(target.location)
        target.was_empty_dir = probe is StoreProbe.EMPTY
        if probe not in (StoreProbe.ABSENT, StoreProbe.EMPTY):
            raise InputError(f"{target.location.uri!r} already exists; import creates a new store",
                             params=(target.param,))
        if isinstance(target.location, LocalLocation) and not target.location.path.parent.is_dir():
            raise InputError(f"directory {str(target.location.path.parent)!r} does not exist", params=(target.param,))


def _read_block(arrays: dict[str, RowArray], rows: slice, replicates: int) -> dict[str, np.ndarray]:
    """Input rows ``rows`` as the store's arrays (bool masks, float16 outputs), checked."""
    raw = arrays["masks"][rows]
    if raw.dtype != np.bool_:
        if raw.max(initial=0) > 1:
            bad = int(np.flatnonzero((raw > 1).any(1))[0]) + rows.start
            raise InputError(f"masks must hold only 0 and 1; row {bad} has other values", params=("masks",))
        raw = raw.astype(bool)
    if replicates > 1:
        groups = raw.reshape(-1, replicates, raw.shape[1])
        differ = (groups != groups[:, :1]).any(axis=(1, 2))
        if differ.any():
            first = rows.start + int(np.flatnonzero(differ)[0]) * replicates
            raise InputError(f"replicates={replicates} does not match: rows {first}..{first + replicates - 1} "
                             "should share one mask and do not", params=("replicates",))
    block = {"masks": raw}
    for param, output in (("margins", "margins/test"), ("train_margins", "margins/train")):
        if param not in arrays:
            continue
        values = arrays[param][rows]
        with np.errstate(over="ignore"):
            stored = values.astype(np.float16)
        bad = ~np.isfinite(stored)
        if bad.any():
            row = int(np.flatnonzero(bad.any(1))[0]) + rows.start
            raise InputError(f"{param} have NaN or infinite values (as float16) in row {row}", params=(param,))
        block[output] = stored
    return block


def import_npy(
    masks: str | Path,
    margins: str | Path,
    store: str | Path,
    *,
    train_margins: str | Path | None = None,
    block: int = 1000,
    eval_models: int = 0,
    eval_store: str | Path | None = None,
    replicates: int = 1,
    dataset_name: str = "imported",
    n_classes: int = 0,
    source: str = "npy",
    requester_pays: bool = False,
    progress: ImportProgress | None = None,
) -> ImportResult:
    """Create a store from ``.npy`` masks and margins (the published format), a block of rows at a time.

    Parameters
    ----------
    masks : path or ``s3://bucket/key``
        Bool or 0/1 uint8 ``.npy`` of shape [M, N_train].
    margins : path or ``s3://bucket/key``
        Float ``.npy`` [M, N_test] (float16, float32 or float64; stored as float16).
    store : path or ``s3://bucket/prefix``
        Where to create the store (must not exist).
    train_margins : path or ``s3://bucket/key``, optional
        Float ``.npy`` [M, N_train] of margins on the training examples.
    block : int
        Rows per block/chunk; the last block holds what is left (any M works).
    eval_models : int
        The last ``eval_models`` rows are models kept for evaluation (the release
        keeps :data:`PUBLISHED_EVAL_MODELS`): recorded in the provenance, so
        ``fit`` leaves them out and ``eval`` uses them, or written to ``eval_store``.
    eval_store : path, optional
        Put the evaluation models in a store of their own here (must not exist)
        instead of at the end of ``store``.
    replicates : int
        Models per mask: rows ``[i·R, (i+1)·R)`` must share one mask (checked).
    dataset_name : str
        Recorded as the store's dataset name.
    n_classes : int
        Recorded in the dataset info (0: unknown; the release's margins carry none).
    source : str
        Recorded as the provenance's source (``npy``; ``published`` for the release's layout).
    requester_pays : bool
        For ``s3://`` inputs: agree to pay for the requests (the release's buckets require it).
    progress : callable, optional
        ``progress(rows_done, rows_total)`` after every block.

    Returns
    -------
    ImportResult

    Raises
    ------
    InputError
        Unreadable files, masks that are not bool or 0/1, margins that are not
        float or have NaN/inf values (as float16), mismatched row counts, a bad
        ``block``, ``eval_models`` or ``replicates``, an existing store path; with
        ``params`` naming which. Nothing is written.
    """
    started = time.perf_counter()
    paths = {"masks": masks, "margins": margins}
    if train_margins is not None:
        paths["train_margins"] = train_margins
    arrays = {param: open_npy(path, param=param, requester_pays=requester_pays) for param, path in paths.items()}
    m, n_train = _check_inputs(arrays, block, eval_models, replicates)
    block = min(block, m)
    n_test = int(arrays["margins"].shape[1])
    fit_stop = m - eval_models if eval_store is not None else m
    targets = [_Target(first=0, stop=fit_stop, location=store_location(store, param="store"), param="store")]
    if eval_store is not None and eval_models:
        targets.append(_Target(first=m - eval_models, stop=m, param="eval_store",
                               location=store_location(eval_store, param="eval_store")))
    _check_targets(targets)

    outputs = ["margins/test"] + (["margins/train"] if "train_margins" in arrays else [])
    files = {output: _source_name(paths[param]) for param, output in
             (("masks", "masks"), ("margins", "margins/test"), ("train_margins", "margins/train")) if param in paths}
    alpha = float(arrays["masks"][0 : min(block, m)].astype(bool).mean())
    dataset = DatasetInfo(name=dataset_name, n_train=n_train, n_test=n_test, n_classes=int(n_classes))
    read = 0
    node = socket.gethostname()
    finished = False
    try:
        for index, target in enumerate(targets):
            rows = target.stop - target.first
            in_store = eval_models and eval_store is None
            provenance = ImportProvenance(
                source=source, files=files, alpha=alpha if 0 < alpha < 1 else None,
                description=(f"rows {target.first}:{target.stop} of the files (evaluation models)" if index else
                             f"rows 0:{target.stop} of the files"),
                eval_rows=(m - eval_models, m) if in_store else None, replicates=replicates,
            )
            target.store = SweepStore.create(target.location, import_metadata(
                provenance, dataset=dataset, num_models=rows, block=min(block, rows), outputs=outputs))
        done = 0
        for target in targets:
            made = target.store
            if made is None:  # every target was created above
                raise RuntimeError("import target was not created")
            for block_id in range(made.num_blocks):
                t = time.perf_counter()
                local = made.block_rows(block_id)
                rows = slice(target.first + local.start, target.first + local.stop)
                data = _read_block(arrays, rows, replicates)
                read += sum(len(local) * _row_bytes(array) for array in arrays.values())
                written = made.write_block(block_id, data)
                made.ledger.mark_complete(block_id, checksum=written.checksum, seconds=time.perf_counter() - t,
                                          node=node)
                done += len(local)
                if progress is not None:
                    progress(done, m)
            made.ledger.compact()  # one set of ledger arrays, not a journal record per block
        finished = True
    finally:
        if not finished:  # bad input found part-way (a NaN margin, replicates that differ): leave nothing
            for target in targets:
                if target.store is not None:
                    target.store.discard(keep_dir=target.was_empty_dir)
    return ImportResult(
        store=targets[0].location.uri, num_models=fit_stop, n_train=n_train, n_test=n_test, block=int(block),
        outputs=outputs, eval_rows=[m - eval_models, m] if eval_models and eval_store is None else None,
        eval_store=targets[1].location.uri if len(targets) > 1 else None,
        replicates=int(replicates), bytes_read=int(read), seconds=time.perf_counter() - started,
    )


def export(
    store_path: str | Path,
    name: str,
    fmt: Literal["pt", "npy"],
    out: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``datamodels/<name>`` in the published format.

    Parameters
    ----------
    store_path : path
    name : str
    fmt : {"pt", "npy"}
        ``"pt"``: one file, a dict of tensors ``weight [N_train, T]``, ``bias [T]``,
        ``lam [T]`` (loads with ``torch.load(..., weights_only=True)``).
        ``"npy"``: a directory with ``weight.npy``, ``bias.npy``, ``lam.npy``.
    out : path
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    Path
        What was written.
    """
    if fmt not in ("pt", "npy"):
        raise InputError(f"fmt={fmt!r} (expected 'pt' or 'npy')", params=("fmt",))
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} exists; pass overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"directory {str(out.parent)!r} does not exist")
    dm = read_datamodels(SweepStore.open(store_path, mode="r").group, name)
    if not np.isfinite(dm.bias).all():
        raise InputError(f"datamodels {name!r} are not completely fitted; finish the fit before exporting")
    arrays = {"weight": dm.weight.astype(np.float32), "bias": dm.bias.astype(np.float32), "lam": dm.lam.astype(np.float32)}
    if fmt == "pt":
        import torch  # only the .pt format needs it

        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, out)
    else:
        out.mkdir(exist_ok=True)
        for key, value in arrays.items():
            np.save(out / f"{key}.npy", value)
    return out
