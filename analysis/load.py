"""Loading fitted datamodels for the applications, and where their results go.

Every application starts here: :func:`load_datamodels` opens a store's
``datamodels/<name>`` group and checks that it is usable (an ``InputError``
otherwise, before anything is written); :func:`default_out_dir` and
:func:`prepare_out_dir` say where results and figures go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regression.rows import from_runs
from storage.datamodels import list_datamodels, open_datamodels, read_datamodels
from storage.errors import InputError
from storage.location import LocalLocation, store_location
from storage.sweep_store import SweepStore

__all__ = [
    "LoadedDatamodels",
    "load_datamodels",
    "default_out_dir",
    "prepare_out_dir",
    "check_out_dir",
    "check_positive_int",
    "DatamodelsShape",
    "datamodels_shape",
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

    def choose_targets(self, targets: np.ndarray | list[int] | None, *, required: bool = False) -> np.ndarray:
        """Validated output indices: ``targets``, or every fitted target when None and not ``required``.

        Raises
        ------
        InputError
            None when ``required``, an empty selection, or an index outside the fitted targets.
        """
        if targets is None:
            if required:
                raise InputError("targets are required: which outputs to analyse (e.g. [0, 5])", params=("targets",))
            return np.arange(self.targets.start, self.targets.stop, dtype=np.int64)
        chosen = np.asarray(targets, dtype=np.int64).reshape(-1)
        if chosen.size == 0:
            raise InputError("no targets chosen", params=("targets",))
        outside = chosen[(chosen < self.targets.start) | (chosen >= self.targets.stop)]
        if outside.size:
            raise InputError(
                f"targets: {int(outside[0])} is outside the datamodels' targets [{self.targets.start}, {self.targets.stop})",
                params=("targets",),
            )
        return chosen

    def fit_rows(self) -> np.ndarray:
        """Store rows the datamodels were fitted on (train and validation)."""
        return from_runs(self.attrs.get("rows", []))

    def fit_fraction(self) -> float:
        """Mean fraction of the training set in the subsets the datamodels were fitted on."""
        meta = self.store.metadata
        alpha = meta.spec.alpha if meta.kind == "sweep" else meta.provenance.alpha  # type: ignore[union-attr]
        if alpha is not None:
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
            f"store {str(store.path)!r} has no datamodels; fit them first (regression.fit_datamodels, or `dmsweep fit`)"
        )
    if name is None:
        if len(names) > 1:
            raise InputError(f"store has several datamodels ({', '.join(names)}); choose one by name", params=("name",))
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
        raise InputError(f"datamodels {name!r} are not completely fitted (some shards missing); finish the fit first",
                         params=("name",))
    return LoadedDatamodels(
        store=store, name=name, output=str(dm.attrs.get("output", "margins/test")),
        weight=dm.weight.astype(np.float32, copy=False), bias=dm.bias.astype(np.float32, copy=False),
        val_mse=dm.val_mse, targets=dm.targets, attrs=dm.attrs,
    )


def check_positive_int(value: object, param: str) -> int:
    """``value`` as an int >= 1; InputError naming ``param`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{param} must be an int >= 1; got {value!r}", params=(param,))
    return value


def default_out_dir(store_path: str | Path, kind: str) -> Path:
    """Where an application writes by default: ``<store without .zarr>.analysis/<kind>/``.

    Next to a local store; in the working directory for one on S3 (results and
    figures are local files).
    """
    location = store_location(store_path)
    stem = location.name[: -len(".zarr")] if location.name.endswith(".zarr") else location.name
    parent = location.path.parent if isinstance(location, LocalLocation) else Path(".")
    return parent / f"{stem}.analysis" / kind


def prepare_out_dir(out: str | Path | None, store_path: str | Path, kind: str) -> Path:
    """The output folder (created); ``out`` if given, else :func:`default_out_dir`.

    Raises
    ------
    InputError
        ``out`` exists and is not a directory.
    """
    path = Path(out) if out is not None else default_out_dir(store_path, kind)
    if path.exists() and not path.is_dir():
        raise InputError(f"out {str(path)!r} exists and is not a directory", params=("out",))
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out_dir(out: str | Path | None) -> None:
    """Refuse an ``out`` that cannot be a directory, before any work (nothing is created)."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"out {str(out)!r} exists and is not a directory", params=("out",))


@dataclass
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


