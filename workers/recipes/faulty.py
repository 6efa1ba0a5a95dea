"""``faulty``: a noop recipe that fails on purpose, for the orchestrator's fault tests.

At the block ids listed in ``faults`` it can

- ``crash``: end the worker process at once (``os._exit``), as a segfault or
  an OOM kill would;
- ``raise``: raise a ``RuntimeError`` with a traceback from ``train_block``;
- ``hang``: sleep ``hang_seconds`` (past the driver's timeout);
- ``bad_shape``: return ``margins/test`` with one column too many.

With ``fail_attempts = n`` only the first ``n`` attempts of each listed block
fail and later ones behave like ``noop``. Attempts are counted with marker
files in ``state_dir`` written *before* failing, because a crash leaves no
other trace; a fresh ``state_dir`` per sweep starts the count at zero.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from workers.recipe import TrainingBlock
from workers.recipes.noop import NoopParams, NoopRecipe, random_outputs

__all__ = ["FaultMode", "FaultyParams", "FaultyRecipe", "count_attempt"]

FaultMode = Literal["crash", "raise", "hang", "bad_shape"]


class FaultyParams(NoopParams):
    """Parameters of ``faulty``: noop's (smaller sizes by default) plus which blocks fail and how."""

    n_train: int = Field(20, ge=1, description="training examples (mask length)")
    n_test: int = Field(5, ge=1, description="test examples (margins per model)")
    faults: dict[int, FaultMode] = Field(default_factory=dict, description="block id -> crash|raise|hang|bad_shape")
    fail_attempts: int | None = Field(
        None, ge=1, description="fail only the first n attempts of each listed block (None: every attempt)"
    )
    state_dir: Path | None = Field(None, description="folder for attempt markers (required with fail_attempts)")
    hang_seconds: float = Field(3600.0, ge=0, description="how long a 'hang' sleeps")
    exit_code: int = Field(137, ge=1, le=255, description="exit status of a 'crash' (137: as if SIGKILLed)")

    @model_validator(mode="after")
    def _state_dir_when_counting(self) -> FaultyParams:
        if self.fail_attempts is not None and self.state_dir is None:
            raise ValueError("state_dir is required when fail_attempts is set (attempts are counted there)")
        return self


def count_attempt(state_dir: Path, block_id: int) -> int:
    """Record one more attempt of ``block_id`` and return how many came before it.

    Each attempt creates its own marker file with ``O_EXCL``, so two processes
    racing on one block still count distinct attempts.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        marker = state_dir / f"block-{block_id:06d}.attempt-{attempt:03d}"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            attempt += 1
            continue
        os.close(fd)
        return attempt


class FaultyRecipe(NoopRecipe):
    """Fails the chosen blocks the chosen way; otherwise behaves like ``noop``."""

    name = "faulty"
    Params = FaultyParams
    params: FaultyParams

    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        mode = self.params.faults.get(int(block.block_id))
        if mode is not None and self._should_fail(int(block.block_id)):
            if mode == "crash":
                os._exit(self.params.exit_code)
            if mode == "raise":
                raise RuntimeError(f"injected failure in block {block.block_id} (faulty recipe)")
            if mode == "hang":
                time.sleep(self.params.hang_seconds)
            if mode == "bad_shape":
                outputs = random_outputs(block, self.dataset_info())
                margins = outputs["margins/test"]
                outputs["margins/test"] = np.concatenate([margins, margins[:, :1]], axis=1)
                return outputs
        return super().train_block(block)

    def _should_fail(self, block_id: int) -> bool:
        p = self.params
        if p.fail_attempts is None:
            return True
        if p.state_dir is None:  # excluded by FaultyParams' validator
            return True
        return count_attempt(p.state_dir, block_id) < p.fail_attempts
