"""``noop``: random outputs of any shape, for scheduler and storage benchmarks.

Nothing trains. Each model's outputs come from a PCG64 stream seeded with its
own seed, so they are reproducible and independent of the block they are in,
like a real recipe's. At CIFAR-10 shapes (50,000 / 10,000) a block of 64 takes
a few milliseconds for ``margins/test``.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from storage.errors import BlockFailedError
from storage.layout import DatasetInfo, output_row_shape
from workers.recipe import Recipe, RecipeParams, TrainingBlock

__all__ = ["NoopParams", "NoopRecipe", "random_outputs"]


class NoopParams(RecipeParams):
    """Parameters of ``noop``: the dataset's sizes and an optional pause per block."""

    n_train: int = Field(1000, ge=1, description="training examples (mask length)")
    n_test: int = Field(100, ge=1, description="test examples (margins per model)")
    n_classes: int = Field(10, ge=2, description="classes (logits per test example)")
    sleep: float = Field(0.0, ge=0, description="seconds to pause per block, to imitate training time")


def random_outputs(block: TrainingBlock, dataset: DatasetInfo) -> dict[str, np.ndarray]:
    """Uniform float32 outputs in [-4, 4) for every name in ``block.outputs``.

    Model ``k``'s values are drawn from ``PCG64(SeedSequence([seeds[k], j]))``
    for the ``j``-th output name in :data:`storage.layout.OUTPUT_NAMES` order.
    """
    out: dict[str, np.ndarray] = {}
    for name in block.outputs:
        try:
            row_shape = output_row_shape(name, dataset)
        except KeyError:
            raise BlockFailedError(f"block {block.block_id}: unknown output {name!r}") from None
        stream = ("margins/test", "margins/train", "logits/test").index(name)
        values = np.empty((len(block.seeds), *row_shape), dtype=np.float32)
        for k, seed in enumerate(np.asarray(block.seeds, dtype=np.int64)):
            generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream])))
            # Uniform draws: several times faster than normal ones, and any
            # distribution serves a benchmark.
            generator.random(out=values[k].reshape(-1), dtype=np.float32)
        values *= 8.0
        values -= 4.0
        out[name] = values
    return out


class NoopRecipe(Recipe):
    """Returns seeded random outputs at the requested shapes without training."""

    name = "noop"
    Params = NoopParams
    params: NoopParams
    supported_outputs = frozenset({"margins/test", "margins/train", "logits/test"})
    trains_on_device = False  # nothing is computed: runs anywhere, fake GPUs included

    def dataset_info(self) -> DatasetInfo:
        p = self.params
        return DatasetInfo(name=self.name, n_train=p.n_train, n_test=p.n_test, n_classes=p.n_classes)

    def setup(self, device: str) -> None:
        """Nothing to load."""

    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        if self.params.sleep > 0:
            time.sleep(self.params.sleep)
        return random_outputs(block, self.dataset_info())
