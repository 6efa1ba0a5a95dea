"""Recipes with a gate: blocks from ``gate_from_block`` on wait until ``gate_file`` exists.

A test can then stop a sweep at a known point (exactly the blocks before the
gate are complete, the rest are held) instead of racing against it. A block
that reaches the closed gate says so with a file beside it
(:func:`held_blocks` lists them), so that a test knows which blocks a worker
is holding. The gate never changes what a block computes, so a gated sweep
equals an ungated one.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from workers.recipe import TrainingBlock
from workers.recipes.mnist1d_cnn import Mnist1dCnn, Mnist1dCnnParams
from workers.recipes.noop import NoopParams, NoopRecipe


class _Gate(BaseModel):
    gate_file: str = Field(description="blocks at or after gate_from_block wait until this file exists")
    gate_from_block: int = Field(0, ge=0)


class _Gated:
    """Mixed in before a recipe class: hold its blocks at the gate, then train as it does."""

    params: _Gate

    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        if block.block_id >= self.params.gate_from_block:
            gate, pause = Path(self.params.gate_file), threading.Event()
            if not gate.exists():
                _held_marker(gate, block.block_id).touch()
            while not gate.exists():
                pause.wait(0.05)
        return super().train_block(block)  # type: ignore[misc]


def _held_marker(gate: Path, block_id: int) -> Path:
    return gate.with_name(f"{gate.name}.held-{block_id}")


def held_blocks(gate_file: str | Path) -> set[int]:
    """The blocks that have reached the gate while it was closed (each run that holds one adds it)."""
    gate = Path(gate_file)
    return {int(p.name.rsplit("-", 1)[1]) for p in gate.parent.glob(f"{gate.name}.held-*")}


class GatedMnist1dParams(Mnist1dCnnParams, _Gate):
    pass


class GatedMnist1dCnn(_Gated, Mnist1dCnn):
    name = "gated-mnist1d-cnn"
    Params = GatedMnist1dParams


class GatedNoopParams(NoopParams, _Gate):
    pass


class GatedNoop(_Gated, NoopRecipe):
    name = "gated-noop"
    Params = GatedNoopParams
