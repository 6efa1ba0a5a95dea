"""Training and evaluating a stack of K models, each on its own subset and seed.

Per model ``k`` everything random comes from its own CPU ``torch.Generator``
seeded with ``seeds[k]``, consumed in a fixed order: first the initial weights
(:func:`workers.batched.layers.init_stack`), then, every epoch, the order of
its subset followed by its augmentation draws. Nothing depends on the other
models of the block, so a model trained in a block of K matches the same model
trained alone, up to float rounding.

The loss is the sum over models of each model's mean loss: its gradient with
respect to model ``k``'s parameters is exactly the gradient of model ``k``'s own
loss. Optimisers used here (SGD with momentum/Nesterov, Adam) act elementwise,
so one optimiser over the stacked parameters is K independent optimisers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.errors import BlockFailedError
from workers.batched.layers import from_grouped, to_grouped

__all__ = [
    "TrainConfig",
    "Augmentation",
    "model_generators",
    "subset_positions",
    "autocast_for",
    "lr_factor",
    "fit_stack",
    "predict_logits",
]

#: ``draw(generator, n) -> tensor [n, ...]``: one model's augmentation draws for an
#: epoch of ``n`` examples, made on the CPU from that model's generator.
DrawFn = Callable[[torch.Generator, int], torch.Tensor]
#: ``apply(x [K, B, C, *S], draws [K, B, ...]) -> x``: applies the draws on the device.
ApplyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Augmentation:
    """A per-model random augmentation: draws on the CPU, application batched on the device."""

    draw: DrawFn
    apply: ApplyFn


@dataclass(frozen=True)
class TrainConfig:
    """How a stack is trained (the recipe maps its params onto this)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    #: Fraction of all steps spent warming the learning rate up linearly from 0;
    #: the rest decays linearly to ``final_lr_fraction * lr``.
    warmup_fraction: float = 0.2
    final_lr_fraction: float = 0.0


def model_generators(seeds: np.ndarray) -> list[torch.Generator]:
    """One CPU generator per model, seeded with that model's seed (int64 [K])."""
    generators = []
    for seed in np.asarray(seeds, dtype=np.int64):
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
        generators.append(generator)
    return generators


def subset_positions(masks: np.ndarray) -> np.ndarray:
    """Indices of every model's training examples.

    Parameters
    ----------
    masks : bool [K, N_train], all rows with the same number of True entries.

    Returns
    -------
    int64 [K, n_subset], each row ascending.
    """
    counts = masks.sum(axis=1)
    if counts.size == 0 or counts.min() != counts.max() or counts[0] == 0:
        raise BlockFailedError(
            f"every model of a block needs the same non-zero subset size; got sizes {sorted(set(counts.tolist()))}"
        )
    # nonzero walks row-major, so reshaping yields each row's indices in order.
    return np.nonzero(masks)[1].reshape(masks.shape[0], int(counts[0])).astype(np.int64)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slow and inexact)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then linear decay."""
    warmup = config.warmup_fraction * total_steps
    if step < warmup:
        return (step + 1) / warmup
    remaining = max(total_steps - warmup, 1.0)
    progress = min((step - warmup) / remaining, 1.0)
    return 1.0 - (1.0 - config.final_lr_fraction) * progress


def _optimizer(stack: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in stack.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
        foreach=True,
    )


def fit_stack(
    stack: nn.Module,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    positions: torch.Tensor,
    generators: Sequence[torch.Generator],
    config: TrainConfig,
    augmentation: Augmentation | None = None,
) -> None:
    """Train the K models of ``stack`` in place, model ``k`` on ``positions[k]``.

    Parameters
    ----------
    stack : a module over the grouped layout: ``[B, K*C, *S]`` → ``[B, K*classes]``,
        already initialised (:func:`init_stack`) and on the data's device.
    x_train : float [N_train, C, *S], the whole training set on the device.
    y_train : int64 [N_train], on the device.
    positions : int64 [K, n_subset], on the device: each model's training examples.
    generators : K CPU generators, already past the init draws.
    config : the training hyper-parameters.
    augmentation : optional per-model random augmentation.

    Notes
    -----
    Every epoch visits ``n_subset // batch_size`` full batches (all models
    always see equal batch sizes; the left-over examples change every epoch
    because the order is reshuffled). A subset smaller than one batch is one batch.
    """
    device = x_train.device
    num_models, n_subset = positions.shape
    batch_size = min(config.batch_size, n_subset)
    steps_per_epoch = n_subset // batch_size
    total_steps = steps_per_epoch * config.epochs
    optimizer = _optimizer(stack, config)
    stack.train()
    step = 0
    for _ in range(config.epochs):
        orders = torch.stack([torch.randperm(n_subset, generator=g) for g in generators]).to(device)
        epoch_positions = positions.gather(1, orders)
        draws = None
        if augmentation is not None:
            draws = torch.stack([augmentation.draw(g, n_subset) for g in generators]).to(device)
        for b in range(steps_per_epoch):
            cols = slice(b * batch_size, (b + 1) * batch_size)
            batch_idx = epoch_positions[:, cols]
            xb = x_train[batch_idx]  # [K, B, C, *S]
            if augmentation is not None and draws is not None:
                xb = augmentation.apply(xb, draws[:, cols])
            yb = y_train[batch_idx]  # [K, B]
            factor = lr_factor(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor
            with autocast_for(device):
                logits = from_grouped(stack(to_grouped(xb)), num_models)  # [K, B, classes]
                losses = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]),
                    yb.reshape(-1),
                    reduction="none",
                    label_smoothing=config.label_smoothing,
                )
            loss = losses.view(num_models, -1).mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


def predict_logits(
    stack: nn.Module,
    x: torch.Tensor,
    *,
    num_models: int,
    batch_size: int = 1000,
    flip_average: bool = False,
) -> torch.Tensor:
    """Logits of all K models on the same examples.

    Parameters
    ----------
    stack : the trained stack (put in eval mode here).
    x : float [N, C, *S] on the stack's device.
    num_models : K.
    batch_size : examples per forward pass.
    flip_average : average the logits of ``x`` and of ``x`` mirrored along its
        last axis (test-time augmentation for images).

    Returns
    -------
    float32 [K, N, classes].
    """
    stack.eval()
    chunks = []
    with torch.inference_mode(), autocast_for(x.device):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            # Every model sees the same examples: repeat them along the channel axis.
            grouped = xb.repeat(1, num_models, *([1] * (xb.dim() - 2)))
            logits = from_grouped(stack(grouped), num_models).float()
            if flip_average:
                flipped = from_grouped(stack(grouped.flip(-1)), num_models).float()
                logits = 0.5 * (logits + flipped)
            chunks.append(logits)
    return torch.cat(chunks, dim=1)
