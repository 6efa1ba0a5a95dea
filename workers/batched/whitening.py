"""A whitening first layer per model, from the patch covariance of that model's own training images.

The fast CIFAR trainers fix their first convolution to the eigenvectors of the
covariance of the images' 2×2 patches, scaled by the inverse square roots of
the eigenvalues (and their negatives, so a following GELU keeps both signs).
Here each model uses only images of its own subset, so its whitening, like the
rest of its training, depends on nothing it was not given.
"""

from __future__ import annotations

import torch

__all__ = ["patch_covariance", "whitening_filters"]


def patch_covariance(
    x: torch.Tensor, positions: torch.Tensor, patch: int, *, chunk: int | None = None
) -> torch.Tensor:
    """Uncentred covariance of every ``patch × patch`` patch of each model's images.

    Parameters
    ----------
    x : [N, C, H, W] (any float dtype, any device): the training images.
    positions : int64 [K, n] on x's device: model ``k``'s images are ``x[positions[k]]``.
    patch : the patch side.
    chunk : images per model gathered at once (default: about 2**26 patch
        entries at a time, a quarter GiB of float32).

    Returns
    -------
    [K, C*patch*patch, C*patch*patch] (float32, or float64 for float64 x) on x's device; entries are
    ordered (channel, row, column) like a convolution weight's.
    """
    k, n = positions.shape
    c, height, width = x.shape[1:]
    dim = c * patch * patch
    per_image = (height - patch + 1) * (width - patch + 1) * dim
    chunk = chunk or max(1, (1 << 26) // (k * per_image))
    # float32 at least; float64 data (the exactness tests) stays float64.
    dtype = torch.promote_types(x.dtype, torch.float32)
    total = torch.zeros(k, dim, dim, dtype=dtype, device=x.device)
    count = 0
    for start in range(0, n, chunk):
        images = x[positions[:, start : start + chunk]].to(dtype)  # [K, m, C, H, W]
        # [K, m, C, H', W', p, p] -> one row per patch, (channel, row, column) within it.
        patches = images.unfold(3, patch, 1).unfold(4, patch, 1)
        rows = patches.permute(0, 1, 3, 4, 2, 5, 6).reshape(k, -1, dim)
        total += torch.bmm(rows.transpose(1, 2), rows)
        count += rows.shape[1]
    return total / count


def whitening_filters(covariance: torch.Tensor, channels: int, patch: int, *, eps: float = 5e-4) -> torch.Tensor:
    """Whitening convolution filters from per-model patch covariances.

    The eigendecomposition runs in float64 on the CPU, so every device gets the
    same filters. Each eigenvector's sign is fixed (its largest-magnitude entry
    positive) and they are sorted by decreasing eigenvalue, so the filters are
    a function of the covariance alone.

    Parameters
    ----------
    covariance : [K, D, D] with ``D = channels * patch * patch``.
    eps : added to the eigenvalues before the inverse square root.

    Returns
    -------
    [K, 2*D, channels, patch, patch] on the CPU (float32, float64 for a float64
    covariance): the D scaled eigenvectors followed by their negatives.
    """
    values, vectors = torch.linalg.eigh(covariance.detach().to("cpu", torch.float64))
    values, vectors = values.flip(-1), vectors.flip(-1)  # largest first
    largest = vectors.abs().argmax(dim=1, keepdim=True)  # [K, 1, D]
    signs = torch.sign(vectors.gather(1, largest))
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    # [K, D, D]: row i is eigenvector i over the square root of its eigenvalue.
    scaled = vectors.transpose(1, 2) / torch.sqrt(values.clamp_min(0.0) + eps)[:, :, None]
    filters = scaled.reshape(covariance.shape[0], -1, channels, patch, patch)
    out_dtype = torch.float64 if covariance.dtype == torch.float64 else torch.float32
    return torch.cat([filters, -filters], dim=1).to(out_dtype)
