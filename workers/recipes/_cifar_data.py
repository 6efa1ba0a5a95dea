"""The data side of the CIFAR-shaped recipes: CIFAR-10 from a local folder, or the generated digits32 task.

``dataset: cifar10`` reads the ``cifar-10-batches-py`` folder named by
``data_dir`` (nothing is downloaded; the folder is checked when the params are
validated, so a wrong path fails the spec before anything runs).
``dataset: digits32`` generates a learnable task of the same shape
(:mod:`workers.recipes._digits32`) for trying a sweep, a GPU or a cluster
without the data; its accuracy says nothing about CIFAR-10's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from storage.errors import RecipeError
from storage.layout import DatasetInfo
from workers.recipes._cifar_files import cifar_root, read_cifar_split
from workers.recipes._digits32 import DIGITS32_CLASSES, generate_digits32
from workers.recipes._stacked import ArrayDataset, StackedParams, StackedRecipe

__all__ = ["CifarDataParams", "CifarImageRecipe", "CIFAR_MEAN", "CIFAR_STD", "cifar_dataset_info", "load_cifar_arrays"]

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
_CIFAR_SIZES = (50_000, 10_000)


class CifarDataParams(StackedParams):
    """Where a CIFAR-shaped recipe's images come from (shared by ``cifar10-*``)."""

    dataset: Literal["cifar10", "digits32"] = Field(
        "cifar10", description="cifar10 (read from data_dir) or digits32 (a generated CIFAR-shaped task)"
    )
    data_dir: Path | None = Field(
        None, validate_default=True, description="folder holding cifar-10-batches-py (or that folder itself)"
    )
    verify_checksums: bool = Field(False, description="load CIFAR-10 through torchvision, which checks the md5 sums")
    n_train: int | None = Field(None, ge=1, description="use only the first n_train training images")
    n_test: int | None = Field(None, ge=1, description="use only the first n_test test images")

    @field_validator("data_dir")
    @classmethod
    def _check_folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        dataset = info.data.get("dataset", "cifar10")
        if value is None:
            if dataset == "cifar10":
                raise ValueError("required for dataset 'cifar10' (a folder holding cifar-10-batches-py)")
            return None
        # A RecipeError is a ValueError, so pydantic reports it against data_dir.
        cifar_root(value)
        return value


def _read_cifar(params: CifarDataParams, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
    if params.data_dir is None:  # excluded by the validator
        raise RecipeError("recipe.params.data_dir: required for dataset 'cifar10'")
    root = cifar_root(params.data_dir)
    if params.verify_checksums:
        from torchvision.datasets import CIFAR10

        try:
            dataset = CIFAR10(str(root), train=train, download=False)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise RecipeError(f"CIFAR-10 at {str(root)!r} failed torchvision's checks: {exc}") from None
        return np.asarray(dataset.data, dtype=np.uint8).transpose(0, 3, 1, 2), np.asarray(dataset.targets)
    return read_cifar_split(root, train=train)


def _limit(images: np.ndarray, labels: np.ndarray, limit: int | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    if limit is None:
        return images, labels
    if limit > len(labels):
        raise RecipeError(f"recipe.params.n_{split}: {limit} exceeds the {len(labels)} {split} images")
    return images[:limit], labels[:limit]


def cifar_dataset_info(params: CifarDataParams) -> DatasetInfo:
    """Name and sizes (reads the CIFAR-10 labels; digits32's sizes are its params')."""
    if params.dataset == "digits32":
        n_train, n_test = params.n_train or _CIFAR_SIZES[0], params.n_test or _CIFAR_SIZES[1]
        return DatasetInfo(name="digits32", n_train=n_train, n_test=n_test, n_classes=DIGITS32_CLASSES)
    _, train_labels = _limit(*_read_cifar(params, train=True), params.n_train, "train")
    _, test_labels = _limit(*_read_cifar(params, train=False), params.n_test, "test")
    return DatasetInfo(name="cifar10", n_train=len(train_labels), n_test=len(test_labels), n_classes=10)


def load_cifar_arrays(params: CifarDataParams) -> ArrayDataset:
    """Images uint8 [N, 3, 32, 32] with the per-channel statistics they are normalised with; labels int64 [N]."""
    if params.dataset == "digits32":
        info = cifar_dataset_info(params)
        x_train, y_train, x_test, y_test = generate_digits32(info.n_train, info.n_test)
        # The generated task's own statistics, from its training images.
        mean = np.array([x_train[:, c].mean() / 255.0 for c in range(3)], dtype=np.float32)
        std = np.array([x_train[:, c].std() / 255.0 for c in range(3)], dtype=np.float32)
    else:
        x_train, y_train = _limit(*_read_cifar(params, train=True), params.n_train, "train")
        x_test, y_test = _limit(*_read_cifar(params, train=False), params.n_test, "test")
        mean, std = CIFAR_MEAN, CIFAR_STD
    return ArrayDataset(
        x_train=np.ascontiguousarray(x_train, dtype=np.uint8), y_train=np.asarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.uint8), y_test=np.asarray(y_test, dtype=np.int64),
        n_classes=10, mean=mean, std=std,
    )


class CifarImageRecipe(StackedRecipe):
    """Base of the CIFAR-shaped recipes: data from :class:`CifarDataParams`, channels-last, compiled on CUDA."""

    params: CifarDataParams
    channels_last = True
    compile_pays_on_cuda = True

    def dataset_info(self) -> DatasetInfo:
        return cifar_dataset_info(self.params)

    def load_arrays(self) -> ArrayDataset:
        return load_cifar_arrays(self.params)
