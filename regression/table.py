"""The SAGA table of past residuals ``R [n_rows, T]``, wherever it fits.

The table is the one solver buffer that grows with rows × targets, so it has three
homes, chosen by :func:`regression.memory.plan_memory`: the device (fastest),
pinned host memory (CUDA copies it asynchronously), or a file (the last resort
when not even the bounded host can hold it). All three give the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["ResidualTable"]


class ResidualTable:
    """The SAGA table ``R [n_rows, T]``: on the device, in (pinned) host memory, or in a file.

    In a file, rows are contiguous, so a batch's rows are one positioned read and
    one write, and the table costs no resident memory beyond the batch in hand.
    Every home starts at zeros.

    Parameters
    ----------
    n_rows, n_targets : int
        The table's shape: one row per source row, one column per target.
    device : torch.device
        The solver's device: :meth:`get` delivers there.
    dtype : torch.dtype
        The compute dtype.
    on_device : bool
        Keep the table on ``device``; False keeps it in pinned host memory (on the
        CPU both are the same place).
    spill_file : Path, optional
        Keep the table in this file instead (created with its folder; removed by
        :meth:`close`).
    """

    def __init__(
        self, n_rows: int, n_targets: int, *, device: torch.device, dtype: torch.dtype, on_device: bool,
        spill_file: Path | None = None,
    ) -> None:
        self.device = device
        self.shape = (n_rows, n_targets)
        self.dtype = dtype
        self.nbytes = n_rows * n_targets * torch.empty((), dtype=dtype).element_size()
        self.spill_file = spill_file
        self._fd: int | None = None
        if spill_file is not None:
            self.on_device = False
            spill_file.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(spill_file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self._fd, self.nbytes)  # reads back as zeros, like torch.zeros
            self._np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            return
        self.on_device = on_device or device.type == "cpu"
        where = device if self.on_device else torch.device("cpu")
        pin = (not self.on_device) and device.type == "cuda"
        self.data = torch.zeros((n_rows, n_targets), dtype=dtype, device=where, pin_memory=pin)

    def _read_rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``[r0, r1)`` of the file, all columns, on the host."""
        assert self._fd is not None  # only called on a file-backed table
        row_bytes = self.nbytes // self.shape[0]
        raw = os.pread(self._fd, (r1 - r0) * row_bytes, r0 * row_bytes)
        return torch.from_numpy(np.frombuffer(raw, dtype=self._np_dtype).reshape(r1 - r0, self.shape[1]).copy())

    def _write_rows(self, r0: int, rows: torch.Tensor) -> None:
        """Write host rows [B, T] at row ``r0`` of the file."""
        assert self._fd is not None  # only called on a file-backed table
        row_bytes = self.nbytes // self.shape[0]
        os.pwrite(self._fd, rows.contiguous().numpy().tobytes(), r0 * row_bytes)

    def get(self, r0: int, r1: int, cols: torch.Tensor | None) -> torch.Tensor:
        """Rows ``[r0, r1)`` of columns ``cols`` (int64 [A], None: all), shape [r1-r0, A], on the device."""
        block = self._read_rows(r0, r1) if self._fd is not None else self.data[r0:r1]
        if cols is not None:
            block = block.index_select(1, cols if self.on_device else cols.cpu())
        return block.to(self.device, non_blocking=True)

    def put(self, r0: int, r1: int, cols: torch.Tensor | None, values: torch.Tensor) -> None:
        """Store ``values`` [r1-r0, A] as rows ``[r0, r1)`` of columns ``cols`` (None: all)."""
        if not self.on_device:
            values = values.to("cpu")
            cols = None if cols is None else cols.cpu()
        if self._fd is not None:
            rows = values if cols is None else self._read_rows(r0, r1).index_copy_(1, cols, values)
            self._write_rows(r0, rows)
        elif cols is None:
            self.data[r0:r1] = values
        else:
            self.data[r0:r1].index_copy_(1, cols, values)

    def close(self) -> None:
        """Delete the spill file, if any."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            assert self.spill_file is not None
            self.spill_file.unlink(missing_ok=True)
            try:
                self.spill_file.parent.rmdir()  # only when no other shard's table is there
            except OSError:
                pass
