"""How a stack is trained: the settings, the learning-rate schedule and the parameter groups."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

__all__ = ["Lookahead", "ParamGroup", "TrainConfig", "lr_factor", "total_steps"]


@dataclass(frozen=True)
class Lookahead:
    """Lookahead averaging (airbench): every ``every`` steps, pull an average toward the weights and restart from it.

    At step ``s`` of ``S`` the average keeps ``decay * (s / S) ** power`` of
    itself: little averaging early, more as the learning rate falls. The
    averaged weights (and batch-norm statistics) are the trained model.
    """

    every: int = 5
    decay: float = 0.95**5
    power: float = 3.0

    def keep(self, step: int, total: int) -> float:
        """Fraction of the running average kept at ``step`` (1-based) of ``total``."""
        return self.decay * (step / total) ** self.power


@dataclass(frozen=True)
class TrainConfig:
    """How a stack is trained (a recipe maps its params onto this).

    The loss is each model's mean over its batch (so ``lr`` is per mean-loss
    gradient) and ``epochs`` may be fractional: training stops after
    ``ceil(epochs * steps_per_epoch)`` steps.
    """

    epochs: float
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    #: Fraction of all steps spent warming the learning rate up linearly from
    #: ``initial_lr_fraction * lr`` to ``lr``; the rest decays linearly to
    #: ``final_lr_fraction * lr``.
    warmup_fraction: float = 0.2
    initial_lr_fraction: float = 0.0
    final_lr_fraction: float = 0.0
    lookahead: Lookahead | None = None


@dataclass(frozen=True)
class ParamGroup:
    """Parameters trained with their own learning-rate scale, weight decay or stopping epoch.

    ``weight_decay=None`` takes the config's; ``until_epoch`` stops the group
    (learning rate 0, so neither gradient nor decay moves it) from that epoch on.
    """

    params: Sequence[nn.Parameter] = field(default_factory=list)
    lr_scale: float = 1.0
    weight_decay: float | None = None
    until_epoch: float | None = None


def total_steps(n_subset: int, config: TrainConfig) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)`` for subsets of ``n_subset`` examples (at least one batch)."""
    per_epoch = n_subset // min(config.batch_size, n_subset)
    return per_epoch, max(1, math.ceil(per_epoch * config.epochs))


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """The learning-rate multiplier at ``step`` (0-based) of ``total``: linear warmup, then linear decay."""
    warmup = config.warmup_fraction * total
    if step < warmup:
        start = config.initial_lr_fraction
        return start + (1.0 - start) * (step + 1) / warmup
    remaining = max(total - warmup, 1.0)
    progress = min((step - warmup) / remaining, 1.0)
    return 1.0 - (1.0 - config.final_lr_fraction) * progress
