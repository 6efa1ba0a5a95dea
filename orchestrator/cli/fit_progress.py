"""The fit's progress on a terminal: a rich bar over shards and the λ steps of the running shard.

It implements :class:`regression.progress.FitProgress`, the callback the
library reports through; the library itself draws nothing.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["RichFitProgress"]


class RichFitProgress:
    """Two bars on stderr: shards done, and the λ path of the shard running now."""

    def __init__(self, console: Console | None = None) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             console=console or Console(stderr=True))
        self._shards: TaskID | None = None
        self._steps: TaskID | None = None
        self._total_steps = 1

    def fit_started(self, *, shards: int, steps: int) -> None:
        self._bar.start()
        self._total_steps = steps
        self._shards = self._bar.add_task("shards", total=shards, info="")
        self._steps = self._bar.add_task("λ steps", total=steps, info="")

    def lambda_step(self, done: int, total: int, alive: int) -> None:
        if self._steps is not None:
            self._bar.update(self._steps, completed=done, total=total, info=f"{alive} targets on the path")

    def shard_finished(self) -> None:
        if self._shards is None or self._steps is None:
            return
        self._bar.advance(self._shards)
        tasks = {task.id: task for task in self._bar.tasks}
        if tasks[self._shards].finished:
            # Early stopping ends most paths before step k: show the path as done, not 37/100.
            walked = tasks[self._steps].completed or 1
            self._bar.update(self._steps, total=walked, completed=walked, info="every target stopped")
        else:
            self._bar.reset(self._steps, total=self._total_steps, info="")

    def fit_finished(self) -> None:
        self._bar.stop()
