"""Shared machinery of the built-in recipes that train a stack of K models.

A subclass supplies its data (:meth:`StackedRecipe.load_arrays`), its network
(:meth:`StackedRecipe.build_stack`) and its training settings; this base class
does the rest the same way for every such recipe: data resident on the device,
per-model generators, automatic splitting of large blocks, margins and logits.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from storage.errors import BlockFailedError
from workers.batched import (
    Augmentation,
    TrainConfig,
    fit_stack,
    init_stack,
    model_generators,
    predict_logits,
    run_in_parts,
    subset_positions,
)
from workers.margins import margins_from_logits
from workers.recipe import Recipe, RecipeParams, TrainingBlock

__all__ = ["StackedParams", "SmallModelParams", "ArrayDataset", "StackedRecipe"]


class StackedParams(RecipeParams):
    """Parameters every stacked recipe accepts (subclasses change the defaults)."""

    epochs: int = Field(10, ge=1, description="passes over each model's subset")
    batch_size: int = Field(64, ge=1, description="examples per step, per model")
    lr: float = Field(0.01, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient by the optimiser")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    models_per_pass: int | None = Field(
        None, ge=1, description="train at most this many models at once (None: the whole block, halved on OOM)"
    )
    eval_batch_size: int = Field(1000, ge=1, description="examples per forward pass when computing outputs")

    def train_config(self, **recipe_specific: object) -> TrainConfig:
        """The trainer's settings from the shared fields, plus what the recipe fixes or adds."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                           **recipe_specific)  # type: ignore[arg-type]


class SmallModelParams(StackedParams):
    """What the small built-in models (``mnist1d-cnn``, ``digits-mlp``) add: Adam or SGD, small batches."""

    epochs: int = Field(20, ge=1, description="passes over each model's subset")
    batch_size: int = Field(32, ge=1, description="examples per step, per model")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam, or sgd with Nesterov momentum 0.9")

    def train_config(self, **recipe_specific: object) -> TrainConfig:
        return super().train_config(optimizer=self.optimizer, warmup_fraction=0.1, **recipe_specific)


@dataclass(frozen=True)
class ArrayDataset:
    """A classification dataset as arrays: ``x`` float32 [N, C, *S], ``y`` int64 [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


class StackedRecipe(Recipe):
    """A recipe that trains K copies of one network with stacked parameters."""

    supported_outputs = frozenset({"margins/test", "margins/train", "logits/test"})
    #: Average test logits over the input and its mirror image (image recipes).
    flip_average: bool = False

    def __init__(self, params: RecipeParams) -> None:
        super().__init__(params)
        self._device: torch.device | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        # The largest number of models that fit in memory at once, learnt from
        # out-of-memory retries so later blocks do not pay for them again.
        self._part_limit: int | None = None

    @abstractmethod
    def load_arrays(self) -> ArrayDataset:
        """The dataset as numpy arrays (called once per worker by :meth:`setup`)."""

    @abstractmethod
    def build_stack(self, num_models: int) -> nn.Module:
        """The network for ``num_models`` models on the CPU, uninitialised."""

    def train_config(self) -> TrainConfig:
        """The training hyper-parameters (by default, from the params' shared fields)."""
        return self.params.train_config()  # type: ignore[attr-defined]

    def augmentation(self) -> Augmentation | None:
        """Per-model random augmentation of training batches (default: none)."""
        return None

    def setup(self, device: str) -> None:
        data = self.load_arrays()
        self._device = torch.device(device)
        self._tensors = {
            "x_train": torch.as_tensor(data.x_train, dtype=torch.float32).to(self._device),
            "y_train": torch.as_tensor(data.y_train, dtype=torch.int64).to(self._device),
            "x_test": torch.as_tensor(data.x_test, dtype=torch.float32).to(self._device),
            "y_test": torch.as_tensor(data.y_test, dtype=torch.int64).to(self._device),
        }

    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        if self._device is None:
            raise BlockFailedError(f"block {block.block_id}: recipe {self.name!r} used before setup()")
        unknown = set(block.outputs) - self.supported_outputs
        if unknown:
            raise BlockFailedError(f"block {block.block_id}: recipe {self.name!r} cannot produce {sorted(unknown)}")
        masks = np.asarray(block.masks, dtype=bool)
        seeds = np.asarray(block.seeds, dtype=np.int64)
        n_train = self._tensors["x_train"].shape[0]
        if masks.ndim != 2 or masks.shape[1] != n_train or masks.shape[0] != seeds.shape[0]:
            raise BlockFailedError(
                f"block {block.block_id}: masks {masks.shape} and seeds {seeds.shape} do not fit "
                f"{n_train} training examples"
            )
        device = self._device
        limits = [v for v in (getattr(self.params, "models_per_pass", None), self._part_limit) if v is not None]
        # Models train together only when their subsets have the same size (equal
        # step counts). Generated masks always do; explicit masks files may not,
        # so such blocks train one group of equal sizes after another.
        sizes = masks.sum(axis=1)
        results: dict[str, np.ndarray] = {}
        for size in np.unique(sizes):
            rows = np.flatnonzero(sizes == size)
            part_results, part_size = run_in_parts(
                lambda part, rows=rows: self._train_part(
                    masks[rows[part]], seeds[rows[part]], block.outputs, device=device
                ),
                num_models=len(rows),
                max_models=min(limits) if limits else None,
            )
            if part_size < len(rows):
                self._part_limit = part_size
            for name, values in part_results.items():
                if name not in results:
                    results[name] = np.empty((masks.shape[0], *values.shape[1:]), dtype=values.dtype)
                results[name][rows] = values
        return results

    def _train_part(
        self, masks: np.ndarray, seeds: np.ndarray, outputs: tuple[str, ...], *, device: torch.device
    ) -> dict[str, np.ndarray]:
        """Train the models of ``masks`` [k, N_train] / ``seeds`` [k] and compute ``outputs``."""
        num_models = masks.shape[0]
        generators = model_generators(seeds)
        stack = self.build_stack(num_models)
        init_stack(stack, generators)
        stack.to(device)
        positions = torch.as_tensor(subset_positions(masks)).to(device)
        t = self._tensors
        fit_stack(
            stack,
            x_train=t["x_train"],
            y_train=t["y_train"],
            positions=positions,
            generators=generators,
            config=self.train_config(),
            augmentation=self.augmentation(),
        )
        eval_batch = int(getattr(self.params, "eval_batch_size", 1000))
        result: dict[str, np.ndarray] = {}
        test_logits = predict_logits(
            stack, t["x_test"], num_models=num_models, batch_size=eval_batch, flip_average=self.flip_average
        )
        result["margins/test"] = margins_from_logits(test_logits, t["y_test"]).cpu().numpy().astype(np.float32)
        if "logits/test" in outputs:
            result["logits/test"] = test_logits.cpu().numpy().astype(np.float32)
        if "margins/train" in outputs:
            train_logits = predict_logits(
                stack, t["x_train"], num_models=num_models, batch_size=eval_batch, flip_average=self.flip_average
            )
            result["margins/train"] = margins_from_logits(train_logits, t["y_train"]).cpu().numpy().astype(np.float32)
        return {name: result[name] for name in outputs}
