"""Batched training: K models with stacked parameters trained at once.

See :mod:`workers.batched.layers` for the grouped layout,
:mod:`workers.batched.train` for the per-model randomness contract and
:mod:`workers.batched.backend` for the device settings a worker applies.
"""

from __future__ import annotations

from workers.batched.augment import Augmentation, CropFlip, FlipTranslate, shift_and_flip
from workers.batched.backend import (
    CompileSetting,
    CpuPrecision,
    configure_backend,
    cpu_has_amx,
    keep_host_allocations,
    training_dtype,
    use_compile,
)
from workers.batched.config import Lookahead, ParamGroup, TrainConfig, lr_factor, total_steps
from workers.batched.layers import (
    BatchedModule,
    FullPrecision,
    GroupedBatchNorm,
    GroupedConv,
    GroupedLinear,
    conv_flops,
    from_grouped,
    init_stack,
    repeat_for_models,
    to_grouped,
)
from workers.batched.split import ActivationBudget, is_out_of_memory, run_in_parts
from workers.batched.train import (
    MIRROR_TRANSLATE_VIEWS,
    MIRROR_VIEWS,
    PLAIN_VIEW,
    TestView,
    autocast_for,
    fit_stack,
    model_generators,
    predict_logits,
    subset_positions,
)
from workers.batched.whitening import patch_covariance, whitening_filters

__all__ = [
    "Augmentation",
    "CropFlip",
    "FlipTranslate",
    "shift_and_flip",
    "CompileSetting",
    "CpuPrecision",
    "configure_backend",
    "cpu_has_amx",
    "keep_host_allocations",
    "training_dtype",
    "use_compile",
    "Lookahead",
    "ParamGroup",
    "TrainConfig",
    "lr_factor",
    "total_steps",
    "BatchedModule",
    "FullPrecision",
    "GroupedBatchNorm",
    "GroupedConv",
    "GroupedLinear",
    "conv_flops",
    "from_grouped",
    "init_stack",
    "repeat_for_models",
    "to_grouped",
    "ActivationBudget",
    "is_out_of_memory",
    "run_in_parts",
    "MIRROR_TRANSLATE_VIEWS",
    "MIRROR_VIEWS",
    "PLAIN_VIEW",
    "TestView",
    "autocast_for",
    "fit_stack",
    "model_generators",
    "predict_logits",
    "subset_positions",
    "patch_covariance",
    "whitening_filters",
]
