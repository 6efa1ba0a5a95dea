"""Parsing what a user selects on the command line: ``3,17,42``, ``0:100``, ``all``, or a file of indices.

The library takes index arrays; these turn the command line's text into them,
with errors that name the parameter (said as its flag by :mod:`orchestrator.cli.common`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from storage.errors import InputError

__all__ = ["parse_indices", "read_index_file", "parse_selection"]

_RANGE = re.compile(r"^\s*(\d*)\s*:\s*(\d*)\s*$")


def parse_indices(text: str | None, *, size: int, param: str, lo: int = 0) -> np.ndarray:
    """Parse ``"all"``, ``"3,17,42"``, ``"0:100"`` or a mix (``"0:10,42"``) into sorted unique indices.

    Parameters
    ----------
    text : str or None
        The selection; None or ``"all"`` selects every index of ``[lo, size)``.
    size : int
        Indices must be ``< size``.
    param : str
        The parameter's name, said in error messages (the CLI turns it into its flag).
    lo : int
        Smallest valid index.

    Returns
    -------
    ndarray of int64, shape [K]

    Raises
    ------
    InputError
        Not integers, out of ``[lo, size)``, or empty.
    """
    if text is None or text.strip().lower() == "all":
        return np.arange(lo, size, dtype=np.int64)
    picked: list[np.ndarray] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RANGE.match(part)
        if match:
            start = int(match.group(1)) if match.group(1) else lo
            stop = int(match.group(2)) if match.group(2) else size
            if not lo <= start < stop <= size:
                raise InputError(f"{param}: range {part!r} is outside [{lo}, {size}) or empty", params=(param,))
            picked.append(np.arange(start, stop, dtype=np.int64))
            continue
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"{param} must be indices like 3,17,42 or ranges like 0:100; got {part!r}", params=(param,)) from None
        if not lo <= value < size:
            raise InputError(f"{param}: index {value} is outside [{lo}, {size})", params=(param,))
        picked.append(np.array([value], dtype=np.int64))
    if not picked:
        raise InputError(f"{param} is empty", params=(param,))
    return np.unique(np.concatenate(picked))




def read_index_file(path: str | Path, *, size: int, param: str) -> np.ndarray:
    """Indices from a file: ``.npy`` of ints or of bool [size], or text of ints (commas/whitespace).

    Returns
    -------
    ndarray of int64, shape [K], sorted and unique.

    Raises
    ------
    InputError
        Unreadable file, wrong dtype or length, out-of-range values, or no indices.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{param}: no file {str(path)!r}", params=(param,))
    if path.suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{param}: cannot read {str(path)!r} as .npy ({exc})", params=(param,)) from None
        if data.dtype == np.bool_:
            if data.shape != (size,):
                raise InputError(f"{param}: a bool mask in {str(path)!r} must have shape ({size},), got {data.shape}", params=(param,))
            values = np.flatnonzero(data)
        elif np.issubdtype(data.dtype, np.integer):
            values = data.reshape(-1).astype(np.int64)
        else:
            raise InputError(f"{param}: {str(path)!r} holds {data.dtype}; expected integer indices or a bool mask", params=(param,))
    else:
        tokens = path.read_text().replace(",", " ").split()
        try:
            values = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            raise InputError(f"{param}: {str(path)!r} must hold integer indices separated by commas or whitespace", params=(param,)) from None
    if values.size == 0:
        raise InputError(f"{param}: {str(path)!r} holds no indices", params=(param,))
    bad = values[(values < 0) | (values >= size)]
    if bad.size:
        raise InputError(f"{param}: index {int(bad[0])} in {str(path)!r} is outside [0, {size})", params=(param,))
    return np.unique(values)




def parse_selection(text: str | None, file: str | Path | None, *, size: int, param: str) -> np.ndarray | None:
    """Indices from ``--X TEXT`` or ``--X-file PATH`` (at most one); None when neither is given.

    Raises
    ------
    InputError
        Both given, or either invalid (see :func:`parse_indices`, :func:`read_index_file`).
    """
    if text is not None and file is not None:
        raise InputError(f"give {param} either as indices or as a file, not both", params=(param,))
    if file is not None:
        return read_index_file(file, size=size, param=f"{param}_file")
    if text is not None:
        if not text.strip():
            raise InputError(f"{param} is empty", params=(param,))
        return parse_indices(text, size=size, param=param)
    return None
