"""``cifar10-airbench``: a fast CIFAR-10 trainer of the airbench kind, K models per block.

Our own implementation of the ideas of Keller Jordan's airbench94 ("94% on
CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498), trained as a
stack of K independent models. Per model, on its own subset and seed:

* a **whitening first layer**: a frozen 2×2 convolution whose filters are the
  eigenvectors of the covariance of 2×2 patches of the model's own training
  images (the first ``whiten_images`` of its subset), scaled to unit variance,
  with their negatives (:mod:`workers.batched.whitening`); its bias trains for
  the first ``whiten_bias_epochs`` epochs only;
* **small widths**: three blocks of conv–pool–BN–GELU–conv–BN–GELU at 64, 256
  and 256 channels (identity-initialised convolutions), a 3×3 max pool and a
  linear head scaled by 1/9, in float32;
* **batch norm with a frozen scale** (only the shift learns, at 64× the
  learning rate) and a slow running average (momentum 0.6);
* SGD with Nesterov momentum 0.85 on label-smoothed (0.2) cross-entropy, a
  warmup from 0.2× to the peak over 23% of the steps and a decay to 0.07×,
  and **lookahead** averaging every 5 steps;
* **alternating flip and ±2-pixel translation**, drawn per model on the CPU and
  applied in one gather on the device;
* **test-time augmentation**: mirror and ±1-pixel translations (``tta_level`` 2).

The learning rate and weight decay are given as airbench gives them: per 1,024
examples and decoupled from the momentum (``kilostep_scale``), and converted
here to PyTorch's SGD on a per-model mean loss. The defaults are airbench94's
published settings (94% mean test accuracy on the full CIFAR-10 training set;
lower on the α-subsets a datamodels sweep trains on). On CUDA the data lives on
the device as bf16 channels-last, training runs under bf16 autocast, cuDNN
autotunes and the stack is compiled by default.

No copy of CIFAR-10 ships with any package: the tests and the training
benchmark train this recipe on ``dataset: digits32``, a generated CIFAR-shaped
task; accuracy on real CIFAR-10 is for users with the data to confirm
(``bench/bench_training.py --gpu --cifar-dir DIR`` prints it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import nn

from workers.batched import (
    MIRROR_TRANSLATE_VIEWS,
    MIRROR_VIEWS,
    PLAIN_VIEW,
    FlipTranslate,
    FullPrecision,
    GroupedBatchNorm,
    GroupedConv,
    GroupedLinear,
    Lookahead,
    ParamGroup,
    TestView,
    TrainConfig,
    conv_flops,
    patch_covariance,
    whitening_filters,
)
from workers.recipes._cifar_data import CifarDataParams, CifarImageRecipe

__all__ = ["Cifar10AirbenchParams", "Cifar10Airbench", "airbench_flops_per_image"]

_N_CLASSES, _WHITEN_PATCH = 10, 2


class Cifar10AirbenchParams(CifarDataParams):
    """Parameters of ``cifar10-airbench`` (defaults: airbench94's)."""

    epochs: float = Field(9.9, gt=0, description="passes over each model's subset (fractional: stops mid-epoch)")
    batch_size: int = Field(1024, ge=1, description="examples per step, per model")
    lr: float = Field(11.5, gt=0, description="learning rate per 1,024 examples, decoupled from the momentum")
    momentum: float = Field(0.85, ge=0, lt=1, description="Nesterov momentum")
    weight_decay: float = Field(0.0153, ge=0, description="weight decay per 1,024 examples, decoupled from the lr")
    bias_scaler: float = Field(64.0, gt=0, description="learning-rate multiplier of the batch-norm shifts")
    label_smoothing: float = Field(0.2, ge=0, lt=1, description="cross-entropy label smoothing")
    warmup_fraction: float = Field(0.23, ge=0, le=1, description="fraction of steps warming the lr up")
    whiten_bias_epochs: float = Field(3, ge=0, description="epochs during which the whitening layer's bias trains")
    whiten_images: int = Field(5000, ge=1, description="images of each model's subset that set its whitening")
    widths: tuple[int, int, int] = Field((64, 256, 256), description="channels of the three conv blocks")
    bn_momentum: float = Field(0.6, ge=0, lt=1, description="weight of the old running statistics in batch norm")
    output_scale: float = Field(1 / 9, gt=0, description="factor on the head's logits")
    translate: int = Field(2, ge=0, le=8, description="random translation in pixels (reflect-padded)")
    lookahead: bool = Field(True, description="lookahead averaging every 5 steps")
    tta_level: int = Field(2, ge=0, le=2, description="test-time views: 0 plain, 1 mirror, 2 mirror and translate")
    eval_batch_size: int = Field(
        500, ge=1, description="examples per forward pass when computing outputs (on the CPU, shared by the models)"
    )


class _ConvGroup(nn.Module):
    """conv → maxpool 2 → BN → GELU → conv → BN → GELU, K models in the grouped layout."""

    def __init__(self, k: int, cin: int, cout: int, bn_momentum: float) -> None:
        super().__init__()

        def norm() -> GroupedBatchNorm:
            # airbench's momentum is the old statistics' weight; PyTorch's the new batch's.
            return GroupedBatchNorm(k, cout, momentum=1.0 - bn_momentum, eps=1e-12, trainable_scale=False)

        self.body = nn.Sequential(
            GroupedConv(k, cin, cout, (3, 3), padding=1, bias=False, identity_init=True),
            nn.MaxPool2d(2),
            norm(),
            nn.GELU(),
            GroupedConv(k, cout, cout, (3, 3), padding=1, bias=False, identity_init=True),
            norm(),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Stack(nn.Module):
    """K airbench networks in the grouped layout: [B, K*3, 32, 32] → [B, K*10]."""

    def __init__(self, k: int, widths: Sequence[int], bn_momentum: float, output_scale: float) -> None:
        super().__init__()
        whiten_width = 2 * 3 * _WHITEN_PATCH**2
        self.whiten = GroupedConv(k, 3, whiten_width, (_WHITEN_PATCH, _WHITEN_PATCH), bias=True, trainable=False)
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            nn.GELU(),
            _ConvGroup(k, whiten_width, w1, bn_momentum),
            _ConvGroup(k, w1, w2, bn_momentum),
            _ConvGroup(k, w2, w3, bn_momentum),
            nn.MaxPool2d(3),
            nn.Flatten(),
        )
        self.head = FullPrecision(GroupedLinear(k, w3, _N_CLASSES, bias=False))
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_scale * self.head(self.body(self.whiten(x)))


def airbench_flops_per_image(widths: Sequence[int] = (64, 256, 256)) -> float:
    """Forward FLOPs (2 × multiply-adds of the convolutions and the head) of one model on one 32×32 image."""
    w1, w2, w3 = widths
    whiten = 2 * 3 * _WHITEN_PATCH**2
    sizes = [(3, whiten, 2, 31), (whiten, w1, 3, 31), (w1, w1, 3, 15), (w1, w2, 3, 15), (w2, w2, 3, 7),
             (w2, w3, 3, 7), (w3, w3, 3, 3)]  # (in, out, kernel side, output side)
    return conv_flops(sizes, (w3, _N_CLASSES))


class Cifar10Airbench(CifarImageRecipe):
    """An airbench-style CIFAR-10 trainer, K models at once with grouped convolutions."""

    name = "cifar10-airbench"
    Params = Cifar10AirbenchParams
    params: Cifar10AirbenchParams

    def build_stack(self, num_models: int) -> nn.Module:
        p = self.params
        return _Stack(num_models, p.widths, p.bn_momentum, p.output_scale)

    def _kilostep_scale(self) -> float:
        # Nesterov momentum m multiplies a constant gradient's steps by 1 + 1/(1-m):
        # airbench divides it out so lr and momentum can be tuned separately.
        return 1024 * (1 + 1 / (1 - self.params.momentum))

    def _sgd_lr(self) -> float:
        """PyTorch SGD's lr on a mean loss: airbench's per-summed-loss lr times the batch size."""
        p = self.params
        return p.lr / self._kilostep_scale() * p.batch_size

    def _decay_per_step(self) -> float:
        p = self.params
        return p.weight_decay * p.batch_size / self._kilostep_scale()

    def train_config(self) -> TrainConfig:
        p = self.params
        lr = self._sgd_lr()
        return TrainConfig(
            epochs=p.epochs, batch_size=p.batch_size, lr=lr, weight_decay=self._decay_per_step() / lr,
            label_smoothing=p.label_smoothing, optimizer="sgd", momentum=p.momentum, nesterov=True,
            warmup_fraction=p.warmup_fraction, initial_lr_fraction=0.2, final_lr_fraction=0.07,
            lookahead=Lookahead() if p.lookahead else None,
        )

    def param_groups(self, stack: nn.Module) -> Sequence[ParamGroup]:
        p = self.params
        biases = [m.bias for m in stack.modules() if isinstance(m, GroupedBatchNorm)]
        whiten = stack.whiten.bias  # type: ignore[union-attr]
        # The decay per step stays airbench's whatever the group's lr multiplier.
        bias_decay = self._decay_per_step() / (self._sgd_lr() * p.bias_scaler)
        return (
            ParamGroup(params=biases, lr_scale=p.bias_scaler, weight_decay=bias_decay),
            ParamGroup(params=[whiten], until_epoch=p.whiten_bias_epochs),
        )

    def prepare_stack(self, stack: nn.Module, *, x_train: torch.Tensor, positions: torch.Tensor) -> None:
        whiten: GroupedConv = stack.whiten  # type: ignore[assignment]
        images = positions[:, : self.params.whiten_images]
        covariance = patch_covariance(x_train, images, _WHITEN_PATCH)
        filters = whitening_filters(covariance, 3, _WHITEN_PATCH)  # [K, 24, 3, 2, 2]
        with torch.no_grad():
            whiten.weight.copy_(filters.reshape(whiten.weight.shape))
            if whiten.bias is not None:
                whiten.bias.zero_()

    def augmentation(self) -> FlipTranslate:
        return FlipTranslate(pad=self.params.translate)

    def test_views(self) -> tuple[TestView, ...]:
        return (PLAIN_VIEW, MIRROR_VIEWS, MIRROR_TRANSLATE_VIEWS)[self.params.tta_level]
