"""Reading FMoW from a local folder in the WILDS ``fmow_v1.1`` layout (nothing is downloaded).

The layout (what ``wilds.get_dataset("fmow")`` unpacks)::

    <data_dir>/fmow_v1.1/
        rgb_metadata.csv        one row per image: split (train|val|test|seq), category, timestamp, ...
        images/rgb_img_<row>.png   224×224 RGB; <row> is the image's row in rgb_metadata.csv
        country_code_mapping.csv   (region labels; not needed here)

We read it with the standard library and Pillow instead of importing the
``wilds`` package: importing ``wilds`` (and ``ogb``, which it requires) starts a
thread that asks PyPI whether a newer release exists (the ``outdated``
package), a network call at run time that a worker must not make, and its
dataset class creates its root folder and wants its ``RELEASE_v1.1.txt`` marker,
which a user's copy or a test folder need not have. The splits below are
computed the way WILDS' ``FMoWDataset`` computes them (its ``time_after_2016``
scheme), on the same metadata columns.

Split schemes (example order = row order in ``rgb_metadata.csv``, which is the
order of WILDS' subsets and of the published datamodels' columns):

``datamodels``
    The published datamodels' FMoW (Ilyas et al. 2022, arXiv 2202.00622; the
    ``fmow.py`` of MadryLab/datamodels-data): WILDS' in-distribution splits with
    the training years restricted to 2012. Train: ``split == "train"`` and a
    timestamp in 2012 (UTC); test: ``split == "test"`` in 2012 (their
    ``id_test``). Their ``train_masks``/``test_margins`` columns index exactly
    these examples in this order.
``wilds``
    WILDS' own in-distribution split: train ``split == "train"`` before 2013,
    test ``split == "test"`` before 2013 (``id_test``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from storage.errors import RecipeError

__all__ = ["FOLDER", "FMOW_CATEGORIES", "SplitScheme", "FmowSplit", "fmow_folder", "read_fmow_split", "load_images"]

FOLDER = "fmow_v1.1"
METADATA = "rgb_metadata.csv"
SplitScheme = Literal["datamodels", "wilds"]

#: The 62 FMoW classes in WILDS' label order (label = index).
FMOW_CATEGORIES: tuple[str, ...] = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture", "archaeological_site",
    "barn", "border_checkpoint", "burial_site", "car_dealership", "construction_site", "crop_field", "dam",
    "debris_or_rubble", "educational_institution", "electric_substation", "factory_or_powerplant",
    "fire_station", "flooded_road", "fountain", "gas_station", "golf_course", "ground_transportation_station",
    "helipad", "hospital", "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse",
    "military_facility", "multi-unit_residential", "nuclear_powerplant", "office_building",
    "oil_or_gas_facility", "park", "parking_lot_or_garage", "place_of_worship", "police_station", "port",
    "prison", "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility", "stadium",
    "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower", "tunnel_opening",
    "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)  # fmt: skip
_LABELS = {name: i for i, name in enumerate(FMOW_CATEGORIES)}
#: Years (UTC, inclusive start, exclusive end) of each scheme's train and test examples.
_YEARS: dict[str, tuple[int, int]] = {"datamodels": (2012, 2013), "wilds": (1, 2013)}


@dataclass(frozen=True)
class FmowSplit:
    """Metadata rows (= image numbers) and labels of one scheme's train and test examples."""

    train_rows: np.ndarray
    train_labels: np.ndarray
    test_rows: np.ndarray
    test_labels: np.ndarray


def fmow_folder(data_dir: Path) -> Path:
    """The ``fmow_v1.1`` folder, given it or its parent.

    Raises
    ------
    RecipeError
        When there is no such folder, or it lacks ``rgb_metadata.csv`` or ``images/``.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise RecipeError(f"FMoW data_dir {str(data_dir)!r} does not exist or is not a directory")
    folder = data_dir if (data_dir / METADATA).is_file() else data_dir / FOLDER
    if not (folder / METADATA).is_file():
        raise RecipeError(
            f"FMoW data_dir {str(data_dir)!r} holds no {FOLDER}/{METADATA} "
            "(the WILDS fmow layout; nothing is downloaded)"
        )
    if not (folder / "images").is_dir():
        raise RecipeError(f"FMoW folder {str(folder)!r} has no images/ folder")
    return folder


def _year(timestamp: str, row: int) -> int:
    try:
        moment = datetime.fromisoformat(timestamp.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RecipeError(f"{METADATA} row {row}: timestamp {timestamp!r} is not ISO 8601") from None
    if moment.tzinfo is None:  # WILDS reads naive timestamps as UTC
        return moment.year
    return moment.astimezone(timezone.utc).year


def read_fmow_split(folder: Path, scheme: SplitScheme) -> FmowSplit:
    """The train and test examples of ``scheme`` from ``folder/rgb_metadata.csv``."""
    path = folder / METADATA
    first, end = _YEARS[scheme]
    rows: dict[str, list[int]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"split", "category", "timestamp"} - set(reader.fieldnames or ())
            if missing:
                raise RecipeError(f"{str(path)!r} lacks the column(s) {', '.join(sorted(missing))}")
            for row, record in enumerate(reader):
                split = record["split"]
                if split not in rows or not first <= _year(record["timestamp"], row) < end:
                    continue
                label = _LABELS.get(record["category"])
                if label is None:
                    raise RecipeError(f"{str(path)!r} row {row}: unknown FMoW category {record['category']!r}")
                rows[split].append(row)
                labels[split].append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecipeError(f"cannot read {str(path)!r}: {exc}") from None
    for split in ("train", "test"):
        if not rows[split]:
            raise RecipeError(f"{str(path)!r} has no {split} images for split scheme {scheme!r}")
    return FmowSplit(
        train_rows=np.asarray(rows["train"], dtype=np.int64), train_labels=np.asarray(labels["train"], dtype=np.int64),
        test_rows=np.asarray(rows["test"], dtype=np.int64), test_labels=np.asarray(labels["test"], dtype=np.int64),
    )


def load_images(folder: Path, rows: Sequence[int], size: int, *, threads: int = 4) -> np.ndarray:
    """Images ``rgb_img_<row>.png`` as uint8 [n, 3, size, size] (resized with Pillow's antialiased bilinear)."""
    from PIL import Image, UnidentifiedImageError

    def load(row: int) -> np.ndarray:
        path = folder / "images" / f"rgb_img_{row}.png"
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError) as exc:
            raise RecipeError(f"FMoW image {str(path)!r} cannot be read: {exc}") from None

    out = np.empty((len(rows), 3, size, size), dtype=np.uint8)
    # Pillow decodes with the GIL released: a few threads cut a worker's load time.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, image in enumerate(pool.map(load, (int(r) for r in rows))):
            out[i] = image
    return out
