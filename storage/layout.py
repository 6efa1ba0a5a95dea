"""Names, dtypes and shapes of the arrays in a sweep store (DESIGN.md, "The store")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "OutputName",
    "OUTPUT_NAMES",
    "MASKS",
    "DatasetInfo",
    "output_row_shape",
    "output_dtype",
]

FORMAT_VERSION = 1

OutputName = Literal["margins/test", "margins/train", "logits/test"]
OUTPUT_NAMES: tuple[OutputName, ...] = ("margins/test", "margins/train", "logits/test")
MASKS = "masks"


@dataclass(frozen=True)
class DatasetInfo:
    """What the store needs to know about a recipe's dataset to size its arrays."""

    name: str
    n_train: int
    n_test: int
    n_classes: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DatasetInfo:
        return cls(
            name=str(data["name"]),
            n_train=int(data["n_train"]),  # type: ignore[arg-type]
            n_test=int(data["n_test"]),  # type: ignore[arg-type]
            n_classes=int(data["n_classes"]),  # type: ignore[arg-type]
        )


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
