"""Loading fitted datamodels for the applications, and parsing what a user selects.

Every application starts here: :func:`load_datamodels` opens a store's
``datamodels/<name>`` group and checks that it is usable; :func:`select_targets`
and :func:`parse_indices` turn a user's selection into validated indices (an
``InputError`` otherwise, before anything is written).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regression.rows import from_runs
from storage.datamodels import list_datamodels, open_datamodels, read_datamodels
from storage.errors import InputError
from storage.sweep_store import SweepStore

__all__ = [
    "LoadedDatamodels",
    "load_datamodels",
    "parse_indices",
    "read_index_file",
    "default_out_dir",
    "prepare_out_dir",
    "check_out_dir",
    "select_targets",
    "DatamodelsShape",
    "datamodels_shape",
    "parse_selection",
]

#: Held-out rows read at most to measure the residual error bar (enough for a
#: stable standard deviation, bounded memory on large stores).
_MAX_RESIDUAL_ROWS = 4096


@dataclass
class LoadedDatamodels:
    """A store's fitted datamodels in memory, with the mapping from targets to columns.

    Attributes
    ----------
    store : SweepStore
    name : str
    output : str
        The output the datamodels predict (``margins/test`` or ``margins/train``).
    weight : ndarray of float32, shape [N_train, T]
        Raw-indicator-space weights: ``mask @ weight + bias`` predicts the output.
    bias, val_mse : ndarray of float32, shape [T]
    targets : range
        The output columns the T datamodels are for: column ``j`` of ``weight``
        predicts output index ``targets[j]`` (a test or train example).
    attrs : dict
        The fit's description (rows, config, ...).
    """

    store: SweepStore
    name: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    val_mse: np.ndarray
    targets: range
    attrs: dict[str, Any]

    @property
    def n_train(self) -> int:
        return int(self.weight.shape[0])

    @property
    def target_kind(self) -> str:
        """``test`` or ``train``: which examples the targets are."""
        return "train" if self.output == "margins/train" else "test"

    def columns(self, targets: np.ndarray) -> np.ndarray:
        """Columns of ``weight`` for output indices ``targets`` (already validated)."""
        return np.asarray(targets, dtype=np.int64) - self.targets.start

    def fit_rows(self) -> np.ndarray:
        """Store rows the datamodels were fitted on (train and validation)."""
        return from_runs(self.attrs.get("rows", []))

    def fit_fraction(self) -> float:
        """Mean fraction of the training set in the subsets the datamodels were fitted on."""
        alpha = self.store.spec.get("alpha")
        if isinstance(alpha, (int, float)):
            return float(alpha)
        rows = self.fit_rows()[:256]
        return float(self.store.read("masks", rows).mean()) if rows.size else float("nan")

    def residual_std(self, columns: np.ndarray) -> tuple[np.ndarray, str, int]:
        """The datamodels' own error bar: the RMS of residuals on models the fit never saw.

        Uses completed rows of the store outside the fit's rows (at most
        :data:`_MAX_RESIDUAL_ROWS`); without any, the square root of the
        validation MSE recorded by the fit (rows used to choose λ, so slightly
        optimistic); without that either, NaN.

        Returns
        -------
        std : ndarray of float64, shape [len(columns)]
        source : str
            ``held-out rows``, ``validation rows`` or ``none``.
        n_rows : int
            Rows the residuals were measured on.
        """
        columns = np.asarray(columns, dtype=np.int64)
        held_out = np.setdiff1d(self.store.completed_rows(), self.fit_rows())[:_MAX_RESIDUAL_ROWS]
        if held_out.size >= 3:
            masks = self.store.read("masks", held_out).astype(np.float32)
            actual = self.store.read(self.output, held_out)[:, self.targets.start + columns].astype(np.float64)
            pred = masks @ self.weight[:, columns] + self.bias[columns]
            return np.sqrt(np.mean((pred - actual) ** 2, axis=0)), "held-out rows", int(held_out.size)
        val = self.val_mse[columns].astype(np.float64)
        if np.isfinite(val).all():
            n_val = int(from_runs(self.attrs.get("val_rows", [])).size)
            return np.sqrt(val), "validation rows", n_val
        return np.full(columns.size, np.nan), "none", 0


def _resolve_name(store: SweepStore, name: str | None) -> str:
    """``name``, or the store's only datamodels; InputError for none, several, or an unknown name."""
    names = list_datamodels(store.group)
    if not names:
        raise InputError(
            f"store {str(store.path)!r} has no datamodels; fit them first with `dmsweep fit STORE --name NAME`"
        )
    if name is None:
        if len(names) > 1:
            raise InputError(f"store has several datamodels ({', '.join(names)}); choose one with --name")
        return names[0]
    open_datamodels(store.group, name)  # an unknown name: the message lists the available ones
    return name


def load_datamodels(store_path: str | Path, *, name: str | None = None) -> LoadedDatamodels:
    """Open a store and read its datamodels ``name`` (the only ones when ``name`` is None).

    Raises
    ------
    InputError
        No store there, a store without datamodels, an unknown name (the message
        lists the available ones), several datamodels and no name, or datamodels
        whose fit did not finish.
    """
    store = SweepStore.open(store_path, mode="r")
    name = _resolve_name(store, name)
    dm = read_datamodels(store.group, name)
    if not np.isfinite(dm.bias).all():
        raise InputError(f"datamodels {name!r} are not completely fitted (some shards missing); finish the fit first")
    return LoadedDatamodels(
        store=store, name=name, output=str(dm.attrs.get("output", "margins/test")),
        weight=dm.weight.astype(np.float32, copy=False), bias=dm.bias.astype(np.float32, copy=False),
        val_mse=dm.val_mse, targets=dm.targets, attrs=dm.attrs,
    )


_RANGE = re.compile(r"^\s*(\d*)\s*:\s*(\d*)\s*$")


def parse_indices(text: str | None, *, size: int, what: str, lo: int = 0) -> np.ndarray:
    """Parse ``"all"``, ``"3,17,42"``, ``"0:100"`` or a mix (``"0:10,42"``) into sorted unique indices.

    Parameters
    ----------
    text : str or None
        The selection; None or ``"all"`` selects every index of ``[lo, size)``.
    size : int
        Indices must be ``< size``.
    what : str
        Names the option in error messages.
    lo : int
        Smallest valid index.

    Returns
    -------
    ndarray of int64, shape [K]

    Raises
    ------
    InputError
        Not integers, out of ``[lo, size)``, or empty.
    """
    if text is None or text.strip().lower() == "all":
        return np.arange(lo, size, dtype=np.int64)
    picked: list[np.ndarray] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RANGE.match(part)
        if match:
            start = int(match.group(1)) if match.group(1) else lo
            stop = int(match.group(2)) if match.group(2) else size
            if not lo <= start < stop <= size:
                raise InputError(f"{what}: range {part!r} is outside [{lo}, {size}) or empty")
            picked.append(np.arange(start, stop, dtype=np.int64))
            continue
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"{what} must be indices like 3,17,42 or ranges like 0:100; got {part!r}") from None
        if not lo <= value < size:
            raise InputError(f"{what}: index {value} is outside [{lo}, {size})")
        picked.append(np.array([value], dtype=np.int64))
    if not picked:
        raise InputError(f"{what} is empty")
    return np.unique(np.concatenate(picked))


def read_index_file(path: str | Path, *, size: int, what: str) -> np.ndarray:
    """Indices from a file: ``.npy`` of ints or of bool [size], or text of ints (commas/whitespace).

    Returns
    -------
    ndarray of int64, shape [K], sorted and unique.

    Raises
    ------
    InputError
        Unreadable file, wrong dtype or length, out-of-range values, or no indices.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: no file {str(path)!r}")
    if path.suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{what}: cannot read {str(path)!r} as .npy ({exc})") from None
        if data.dtype == np.bool_:
            if data.shape != (size,):
                raise InputError(f"{what}: a bool mask in {str(path)!r} must have shape ({size},), got {data.shape}")
            values = np.flatnonzero(data)
        elif np.issubdtype(data.dtype, np.integer):
            values = data.reshape(-1).astype(np.int64)
        else:
            raise InputError(f"{what}: {str(path)!r} holds {data.dtype}; expected integer indices or a bool mask")
    else:
        tokens = path.read_text().replace(",", " ").split()
        try:
            values = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            raise InputError(f"{what}: {str(path)!r} must hold integer indices separated by commas or whitespace") from None
    if values.size == 0:
        raise InputError(f"{what}: {str(path)!r} holds no indices")
    bad = values[(values < 0) | (values >= size)]
    if bad.size:
        raise InputError(f"{what}: index {int(bad[0])} in {str(path)!r} is outside [0, {size})")
    return np.unique(values)


def default_out_dir(store_path: str | Path, kind: str) -> Path:
    """Where an application writes by default: ``<store without .zarr>.analysis/<kind>/`` next to the store."""
    store = Path(store_path)
    stem = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.parent / f"{stem}.analysis" / kind


def prepare_out_dir(out: str | Path | None, store_path: str | Path, kind: str) -> Path:
    """The output folder (created); ``out`` if given, else :func:`default_out_dir`.

    Raises
    ------
    InputError
        ``out`` exists and is not a directory.
    """
    path = Path(out) if out is not None else default_out_dir(store_path, kind)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {str(path)!r} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out_dir(out: str | Path | None) -> None:
    """Refuse an ``out`` that cannot be a directory, before any work (nothing is created)."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a directory")


def select_targets(dm: LoadedDatamodels, text: str | None, *, what: str = "--targets") -> np.ndarray:
    """Output indices chosen by ``text`` (see :func:`parse_indices`) among the datamodels' targets."""
    return parse_indices(text, size=dm.targets.stop, lo=dm.targets.start, what=what)



@dataclass(frozen=True)
class DatamodelsShape:
    """What parsing a user's selection needs, read from attributes only (no weights)."""

    name: str
    targets: range
    n_train: int


def datamodels_shape(store_path: str | Path, *, name: str | None = None) -> DatamodelsShape:
    """The datamodels' name, target range and training-set size, with :func:`load_datamodels`'s checks.

    Raises
    ------
    InputError
        As :func:`load_datamodels` (no store, no datamodels, unknown name).
    """
    store = SweepStore.open(store_path, mode="r")
    name = _resolve_name(store, name)
    group = open_datamodels(store.group, name)
    n_train, n_targets = group["weight"].shape  # type: ignore[union-attr, misc]
    start, stop = dict(group.attrs["datamodels"]).get("targets", [0, n_targets])  # type: ignore[arg-type]
    return DatamodelsShape(name=name, targets=range(int(start), int(stop)), n_train=int(n_train))


def parse_selection(text: str | None, file: str | Path | None, *, size: int, what: str) -> np.ndarray | None:
    """Indices from ``--X TEXT`` or ``--X-file PATH`` (at most one); None when neither is given.

    Raises
    ------
    InputError
        Both given, or either invalid (see :func:`parse_indices`, :func:`read_index_file`).
    """
    if text is not None and file is not None:
        raise InputError(f"give {what} either as indices or as a file, not both")
    if file is not None:
        return read_index_file(file, size=size, what=f"{what}-file")
    if text is not None:
        if not text.strip():
            raise InputError(f"{what} is empty")
        return parse_indices(text, size=size, what=what)
    return None
