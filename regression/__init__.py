"""Datamodel regression: the streaming loader, the SAGA LASSO path solver, LDS.

Importing this package pulls in torch but never Ray or the store; the fit and
evaluation functions live in :mod:`regression.fit` and :mod:`regression.lds`.
"""

from __future__ import annotations

from regression.estimator import SagaLassoPath
from regression.saga import LassoPathResult, SagaConfig, saga_lasso_path, solve_source

__all__ = ["SagaLassoPath", "LassoPathResult", "SagaConfig", "saga_lasso_path", "solve_source"]
