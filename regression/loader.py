"""Row sources for the solver: resident tensors, or row blocks streamed from a store.

The solver only ever asks a source for row ranges ``[r0, r1)`` in the source's own
row numbering (0 … n_rows-1) and receives ``(masks [B, N_train], targets [B, T])`` on
its device. Two sources implement that:

* :class:`TensorSource` keeps both arrays resident on the device (masks as bool, one
  byte per entry, standardised per minibatch by the solver);
* :class:`StoreSource` reads the rows of each requested range from a sweep store on a
  background thread, a bounded queue ahead of the consumer, so reading and
  decompressing overlap with compute. On CUDA the producer pins the host buffers so
  the copy to the device is asynchronous.

Both give identical batches for identical ranges, so a streamed fit equals an
in-memory fit (tested).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from storage.errors import InputError, SolverError

__all__ = ["RowSource", "OutputAdjustment", "TensorSource", "StoreSource", "split_batches", "rows_index"]

Range = tuple[int, int]


class RowSource(Protocol):
    """What the solver needs from its data."""

    @property
    def n_rows(self) -> int: ...

    @property
    def n_features(self) -> int: ...

    @property
    def n_targets(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def cut_points(self) -> np.ndarray:
        """Sorted row positions where a batch may begin (always includes 0)."""
        ...

    def iterate(self, ranges: Sequence[Range]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(masks [r1-r0, N] bool, targets [r1-r0, T] float32)`` per range, in order."""
        ...


class OutputAdjustment(Protocol):
    """A change to the targets of source rows ``[r0, r1)`` as they are read."""

    def apply(self, r0: int, r1: int, outputs: np.ndarray) -> np.ndarray:
        """``outputs`` float32 [r1-r0, T] adjusted, float32."""
        ...


def split_batches(cuts: np.ndarray, start: int, stop: int, batch_size: int) -> list[Range]:
    """Split rows ``[start, stop)`` into near-equal batches that begin at cut points.

    Parameters
    ----------
    cuts : ndarray of int, shape [C]
        Allowed batch starts (store block edges; every row for in-memory data).
    start, stop : int
        The row range to split; ``start`` must be a cut point.
    batch_size : int
        Target rows per batch: the range gets ``ceil((stop-start)/batch_size)``
        batches, each cut at the allowed point nearest its equal share, so the
        minibatch gradients have comparable variance.

    Returns
    -------
    list of (int, int)
        Non-empty, contiguous, covering ``[start, stop)``.
    """
    n = stop - start
    if n <= 0:
        return []
    inner = cuts[(cuts > start) & (cuts < stop)]
    n_batches = max(1, -(-n // batch_size))
    edges = [start]
    for i in range(1, n_batches):
        ideal = start + round(i * n / n_batches)
        if inner.size == 0:
            break
        edge = int(inner[np.argmin(np.abs(inner - ideal))])
        if edge > edges[-1]:
            edges.append(edge)
    edges.append(stop)
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def rows_index(rows: np.ndarray) -> slice | np.ndarray:
    """A slice when ``rows`` is one contiguous run (zarr reads it faster), else ``rows``."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


class TensorSource:
    """Masks and targets resident on one device.

    Parameters
    ----------
    masks : Tensor, shape [n_rows, N]
        Bool masks (or any real design matrix; it is kept as given).
    targets : Tensor, shape [n_rows, T]
        Outputs to regress; converted to float32 (float64 kept).
    block : int
        Batches may begin only at multiples of ``block`` (1 = anywhere); a store
        loaded into memory passes its block so its batches equal the streamed ones.
    """

    def __init__(self, masks: torch.Tensor, targets: torch.Tensor, *, block: int = 1) -> None:
        if masks.ndim != 2 or targets.ndim != 2 or masks.shape[0] != targets.shape[0]:
            raise InputError(
                f"masks [M, N] and targets [M, T] must share M; got {tuple(masks.shape)} and {tuple(targets.shape)}",
                params=("masks", "targets"),
            )
        if targets.dtype not in (torch.float32, torch.float64):
            targets = targets.float()
        self._masks = masks
        self._targets = targets.to(masks.device)
        self._cuts = np.arange(0, masks.shape[0], max(1, int(block)), dtype=np.int64)

    @property
    def n_rows(self) -> int:
        return int(self._masks.shape[0])

    @property
    def n_features(self) -> int:
        return int(self._masks.shape[1])

    @property
    def n_targets(self) -> int:
        return int(self._targets.shape[1])

    @property
    def device(self) -> torch.device:
        return self._masks.device

    def cut_points(self) -> np.ndarray:
        return self._cuts

    def iterate(self, ranges: Sequence[Range]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for r0, r1 in ranges:
            yield self._masks[r0:r1], self._targets[r0:r1]


class StoreSource:
    """Rows of a sweep store, streamed in batches by a background reader thread.

    Parameters
    ----------
    store : SweepStore
        An open store (anything with ``read(name, rows)`` and ``block``).
    rows : ndarray of int64, shape [n_rows]
        The store rows this source serves, in order; row ``i`` of the source is
        store row ``rows[i]``. Must be completed rows.
    output : str
        The per-model output regressed on, e.g. ``"margins/test"``.
    targets : slice
        Columns of ``output`` to serve (``step`` 1).
    device : torch.device
        Where batches are delivered.
    queue_depth : int
        Batches read ahead of the consumer; bounds host memory.
    pin : bool
        Pin host buffers (only meaningful for CUDA) so copies are asynchronous.
    splits : sequence of int
        Source rows where a batch may begin besides block edges: the validation
        split, which may fall anywhere inside a block (a read of part of a chunk
        is as good as a whole one).
    adjust : OutputAdjustment, optional
        Applied to the targets as they are read (the shared noise's removal,
        :class:`regression.factors.FactorRemoval`).
    """

    def __init__(
        self,
        store: Any,
        *,
        rows: np.ndarray,
        output: str,
        targets: slice,
        device: torch.device,
        queue_depth: int = 2,
        pin: bool = False,
        splits: Sequence[int] = (),
        adjust: OutputAdjustment | None = None,
    ) -> None:
        self._store = store
        self._adjust = adjust
        self._rows = np.asarray(rows, dtype=np.int64)
        self._output = output
        self._targets = targets
        self._device = device
        self._depth = max(1, int(queue_depth))
        self._pin = bool(pin) and device.type == "cuda"
        dataset = store.dataset
        self._n_features = int(dataset.n_train)
        self._n_targets = len(range(*targets.indices(int(dataset.n_test))))
        # A batch may begin where a store block begins or where the rows jump
        # (a gap of incomplete blocks), so reads are whole chunks, and at the splits.
        block = int(store.block)
        starts = (self._rows % block == 0) | np.r_[True, np.diff(self._rows) != 1]
        inside = [int(r) for r in splits if 0 < int(r) < self._rows.size]
        starts[inside] = True
        self._cuts = np.flatnonzero(starts).astype(np.int64)

    @property
    def n_rows(self) -> int:
        return int(self._rows.size)

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def n_targets(self) -> int:
        return self._n_targets

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rows(self) -> np.ndarray:
        return self._rows

    def cut_points(self) -> np.ndarray:
        return self._cuts

    def read_host(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Read rows ``[r0, r1)`` as numpy: masks bool [B, N], targets float32 [B, T]."""
        index = rows_index(self._rows[r0:r1])
        masks = np.asarray(self._store.read("masks", index), dtype=bool)
        outputs = self._store.read(self._output, index)
        targets = np.ascontiguousarray(outputs[:, self._targets], dtype=np.float32)
        if self._adjust is not None:
            targets = self._adjust.apply(r0, r1, targets)
        return masks, targets

    def _to_tensors(self, masks: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        m, t = torch.from_numpy(masks), torch.from_numpy(targets)
        if self._pin:
            m, t = m.pin_memory(), t.pin_memory()
        return m, t

    def iterate(self, ranges: Sequence[Range]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items: queue.Queue[Any] = queue.Queue(maxsize=self._depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for r0, r1 in ranges:
                    item = self._to_tensors(*self.read_host(r0, r1))
                    # Wait for room, but give up as soon as the consumer has gone.
                    while not stop.is_set():
                        try:
                            items.put(item, timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                items.put(_END)
            except BaseException as exc:  # handed to the consumer, re-raised there
                items.put(_Failure(exc))

        thread = threading.Thread(target=produce, name="dmsweep-row-reader", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    if isinstance(item.exc, (InputError, SolverError)):
                        raise item.exc
                    raise SolverError(f"reading rows from the store failed: {item.exc!r}") from item.exc
                masks, targets = item
                yield (
                    masks.to(self._device, non_blocking=self._pin),
                    targets.to(self._device, non_blocking=self._pin),
                )
        finally:
            stop.set()
            # Free the producer if it is blocked on a full queue, then wait for it.
            while thread.is_alive():
                try:
                    items.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()

    def load(self, *, chunk_ranges: Sequence[Range] | None = None) -> TensorSource:
        """Read every row once (streamed) and return a resident :class:`TensorSource`.

        The resident source keeps this source's cut points, so it splits rows into
        exactly the same batches as streaming would.
        """
        masks = torch.empty((self.n_rows, self.n_features), dtype=torch.bool, device=self._device)
        targets = torch.empty((self.n_rows, self.n_targets), dtype=torch.float32, device=self._device)
        ranges = list(chunk_ranges) if chunk_ranges is not None else _cut_ranges(self._cuts, self.n_rows)
        for (r0, r1), (m, t) in zip(ranges, self.iterate(ranges)):
            masks[r0:r1] = m
            targets[r0:r1] = t
        resident = TensorSource(masks, targets)
        resident._cuts = self._cuts.copy()
        return resident


def _cut_ranges(cuts: np.ndarray, n_rows: int) -> list[Range]:
    edges = list(cuts.tolist()) + [n_rows]
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()
