"""``cifar10-airbench``: its parts, batched == one at a time, and real learning on digits32."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_block, single_model_block

from workers.batched import (
    MIRROR_TRANSLATE_VIEWS,
    FlipTranslate,
    fit_stack,
    init_stack,
    model_generators,
    patch_covariance,
    predict_logits,
    subset_positions,
    whitening_filters,
)
from workers.recipe import build_recipe
from workers.recipes._digits32 import generate_digits32
from workers.recipes.cifar10_airbench import Cifar10Airbench, airbench_flops_per_image

TINY: dict[str, Any] = {"dataset": "digits32", "n_train": 240, "n_test": 60, "widths": [4, 8, 8], "batch_size": 24,
                        "epochs": 2.5, "whiten_images": 40, "whiten_bias_epochs": 1}


@pytest.fixture
def one_thread() -> Iterator[None]:
    # One thread: a multi-threaded reduction may add up a block of K in another order than one model alone.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_flops_match_the_published_budget() -> None:
    # airbench94: 0.36 PFLOP for 9.9 epochs of 50,000 images, forward + backward (3x forward).
    per_image = 0.36e15 / (9.9 * 50_000 * 3)
    assert abs(airbench_flops_per_image() / per_image - 1) < 0.05


def test_whitening_filters_whiten_each_models_own_patches() -> None:
    rng = np.random.default_rng(0)
    mixing = torch.as_tensor(rng.normal(size=(3, 3)))
    x = torch.einsum("ij,njhw->nihw", mixing, torch.as_tensor(rng.normal(size=(64, 3, 8, 8))))
    x[:32] *= 5.0  # model 1's images have another scale than model 0's
    positions = torch.stack([torch.arange(32, 64), torch.arange(0, 32)])
    covariance = patch_covariance(x, positions, 2, chunk=7)
    filters = whitening_filters(covariance, 3, 2, eps=0.0).double()  # [2, 24, 3, 2, 2]
    for k in range(2):
        flat = filters[k, :12].reshape(12, 12)
        # W C W^T = I: the filters' outputs are uncorrelated with unit variance on the model's patches.
        torch.testing.assert_close(flat @ covariance[k].double() @ flat.T, torch.eye(12, dtype=torch.float64),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(filters[k, 12:], -filters[k, :12])
    # The same covariance gives the same filters alone as in a batch (order and signs fixed).
    torch.testing.assert_close(whitening_filters(covariance[1:], 3, 2), whitening_filters(covariance, 3, 2)[1:])


def test_alternating_flip_mirrors_every_example_on_odd_epochs() -> None:
    aug = FlipTranslate(pad=2)
    generator = torch.Generator().manual_seed(3)
    base = aug.start(generator, 50)
    even, odd = aug.draw(generator, 50, 0, base), aug.draw(generator, 50, 1, base)
    assert torch.equal(even[:, 0], base) and torch.equal(odd[:, 0], 1 - base)
    assert 0 < int(base.sum()) < 50
    assert even[:, 1:].min() >= 0 and even[:, 1:].max() <= 4 and not torch.equal(even[:, 1:], odd[:, 1:])


def test_airbench_stack_trained_batched_equals_alone_exactly_in_float64(one_thread: None) -> None:
    """Whitening, parameter groups, lookahead, alternating flips and 6-view TTA: per model, exact in float64."""
    recipe = Cifar10Airbench(Cifar10Airbench.Params(**TINY))
    x_train, y_train, _, _ = generate_digits32(48, 1)
    x = torch.as_tensor(x_train, dtype=torch.float64) / 255.0
    y = torch.as_tensor(y_train)
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 48), dtype=bool)
    for k in range(3):
        masks[k, rng.permutation(48)[:24]] = True
    seeds = np.array([5, 6, 7])

    def train(rows: slice) -> torch.Tensor:
        generators = model_generators(seeds[rows])
        stack = recipe.build_stack(len(generators)).double()
        init_stack(stack, generators)
        positions = torch.as_tensor(subset_positions(masks[rows]))
        recipe.prepare_stack(stack, x_train=x, positions=positions)
        config = recipe.train_config()
        fit_stack(stack, x_train=x, y_train=y, positions=positions, generators=generators,
                  config=config, augmentation=recipe.augmentation(), groups=recipe.param_groups(stack))
        return predict_logits(stack, x[:10], num_models=len(generators), views=MIRROR_TRANSLATE_VIEWS)

    together = train(slice(0, 3))
    for k in range(3):
        torch.testing.assert_close(together[k], train(slice(k, k + 1))[0], atol=1e-10, rtol=1e-10)


def test_recipe_batched_equals_alone_and_blocks_do_not_leak(one_thread: None) -> None:
    recipe = build_recipe("cifar10-airbench", TINY)
    recipe.setup("cpu")
    block = make_block(240, rows=range(4, 7))
    together = recipe.train_block(block)["margins/test"]
    alone = np.stack([recipe.train_block(single_model_block(block, k))["margins/test"][0] for k in range(3)])
    scale = float(np.abs(together).max())
    np.testing.assert_allclose(alone, together, atol=1e-4 * scale)
    # The stack is reused block after block: a fresh recipe gives the same models.
    fresh = build_recipe("cifar10-airbench", TINY)
    fresh.setup("cpu")
    np.testing.assert_allclose(fresh.train_block(block)["margins/test"], together, atol=1e-4 * scale)


def test_airbench_learns_digits32(one_thread: None) -> None:
    # A tiny network at a small batch learns faster with a higher lr than airbench's 11.5 per 1,024.
    params = {**TINY, "n_train": 1200, "n_test": 300, "widths": [8, 16, 16], "batch_size": 60, "epochs": 8, "lr": 30,
              "whiten_images": 200, "whiten_bias_epochs": 3}
    recipe = build_recipe("cifar10-airbench", params)
    recipe.setup("cpu")
    margins = recipe.train_block(make_block(1200, rows=range(2)))["margins/test"]
    accuracy = (margins > 0).mean(axis=1)
    assert accuracy.min() > 0.3, accuracy  # chance is 0.1


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, r"recipe\.params\.data_dir: .*required for dataset 'cifar10'"),
        ({"dataset": "digits32", "tta_level": 3}, r"recipe\.params\.tta_level"),
        ({"dataset": "digits32", "epochs": 0}, r"recipe\.params\.epochs"),
        ({"dataset": "digits32", "torch_compile": "on", "max_activation_mib": 10}, "max_activation_mib"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], needle: str) -> None:
    from storage.errors import RecipeError

    with pytest.raises(RecipeError, match=needle):
        build_recipe("cifar10-airbench", params)
