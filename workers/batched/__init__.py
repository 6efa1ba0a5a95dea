"""Batched training: K models with stacked parameters trained at once.

See :mod:`workers.batched.layers` for the grouped layout and
:mod:`workers.batched.train` for the per-model randomness contract.
"""

from __future__ import annotations

from workers.batched.layers import (
    BatchedModule,
    GroupedBatchNorm,
    GroupedConv,
    GroupedLinear,
    from_grouped,
    init_stack,
    to_grouped,
)
from workers.batched.split import is_out_of_memory, run_in_parts
from workers.batched.train import (
    Augmentation,
    TrainConfig,
    autocast_for,
    fit_stack,
    lr_factor,
    model_generators,
    predict_logits,
    subset_positions,
)

__all__ = [
    "BatchedModule",
    "GroupedBatchNorm",
    "GroupedConv",
    "GroupedLinear",
    "from_grouped",
    "init_stack",
    "to_grouped",
    "is_out_of_memory",
    "run_in_parts",
    "Augmentation",
    "TrainConfig",
    "autocast_for",
    "fit_stack",
    "lr_factor",
    "model_generators",
    "predict_logits",
    "subset_positions",
]
