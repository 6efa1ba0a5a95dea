"""The published datamodels data formats: ``.npy`` masks/margins in, ``.pt``/``.npy`` weights out.

The MadryLab datamodels release stores, per model collection, ``masks`` as a bool
``.npy`` [M, N_train] and ``margins`` as a float16 ``.npy`` [M, N_test], and
datamodels as a ``.pt`` dict ``{"weight": [N_train, T], "bias": [T], "lam": [T]}``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from storage.datamodels import read_datamodels
from storage.errors import InputError
from storage.layout import DatasetInfo
from storage.metadata import ImportProvenance, import_metadata
from storage.sweep_store import SweepStore

__all__ = ["ImportResult", "import_npy", "export"]


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_npy` wrote."""

    store: str
    num_models: int
    n_train: int
    n_test: int
    block: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def import_npy(
    masks_path: str | Path,
    margins_path: str | Path,
    store_path: str | Path,
    *,
    block: int = 1000,
    dataset_name: str = "imported",
    n_classes: int = 0,
    progress: bool = False,
) -> ImportResult:
    """Create a store from published ``.npy`` masks and margins, block by block.

    Both files are memory-mapped, so files larger than memory import; every check
    (shapes, dtypes, NaN margins) runs before the store is created.

    Parameters
    ----------
    masks_path : path
        Bool ``.npy`` of shape [M, N_train].
    margins_path : path
        Float ``.npy`` of shape [M, N_test] (stored as float16).
    store_path : path
        Where to create the store (must not exist).
    block : int
        Rows per block/chunk; must divide M (the store has no partial blocks).
    dataset_name : str
        Recorded as the store's dataset name.
    n_classes : int
        Recorded in the dataset info (0: unknown; the release has no logits).
    progress : bool
        Show a rich progress bar.

    Returns
    -------
    ImportResult

    Raises
    ------
    InputError
        Unreadable files, non-bool masks, mismatched row counts, non-finite
        margins, a block that does not divide M, an existing store path.
    """
    started = time.perf_counter()
    masks = _load(masks_path, "masks")
    margins = _load(margins_path, "margins")
    if masks.ndim != 2 or margins.ndim != 2:
        raise InputError(f"masks and margins must be 2-D; got {masks.shape} and {margins.shape}")
    if masks.dtype != np.bool_:
        raise InputError(f"masks must be a bool .npy, got dtype {masks.dtype}")
    if margins.dtype.kind != "f":
        raise InputError(f"margins must be a float .npy, got dtype {margins.dtype}")
    m, n_train = masks.shape
    if margins.shape[0] != m:
        raise InputError(f"masks have {m} rows, margins {margins.shape[0]}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1 or m % block:
        raise InputError(f"block={block!r} must be a positive divisor of the {m} rows (e.g. {_divisors_near(m, block)})")
    if Path(store_path).exists():
        raise InputError(f"{str(store_path)!r} already exists; import creates a new store")
    with _progress(progress, "checking margins", m) as advance:
        for start in range(0, m, block):
            part = np.asarray(margins[start : start + block]).astype(np.float16)
            if not np.isfinite(part).all():
                raise InputError(f"margins have NaN or infinite values (as float16) in rows [{start}, {start + block})")
            advance(block)
    provenance = ImportProvenance(
        source="npy",
        files={"masks": str(Path(masks_path).resolve()), "margins/test": str(Path(margins_path).resolve())},
        alpha=_mean_fraction(masks, block),
    )
    store = SweepStore.create(store_path, import_metadata(
        provenance,
        dataset=DatasetInfo(name=dataset_name, n_train=int(n_train), n_test=int(margins.shape[1]), n_classes=int(n_classes)),
        num_models=int(m), block=int(block), outputs=("margins/test",),
    ))
    node = socket.gethostname()
    with _progress(progress, "importing blocks", m) as advance:
        for block_id in range(m // block):
            t = time.perf_counter()
            rows = slice(block_id * block, (block_id + 1) * block)
            written = store.write_block(
                block_id, {"masks": np.asarray(masks[rows]), "margins/test": np.asarray(margins[rows]).astype(np.float16)}
            )
            store.ledger.mark_complete(block_id, checksum=written.checksum, seconds=time.perf_counter() - t, node=node)
            advance(block)
    return ImportResult(store=str(store.path), num_models=int(m), n_train=int(n_train), n_test=int(margins.shape[1]),
                        block=int(block), seconds=time.perf_counter() - started)


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


def _mean_fraction(masks: np.ndarray, block: int) -> float | None:
    """Mean fraction of the training set per subset, over the first block of masks."""
    fraction = float(np.asarray(masks[: max(1, block)]).mean())
    return fraction if 0 < fraction < 1 else None


def _load(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} from {str(path)!r}: {exc}") from exc


def _divisors_near(m: int, block: object) -> str:
    target = block if isinstance(block, int) and block > 0 else 1000
    divisors = [d for d in range(1, min(m, 100_000) + 1) if m % d == 0]
    best = sorted(divisors, key=lambda d: abs(d - target))[:3]
    return ", ".join(str(d) for d in sorted(best))


class _progress:
    """A rich progress bar as a context manager yielding ``advance(n)`` (no-op when off)."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self._enabled, self._description, self._total = enabled, description, total
        self._bar = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self._enabled:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.__enter__()
        task = self._bar.add_task(self._description, total=self._total)
        return lambda n: self._bar.advance(task, n)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
