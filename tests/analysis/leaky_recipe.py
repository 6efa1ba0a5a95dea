"""A test-only recipe with train–test leakage: digits whose training set holds copies of test examples.

Used through the recipe protocol's ``package.module:Class`` form as
``tests.analysis.leaky_recipe:LeakyDigits``: Ray puts the driver's working
directory (the repository root, where pytest runs) on its workers' path, so no
built-in recipe is edited.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from storage.layout import DatasetInfo
from workers.recipes._stacked import ArrayDataset
from workers.recipes.digits_mlp import DigitsMlp, DigitsMlpParams, digits_split

__all__ = ["LeakyDigitsParams", "LeakyDigits"]


class LeakyDigitsParams(DigitsMlpParams):
    """``digits-mlp`` params plus which test examples leak and how many test examples are used."""

    leak: list[int] = Field(default_factory=list, description="test indices copied to the end of the training set")
    n_test: int = Field(500, ge=1, le=500, description="use the first n_test test images")


class LeakyDigits(DigitsMlp):
    """The digits MLP on ``n_train`` training images followed by copies of the ``leak`` test images."""

    name = "leaky-digits"
    Params = LeakyDigitsParams
    params: LeakyDigitsParams

    def dataset_info(self) -> DatasetInfo:
        p = self.params
        return DatasetInfo(name="leaky-digits", n_train=p.n_train + len(p.leak), n_test=p.n_test, n_classes=10)

    def load_arrays(self) -> ArrayDataset:
        full = digits_split(self.params.split_seed)
        p, leak = self.params, np.asarray(self.params.leak, dtype=np.int64)
        x_test, y_test = full.x_test[: p.n_test], full.y_test[: p.n_test]
        return ArrayDataset(
            x_train=np.concatenate([full.x_train[: p.n_train], x_test[leak]]),
            y_train=np.concatenate([full.y_train[: p.n_train], y_test[leak]]),
            x_test=x_test, y_test=y_test, n_classes=10,
        )
