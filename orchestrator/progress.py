"""The live view of a running sweep: models and blocks done, running, failed, rate, ETA, per-node rate.

On a terminal it is a rich live display; elsewhere (a Ray job's log, a file)
it prints one plain line at most every ``log_every_s`` seconds, so that
``dmsweep submit --follow`` shows progress without a wall of redraws.
"""

from __future__ import annotations

import time
from collections import defaultdict

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["SweepProgress"]


class SweepProgress:
    """A rich progress bar plus a per-node throughput table; a context manager.

    Parameters
    ----------
    console : where to draw (default: stderr).
    log_every_s : on a non-terminal console, seconds between plain progress lines.
    """

    def __init__(self, *, console: Console | None = None, log_every_s: float = 10.0) -> None:
        self._console = console or Console(stderr=True)
        self._log_every_s = log_every_s
        self._progress = Progress(
            TextColumn("[bold]models"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.1f} models/s"),
            TextColumn(
                "blocks {task.fields[blocks_done]}/{task.fields[blocks_total]}  running {task.fields[running]}  "
                "retried {task.fields[retried]}  failed {task.fields[failed]}"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._task = self._progress.add_task(
            "sweep", total=1, rate=0.0, running=0, failed=0, retried=0, blocks_done=0, blocks_total=0
        )
        self._live: Live | None = None
        self._started = time.monotonic()
        self._last_line = 0.0
        self._done_this_run = 0
        self._done_models = 0
        self._total_models = 0
        self._blocks_done = 0
        self._running = 0
        self._node_models: dict[str, int] = defaultdict(int)
        self._failed = 0
        self._retried = 0

    def __enter__(self) -> SweepProgress:
        if self._console.is_terminal:
            self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            self._live = None
        else:
            self._print_line()

    def _render(self) -> Group:
        table = Table(title=None, box=None, show_header=True, header_style="dim")
        table.add_column("node")
        table.add_column("models", justify="right")
        table.add_column("models/s", justify="right")
        elapsed = max(time.monotonic() - self._started, 1e-9)
        for node, models in sorted(self._node_models.items()):
            table.add_row(node, str(models), f"{models / elapsed:.1f}")
        return Group(self._progress, table)

    def _rate(self) -> float:
        return self._done_this_run / max(time.monotonic() - self._started, 1e-9)

    def _print_line(self) -> None:
        rate = self._rate()
        left = self._total_models - self._done_models
        eta = f"{left / rate:.0f}s" if rate > 0 else "n/a"
        nodes = ", ".join(f"{node} {models}" for node, models in sorted(self._node_models.items()))
        self._console.print(
            f"dmsweep: models {self._done_models}/{self._total_models}  {rate:.1f} models/s  ETA {eta}  "
            f"blocks done {self._blocks_done}, running {self._running}, retried {self._retried}, "
            f"failed {self._failed}  per node: {nodes or '-'}",
            highlight=False, markup=False, soft_wrap=True,
        )
        self._last_line = time.monotonic()

    def _refresh(self) -> None:
        self._progress.update(
            self._task, rate=self._rate(), failed=self._failed, retried=self._retried,
            blocks_done=self._blocks_done, running=self._running,
        )
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_line >= self._log_every_s:
            self._print_line()

    def start(self, *, total_models: int, done_models: int, total_blocks: int = 0) -> None:
        """The sweep's size and what earlier runs already completed."""
        self._started = time.monotonic()
        self._last_line = self._started
        self._total_models = total_models
        self._done_models = done_models
        blocks_total = total_blocks or 0
        block = total_models // blocks_total if blocks_total else 0
        self._blocks_done = done_models // block if block else 0
        self._progress.update(self._task, total=total_models, completed=done_models, blocks_total=blocks_total)
        self._refresh()

    def block_completed(self, models: int, node: str) -> None:
        self._done_this_run += models
        self._done_models += models
        self._blocks_done += 1
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
        if running != self._running:
            self._running = running
            self._progress.update(self._task, running=running)
