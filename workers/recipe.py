"""The recipe protocol: what a worker needs to train a block of models.

A recipe knows its dataset and its training procedure. A worker process builds
the recipe once, calls :meth:`Recipe.setup` once (load the data, onto the GPU
when there is one) and then :meth:`Recipe.train_block` for block after block.

Recipes are named either by a built-in name (``mnist1d-cnn``) or by an import
path ``package.module:Class`` of a :class:`Recipe` subclass in the user's code.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from storage.errors import RecipeError
from storage.layout import DatasetInfo
from storage.validation import format_validation_error

__all__ = [
    "TrainingBlock",
    "RecipeParams",
    "Recipe",
    "BUILTIN_RECIPES",
    "resolve_recipe_class",
    "build_recipe",
]


@dataclass(frozen=True)
class TrainingBlock:
    """One block of models to train: the unit of work handed to a recipe.

    Attributes
    ----------
    block_id : the block's index in the store.
    indices : int64 [K], the model indices (store rows) of the block.
    masks : bool [K, N_train], model ``k`` trains on the examples where ``masks[k]``.
    seeds : int64 [K], model ``k``'s seed for its init, data order and augmentation.
    outputs : names from :data:`storage.layout.OUTPUT_NAMES` to return; always
        contains ``margins/test``.
    workdir : a scratch directory for this block (the logdir of legacy scripts).
    """

    block_id: int
    indices: np.ndarray
    masks: np.ndarray
    seeds: np.ndarray
    outputs: tuple[str, ...]
    workdir: Path


class RecipeParams(BaseModel):
    """Base class of every recipe's parameters: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipe(ABC):
    """A dataset plus a training procedure that trains K models at once.

    Subclasses set :attr:`name`, :attr:`Params` and :attr:`supported_outputs`,
    and implement :meth:`dataset_info`, :meth:`setup` and :meth:`train_block`.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[RecipeParams]] = RecipeParams
    #: Outputs the recipe can produce; ``margins/test`` is always among them.
    supported_outputs: ClassVar[frozenset[str]] = frozenset({"margins/test"})
    #: True for recipes that choose their own subsets (the legacy adapter): their
    #: ``train_block`` result also holds ``masks`` [K, N_train], which are stored
    #: instead of the generated ones.
    provides_masks: ClassVar[bool] = False
    #: True for recipes whose work runs on the device they are given (all that
    #: train): a worker given a GPU refuses to start such a recipe where torch
    #: cannot use CUDA, instead of training on the CPU unnoticed. The recipes
    #: that compute nothing (``noop``, ``faulty``) set it False.
    trains_on_device: ClassVar[bool] = True

    def __init__(self, params: RecipeParams) -> None:
        self.params = params

    @abstractmethod
    def dataset_info(self) -> DatasetInfo:
        """Dataset name and sizes (may load the data; runs on the driver at init)."""

    @abstractmethod
    def setup(self, device: str) -> None:
        """Load the dataset once per worker process, onto ``device`` (``cpu``, ``cuda``...)."""

    @abstractmethod
    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        """Train one model per row of ``block.masks`` and return the requested outputs.

        A model's outputs depend only on its own mask and seed, never on K or on
        the other models of the block (batched == one at a time, up to float
        tolerance).

        Returns
        -------
        dict mapping each name in ``block.outputs`` to a float32 array:
            ``margins/test`` [K, N_test], ``margins/train`` [K, N_train],
            ``logits/test`` [K, N_test, C]; plus ``masks`` bool [K, N_train]
            when :attr:`provides_masks`.
        """


BUILTIN_RECIPES: Mapping[str, str] = {
    "mnist1d-cnn": "workers.recipes.mnist1d_cnn:Mnist1dCnn",
    "digits-mlp": "workers.recipes.digits_mlp:DigitsMlp",
    "cifar10-resnet9": "workers.recipes.cifar10_resnet9:Cifar10Resnet9",
    "cifar10-airbench": "workers.recipes.cifar10_airbench:Cifar10Airbench",
    "fmow-resnet9": "workers.recipes.fmow_resnet9:FmowResnet9",
    "legacy": "workers.recipes.legacy:LegacyScript",
    "noop": "workers.recipes.noop:NoopRecipe",
    "faulty": "workers.recipes.faulty:FaultyRecipe",
}


def _import_class(path: str) -> type[Any]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"recipe {path!r} is not a built-in name or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"recipe {path!r}: cannot import module {module_name!r} ({exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RecipeError(f"recipe {path!r}: module {module_name!r} has no {attr!r}") from None


def resolve_recipe_class(name: str) -> type[Recipe]:
    """The :class:`Recipe` subclass for a built-in name or an import path."""
    if name in BUILTIN_RECIPES:
        cls = _import_class(BUILTIN_RECIPES[name])
    elif ":" in name:
        cls = _import_class(name)
    else:
        choices = ", ".join(sorted(BUILTIN_RECIPES))
        raise RecipeError(f"unknown recipe {name!r}; built-in recipes are {choices}, or give 'package.module:Class'")
    if not (isinstance(cls, type) and issubclass(cls, Recipe)):
        raise RecipeError(f"recipe {name!r} is not a subclass of workers.recipe.Recipe")
    return cls


def build_recipe(name: str, params: Mapping[str, Any] | None = None) -> Recipe:
    """Resolve ``name``, validate ``params`` against its ``Params`` model and build it.

    Building is cheap (no data is loaded) so the driver can validate a spec.
    """
    cls = resolve_recipe_class(name)
    try:
        validated = cls.Params.model_validate(dict(params or {}))
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, "recipe.params")) from None
    return cls(validated)
