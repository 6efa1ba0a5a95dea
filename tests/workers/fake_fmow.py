"""A tiny FMoW folder in the WILDS ``fmow_v1.1`` layout, for tests.

Rows cover every case the split schemes must tell apart: train/test/val/seq
splits, the years 2011, 2012 and 2016, and a timestamp with a UTC offset that
crosses into 2012. Images are small class-dependent PNGs (a per-class colour
plus noise) so a model can learn something.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from workers.recipes._wilds_fmow import FMOW_CATEGORIES

__all__ = ["write_fake_fmow", "FAKE_CLASSES"]

#: The categories the fake folder uses (labels 0, 1, 2 and 61).
FAKE_CLASSES = ("airport", "airport_hangar", "airport_terminal", "zoo")
_COLUMNS = ["split", "img_filename", "category", "country_code", "timestamp", "cloud_cover"]


def _rows(per_case: int) -> list[dict[str, str]]:
    rows = []
    cases = [
        ("train", "2012-03-04T10:11:12Z"), ("test", "2012-07-08T01:02:03.456Z"), ("train", "2011-05-06T00:00:00Z"),
        ("test", "2011-01-02T03:04:05Z"), ("val", "2012-02-03T04:05:06Z"), ("seq", "2012-04-05T06:07:08Z"),
        ("train", "2016-06-07T08:09:10Z"), ("test", "2016-09-10T11:12:13Z"),
        # 2011-12-31 22:00 at -05:00 is 2012-01-01 03:00 UTC: a 2012 image.
        ("train", "2011-12-31T22:00:00-05:00"),
    ]  # fmt: skip
    for i in range(per_case):
        for j, (split, stamp) in enumerate(cases):
            category = FAKE_CLASSES[(i + j) % len(FAKE_CLASSES)]
            rows.append({"split": split, "img_filename": f"{category}_{i}_{j}_rgb.jpg", "category": category,
                         "country_code": "USA", "timestamp": stamp, "cloud_cover": "0"})
    return rows


def write_fake_fmow(root: Path, *, per_case: int = 6, size: int = 24, seed: int = 0) -> Path:
    """Write ``root/fmow_v1.1`` (metadata, country mapping, one PNG per row) and return ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "fmow_v1.1"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = _rows(per_case)
    with (folder / "rgb_metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with (folder / "country_code_mapping.csv").open("w", newline="") as handle:
        handle.write("alpha-3,region\nUSA,Americas\n")
    palette = rng.integers(0, 256, size=(len(FMOW_CATEGORIES), 3))
    for index, row in enumerate(rows):
        colour = palette[FMOW_CATEGORIES.index(row["category"])]
        pixels = np.clip(colour + rng.integers(-30, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"rgb_img_{index}.png")
    return root
