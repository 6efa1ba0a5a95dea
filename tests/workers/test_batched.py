"""The batched building blocks: K models in one stack are K independent models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storage.errors import BlockFailedError
from workers.batched import (
    MIRROR_VIEWS,
    GroupedLinear,
    TrainConfig,
    fit_stack,
    init_stack,
    model_generators,
    predict_logits,
    run_in_parts,
    subset_positions,
)
from workers.batched import CropFlip, shift_and_flip
from workers.recipes.cifar10_resnet9 import Resnet9Stack


def test_grouped_linear_equals_per_model_linear() -> None:
    layer = GroupedLinear(3, 5, 2)
    init_stack(layer, model_generators(np.array([1, 2, 3])))
    x = torch.randn(7, 3 * 5)
    y = layer(x).view(7, 3, 2)
    for k in range(3):
        expected = x.view(7, 3, 5)[:, k] @ layer.weight[k].T + layer.bias[k]
        assert torch.allclose(y[:, k], expected, atol=1e-6)


def test_init_depends_only_on_the_model_seed() -> None:
    alone = GroupedLinear(1, 4, 3)
    init_stack(alone, model_generators(np.array([22])))
    stacked = GroupedLinear(3, 4, 3)
    init_stack(stacked, model_generators(np.array([11, 22, 33])))
    assert torch.equal(stacked.weight[1], alone.weight[0])
    assert not torch.equal(stacked.weight[0], stacked.weight[1])


def test_resnet9_stack_trained_batched_equals_alone_exactly_in_float64() -> None:
    """In float64 the only difference between K=3 and K=1 (kernel rounding) vanishes."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(24, 3, 32, 32)))
    y = torch.as_tensor(rng.integers(0, 10, size=24))
    masks = np.zeros((3, 24), dtype=bool)
    for k in range(3):
        masks[k, rng.permutation(24)[:12]] = True
    seeds = np.array([5, 6, 7])
    config = TrainConfig(epochs=2, batch_size=4, lr=0.05, weight_decay=5e-4, label_smoothing=0.1)
    augmentation = CropFlip(pad=4)

    def train(rows: slice) -> torch.Tensor:
        generators = model_generators(seeds[rows])
        stack = Resnet9Stack(len(generators), 2)
        init_stack(stack, generators)
        stack.double()
        positions = torch.as_tensor(subset_positions(masks[rows]))
        fit_stack(stack, x_train=x, y_train=y, positions=positions, generators=generators, config=config,
                  augmentation=augmentation)
        return predict_logits(stack, x, num_models=len(generators), views=MIRROR_VIEWS)

    together = train(slice(0, 3))
    for k in range(3):
        torch.testing.assert_close(together[k], train(slice(k, k + 1))[0], atol=1e-10, rtol=1e-10)


def test_crop_flip_moves_pixels_per_model() -> None:
    x = torch.arange(2 * 1 * 3 * 32 * 32, dtype=torch.float32).view(2, 1, 3, 32, 32)
    draws = torch.tensor([[[0, 4, 4]], [[1, 4, 4]]])  # centre crops; the second flipped
    out = shift_and_flip(x, draws, 4)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].flip(-1))
    shifted = shift_and_flip(x[:1], torch.tensor([[[0, 5, 4]]]), 4)
    assert torch.equal(shifted[0, 0, :, :31], x[0, 0, :, 1:])


def test_unequal_subset_sizes_are_refused() -> None:
    masks = np.array([[True, True, False], [True, False, False]])
    with pytest.raises(BlockFailedError, match="same non-zero subset size"):
        subset_positions(masks)


def test_run_in_parts_halves_on_out_of_memory() -> None:
    sizes: list[int] = []

    def part(rows: slice) -> dict[str, np.ndarray]:
        n = rows.stop - rows.start
        sizes.append(n)
        if n > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
        return {"a": np.arange(rows.start, rows.stop)[:, None].astype(np.float32)}

    result, part_size = run_in_parts(part, num_models=5)
    assert part_size == 2 and sizes == [5, 2, 2, 1]
    assert result["a"][:, 0].tolist() == [0, 1, 2, 3, 4]


def test_run_in_parts_reraises_other_errors() -> None:
    def part(rows: slice) -> dict[str, np.ndarray]:
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        run_in_parts(part, num_models=4)
