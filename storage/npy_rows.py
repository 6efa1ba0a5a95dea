"""Rows of a ``.npy`` file read one range at a time, never the whole file: how every input ``.npy`` is read.

:func:`open_npy` is the one place an input ``.npy`` (an import's masks and
margins, a sweep's ``masks_file``) is opened, by a local path or an ``s3://``
URI. It returns a :class:`RowArray`: ``shape``, ``dtype`` and ``[a:b]`` row
slicing, nothing more. A local file is read with one seek and read per range:
unlike ``np.load(mmap_mode="r")``, whose pages count in the process's resident
memory until the kernel evicts them, that keeps resident memory at the size of
the range in hand, whatever the size of the file. An S3 object is read by HTTP
range requests (:mod:`storage.npy_s3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from storage.errors import InputError
from storage.location import LocalLocation, S3Location, is_uri, store_location
from storage.npy_header import HEADER_READ, check_row_readable, parse_npy_header, row_range, rows_from_bytes

__all__ = ["RowArray", "NpyRows", "open_npy"]


class RowArray(Protocol):
    """What import needs from an input array: its shape and dtype, and rows by slice."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows ``[a, b)`` (step 1) as a C-contiguous array of ``dtype``."""
        ...


class NpyRows:
    """A C-order local ``.npy`` file whose rows are read a range at a time.

    Parameters
    ----------
    path : path
        The file.
    param : str
        The library parameter the file came in as (errors name it).

    Raises
    ------
    InputError
        The file cannot be read, is not a ``.npy``, holds objects, is in
        Fortran order (its rows are not contiguous) or is truncated.
    """

    def __init__(self, path: str | Path, *, param: str) -> None:
        self.path = Path(path).expanduser()
        self._where = repr(str(path))
        try:
            with open(self.path, "rb") as f:
                header = parse_npy_header(f.read(HEADER_READ), where=self._where, param=param)
                if isinstance(header, int):
                    f.seek(0)
                    header = parse_npy_header(f.read(header), where=self._where, param=param)
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise InputError(f"cannot read {param}: no file at {self._where}", params=(param,)) from None
        except OSError as exc:
            raise InputError(f"cannot read {param} from {self._where}: {exc}", params=(param,)) from None
        if isinstance(header, int):
            raise InputError(f"{param} {self._where}: the .npy header is longer than the file", params=(param,))
        check_row_readable(header, size, where=self._where, param=param)
        self._header = header

    @property
    def shape(self) -> tuple[int, ...]:
        return self._header.shape

    @property
    def dtype(self) -> np.dtype:
        return self._header.dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, count = row_range(rows, self._header, self._where)
        data = bytearray(count * self._header.row_bytes)
        view = memoryview(data)
        # Opened per read: no handle outlives a call, and a read is one seek and one readinto.
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._header.data_offset + start * self._header.row_bytes)
            done = 0
            while done < len(data):  # a read may return less than asked for
                got = f.readinto(view[done:])
                if not got:
                    raise OSError(f"{self.path}: unexpected end of file")
                done += got
        return rows_from_bytes(data, self._header, count)


def open_npy(source: str | Path, *, param: str = "source", requester_pays: bool = False) -> RowArray:
    """Open an input ``.npy`` for reading by row ranges (see the module docstring).

    Parameters
    ----------
    source : path or ``s3://bucket/key``
        Where the file is (any S3-compatible endpoint, configured as for stores:
        :mod:`storage.s3`).
    param : str
        The library parameter it came in as, named by any error.
    requester_pays : bool
        For an ``s3://`` source, agree to pay for the requests (the published
        datamodels buckets require it).

    Raises
    ------
    InputError
        No such file or object, not a ``.npy``, object dtype, Fortran order, a
        truncated file; or the bucket cannot be used (credentials, endpoint).
    """
    text = str(source)
    if not is_uri(text):
        return NpyRows(text, param=param)
    location = store_location(text, param=param)
    if isinstance(location, LocalLocation):  # a file:// URI
        return NpyRows(location.path, param=param)
    from storage.npy_s3 import open_s3_npy  # obstore only when an s3:// source is read

    return open_s3_npy(S3Location(location.bucket, location.prefix, requester_pays=requester_pays), param=param)
