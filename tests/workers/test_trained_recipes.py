"""The trained built-in recipes: real (tiny) training, batched == one at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_cifar10 import write_fake_cifar10
from helpers import make_block, single_model_block

from storage.errors import RecipeError
from workers.recipe import Recipe, TrainingBlock, build_recipe

REPO = Path(__file__).resolve().parents[2]
TINY: dict[str, dict[str, Any]] = {
    # float32, the reference ("auto" trains mnist1d-cnn under bf16 on CPUs with AMX; tested below).
    "mnist1d-cnn": {"epochs": 2, "width": 8, "n_train": 400, "n_test": 100, "cpu_precision": "float32"},
    "digits-mlp": {"epochs": 2, "hidden": 16, "n_train": 300},
    "cifar10-resnet9": {"width": 4, "epochs": 1, "batch_size": 8, "lr": 0.05},
}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar"))


def tiny_params(name: str, cifar_dir: Path) -> dict[str, Any]:
    params = dict(TINY[name])
    if name == "cifar10-resnet9":
        params["data_dir"] = str(cifar_dir)
    return params


@pytest.fixture(scope="module")
def recipes(cifar_dir: Path) -> dict[str, Recipe]:
    built = {}
    for name in TINY:
        recipe = build_recipe(name, tiny_params(name, cifar_dir))
        recipe.setup("cpu")
        built[name] = recipe
    return built


def margins(recipe: Recipe, block: TrainingBlock) -> np.ndarray:
    return recipe.train_block(block)["margins/test"]


@pytest.mark.parametrize("name", list(TINY))
def test_batched_equals_one_at_a_time(recipes: dict[str, Recipe], name: str) -> None:
    recipe = recipes[name]
    block = make_block(recipe.dataset_info().n_train, rows=range(3, 7))
    together = margins(recipe, block)
    alone = np.stack([margins(recipe, single_model_block(block, k))[0] for k in range(4)])
    # Only kernel rounding differs (exact in float64, see test_batched); a few
    # steps of SGD through batch norm amplify it, so the tolerance is relative.
    scale = float(np.abs(together).max())
    np.testing.assert_allclose(alone, together, atol=0.03 * scale if name == "cifar10-resnet9" else 1e-4 * scale)
    assert not np.allclose(together[0], together[1]), "different models must differ"


@pytest.mark.parametrize("name", list(TINY))
def test_outputs_shapes_and_dtypes(recipes: dict[str, Recipe], name: str) -> None:
    recipe = recipes[name]
    info = recipe.dataset_info()
    block = make_block(info.n_train, rows=range(2), outputs=("margins/test", "margins/train", "logits/test"))
    out = recipe.train_block(block)
    assert set(out) == {"margins/test", "margins/train", "logits/test"}
    assert out["margins/test"].shape == (2, info.n_test)
    assert out["margins/train"].shape == (2, info.n_train)
    assert out["logits/test"].shape == (2, info.n_test, info.n_classes)
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in out.values())


def test_same_seed_same_margins_in_the_same_process(recipes: dict[str, Recipe]) -> None:
    block = make_block(400, rows=range(2))
    np.testing.assert_array_equal(margins(recipes["mnist1d-cnn"], block), margins(recipes["mnist1d-cnn"], block))
    other = make_block(400, rows=range(2), seed=1)
    assert not np.allclose(margins(recipes["mnist1d-cnn"], block), margins(recipes["mnist1d-cnn"], other))


def test_same_seed_same_margins_across_processes(recipes: dict[str, Recipe], tmp_path: Path) -> None:
    code = (
        "import sys, json, torch; sys.path[:0] = [{tests!r}, {repo!r}]\n"
        "torch.set_num_threads(1)\n"
        "from helpers import make_block\n"
        "from workers.recipe import build_recipe\n"
        "r = build_recipe('mnist1d-cnn', {params!r}); r.setup('cpu')\n"
        "print(json.dumps(r.train_block(make_block(400, rows=range(2)))['margins/test'].tolist()))\n"
    ).format(tests=str(Path(__file__).parent), repo=str(REPO), params=TINY["mnist1d-cnn"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    theirs = np.array(json.loads(proc.stdout), dtype=np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = margins(recipes["mnist1d-cnn"], make_block(400, rows=range(2)))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no oneDNN bf16 path")
def test_mnist1d_under_cpu_bf16_autocast_batched_equals_alone(recipes: dict[str, Recipe]) -> None:
    """The bf16 path (``cpu_precision`` "bfloat16", or "auto" on AMX) keeps models independent and deterministic."""
    recipe = build_recipe("mnist1d-cnn", {**TINY["mnist1d-cnn"], "cpu_precision": "bfloat16"})
    recipe.setup("cpu")
    assert recipe._dtype == torch.bfloat16
    block = make_block(400, rows=range(3, 6))
    together = margins(recipe, block)
    np.testing.assert_array_equal(margins(recipe, block), together)
    alone = np.stack([margins(recipe, single_model_block(block, k))[0] for k in range(3)])
    scale = float(np.abs(together).max())
    np.testing.assert_allclose(alone, together, atol=1e-4 * scale)
    reference = margins(recipes["mnist1d-cnn"], block)
    # Really another arithmetic (bf16 convolutions), and still the same models.
    assert not np.allclose(together, reference, atol=1e-4 * scale)
    assert np.corrcoef(together.ravel(), reference.ravel())[0, 1] > 0.95


def test_models_per_pass_changes_nothing(cifar_dir: Path, recipes: dict[str, Recipe]) -> None:
    split = build_recipe("digits-mlp", {**TINY["digits-mlp"], "models_per_pass": 2})
    split.setup("cpu")
    block = make_block(300, rows=range(5))
    np.testing.assert_allclose(margins(split, block), margins(recipes["digits-mlp"], block), atol=1e-5)


def test_cpu_blocks_train_in_cache_friendly_parts(recipes: dict[str, Recipe]) -> None:
    """mnist1d-cnn trains a block of more than 32 models 32 at a time on the CPU, unless told otherwise."""
    recipe = recipes["mnist1d-cnn"]
    assert type(recipe).cpu_models_per_pass == 32
    block = make_block(400, rows=range(34))
    parts = margins(recipe, block)
    assert recipe._cached is not None and recipe._cached[0] == 2  # the last part: models 32 and 33
    whole = build_recipe("mnist1d-cnn", {**TINY["mnist1d-cnn"], "models_per_pass": 34})
    whole.setup("cpu")
    np.testing.assert_allclose(margins(whole, block), parts, atol=1e-4 * float(np.abs(parts).max()))
    assert whole._cached is not None and whole._cached[0] == 34


def test_unequal_subset_sizes_train_in_groups(recipes: dict[str, Recipe]) -> None:
    """Explicit masks files may give a block unequal subsets; each model still trains as alone."""
    block = make_block(300, rows=range(3))
    masks = block.masks.copy()
    masks[1, np.flatnonzero(masks[1])[:10]] = False
    mixed = TrainingBlock(0, block.indices, masks, block.seeds, block.outputs, block.workdir)
    together = margins(recipes["digits-mlp"], mixed)
    for k in range(3):
        alone = margins(recipes["digits-mlp"], single_model_block(mixed, k))[0]
        np.testing.assert_allclose(alone, together[k], atol=1e-4)


def test_mnist1d_generation_leaves_global_rngs_alone() -> None:
    from workers.recipes.mnist1d_cnn import generate_mnist1d

    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    data = generate_mnist1d()
    assert np.array_equal(np.random.random(3), expected)
    assert data.x_train.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    assert set(np.unique(data.y_train)) == set(range(10))


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("mnist1d-cnn", {"epochs": 0}, "recipe.params.epochs"),
        ("mnist1d-cnn", {"width": "wide"}, "recipe.params.width"),
        ("mnist1d-cnn", {"n_train": 5000}, "recipe.params.n_train"),
        ("mnist1d-cnn", {"learning_rate": 0.1}, "recipe.params.learning_rate"),
        ("digits-mlp", {"lr": -1}, "recipe.params.lr"),
        ("cifar10-resnet9", {}, "recipe.params.data_dir"),
        ("noop", {"n_test": 0}, "recipe.params.n_test"),
    ],
)
def test_bad_params_name_the_field(name: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")) as info:
        build_recipe(name, params)
    assert info.value.exit_code == 2


def test_cifar_missing_or_wrong_folder_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        build_recipe("cifar10-resnet9", {"data_dir": str(tmp_path / "nope")})
    with pytest.raises(RecipeError, match="cifar-10-batches-py"):
        build_recipe("cifar10-resnet9", {"data_dir": str(tmp_path)})
    root = write_fake_cifar10(tmp_path / "partial")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(RecipeError, match="missing test_batch"):
        build_recipe("cifar10-resnet9", {"data_dir": str(root)})


def test_cifar_corrupt_batch_fails_at_dataset_info(tmp_path: Path) -> None:
    root = write_fake_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    recipe = build_recipe("cifar10-resnet9", {"data_dir": str(root)})  # the cheap check passes
    with pytest.raises(RecipeError, match="data_batch_3"):
        recipe.dataset_info()


def test_cifar_accepts_the_batches_folder_itself(cifar_dir: Path) -> None:
    recipe = build_recipe("cifar10-resnet9", {"data_dir": str(cifar_dir / "cifar-10-batches-py")})
    info = recipe.dataset_info()
    assert (info.n_train, info.n_test, info.n_classes) == (40, 10, 10)


@pytest.mark.cuda
def test_mnist1d_batched_on_cuda_matches_cpu_roughly(recipes: dict[str, Recipe]) -> None:
    gpu = build_recipe("mnist1d-cnn", TINY["mnist1d-cnn"])
    gpu.setup("cuda")
    block = make_block(400, rows=range(4))
    ours, theirs = margins(gpu, block), margins(recipes["mnist1d-cnn"], block)
    # bf16 autocast on CUDA: close to the float32 CPU result, not equal.
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9
