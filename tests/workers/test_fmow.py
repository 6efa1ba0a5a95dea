"""``fmow-resnet9`` on a tiny folder in the WILDS ``fmow_v1.1`` layout that the test writes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from fake_fmow import write_fake_fmow
from helpers import make_block

from storage.errors import RecipeError
from workers.recipe import build_recipe
from workers.recipes._wilds_fmow import FMOW_CATEGORIES, fmow_folder, load_images, read_fmow_split

TINY = {"image_size": 16, "width": 4, "epochs": 2, "batch_size": 4, "lr": 0.05}


@pytest.fixture(scope="module")
def fmow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fmow(tmp_path_factory.mktemp("wilds"))


def metadata(root: Path) -> list[dict[str, str]]:
    with (root / "fmow_v1.1" / "rgb_metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_datamodels_scheme_is_2012_train_and_test_in_metadata_order(fmow_dir: Path) -> None:
    rows = metadata(fmow_dir)
    split = read_fmow_split(fmow_folder(fmow_dir), "datamodels")
    # 2012 in UTC: the -05:00 timestamp of 2011-12-31 22:00 counts; val, seq and other years never do.
    utc_2012 = {i for i, r in enumerate(rows) if r["timestamp"].startswith("2012") or r["timestamp"].endswith("-05:00")}
    expected_train = [i for i, r in enumerate(rows) if r["split"] == "train" and i in utc_2012]
    expected_test = [i for i, r in enumerate(rows) if r["split"] == "test" and i in utc_2012]
    assert split.train_rows.tolist() == expected_train and split.test_rows.tolist() == expected_test
    assert split.train_labels.tolist() == [FMOW_CATEGORIES.index(rows[i]["category"]) for i in expected_train]
    assert 61 in split.train_labels.tolist()  # "zoo", the last class


def test_wilds_scheme_is_everything_before_2013(fmow_dir: Path) -> None:
    rows = metadata(fmow_dir)
    split = read_fmow_split(fmow_folder(fmow_dir), "wilds")
    before_2013 = [i for i, r in enumerate(rows) if r["timestamp"][:4] in ("2011", "2012")]
    assert split.train_rows.tolist() == [i for i in before_2013 if rows[i]["split"] == "train"]
    assert split.test_rows.tolist() == [i for i in before_2013 if rows[i]["split"] == "test"]


def test_images_are_read_by_metadata_row_and_resized(fmow_dir: Path) -> None:
    from PIL import Image

    folder = fmow_folder(fmow_dir / "fmow_v1.1")  # the layout folder itself is accepted too
    images = load_images(folder, [3, 0], 12, threads=2)
    assert images.shape == (2, 3, 12, 12) and images.dtype == np.uint8
    with Image.open(folder / "images" / "rgb_img_3.png") as original:
        expected = np.asarray(original.convert("RGB").resize((12, 12), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(images[0], expected)


def test_recipe_trains_on_the_published_split(fmow_dir: Path) -> None:
    recipe = build_recipe("fmow-resnet9", {**TINY, "data_dir": str(fmow_dir)})
    info = recipe.dataset_info()
    assert (info.name, info.n_train, info.n_test, info.n_classes) == ("fmow", 12, 6, 62)
    recipe.setup("cpu")
    out = recipe.train_block(make_block(info.n_train, rows=range(3), outputs=("margins/test", "logits/test")))
    assert out["margins/test"].shape == (3, 6) and out["logits/test"].shape == (3, 6, 62)
    assert all(np.isfinite(a).all() for a in out.values())
    assert not np.allclose(out["margins/test"][0], out["margins/test"][1])


def test_limits_and_scheme(fmow_dir: Path) -> None:
    recipe = build_recipe("fmow-resnet9", {**TINY, "data_dir": str(fmow_dir), "split_scheme": "wilds",
                                           "n_train": 10, "n_test": 4})
    info = recipe.dataset_info()
    assert (info.n_train, info.n_test) == (10, 4)
    with pytest.raises(RecipeError, match=r"recipe\.params\.n_train: 99 exceeds the 12 train images"):
        build_recipe("fmow-resnet9", {**TINY, "data_dir": str(fmow_dir), "n_train": 99}).dataset_info()


def test_bad_folders_are_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"recipe\.params\.data_dir.*does not exist"):
        build_recipe("fmow-resnet9", {"data_dir": str(tmp_path / "nope")})
    with pytest.raises(RecipeError, match=r"holds no fmow_v1\.1/rgb_metadata\.csv"):
        build_recipe("fmow-resnet9", {"data_dir": str(tmp_path)})
    root = write_fake_fmow(tmp_path / "broken", per_case=1)
    folder = root / "fmow_v1.1"
    (folder / "images" / "rgb_img_0.png").unlink()
    recipe = build_recipe("fmow-resnet9", {**TINY, "data_dir": str(root)})
    with pytest.raises(RecipeError, match=r"rgb_img_0\.png' cannot be read"):
        recipe.setup("cpu")
    text = (folder / "rgb_metadata.csv").read_text().replace("airport_hangar", "moon_base")
    (folder / "rgb_metadata.csv").write_text(text)
    with pytest.raises(RecipeError, match="unknown FMoW category 'moon_base'"):
        recipe.dataset_info()
    (folder / "rgb_metadata.csv").write_text("split,category\ntrain,zoo\n")
    with pytest.raises(RecipeError, match="lacks the column"):
        recipe.dataset_info()
