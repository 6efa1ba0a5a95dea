"""The codec chain every array in a store uses: zstd, then a crc32c checksum of the stored bytes."""

from __future__ import annotations

from typing import Any

import zarr.codecs

__all__ = ["checked_compressors", "ARRAY_CONFIG"]

# Completion comes from the ledger, never from whether a chunk file exists, so
# even an all-zero chunk is written (DESIGN.md, "The store").
ARRAY_CONFIG: dict[str, Any] = {"write_empty_chunks": True}


def checked_compressors() -> list[zarr.abc.codec.BytesBytesCodec]:
    """zstd for size, then crc32c so a corrupt chunk fails to decode."""
    return [zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()]
