"""Names, dtypes and shapes of the arrays in a sweep store (DESIGN.md, "The store")."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FORMAT_VERSION",
    "OutputName",
    "OUTPUT_NAMES",
    "MASKS",
    "DatasetInfo",
    "output_row_shape",
    "output_dtype",
    "output_dimensions",
]

#: Version of the store layout and metadata; a store of another version is refused
#: with a message naming both (docs/decisions.md, "Store").
FORMAT_VERSION = 3

OutputName = Literal["margins/test", "margins/train", "logits/test"]
OUTPUT_NAMES: tuple[OutputName, ...] = ("margins/test", "margins/train", "logits/test")
MASKS = "masks"


class DatasetInfo(BaseModel):
    """What the store needs to know about a recipe's dataset to size its arrays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="A short name of the dataset (mnist1d, cifar10, ...).")
    n_train: int = Field(ge=1, description="Training examples: the width of every mask.")
    n_test: int = Field(ge=1, description="Test examples: the width of the test margins.")
    n_classes: int = Field(ge=0, description="Classes (0 when unknown, as for imported margins).")


def output_row_shape(name: str, dataset: DatasetInfo) -> tuple[int, ...]:
    """Shape of one model's row of the per-model array ``name``."""
    if name == MASKS or name == "margins/train":
        return (dataset.n_train,)
    if name == "margins/test":
        return (dataset.n_test,)
    if name == "logits/test":
        return (dataset.n_test, dataset.n_classes)
    raise KeyError(name)


def output_dtype(name: str) -> np.dtype:
    """Storage dtype: masks are bool, every model output is float16 (as the published data)."""
    return np.dtype(bool) if name == MASKS else np.dtype(np.float16)


def output_dimensions(name: str) -> tuple[str, ...]:
    """Dimension names of the per-model array ``name`` (what xarray and other Zarr readers label axes by)."""
    if name == MASKS or name == "margins/train":
        return ("model", "train")
    if name == "margins/test":
        return ("model", "test")
    if name == "logits/test":
        return ("model", "test", "class")
    raise KeyError(name)
