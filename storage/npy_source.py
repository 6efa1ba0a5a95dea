"""Reading ``.npy`` files by row ranges, local or straight from S3 (HTTP range reads), without a copy.

The published datamodels data are large ``.npy`` files in S3 buckets (some
requester pays). :func:`open_npy` opens one by its path or ``s3://`` URI and
returns an array-like with ``shape``, ``dtype``, ``ndim``, ``len()`` and row
slicing ``[a:b]``:

* a local path is memory-mapped (``numpy.load(mmap_mode="r")``);
* an ``s3://bucket/key`` URI is read by ranges: the header (magic, version,
  header length, then numpy's header dictionary) from the object's first
  bytes, and each ``[a:b]`` as the byte range of those rows, in parallel
  parts for large ranges. Only C-ordered arrays of plain dtypes can be read by
  rows this way; Fortran order and object dtypes are refused with the reason.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import InputError
from storage.location import S3Location, is_uri, store_location

__all__ = ["NpyHeader", "S3Npy", "open_npy", "parse_npy_header"]

#: Bytes fetched first: every header numpy writes fits (it pads to 64 bytes; a few hundred in practice).
_FIRST_READ = 4096
#: Ranges larger than this are fetched as parallel parts of this size.
_PART_BYTES = 16 << 20


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says: the array's shape, dtype, order, and where its data begins."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int


def parse_npy_header(first: bytes, *, where: str) -> NpyHeader | int:
    """Parse a header from the file's first bytes; the byte count needed if ``first`` is too short.

    Raises
    ------
    InputError
        Not a ``.npy`` file, or a header numpy cannot read.
    """
    if len(first) < 10 or first[:6] != b"\x93NUMPY":
        raise InputError(f"{where} is not a .npy file (no NUMPY magic)")
    major = first[6]
    if major == 1:
        needed = 10 + int.from_bytes(first[8:10], "little")
    elif major in (2, 3):
        if len(first) < 12:
            return 12
        needed = 12 + int.from_bytes(first[8:12], "little")
    else:
        raise InputError(f"{where}: .npy format version {major}.{first[7]} is not one numpy reads")
    if len(first) < needed:
        return needed
    stream = io.BytesIO(first[:needed])
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:  # 3.0 (a UTF-8 header) has no public reader of its own
            shape, fortran_order, dtype = np.lib.format._read_array_header(stream, version)  # type: ignore[attr-defined]
    except (ValueError, SyntaxError) as exc:
        raise InputError(f"{where}: the .npy header cannot be read ({exc})") from None
    return NpyHeader(shape=tuple(int(n) for n in shape), dtype=np.dtype(dtype),
                     fortran_order=bool(fortran_order), data_offset=needed)


class S3Npy:
    """A ``.npy`` object in S3 read by row ranges. Build with :func:`open_npy`.

    Attributes
    ----------
    uri : str
    shape : tuple of int
    dtype : numpy.dtype
    """

    def __init__(self, uri: str, store: Any, key: str, header: NpyHeader, size: int) -> None:
        self.uri = uri
        self._store = store
        self._key = key
        self._header = header
        self.shape = header.shape
        self.dtype = header.dtype
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize if self.shape else 0
        expected = header.data_offset + (self.shape[0] if self.shape else 1) * (self._row_bytes or self.dtype.itemsize)
        if size < expected:
            raise InputError(f"{uri} is truncated: its header promises {expected} bytes, the object has {size}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

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

    def __getitem__(self, key: slice | int) -> np.ndarray:
        """Rows ``[a:b]`` (step 1) or one row, as a new C-ordered array."""
        if not self.shape:
            raise IndexError("a 0-d .npy has no rows")
        rows = self.shape[0]
        if isinstance(key, (int, np.integer)):
            index = int(key) + rows if key < 0 else int(key)
            if not 0 <= index < rows:
                raise IndexError(f"row {key} is outside [0, {rows})")
            return self[index : index + 1][0]
        if not isinstance(key, slice):
            raise TypeError(f"{self.uri} is read by row slices [a:b]; got {key!r}")
        start, stop, step = key.indices(rows)
        if step != 1:
            raise IndexError(f"{self.uri} is read by contiguous row ranges; step {step} is not supported")
        stop = max(start, stop)
        offset = self._header.data_offset
        data = self._read(offset + start * self._row_bytes, offset + stop * self._row_bytes) if stop > start else b""
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:])).copy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def _open_s3(location: S3Location, uri: str) -> S3Npy:
    import obstore

    from storage.s3 import explain_s3_error, s3_store

    bucket_store = s3_store(location.bucket, "", requester_pays=location.requester_pays)
    key = location.prefix
    try:
        meta = obstore.head(bucket_store, key)
        first = bytes(obstore.get_range(bucket_store, key, start=0, end=min(_FIRST_READ, int(meta["size"]))))
    except FileNotFoundError:
        try:  # a HEAD's 404 has no body: ask the bucket itself whether it exists
            obstore.list_with_delimiter(bucket_store, key.rsplit("/", 1)[0] if "/" in key else None)
        except Exception as exc:
            raise explain_s3_error(exc, uri) from None
        raise InputError(f"no object at {uri}", params=("source",)) from None
    except Exception as exc:
        raise explain_s3_error(exc, uri) from None
    header = parse_npy_header(first, where=uri)
    if isinstance(header, int):
        try:
            first = bytes(obstore.get_range(bucket_store, key, start=0, end=header))
        except Exception as exc:
            raise explain_s3_error(exc, uri) from None
        header = parse_npy_header(first, where=uri)
        if isinstance(header, int):
            raise InputError(f"{uri}: the .npy header is longer than the object")
    if header.dtype.hasobject:
        raise InputError(f"{uri} holds Python objects (dtype {header.dtype}); only plain dtypes are read, never pickles")
    if header.fortran_order and len(header.shape) > 1:
        raise InputError(f"{uri} is stored in Fortran order, so its rows are not contiguous and cannot be read by "
                         "ranges; save it in C order (numpy.save(path, numpy.ascontiguousarray(a)))")
    return S3Npy(uri, bucket_store, key, header, int(meta["size"]))


def open_npy(source: str | Path, *, requester_pays: bool = False) -> np.ndarray | S3Npy:
    """Open a ``.npy`` file for reading by rows, without reading it whole.

    Parameters
    ----------
    source : a local path, or ``s3://bucket/key`` (any S3-compatible endpoint,
        configured as for stores: :mod:`storage.s3`).
    requester_pays : for an ``s3://`` source, agree to pay for the requests
        (buckets such as the published datamodels data require it).

    Returns
    -------
    numpy.memmap or S3Npy
        Either way: ``shape``, ``dtype``, ``ndim``, ``len()`` and ``[a:b]``
        giving rows ``a`` to ``b`` as an ndarray.

    Raises
    ------
    InputError
        No such file or object, not a ``.npy``, object dtype, Fortran order (S3),
        a truncated file; or the bucket cannot be used (credentials, endpoint).
    """
    text = str(source)
    if not is_uri(text):
        try:
            return np.load(Path(text).expanduser(), mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"no file at {text!r}") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {text!r} as a .npy file: {exc}") from None
    location = store_location(text, param="source")
    if not isinstance(location, S3Location):
        return open_npy(str(getattr(location, "path")), requester_pays=requester_pays)
    location = S3Location(location.bucket, location.prefix, requester_pays=requester_pays)
    return _open_s3(location, location.uri)
