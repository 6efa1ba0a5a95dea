"""``cifar10-resnet9``: the datamodels paper's model class on CIFAR-10.

CIFAR-10 is read from a local folder named by ``data_dir`` (the
``cifar-10-batches-py`` pickle format, as torchvision's ``CIFAR10`` reads it;
nothing is downloaded). The folder is checked when the params are validated,
so a wrong path fails the spec before anything runs.

Network, per model (``w`` = ``width``; the ResNet-9 of the fast CIFAR
trainers)::

    prep    conv3x3(3→w) BN ReLU                                   32×32
    layer1  conv3x3(w→2w) BN ReLU maxpool2 + residual(2× conv BN ReLU)   16×16
    layer2  conv3x3(2w→4w) BN ReLU maxpool2                         8×8
    layer3  conv3x3(4w→8w) BN ReLU maxpool2 + residual(2× conv BN ReLU)  4×4
    head    global max pool, linear(8w→10, no bias) × 0.125

Training, per model: random crop (reflect-pad 4) and horizontal flip drawn from
the model's own generator and applied batched on the device, SGD with Nesterov
momentum, linear warmup then linear decay of the learning rate, label
smoothing, weight decay, bf16 autocast on CUDA; test logits averaged over the
image and its mirror. Defaults follow the FFCV ResNet-9 CIFAR-10 example
(24 epochs, batch 512, peak lr 0.5 at epoch 5, wd 5e-4, smoothing 0.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from storage.errors import RecipeError
from storage.layout import DatasetInfo
from workers.batched import Augmentation, GroupedBatchNorm, GroupedConv, GroupedLinear, TrainConfig
from workers.recipes._cifar_files import cifar_root, read_cifar_split
from workers.recipes._stacked import ArrayDataset, StackedParams, StackedRecipe

__all__ = ["Cifar10Resnet9Params", "Cifar10Resnet9", "draw_crop_flip", "apply_crop_flip", "resnet9_flops_per_image"]

_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
_PAD, _SIZE, _N_CLASSES = 4, 32, 10


class Cifar10Resnet9Params(StackedParams):
    """Parameters of ``cifar10-resnet9``."""

    data_dir: Path = Field(description="folder holding cifar-10-batches-py (or that folder itself)")
    verify_checksums: bool = Field(False, description="load through torchvision, which checks the official md5 sums")
    epochs: int = Field(24, ge=1, description="passes over each model's subset")
    width: int = Field(64, ge=1, description="channels of the first layer (then 2w, 4w, 8w)")
    batch_size: int = Field(512, ge=1, description="examples per step, per model")
    lr: float = Field(0.5, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, description="L2 penalty added to the gradient")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="cross-entropy label smoothing")
    warmup_fraction: float = Field(5 / 24, ge=0, le=1, description="fraction of steps warming the lr up from 0")
    flip_test: bool = Field(True, description="average test logits over each image and its mirror")
    n_train: int | None = Field(None, ge=1, description="use only the first n_train training images")
    n_test: int | None = Field(None, ge=1, description="use only the first n_test test images")
    eval_batch_size: int = Field(1000, ge=1, description="examples per forward pass when computing outputs")

    @field_validator("data_dir")
    @classmethod
    def _check_folder(cls, value: Path) -> Path:
        # A RecipeError is a ValueError, so pydantic reports it against data_dir.
        cifar_root(value)
        return value


def draw_crop_flip(generator: torch.Generator, n: int) -> torch.Tensor:
    """One model's augmentation for ``n`` images: int64 [n, 3] = (flip, dy, dx)."""
    offsets = torch.randint(0, 2 * _PAD + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n, 1), generator=generator)
    return torch.cat([flips, offsets], dim=1)


def apply_crop_flip(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Crop each image at its own offset after reflect-padding, and flip where drawn.

    Parameters
    ----------
    x : float [K, B, 3, 32, 32] on the device.
    draws : int64 [K, B, 3] (flip, dy, dx) on the same device.

    Returns
    -------
    float [K, B, 3, 32, 32].
    """
    k, b = x.shape[:2]
    flat = x.reshape(k * b, *x.shape[2:])
    d = draws.reshape(k * b, 3)
    padded = F.pad(flat, (_PAD, _PAD, _PAD, _PAD), mode="reflect")
    span = torch.arange(_SIZE, device=x.device)
    rows = (d[:, 1:2] + span)[:, :, None]  # [KB, 32, 1]
    cols = (d[:, 2:3] + span)[:, None, :]  # [KB, 1, 32]
    image = torch.arange(k * b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their broadcast shape first: [KB, 32, 32, C].
    crops = padded[image, :, rows, cols].permute(0, 3, 1, 2)
    flip = d[:, 0].bool()[:, None, None, None]
    crops = torch.where(flip, crops.flip(-1), crops)
    return crops.reshape(k, b, *x.shape[2:])


def _conv_bn(k: int, cin: int, cout: int) -> list[nn.Module]:
    return [GroupedConv(k, cin, cout, (3, 3), padding=1, bias=False), GroupedBatchNorm(k, cout), nn.ReLU()]


class _Residual(nn.Module):
    def __init__(self, k: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(k, channels, channels), *_conv_bn(k, channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Stack(nn.Module):
    """K ResNet-9s in the grouped layout: [B, K*3, 32, 32] → [B, K*10]."""

    def __init__(self, k: int, width: int) -> None:
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
        self.head = GroupedLinear(k, 8 * w, _N_CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fixed 1/8 output scale keeps the initial logits small (fast CIFAR recipe).
        return 0.125 * self.head(self.body(x))


def resnet9_flops_per_image(width: int = 64) -> float:
    """Forward FLOPs (2 × multiply-adds of convs and the head) of one model on one image."""
    w = width
    convs = [  # (cin, cout, spatial side)
        (3, w, 32), (w, 2 * w, 32), (2 * w, 2 * w, 16), (2 * w, 2 * w, 16),
        (2 * w, 4 * w, 16), (4 * w, 8 * w, 8), (8 * w, 8 * w, 4), (8 * w, 8 * w, 4),
    ]  # fmt: skip
    macs = sum(cin * cout * 9 * side * side for cin, cout, side in convs) + 8 * w * _N_CLASSES
    return 2.0 * macs


class Cifar10Resnet9(StackedRecipe):
    """ResNet-9 on CIFAR-10, K models at once with grouped convolutions and per-model batch norm."""

    name = "cifar10-resnet9"
    Params = Cifar10Resnet9Params
    params: Cifar10Resnet9Params
    flip_average = True

    def __init__(self, params: Cifar10Resnet9Params) -> None:  # type: ignore[override]
        super().__init__(params)
        self.flip_average = params.flip_test

    def _read(self, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
        root = cifar_root(self.params.data_dir)
        if self.params.verify_checksums:
            from torchvision.datasets import CIFAR10

            try:
                dataset = CIFAR10(str(root), train=train, download=False)
            except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
                raise RecipeError(f"CIFAR-10 at {str(root)!r} failed torchvision's checks: {exc}") from None
            images = np.asarray(dataset.data, dtype=np.uint8).transpose(0, 3, 1, 2)
            labels = np.asarray(dataset.targets, dtype=np.int64)
        else:
            images, labels = read_cifar_split(root, train=train)
        limit = self.params.n_train if train else self.params.n_test
        if limit is not None:
            if limit > len(labels):
                split = "train" if train else "test"
                raise RecipeError(f"recipe.params.n_{split}: {limit} exceeds the {len(labels)} {split} images")
            images, labels = images[:limit], labels[:limit]
        return images, labels

    def dataset_info(self) -> DatasetInfo:
        _, train_labels = self._read(train=True)
        _, test_labels = self._read(train=False)
        return DatasetInfo(name="cifar10", n_train=len(train_labels), n_test=len(test_labels), n_classes=_N_CLASSES)

    def load_arrays(self) -> ArrayDataset:
        def normalise(images: np.ndarray) -> np.ndarray:
            scaled = images.astype(np.float32) / 255.0
            return (scaled - _MEAN[:, None, None]) / _STD[:, None, None]

        x_train, y_train = self._read(train=True)
        x_test, y_test = self._read(train=False)
        return ArrayDataset(
            x_train=normalise(x_train), y_train=y_train, x_test=normalise(x_test), y_test=y_test, n_classes=_N_CLASSES
        )

    def build_stack(self, num_models: int) -> nn.Module:
        return _Stack(num_models, self.params.width)

    def train_config(self) -> TrainConfig:
        p = self.params
        return p.train_config(optimizer="sgd", momentum=p.momentum, nesterov=True, warmup_fraction=p.warmup_fraction)

    def augmentation(self) -> Augmentation:
        return Augmentation(draw=draw_crop_flip, apply=apply_crop_flip)
