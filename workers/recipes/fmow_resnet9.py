"""``fmow-resnet9``: ResNet-9 on FMoW, the published datamodels' second dataset, from a local WILDS folder.

The images are read from ``data_dir`` in the WILDS ``fmow_v1.1`` layout
(:mod:`workers.recipes._wilds_fmow`; nothing is downloaded) and resized once,
at setup, to ``image_size`` (Pillow's antialiased bilinear), then normalised
with the ImageNet statistics the published loader uses. ``split_scheme:
datamodels`` (the default) gives the published datamodels' examples in their
order: training images of 2012 from WILDS' train split, test images of 2012
from its test split, so a sweep's masks and margins line up with the published
``train_masks``/``test_margins`` columns.

The network and training are ``cifar10-resnet9``'s (62 classes; global max
pooling takes any input size). The published loader feeds 224×224 images;
the default 64×64 costs 1/12 of that per image, set ``image_size: 224`` to
train at the full resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, field_validator
from torch import nn

from storage.errors import RecipeError
from storage.layout import DatasetInfo
from workers.recipes._stacked import ArrayDataset
from workers.recipes._wilds_fmow import (
    FMOW_CATEGORIES,
    FmowSplit,
    SplitScheme,
    fmow_folder,
    load_images,
    read_fmow_split,
)
from workers.recipes.cifar10_resnet9 import Cifar10Resnet9, Resnet9Params, Resnet9Stack

__all__ = ["FmowResnet9Params", "FmowResnet9"]

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class FmowResnet9Params(Resnet9Params):
    """Parameters of ``fmow-resnet9``."""

    data_dir: Path = Field(description="folder holding fmow_v1.1 (the WILDS layout), or that folder itself")
    split_scheme: SplitScheme = Field(
        "datamodels", description="datamodels (2012 train/test, the published datamodels') or wilds (before 2013)"
    )
    image_size: int = Field(64, ge=8, le=224, description="side the images are resized to at setup")
    n_train: int | None = Field(None, ge=1, description="use only the first n_train training images")
    n_test: int | None = Field(None, ge=1, description="use only the first n_test test images")
    load_threads: int = Field(4, ge=1, description="threads decoding the PNG files at setup")

    @field_validator("data_dir")
    @classmethod
    def _check_folder(cls, value: Path) -> Path:
        fmow_folder(value)  # a RecipeError is a ValueError: reported against data_dir
        return value


class FmowResnet9(Cifar10Resnet9):
    """ResNet-9 on FMoW (WILDS layout), K models at once."""

    name = "fmow-resnet9"
    Params = FmowResnet9Params  # type: ignore[assignment]
    params: FmowResnet9Params  # type: ignore[assignment]

    def _split(self) -> FmowSplit:
        p = self.params
        split = read_fmow_split(fmow_folder(p.data_dir), p.split_scheme)
        for name, limit, available in (("train", p.n_train, split.train_rows), ("test", p.n_test, split.test_rows)):
            if limit is not None and limit > len(available):
                raise RecipeError(f"recipe.params.n_{name}: {limit} exceeds the {len(available)} {name} images")
        return FmowSplit(
            train_rows=split.train_rows[: p.n_train], train_labels=split.train_labels[: p.n_train],
            test_rows=split.test_rows[: p.n_test], test_labels=split.test_labels[: p.n_test],
        )

    def dataset_info(self) -> DatasetInfo:
        split = self._split()
        return DatasetInfo(name="fmow", n_train=len(split.train_rows), n_test=len(split.test_rows),
                           n_classes=len(FMOW_CATEGORIES))

    def load_arrays(self) -> ArrayDataset:
        p = self.params
        folder, split = fmow_folder(p.data_dir), self._split()

        def images(rows: np.ndarray) -> np.ndarray:
            return load_images(folder, rows, p.image_size, threads=p.load_threads)

        # uint8 until the device: normalised there with the published loader's ImageNet statistics.
        return ArrayDataset(
            x_train=images(split.train_rows), y_train=split.train_labels,
            x_test=images(split.test_rows), y_test=split.test_labels, n_classes=len(FMOW_CATEGORIES),
            mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        )

    def build_stack(self, num_models: int) -> nn.Module:
        return Resnet9Stack(num_models, self.params.width, len(FMOW_CATEGORIES))
