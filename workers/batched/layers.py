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

Memory layout: the recipes run their stacks channels-last (``[B, H, W, K*C]``
in memory; 1-D signals as images of height 1). oneDNN's grouped convolution
trains two to three times faster that way on the CPU than in NCL or NCHW at
``mnist1d-cnn``'s shapes, as fast as a dense convolution of the same shape
(``bench/bench_training.py --probes``), and cuDNN's bf16 tensor-core kernels
want NHWC.
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
    "FullPrecision",
    "conv_flops",
    "init_stack",
    "to_grouped",
    "repeat_for_models",
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
    identity_init : after the default init, make the first ``in_channels``
        filters the identity (``torch.nn.init.dirac_``), as the fast CIFAR
        trainers do, so each block starts close to passing its input through.
    trainable : ``False`` freezes the weight (a layer set from the data, such as
        a whitening layer); the bias, if any, stays trainable.

    Shapes
    ------
    input ``[B, K*in_channels, *S]`` → output ``[B, K*out_channels, *S']``.
    Parameters: ``weight [K*out, in, *kernel]`` (model ``k``'s filters are rows
    ``k*out:(k+1)*out``: the grouped convolution's own weight, so a stack moved
    with ``memory_format=torch.channels_last`` keeps it channels-last with no
    copy per call), ``bias [K, out]``.
    """

    def __init__(
        self,
        num_models: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        bias: bool = True,
        identity_init: bool = False,
        trainable: bool = True,
    ) -> None:
        super().__init__(num_models)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        if len(self.kernel_size) not in (1, 2):
            raise ValueError(f"kernel_size must have 1 or 2 entries, got {kernel_size!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.identity_init = stride, padding, identity_init
        weight = torch.empty(num_models * out_channels, in_channels, *self.kernel_size)
        self.weight = nn.Parameter(weight, requires_grad=trainable)
        self.bias = nn.Parameter(torch.empty(num_models, out_channels)) if bias else None
        self._conv = F.conv1d if len(self.kernel_size) == 1 else F.conv2d

    def init_model(self, k: int, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        with torch.no_grad():
            weight = _uniform((self.out_channels, *self.weight.shape[1:]), bound, generator)
            if self.identity_init:
                nn.init.dirac_(weight[: min(self.in_channels, self.out_channels)])
            self.weight[self.rows(k)].copy_(weight)
            if self.bias is not None:
                self.bias[k].copy_(_uniform((self.out_channels,), bound, generator))

    def rows(self, k: int) -> slice:
        """Model ``k``'s filters in :attr:`weight`."""
        return slice(k * self.out_channels, (k + 1) * self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.reshape(-1)
        return self._conv(x, self.weight, bias, stride=self.stride, padding=self.padding, groups=self.num_models)


class GroupedBatchNorm(BatchedModule):
    """K independent batch norms over ``channels`` channels each.

    Shapes
    ------
    input ``[B, K*channels, *S]`` → same shape. Parameters ``weight, bias [K, C]``;
    running statistics ``[K*C]``. Each channel's statistics come from its own
    model's batch, so this is exactly K separate ``BatchNorm`` layers.
    ``trainable_scale=False`` keeps the scale at 1 (the fast CIFAR trainers' BN:
    only the shift learns). ``momentum`` is PyTorch's (the weight of the new batch).
    """

    def __init__(
        self,
        num_models: int,
        channels: int,
        *,
        momentum: float = 0.1,
        eps: float = 1e-5,
        trainable_scale: bool = True,
    ) -> None:
        super().__init__(num_models)
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(num_models, channels), requires_grad=trainable_scale)
        self.bias = nn.Parameter(torch.zeros(num_models, channels))
        self.register_buffer("running_mean", torch.zeros(num_models * channels))
        self.register_buffer("running_var", torch.ones(num_models * channels))

    def init_model(self, k: int, generator: torch.Generator) -> None:
        # Nothing random; resetting lets a stack be reused for the next block.
        span = slice(k * self.channels, (k + 1) * self.channels)
        with torch.no_grad():
            self.weight[k].fill_(1.0)
            self.bias[k].zero_()
            self.running_mean[span].zero_()
            self.running_var[span].fill_(1.0)

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
    input ``[B, K*in_features]`` → output ``[B, K*out_features]``; or per-model
    input ``[K, B, in_features]`` → output ``[K, B, out_features]`` (no layout
    change on either side: the form a head takes when its features were copied
    model-major anyway). Parameters ``weight [K, out, in]``, ``bias [K, out]``.
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
        if x.dim() == 3:
            return self.per_model(x, self.weight)
        batch = x.shape[0]
        xk = x.reshape(batch, self.num_models, self.in_features).transpose(0, 1)
        return self.per_model(xk, self.weight).transpose(0, 1).reshape(batch, self.num_models * self.out_features)

    def per_model(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``[K, B, in]`` @ ``weight [K, out, in]``ᵀ + bias → ``[K, B, out]``: one bmm for all models."""
        if self.bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight.transpose(1, 2))


class FullPrecision(nn.Module):
    """Runs ``module`` in float32 outside autocast: the layer whose outputs are stored.

    Under bf16 autocast a logit keeps 8 significant bits (about 0.03 on a margin
    of 5), coarser than the float16 the store keeps; the head is a tiny share of
    the work, so it runs in float32 (and matmuls stay IEEE float32: TF32 is left
    off for them, see :func:`workers.batched.backend.configure_backend`).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            # Half-precision activations are widened; float64 (the exactness tests) stays.
            return self.module(x.float() if x.element_size() < 4 else x)


def conv_flops(convs: Sequence[tuple[int, int, int, int]], head: tuple[int, int]) -> float:
    """Forward FLOPs (2 × multiply-adds) of one model on one image.

    ``convs`` lists each convolution as (in channels, out channels, kernel
    side, output side); ``head`` is the linear head's (in, out) features.
    """
    macs = sum(cin * cout * kernel**2 * side**2 for cin, cout, kernel, side in convs) + head[0] * head[1]
    return 2.0 * macs


def init_stack(stack: nn.Module, generators: Sequence[torch.Generator]) -> None:
    """Initialise every model of ``stack`` from its own generator.

    Model ``k`` draws from ``generators[k]`` layer by layer in module order, so
    its initial weights do not depend on how many other models share the stack.
    The values are drawn on the CPU and copied in, so the stack may already live
    on its device (a stack is reused block after block) and the init is the
    same on every device.
    """
    for k, generator in enumerate(generators):
        for module in stack.modules():
            if isinstance(module, BatchedModule):
                module.init_model(k, generator)


def _channels_last_like(batch: int, channels: int, spatial: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An empty ``[B, C, H, W]`` tensor laid out ``[B, H, W, C]`` in memory."""
    return torch.empty((batch, channels, *spatial), dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last)


def to_grouped(x: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """Per-model batches ``[K, B, C, *S]`` → grouped layout ``[B, K*C, *S]``.

    With ``channels_last`` (4-D results only) the copy is written straight in
    the ``[B, H, W, K*C]`` memory order the convolutions want, in one pass.
    """
    num_models, batch, channels = x.shape[:3]
    if channels_last and x.dim() == 5:
        out = _channels_last_like(batch, num_models * channels, x.shape[3:], x)
        out.permute(0, 2, 3, 1).view(batch, *x.shape[3:], num_models, channels).copy_(x.permute(1, 3, 4, 0, 2))
        return out
    return x.transpose(0, 1).reshape(batch, num_models * channels, *x.shape[3:])


def repeat_for_models(x: torch.Tensor, num_models: int, *, channels_last: bool = False) -> torch.Tensor:
    """The same examples for every model: ``[B, C, *S]`` → grouped ``[B, K*C, *S]`` (one copy)."""
    batch, channels = x.shape[:2]
    if channels_last and x.dim() == 4:
        out = _channels_last_like(batch, num_models * channels, x.shape[2:], x)
        nhwc = out.permute(0, 2, 3, 1).view(batch, *x.shape[2:], num_models, channels)
        nhwc.copy_(x.permute(0, 2, 3, 1)[:, :, :, None, :].expand_as(nhwc))
        return out
    repeated = x[:, None].expand(batch, num_models, *x.shape[1:])
    return repeated.reshape(batch, num_models * channels, *x.shape[2:])


def from_grouped(y: torch.Tensor, num_models: int) -> torch.Tensor:
    """Grouped outputs ``[B, K*C]`` → per-model ``[K, B, C]``."""
    return y.reshape(y.shape[0], num_models, -1).transpose(0, 1)
