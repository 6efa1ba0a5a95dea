"""The ``.npy`` header and row arithmetic that the local and the S3 row readers share.

A ``.npy`` file is a header (magic, version, header length, numpy's header
dictionary) and then the array's bytes in C order, so rows ``[a:b]`` are one
byte range: :func:`parse_npy_header` reads the header from the first bytes,
:func:`check_row_readable` refuses what cannot be read that way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from storage.errors import InputError

__all__ = ["HEADER_READ", "NpyHeader", "parse_npy_header", "check_row_readable", "rows_from_bytes", "row_range"]

#: Bytes read first: every header numpy writes fits (it pads to 64 bytes; a few hundred in practice).
HEADER_READ = 4096


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
