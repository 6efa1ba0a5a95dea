"""``digits-mlp``: a batched MLP on scikit-learn's bundled 8×8 digits.

Data: ``sklearn.datasets.load_digits`` (1,797 images shipped with
scikit-learn, nothing downloaded), pixels scaled to [0, 1]. The split is fixed:
the examples are ordered by 64-bit keys drawn from numpy's PCG64 bit generator
seeded with ``SeedSequence(split_seed)`` (raw bits only, stable across numpy
releases); the first ``n_train`` (default 1,297) train and the last 500 test.

Network, per model: linear(64→h) ReLU linear(h→h) ReLU linear(h→10), Adam.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from torch import nn

from storage.layout import DatasetInfo
from workers.batched import FullPrecision, GroupedLinear
from workers.recipes._stacked import ArrayDataset, SmallModelParams, StackedRecipe

__all__ = ["DigitsMlpParams", "DigitsMlp", "digits_split"]

_N_TOTAL, _N_TEST, _N_CLASSES, _N_FEATURES = 1797, 500, 10, 64


class DigitsMlpParams(SmallModelParams):
    """Parameters of ``digits-mlp``."""

    hidden: int = Field(64, ge=1, description="units of both hidden layers")
    lr: float = Field(0.005, gt=0, description="peak learning rate")
    split_seed: int = Field(0, ge=0, description="seed of the fixed train/test split")
    n_train: int = Field(_N_TOTAL - _N_TEST, ge=1, le=_N_TOTAL - _N_TEST, description="training examples used")


def digits_split(split_seed: int) -> ArrayDataset:
    """The digits split: x float32 [N, 64] in [0, 1], y int64 [N]; 1,297 train, 500 test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keys = np.random.PCG64(np.random.SeedSequence(split_seed)).random_raw(len(digits.target))
    order = np.argsort(keys, kind="stable")
    x = (digits.data / 16.0).astype(np.float32)[order]
    y = digits.target.astype(np.int64)[order]
    return ArrayDataset(
        x_train=x[:-_N_TEST], y_train=y[:-_N_TEST], x_test=x[-_N_TEST:], y_test=y[-_N_TEST:], n_classes=_N_CLASSES
    )


class DigitsMlp(StackedRecipe):
    """A two-hidden-layer MLP on the 8×8 digits, K models as batched matmuls."""

    name = "digits-mlp"
    Params = DigitsMlpParams
    params: DigitsMlpParams

    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo(name="sklearn-digits", n_train=self.params.n_train, n_test=_N_TEST, n_classes=_N_CLASSES)

    def load_arrays(self) -> ArrayDataset:
        full = digits_split(self.params.split_seed)
        n = self.params.n_train
        return ArrayDataset(
            x_train=full.x_train[:n], y_train=full.y_train[:n], x_test=full.x_test, y_test=full.y_test, n_classes=10
        )

    def build_stack(self, num_models: int) -> nn.Module:
        h = self.params.hidden
        return nn.Sequential(
            GroupedLinear(num_models, _N_FEATURES, h),
            nn.ReLU(),
            GroupedLinear(num_models, h, h),
            nn.ReLU(),
            FullPrecision(GroupedLinear(num_models, h, _N_CLASSES)),
        )
