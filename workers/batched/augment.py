"""Per-model random image augmentation: drawn on the CPU from each model's generator, applied batched on the device.

Draws are made per training example of a model's subset (row ``j`` belongs to
the subset's ``j``-th example, in ascending index order), so an augmentation
can tie a choice to an example across epochs (the alternating flip); the
trainer reorders them with the epoch's shuffle. Applying them is one gather
over the whole ``[K, B]`` batch: no per-model or per-shift loop on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augmentation", "CropFlip", "FlipTranslate", "shift_and_flip"]


class Augmentation(ABC):
    """A per-model random augmentation of training images."""

    def start(self, generator: torch.Generator, n: int) -> torch.Tensor | None:
        """Draws made once per model before its first epoch (default: none)."""
        return None

    @abstractmethod
    def draw(self, generator: torch.Generator, n: int, epoch: int, state: torch.Tensor | None) -> torch.Tensor:
        """One model's draws for an epoch: int64 [n, 3] = (flip, dy, dx), row ``j`` for its ``j``-th example."""

    @abstractmethod
    def apply(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Augment ``x`` [K, B, C, H, W] with ``draws`` [K, B, 3] (on x's device); same shape out."""


def shift_and_flip(x: torch.Tensor, draws: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad by ``pad``, crop each image at its own (dy, dx) and mirror it where ``flip``.

    Parameters
    ----------
    x : float [K, B, C, H, W].
    draws : int64 [K, B, 3]: (flip, dy, dx) with dy, dx in ``0..2*pad``
        (``pad, pad`` is the centre crop).

    Returns
    -------
    float [K, B, C, H, W], laid out channels-last in memory (what the gather
    writes), which the grouped layout's channels-last copy reads in order.
    """
    k, b, c, height, width = x.shape
    flat = x.reshape(k * b, c, height, width)
    d = draws.reshape(k * b, 3).to(x.device)
    padded = F.pad(flat, (pad, pad, pad, pad), mode="reflect") if pad else flat
    rows = (d[:, 1:2] + torch.arange(height, device=x.device))[:, :, None]  # [KB, H, 1]
    span = torch.arange(width, device=x.device)
    # Mirroring is choosing the crop's columns right to left: free inside the gather.
    cols = d[:, 2:3] + torch.where(d[:, 0:1].bool(), width - 1 - span, span)  # [KB, W]
    image = torch.arange(k * b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their broadcast shape first: [KB, H, W, C].
    crops = padded[image, :, rows, cols[:, None, :]]
    return crops.permute(0, 3, 1, 2).reshape(k, b, c, height, width)


@dataclass(frozen=True)
class CropFlip(Augmentation):
    """Random crop after reflect-padding by ``pad`` and a random horizontal flip, drawn afresh each epoch."""

    pad: int = 4

    def draw(self, generator: torch.Generator, n: int, epoch: int, state: torch.Tensor | None) -> torch.Tensor:
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n, 1), generator=generator)
        return torch.cat([flips, offsets], dim=1)

    def apply(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        return shift_and_flip(x, draws, self.pad)


@dataclass(frozen=True)
class FlipTranslate(Augmentation):
    """airbench's augmentation: an alternating flip and a random translation by up to ``pad`` pixels.

    Each example gets one random flip bit before training; odd epochs mirror
    every example against that bit, so each one is seen both ways in every two
    epochs (more diverse than a fresh coin per epoch). Translations are drawn
    afresh every epoch.
    """

    pad: int = 2

    def start(self, generator: torch.Generator, n: int) -> torch.Tensor:
        return torch.randint(0, 2, (n,), generator=generator)

    def draw(self, generator: torch.Generator, n: int, epoch: int, state: torch.Tensor | None) -> torch.Tensor:
        if state is None:
            raise ValueError("FlipTranslate.draw needs the flip bits from start()")
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = (state + epoch) % 2
        return torch.cat([flips[:, None], offsets], dim=1)

    def apply(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        return shift_and_flip(x, draws, self.pad)
