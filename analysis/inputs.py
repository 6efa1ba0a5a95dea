"""The raw inputs and labels behind a store's indices, for figures and input-space distances.

The store records only indices; the examples come from the sweep's recipe
(``load_arrays`` of the built-in stacked recipes, and of user recipes that
follow them). A store with no recipe (an import) or a recipe without
``load_arrays`` (the legacy adapter) has no examples: the applications still
answer, without pictures or input distances. A recipe that should have them but
cannot load them here (its data folder is missing on this machine) is an error
that says so, never a silent "no examples".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from storage.errors import DmsweepError, InputError, StoreError
from storage.sweep_store import SweepStore

__all__ = ["Examples", "load_examples"]

Kind = Literal["image", "curve"]


@dataclass(frozen=True)
class Examples:
    """A sweep's dataset as arrays.

    Attributes
    ----------
    x_train, x_test : ndarray of float32, shape [N, *S]
    y_train, y_test : ndarray of int64, shape [N]
    kind : ``image`` (drawn as pictures: [C, H, W] or a square vector) or
        ``curve`` (drawn as a line: 1-D signals such as mnist1d's 40 samples).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kind: Kind

    def inputs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of ``split`` (``train`` or ``test``)."""
        return (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)

    def picture(self, x: np.ndarray) -> np.ndarray:
        """One example ready to draw: [H, W] or [H, W, 3] in [0, 1] for images, [L] for curves."""
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "curve":
            return x.reshape(-1)
        if x.ndim == 3:  # [C, H, W]; recipes normalise, so rescale each picture for display
            x = np.moveaxis(x, 0, -1)
            x = x[..., 0] if x.shape[-1] == 1 else x
        else:
            side = math.isqrt(x.size)
            x = x.reshape(side, side)
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _kind(sample_shape: tuple[int, ...]) -> Kind:
    if len(sample_shape) == 3 and sample_shape[0] in (1, 3) and sample_shape[1] == sample_shape[2]:
        return "image"
    size = int(np.prod(sample_shape))
    if len(sample_shape) == 1 and size >= 16 and math.isqrt(size) ** 2 == size:
        return "image"  # a flattened square picture, e.g. the 8×8 digits
    return "curve"


def load_examples(store: SweepStore) -> Examples | None:
    """The dataset of the store's recipe, or None when the store has none to give.

    Parameters
    ----------
    store : SweepStore

    Returns
    -------
    Examples or None
        None for an imported store (no recipe) and for a recipe without
        ``load_arrays``.

    Raises
    ------
    InputError
        The recipe cannot load its data on this machine (the message says why).
    StoreError
        The recipe's data does not have the store's sizes.
    """
    from workers.recipe import build_recipe  # workers import torch; only needed for figures

    spec = store.spec
    if spec is None:
        return None
    recipe = build_recipe(spec.recipe.name, spec.recipe.params)
    load = getattr(recipe, "load_arrays", None)
    if load is None:
        return None
    try:
        data = load()
    except DmsweepError as exc:
        raise InputError(f"cannot load the examples of recipe {spec.recipe.name!r} for figures and distances: {exc}") from None
    dataset = store.dataset
    if len(data.x_train) != dataset.n_train or len(data.x_test) != dataset.n_test:
        raise StoreError(
            f"recipe {spec.recipe.name!r} loads {len(data.x_train)} train / {len(data.x_test)} test examples; "
            f"the store has {dataset.n_train} / {dataset.n_test}"
        )
    return Examples(
        x_train=np.asarray(data.x_train, dtype=np.float32), y_train=np.asarray(data.y_train, dtype=np.int64),
        x_test=np.asarray(data.x_test, dtype=np.float32), y_test=np.asarray(data.y_test, dtype=np.int64),
        kind=_kind(tuple(data.x_train.shape[1:])),
    )
