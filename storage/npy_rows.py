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

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from storage.errors import InputError
from storage.location import S3Location, is_uri, store_location

__all__ = ["NpyHeader", "RowArray", "NpyRows", "open_npy", "parse_npy_header", "check_row_readable"]

#: Bytes read first: every header numpy writes fits (it pads to 64 bytes; a few hundred in practice).
HEADER_READ = 4096


class RowArray(Protocol):
    """What import needs from an input array: its shape and dtype, and rows by slice."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows ``[a, b)`` (step 1) as a C-contiguous array of ``dtype``."""
        ...


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says: the array's shape, dtype, order, and where its data begins."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes the file must have: header and data."""
        return self.data_offset + (self.shape[0] * self.row_bytes if self.shape else self.dtype.itemsize)


def parse_npy_header(first: bytes, *, where: str, param: str = "source") -> NpyHeader | int:
    """Parse a header from the file's first bytes; the byte count needed if ``first`` is too short.

    Raises
    ------
    InputError
        Not a ``.npy`` file, or a header numpy cannot read (``params=(param,)``).
    """
    if len(first) < 10 or first[:6] != b"\x93NUMPY":
        raise InputError(f"{param} {where} is not a .npy file (no NUMPY magic)", params=(param,))
    major = first[6]
    if major == 1:
        needed = 10 + int.from_bytes(first[8:10], "little")
    elif major in (2, 3):
        if len(first) < 12:
            return 12
        needed = 12 + int.from_bytes(first[8:12], "little")
    else:
        raise InputError(f"{param} {where}: .npy format version {major}.{first[7]} is not one numpy reads",
                         params=(param,))
    if len(first) < needed:
        return needed
    stream = io.BytesIO(first[:needed])
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:  # 3.0 differs from 2.0 only by a UTF-8 header, which the 2.0 reader parses too
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, SyntaxError) as exc:
        raise InputError(f"{param} {where}: the .npy header cannot be read ({exc})", params=(param,)) from None
    return NpyHeader(shape=tuple(int(n) for n in shape), dtype=np.dtype(dtype),
                     fortran_order=bool(fortran_order), data_offset=needed)


def check_row_readable(header: NpyHeader, size: int, *, where: str, param: str) -> None:
    """Refuse what cannot be read by row ranges: object dtypes (pickles), Fortran order, a truncated file."""
    if header.dtype.hasobject:
        raise InputError(f"{param} {where} holds Python objects (dtype {header.dtype}); only plain dtypes are read, "
                         "never pickles", params=(param,))
    if header.fortran_order and len(header.shape) > 1:
        raise InputError(
            f"{param} {where} is stored in Fortran order, so its rows are not contiguous; save it with "
            "np.save(path, np.ascontiguousarray(array))",
            params=(param,),
        )
    if size < header.nbytes:
        raise InputError(f"{param} {where} is truncated: its header says {header.shape} {header.dtype} "
                         f"({header.nbytes} bytes), the file has {size}", params=(param,))


def rows_from_bytes(data: bytes | bytearray, header: NpyHeader, count: int) -> np.ndarray:
    """``count`` rows read as raw bytes, as an array of the file's dtype and row shape."""
    return np.frombuffer(data, dtype=header.dtype).reshape(count, *header.shape[1:])


def row_range(rows: slice, header: NpyHeader, where: str) -> tuple[int, int]:
    """A slice as ``(first, count)`` of rows; only contiguous ranges (step 1) can be read."""
    if not header.shape:
        raise IndexError(f"{where}: a 0-d .npy has no rows")
    start, stop, step = rows.indices(header.shape[0])
    if step != 1:
        raise IndexError(f"{where} is read by contiguous row ranges; step {step} is not supported")
    return start, max(0, stop - start)


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
    if not isinstance(location, S3Location):  # a file:// URI
        return NpyRows(str(getattr(location, "path")), param=param)
    from storage.npy_s3 import open_s3_npy  # obstore only when an s3:// source is read

    return open_s3_npy(S3Location(location.bucket, location.prefix, requester_pays=requester_pays), param=param)
