"""Shared helpers of the workers tests: blocks built the way the block runner builds them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from workers.masks import block_masks, block_seeds
from workers.recipe import TrainingBlock

__all__ = ["make_block", "single_model_block", "write_script"]


def make_block(
    n_train: int,
    *,
    rows: range = range(4),
    seed: int = 0,
    alpha: float = 0.5,
    outputs: tuple[str, ...] = ("margins/test",),
    workdir: Path = Path("."),
    block_id: int = 0,
) -> TrainingBlock:
    """A block of the models ``rows`` of a sweep with ``seed`` and ``alpha``."""
    return TrainingBlock(
        block_id=block_id,
        indices=np.arange(rows.start, rows.stop, dtype=np.int64),
        masks=block_masks(seed, rows, n_train, alpha),
        seeds=block_seeds(seed, rows),
        outputs=outputs,
        workdir=workdir,
    )


def single_model_block(block: TrainingBlock, k: int) -> TrainingBlock:
    """Model ``k`` of ``block`` as a block of its own."""
    return TrainingBlock(
        block_id=block.block_id,
        indices=block.indices[k : k + 1],
        masks=block.masks[k : k + 1],
        seeds=block.seeds[k : k + 1],
        outputs=block.outputs,
        workdir=block.workdir,
    )


#: A script with the published datamodels training signature, ``main(index, logdir) -> dict``.
LEGACY_SCRIPT = """
import json
from pathlib import Path
import numpy as np

N_TRAIN, N_TEST = 12, 5

def main(index, logdir):
    rng = np.random.default_rng(index)
    mask = np.zeros(N_TRAIN, dtype=bool)
    mask[rng.permutation(N_TRAIN)[:6]] = True
    Path(logdir, "done.json").write_text(json.dumps({{"index": index}}))
    out = {{"masks": mask, "margins": rng.normal(size=N_TEST).astype(np.float32)}}
    {tweak}
    return out
"""


def write_script(directory: Path, tweak: str = "pass") -> Path:
    path = directory / "train_legacy.py"
    path.write_text(textwrap.dedent(LEGACY_SCRIPT).format(tweak=tweak))
    return path
