"""crc32c checksums of a block's data, as the worker computed it and as verify recomputes it."""

from __future__ import annotations

from collections.abc import Iterable

import crc32c
import numpy as np

__all__ = ["block_checksum"]


def block_checksum(arrays: Iterable[np.ndarray]) -> int:
    """crc32c over the C-ordered bytes of ``arrays``, in the order given."""
    value = 0
    for array in arrays:
        value = crc32c.crc32c(np.ascontiguousarray(array).data, value)
    return int(value)
