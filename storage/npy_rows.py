"""Rows of a ``.npy`` file read one range at a time, never the whole file: what import reads through.

:func:`open_npy` is the one place an input ``.npy`` is opened. It returns an
object with ``shape``, ``dtype`` and ``[a:b]`` row slicing, nothing more, so
another opener (an S3 range reader, say) can stand in for it. This one reads the
header and then each row range with one seek and read: unlike
``np.load(mmap_mode="r")``, whose pages count in the process's resident memory
until the kernel evicts them, it keeps resident memory at the size of the range
in hand, whatever the size of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from storage.errors import InputError

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
    """A C-order ``.npy`` file whose rows are read a range at a time.

    Parameters
    ----------
    path : path
        The file.
    param : str
        The library parameter the file came in as (errors name it).

    Raises
    ------
    InputError
        The file cannot be read, is not a ``.npy``, holds objects, or is in
        Fortran order (its rows are not contiguous).
    """

    def __init__(self, path: str | Path, *, param: str) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    # Version 3 differs from 2 only by a UTF-8 header, which the 2.0 reader parses too.
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                self._offset = f.tell()
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {param} from {str(path)!r}: {exc}", params=(param,)) from None
        if dtype.hasobject:
            raise InputError(f"{param} {str(path)!r} holds Python objects; expected numbers", params=(param,))
        if fortran and len(shape) > 1:
            raise InputError(
                f"{param} {str(path)!r} is stored in Fortran order, so its rows are not contiguous; save it with "
                "np.save(path, np.ascontiguousarray(array))",
                params=(param,),
            )
        self._shape = tuple(int(d) for d in shape)
        self._dtype = np.dtype(dtype)
        self._row_bytes = int(np.prod(self._shape[1:], dtype=np.int64)) * self._dtype.itemsize
        expected = self._offset + (self._shape[0] if self._shape else 1) * self._row_bytes
        size = self.path.stat().st_size
        if size < expected:
            raise InputError(
                f"{param} {str(path)!r} is truncated: its header says {self._shape} {self._dtype} "
                f"({expected} bytes), the file has {size}",
                params=(param,),
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self._shape[0])
        if step != 1:
            raise ValueError("NpyRows reads row ranges with step 1")
        count = max(0, stop - start)
        data = bytearray(count * self._row_bytes)
        view = memoryview(data)
        # Opened per read: no handle outlives a call, and a read is one seek and one readinto.
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._offset + start * self._row_bytes)
            done = 0
            while done < len(data):  # a read may return less than asked for
                got = f.readinto(view[done:])
                if not got:
                    raise OSError(f"{self.path}: unexpected end of file")
                done += got
        return np.frombuffer(data, dtype=self._dtype).reshape(count, *self._shape[1:])


def open_npy(source: str | Path, *, param: str) -> RowArray:
    """Open an input ``.npy`` for reading by row ranges (see the module docstring).

    Parameters
    ----------
    source : path
        Where the file is.
    param : str
        The library parameter it came in as, named by any error.
    """
    return NpyRows(source, param=param)
