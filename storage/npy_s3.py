"""A ``.npy`` object in S3 read by row ranges (HTTP range reads), without a copy.

The published datamodels data are large ``.npy`` files in S3 buckets (some
requester pays). :func:`open_s3_npy` reads the header (magic, version, header
length, then numpy's header dictionary) from the object's first bytes, and each
``[a:b]`` as the byte range of those rows, in parallel parts for large ranges.
Build one through :func:`storage.npy_rows.open_npy`, which opens local files too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.errors import InputError
from storage.location import S3Location
from storage.npy_header import HEADER_READ, NpyHeader, check_row_readable, parse_npy_header, row_range, rows_from_bytes

__all__ = ["S3Npy", "open_s3_npy"]

#: Ranges larger than this are fetched as parallel parts of this size.
_PART_BYTES = 16 << 20


class S3Npy:
    """A ``.npy`` object in S3 read by row ranges: a :class:`storage.npy_rows.RowArray`.

    Attributes
    ----------
    uri : str
    shape : tuple of int
    dtype : numpy.dtype
    """

    def __init__(self, uri: str, store: Any, key: str, header: NpyHeader) -> None:
        self.uri = uri
        self._store = store
        self._key = key
        self._header = header
        self.shape = header.shape
        self.dtype = header.dtype

    def __repr__(self) -> str:
        return f"S3Npy({self.uri!r}, shape={self.shape}, dtype={self.dtype})"

    def _read(self, start: int, stop: int) -> bytes:
        import obstore

        from storage.s3 import explain_s3_error

        try:
            if stop - start <= _PART_BYTES:
                return bytes(obstore.get_range(self._store, self._key, start=start, end=stop))
            starts = list(range(start, stop, _PART_BYTES))
            ends = [min(s + _PART_BYTES, stop) for s in starts]
            return b"".join(bytes(part) for part in obstore.get_ranges(self._store, self._key, starts=starts, ends=ends))
        except Exception as exc:
            raise explain_s3_error(exc, self.uri) from None

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows ``[a:b]`` (step 1) as a new C-ordered array."""
        if not isinstance(rows, slice):
            raise TypeError(f"{self.uri} is read by row slices [a:b]; got {rows!r}")
        start, count = row_range(rows, self._header, self.uri)
        first = self._header.data_offset + start * self._header.row_bytes
        data = self._read(first, first + count * self._header.row_bytes) if count else b""
        return rows_from_bytes(data, self._header, count).copy()


def open_s3_npy(location: S3Location, *, param: str = "source") -> S3Npy:
    """Open the ``.npy`` object at ``location`` (its prefix is the key); errors name ``param``.

    Raises
    ------
    InputError
        No such object, not a ``.npy``, object dtype, Fortran order, truncated;
        or the bucket cannot be used (credentials, endpoint, a missing bucket).
    """
    import obstore

    from storage.s3 import explain_s3_error, s3_store

    uri = location.uri
    bucket_store = s3_store(location.bucket, "", requester_pays=location.requester_pays)
    key = location.prefix
    try:
        meta = obstore.head(bucket_store, key)
        size = int(meta["size"])
        first = bytes(obstore.get_range(bucket_store, key, start=0, end=min(HEADER_READ, size)))
        header = parse_npy_header(first, where=uri, param=param)
        if isinstance(header, int):
            header = parse_npy_header(bytes(obstore.get_range(bucket_store, key, start=0, end=min(header, size))),
                                      where=uri, param=param)
    except FileNotFoundError:
        try:  # a HEAD's 404 has no body: ask the bucket itself whether it exists
            obstore.list_with_delimiter(bucket_store, key.rsplit("/", 1)[0] if "/" in key else None)
        except Exception as exc:
            raise explain_s3_error(exc, uri) from None
        raise InputError(f"cannot read {param}: no object at {uri}", params=(param,)) from None
    except InputError:
        raise
    except Exception as exc:
        raise explain_s3_error(exc, uri) from None
    if isinstance(header, int):
        raise InputError(f"{param} {uri}: the .npy header is longer than the object", params=(param,))
    check_row_readable(header, size, where=uri, param=param)
    return S3Npy(uri, bucket_store, key, header)
