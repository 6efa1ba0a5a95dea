"""Layers holding the parameters of K independent models stacked along a model axis.

Activations use the *grouped layout* ``[B, K*C, *spatial]``: the channels of
model ``k`` are ``k*C:(k+1)*C``, and batch position ``b`` of model ``k`` is that
model's own ``b``-th example. In this layout a grouped convolution (``groups=K``)
is K independent convolutions, a batch norm over ``K*C`` channels computes each
model's statistics from its own batch only, and elementwise layers and pooling
need nothing special. No operation mixes models, so gradients never mix either.

Every layer draws its initial values per model from that model's own
``torch.Generator`` (on the CPU, so the init is the same on every device), in a
fixed order, so model ``k`` starts from the same weights whether it is trained
in a block of 64 or alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BatchedModule",
    "GroupedConv",
    "GroupedBatchNorm",
    "GroupedLinear",
    "init_stack",
    "to_grouped",
    "from_grouped",
]


class BatchedModule(nn.Module):
    """A module whose parameters have a leading model axis of length ``num_models``."""

    def __init__(self, num_models: int) -> None:
        super().__init__()
        self.num_models = num_models

    def init_model(self, k: int, generator: torch.Generator) -> None:
        """Draw model ``k``'s parameters from ``generator`` (default: nothing to draw)."""


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    # PyTorch's default init of Linear/Conv (kaiming_uniform with a=sqrt(5)) is
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias alike.
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * bound


class GroupedConv(BatchedModule):
    """K independent ``Conv1d`` or ``Conv2d`` layers run as one grouped convolution.

    Parameters
    ----------
    num_models : K.
    in_channels, out_channels : per model.
    kernel_size : per spatial dimension; its length (1 or 2) picks Conv1d/Conv2d.
    stride, padding : as in ``torch.nn.functional.conv1d/conv2d``.
    bias : whether each model has a bias.

    Shapes
    ------
    input ``[B, K*in_channels, *S]`` → output ``[B, K*out_channels, *S']``.
    Parameters: ``weight [K, out, in, *kernel]``, ``bias [K, out]``.
    """

    def __init__(
        self,
        num_models: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(num_models)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        if len(self.kernel_size) not in (1, 2):
            raise ValueError(f"kernel_size must have 1 or 2 entries, got {kernel_size!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(num_models, out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(num_models, out_channels)) if bias else None
        self._conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d

    def init_model(self, k: int, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        with torch.no_grad():
            self.weight[k].copy_(_uniform(tuple(self.weight.shape[1:]), bound, generator))
            if self.bias is not None:
                self.bias[k].copy_(_uniform((self.out_channels,), bound, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.num_models
        if len(self.kernel_size) == 1 and self.in_channels == 1:
            return self._single_channel_1d(x)
        weight = self.weight.reshape(k * self.out_channels, self.in_channels, *self.kernel_size)
        bias = None if self.bias is None else self.bias.reshape(-1)
        return self._conv(x, weight, bias, stride=self.stride, padding=self.padding, groups=k)

    def _single_channel_1d(self, x: torch.Tensor) -> torch.Tensor:
        # With one input channel per model, oneDNN's grouped convolution is a
        # slow depthwise-like kernel on CPU; unfolding the signal and contracting
        # with a batched matmul gives the same result about twice as fast.
        batch, k = x.shape[0], self.num_models
        cols = F.pad(x, (self.padding, self.padding)).unfold(2, self.kernel_size[0], self.stride)  # [B, K, L', k]
        y = torch.einsum("bklj,kcj->bkcl", cols, self.weight[:, :, 0, :])  # [B, K, out, L']
        if self.bias is not None:
            y = y + self.bias[None, :, :, None]
        return y.reshape(batch, k * self.out_channels, y.shape[-1])


class GroupedBatchNorm(BatchedModule):
    """K independent batch norms over ``channels`` channels each.

    Shapes
    ------
    input ``[B, K*channels, *S]`` → same shape. Parameters ``weight, bias [K, C]``;
    running statistics ``[K*C]``. Each channel's statistics come from its own
    model's batch, so this is exactly K separate ``BatchNorm`` layers.
    """

    def __init__(self, num_models: int, channels: int, *, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(num_models)
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(num_models, channels))
        self.bias = nn.Parameter(torch.zeros(num_models, channels))
        self.register_buffer("running_mean", torch.zeros(num_models * channels))
        self.register_buffer("running_var", torch.ones(num_models * channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight.reshape(-1),
            self.bias.reshape(-1),
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )


class GroupedLinear(BatchedModule):
    """K independent ``Linear`` layers as one batched matrix product.

    Shapes
    ------
    input ``[B, K*in_features]`` → output ``[B, K*out_features]``.
    Parameters ``weight [K, out, in]``, ``bias [K, out]``.
    """

    def __init__(self, num_models: int, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__(num_models)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_models, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_models, out_features)) if bias else None

    def init_model(self, k: int, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight[k].copy_(_uniform((self.out_features, self.in_features), bound, generator))
            if self.bias is not None:
                self.bias[k].copy_(_uniform((self.out_features,), bound, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        # [K, B, in] @ [K, in, out] -> [K, B, out]: one bmm for all models.
        xk = x.reshape(batch, self.num_models, self.in_features).transpose(0, 1)
        if self.bias is None:
            y = torch.bmm(xk, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), xk, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(batch, self.num_models * self.out_features)


def init_stack(stack: nn.Module, generators: Sequence[torch.Generator]) -> None:
    """Initialise every model of ``stack`` from its own generator.

    Model ``k`` draws from ``generators[k]`` layer by layer in module order, so
    its initial weights do not depend on how many other models share the stack.
    Call it on a stack built on the CPU, before moving it to its device.
    """
    for k, generator in enumerate(generators):
        for module in stack.modules():
            if isinstance(module, BatchedModule):
                module.init_model(k, generator)


def to_grouped(x: torch.Tensor) -> torch.Tensor:
    """Per-model batches ``[K, B, C, *S]`` → grouped layout ``[B, K*C, *S]``."""
    num_models, batch = x.shape[:2]
    return x.transpose(0, 1).reshape(batch, num_models * x.shape[2], *x.shape[3:])


def from_grouped(y: torch.Tensor, num_models: int) -> torch.Tensor:
    """Grouped outputs ``[B, K*C]`` → per-model ``[K, B, C]``."""
    return y.reshape(y.shape[0], num_models, -1).transpose(0, 1)
