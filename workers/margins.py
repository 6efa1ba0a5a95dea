"""Margins: the standard per-example output of a trained classifier."""

from __future__ import annotations

import torch

__all__ = ["margins_from_logits"]


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit of the correct class minus the largest other logit.

    Parameters
    ----------
    logits : float tensor [K, N, C]
        The logits of K models on N examples with C classes (any float dtype;
        computed in float32 so bf16 logits do not lose the small differences).
    labels : int tensor [N]
        The correct class of every example, on the same device as ``logits``.

    Returns
    -------
    float32 tensor [K, N]
        Positive where the model classifies the example correctly.
    """
    logits = logits.float()
    index = labels.long().view(1, -1, 1).expand(logits.shape[0], -1, 1)
    correct = logits.gather(-1, index).squeeze(-1)
    # Mask out the correct class with -inf so the max runs over the others only.
    others = logits.scatter(-1, index, float("-inf")).amax(dim=-1)
    return correct - others
