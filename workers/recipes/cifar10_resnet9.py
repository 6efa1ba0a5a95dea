"""``cifar10-resnet9``: the datamodels paper's model class on CIFAR-10.

CIFAR-10 is read from a local folder named by ``data_dir`` (the
``cifar-10-batches-py`` pickle format, as torchvision's ``CIFAR10`` reads it;
nothing is downloaded), or ``dataset: digits32`` generates a learnable task of
the same shape (:mod:`workers.recipes._cifar_data`).

Network, per model (``w`` = ``width``; the ResNet-9 of the fast CIFAR
trainers)::

    prep    conv3x3(3→w) BN ReLU                                   32×32
    layer1  conv3x3(w→2w) BN ReLU maxpool2 + residual(2× conv BN ReLU)   16×16
    layer2  conv3x3(2w→4w) BN ReLU maxpool2                         8×8
    layer3  conv3x3(4w→8w) BN ReLU maxpool2 + residual(2× conv BN ReLU)  4×4
    head    global max pool, linear(8w→10, no bias) × 0.125, in float32

Training, per model: random crop (reflect-pad 4) and horizontal flip drawn from
the model's own generator and applied batched on the device, SGD with Nesterov
momentum, linear warmup then linear decay of the learning rate, label
smoothing, weight decay, bf16 autocast on CUDA (channels-last, cuDNN autotuned,
``torch.compile`` by default there); test logits averaged over the image and
its mirror. Defaults follow the FFCV ResNet-9 CIFAR-10 example (24 epochs,
batch 512, peak lr 0.5 at epoch 5, wd 5e-4, smoothing 0.1). About 3.8× the
FLOPs of ``cifar10-airbench`` per model (:func:`resnet9_flops_per_image`).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from workers.batched import (
    MIRROR_VIEWS,
    PLAIN_VIEW,
    CropFlip,
    FullPrecision,
    GroupedBatchNorm,
    GroupedConv,
    GroupedLinear,
    TestView,
    TrainConfig,
    conv_flops,
)
from workers.recipes._cifar_data import CifarDataParams, CifarImageRecipe
from workers.recipes._stacked import StackedParams

__all__ = ["Resnet9Params", "Cifar10Resnet9Params", "Cifar10Resnet9", "Resnet9Stack", "resnet9_flops_per_image"]

_N_CLASSES = 10


class Resnet9Params(StackedParams):
    """The ResNet-9 training settings (shared with ``fmow-resnet9``)."""

    epochs: int = Field(24, ge=1, description="passes over each model's subset")
    width: int = Field(64, ge=1, description="channels of the first layer (then 2w, 4w, 8w)")
    batch_size: int = Field(512, ge=1, description="examples per step, per model")
    lr: float = Field(0.5, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty added to the gradient")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="cross-entropy label smoothing")
    warmup_fraction: float = Field(5 / 24, ge=0, le=1, description="fraction of steps warming the lr up from 0")
    flip_test: bool = Field(True, description="average test logits over each image and its mirror")


class Cifar10Resnet9Params(CifarDataParams, Resnet9Params):
    """Parameters of ``cifar10-resnet9``."""


def _conv_bn(k: int, cin: int, cout: int) -> list[nn.Module]:
    return [GroupedConv(k, cin, cout, (3, 3), padding=1, bias=False), GroupedBatchNorm(k, cout), nn.ReLU(inplace=True)]


class _Residual(nn.Module):
    def __init__(self, k: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(k, channels, channels), *_conv_bn(k, channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Resnet9Stack(nn.Module):
    """K ResNet-9s in the grouped layout: [B, K*3, H, W] → [B, K*classes] (any H, W ≥ 8)."""

    def __init__(self, k: int, width: int, n_classes: int = _N_CLASSES) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_conv_bn(k, 3, w),
            *_conv_bn(k, w, 2 * w),
            nn.MaxPool2d(2),
            _Residual(k, 2 * w),
            *_conv_bn(k, 2 * w, 4 * w),
            nn.MaxPool2d(2),
            *_conv_bn(k, 4 * w, 8 * w),
            nn.MaxPool2d(2),
            _Residual(k, 8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = FullPrecision(GroupedLinear(k, 8 * w, n_classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fixed 1/8 output scale keeps the initial logits small (fast CIFAR recipe).
        return 0.125 * self.head(self.body(x))


def resnet9_flops_per_image(width: int = 64) -> float:
    """Forward FLOPs (2 × multiply-adds of convs and the head) of one model on one image."""
    w = width
    sides = [(3, w, 32), (w, 2 * w, 32), (2 * w, 2 * w, 16), (2 * w, 2 * w, 16), (2 * w, 4 * w, 16),
             (4 * w, 8 * w, 8), (8 * w, 8 * w, 4), (8 * w, 8 * w, 4)]  # (in, out, output side), all 3×3
    return conv_flops([(cin, cout, 3, side) for cin, cout, side in sides], (8 * w, _N_CLASSES))


class Cifar10Resnet9(CifarImageRecipe):
    """ResNet-9 on CIFAR-10, K models at once with grouped convolutions and per-model batch norm."""

    name = "cifar10-resnet9"
    Params = Cifar10Resnet9Params
    params: Cifar10Resnet9Params

    def build_stack(self, num_models: int) -> nn.Module:
        return Resnet9Stack(num_models, self.params.width)

    def train_config(self) -> TrainConfig:
        p = self.params
        return p.train_config(optimizer="sgd", momentum=p.momentum, nesterov=True, warmup_fraction=p.warmup_fraction)

    def augmentation(self) -> CropFlip:
        return CropFlip(pad=4)

    def test_views(self) -> tuple[TestView, ...]:
        return MIRROR_VIEWS if self.params.flip_test else PLAIN_VIEW
