"""The live view of a running sweep: models done, rate, ETA, blocks running/failed, per-node rate."""

from __future__ import annotations

import time
from collections import defaultdict

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["SweepProgress"]


class SweepProgress:
    """A rich progress bar plus a per-node throughput table; a context manager."""

    def __init__(self, *, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]models"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.1f} models/s"),
            TextColumn("running {task.fields[running]}  retried {task.fields[retried]}  failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._task = self._progress.add_task("sweep", total=1, rate=0.0, running=0, failed=0, retried=0)
        self._live: Live | None = None
        self._started = time.monotonic()
        self._done_this_run = 0
        self._node_models: dict[str, int] = defaultdict(int)
        self._failed = 0
        self._retried = 0

    def __enter__(self) -> SweepProgress:
        self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            self._live = None

    def _render(self) -> Group:
        table = Table(title=None, box=None, show_header=True, header_style="dim")
        table.add_column("node")
        table.add_column("models", justify="right")
        table.add_column("models/s", justify="right")
        elapsed = max(time.monotonic() - self._started, 1e-9)
        for node, models in sorted(self._node_models.items()):
            table.add_row(node, str(models), f"{models / elapsed:.1f}")
        return Group(self._progress, table)

    def _refresh(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._progress.update(
            self._task, rate=self._done_this_run / elapsed, failed=self._failed, retried=self._retried
        )
        if self._live is not None:
            self._live.update(self._render())

    def start(self, *, total_models: int, done_models: int) -> None:
        self._started = time.monotonic()
        self._progress.update(self._task, total=total_models, completed=done_models)
        self._refresh()

    def block_completed(self, models: int, node: str) -> None:
        self._done_this_run += models
        self._node_models[node] += models
        self._progress.advance(self._task, models)
        self._refresh()

    def block_failed(self) -> None:
        self._failed += 1
        self._refresh()

    def block_retried(self) -> None:
        self._retried += 1
        self._refresh()

    def update_running(self, running: int) -> None:
        self._progress.update(self._task, running=running)
