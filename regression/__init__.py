"""Datamodel regression: SAGA LASSO paths for many targets at once, fitted from a store.

The public API:

* :class:`SolverConfig` — the solver's settings, declared once;
* :func:`saga_lasso_path` — the array API (numpy or torch in, :class:`LassoPathResult` out);
* :func:`solve_source` — the engine on any row source (streamed from a store or resident);
* :class:`SagaLassoPath` — a scikit-learn-style estimator;
* :func:`fit_datamodels`, :class:`FitResult` and :class:`FitProgress` — fitting
  ``datamodels/<name>`` in a sweep store, sharded by target, resumable.

Importing this package pulls in torch and pydantic but never Ray, zarr or the
store: :func:`fit_datamodels` and :class:`FitResult` are imported from
:mod:`regression.fit` on first use. The algorithm is described in
:mod:`regression.engine`; LDS evaluation lives in :mod:`regression.lds`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from regression.config import SolverConfig
from regression.engine import solve_source
from regression.estimator import SagaLassoPath
from regression.path import saga_lasso_path
from regression.progress import FitProgress
from regression.results import LassoPathResult

if TYPE_CHECKING:
    from regression.fit import FitResult, fit_datamodels

__all__ = [
    "SolverConfig",
    "LassoPathResult",
    "saga_lasso_path",
    "solve_source",
    "SagaLassoPath",
    "fit_datamodels",
    "FitResult",
    "FitProgress",
]

# Importing regression.fit opens zarr and the store layer: deferred until asked for.
_LAZY = {"fit_datamodels", "FitResult"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from regression import fit

        return getattr(fit, name)
    raise AttributeError(f"module 'regression' has no attribute {name!r}")
