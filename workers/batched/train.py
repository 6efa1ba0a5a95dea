"""Training and evaluating a stack of K models, each on its own subset and seed.

Per model ``k`` everything random comes from its own CPU ``torch.Generator``
seeded with ``seeds[k]``, consumed in a fixed order: first the initial weights
(:func:`workers.batched.layers.init_stack`), then the augmentation's one-off
draws, then, every epoch, the order of its subset followed by its augmentation
draws. Nothing depends on the other models of the block, so a model trained in
a block of K matches the same model trained alone, up to float rounding.

The loss is the sum over models of each model's mean loss: its gradient with
respect to model ``k``'s parameters is exactly the gradient of model ``k``'s own
loss. The optimisers used here (SGD with momentum/Nesterov, Adam) and the
lookahead average act elementwise, so one optimiser over the stacked parameters
is K independent optimisers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.errors import BlockFailedError
from workers.batched.augment import Augmentation
from workers.batched.config import ParamGroup, TrainConfig, lr_factor, total_steps
from workers.batched.layers import from_grouped, repeat_for_models, to_grouped
from workers.batched.split import ActivationBudget

__all__ = [
    "TestView",
    "PLAIN_VIEW",
    "MIRROR_VIEWS",
    "MIRROR_TRANSLATE_VIEWS",
    "model_generators",
    "subset_positions",
    "autocast_for",
    "fit_stack",
    "predict_logits",
]

#: The callable that runs the stack: the module itself, or the module compiled by ``torch.compile``.
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TestView:
    """One test-time view of the images: translated by ``shift`` pixels (reflect-padded), then mirrored if ``flip``."""

    weight: float
    flip: bool = False
    shift: int = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift:
            pad = abs(self.shift)
            height, width = x.shape[-2:]
            padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
            start = pad - self.shift
            x = padded[..., start : start + height, start : start + width]
        return x.flip(-1) if self.flip else x


#: The plain images only.
PLAIN_VIEW: tuple[TestView, ...] = (TestView(1.0),)
#: Each image and its mirror, averaged (the fast CIFAR trainers' test-time flip).
MIRROR_VIEWS: tuple[TestView, ...] = (TestView(0.5), TestView(0.5, flip=True))
#: airbench's test-time augmentation: half on the image and its mirror, half on
#: the mirrored pair translated one pixel up-left and one pixel down-right.
MIRROR_TRANSLATE_VIEWS: tuple[TestView, ...] = (
    TestView(0.25), TestView(0.25, flip=True),
    TestView(0.125, shift=1), TestView(0.125, flip=True, shift=1),
    TestView(0.125, shift=-1), TestView(0.125, flip=True, shift=-1),
)  # fmt: skip


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


def autocast_for(device: torch.device, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``dtype`` on ``device`` (float32: none); by default bf16 on CUDA and float32 elsewhere.

    See :func:`workers.batched.backend.training_dtype` for what the recipes pass.
    """
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _optimizer(
    stack: nn.Module, config: TrainConfig, groups: Sequence[ParamGroup]
) -> tuple[torch.optim.Optimizer, list[ParamGroup]]:
    """One optimiser over the stack, with ``groups`` first and every other trainable parameter last."""
    claimed = {id(p) for group in groups for p in group.params}
    rest = ParamGroup(params=[p for p in stack.parameters() if p.requires_grad and id(p) not in claimed])
    specs = [g for g in (*groups, rest) if any(p.requires_grad for p in g.params)]
    param_groups = [
        {
            "params": [p for p in spec.params if p.requires_grad],
            "lr": config.lr * spec.lr_scale,
            "weight_decay": config.weight_decay if spec.weight_decay is None else spec.weight_decay,
        }
        for spec in specs
    ]
    # The fused kernels update every parameter of a group in one pass (CPU and CUDA).
    if config.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=config.lr, fused=True), specs
    momentum = config.momentum
    optimizer = torch.optim.SGD(
        param_groups, lr=config.lr, momentum=momentum, nesterov=config.nesterov and momentum > 0, fused=True
    )
    return optimizer, specs


class _LookaheadState:
    """The running average of a stack's floating-point parameters and buffers."""

    def __init__(self, stack: nn.Module) -> None:
        self.tensors = [t for t in (*stack.parameters(), *stack.buffers()) if t.is_floating_point()]
        self.average = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def update(self, keep: float) -> None:
        for average, tensor in zip(self.average, self.tensors):
            average.lerp_(tensor, 1.0 - keep)
            tensor.copy_(average)


def fit_stack(
    stack: nn.Module,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    positions: torch.Tensor,
    generators: Sequence[torch.Generator],
    config: TrainConfig,
    augmentation: Augmentation | None = None,
    groups: Sequence[ParamGroup] = (),
    forward: Forward | None = None,
    channels_last: bool = False,
    budget: ActivationBudget | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Train the K models of ``stack`` in place, model ``k`` on ``positions[k]``.

    Parameters
    ----------
    stack : a module over the grouped layout: ``[B, K*C, *S]`` → ``[B, K*classes]``,
        already initialised (:func:`init_stack`) and on the data's device.
    x_train : [N_train, C, *S], the whole training set on the device.
    y_train : int64 [N_train], on the device.
    positions : int64 [K, n_subset], on the device: each model's training examples.
    generators : K CPU generators, already past the init draws.
    config : the training hyper-parameters.
    augmentation : optional per-model random augmentation.
    groups : parameters with their own learning-rate scale, decay or stop
        (the rest form one default group).
    forward : what runs the stack (its compiled form); ``stack`` itself by default.
    channels_last : build each batch in channels-last memory order (4-D inputs).
    budget : bound on what one step saves for backward (raises torch's OOM error).
    dtype : the autocast dtype (:func:`autocast_for`; default: bf16 on CUDA, float32 elsewhere).

    Notes
    -----
    Every epoch visits ``n_subset // batch_size`` full batches (all models
    always see equal batch sizes; the left-over examples change every epoch
    because the order is reshuffled). A subset smaller than one batch is one batch.
    """
    run = forward or stack
    device = x_train.device
    num_models, n_subset = positions.shape
    batch_size = min(config.batch_size, n_subset)
    steps_per_epoch, total = total_steps(n_subset, config)
    optimizer, specs = _optimizer(stack, config, groups)
    lookahead = _LookaheadState(stack) if config.lookahead is not None else None
    fixed = [augmentation.start(g, n_subset) for g in generators] if augmentation is not None else []
    stack.train()
    step = 0
    for epoch in range(-(-total // steps_per_epoch)):
        orders = torch.stack([torch.randperm(n_subset, generator=g) for g in generators]).to(device)
        epoch_positions = positions.gather(1, orders)
        draws = None
        if augmentation is not None:
            per_example = [augmentation.draw(g, n_subset, epoch, s) for g, s in zip(generators, fixed)]
            draws = torch.stack(per_example).to(device)
            draws = draws.gather(1, orders[:, :, None].expand(-1, -1, draws.shape[-1]))
        for b in range(min(steps_per_epoch, total - step)):
            cols = slice(b * batch_size, (b + 1) * batch_size)
            batch_idx = epoch_positions[:, cols]
            xb = x_train[batch_idx]  # [K, B, C, *S]
            if draws is not None and augmentation is not None:
                xb = augmentation.apply(xb, draws[:, cols])
            yb = y_train[batch_idx]  # [K, B]
            factor = lr_factor(step, total, config)
            for group, spec in zip(optimizer.param_groups, specs):
                stopped = spec.until_epoch is not None and epoch >= spec.until_epoch
                group["lr"] = 0.0 if stopped else config.lr * spec.lr_scale * factor
            with autocast_for(device, dtype), budget.step() if budget is not None else contextlib.nullcontext():
                logits = from_grouped(run(to_grouped(xb, channels_last=channels_last)), num_models)
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
            if lookahead is not None and config.lookahead is not None:
                if step % config.lookahead.every == 0 or step == total:
                    # The last step adopts the average as it stands (airbench's decay=1).
                    keep = 1.0 if step == total else config.lookahead.keep(step, total)
                    lookahead.update(keep)


def predict_logits(
    stack: nn.Module,
    x: torch.Tensor,
    *,
    num_models: int,
    batch_size: int = 1000,
    views: Sequence[TestView] = PLAIN_VIEW,
    forward: Forward | None = None,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits of all K models on the same examples, averaged over test-time views.

    Parameters
    ----------
    stack : the trained stack (put in eval mode here).
    x : [N, C, *S] on the stack's device.
    num_models : K.
    batch_size : examples per forward pass.
    views : weighted views of each batch (:data:`MIRROR_VIEWS` for a test-time flip).
    forward : what runs the stack (its compiled form); ``stack`` itself by default.
    channels_last : feed the stack channels-last batches (4-D inputs).
    dtype : the autocast dtype, as in :func:`fit_stack`.

    Returns
    -------
    float32 [K, N, classes], from the stack's float32 head.
    """
    run = forward or stack
    stack.eval()
    chunks = []
    with torch.inference_mode(), autocast_for(x.device, dtype):
        for start in range(0, x.shape[0], batch_size):
            # Every model sees the same examples, repeated along the channel axis.
            grouped = repeat_for_models(x[start : start + batch_size], num_models, channels_last=channels_last)
            logits = None
            for view in views:
                viewed = view(grouped)
                if channels_last:
                    # Every view in one memory layout: a compiled stack then needs one graph for them all.
                    viewed = viewed.contiguous(memory_format=torch.channels_last)
                out = view.weight * from_grouped(run(viewed), num_models).float()
                logits = out if logits is None else logits + out
            chunks.append(logits)
    return torch.cat(chunks, dim=1)
