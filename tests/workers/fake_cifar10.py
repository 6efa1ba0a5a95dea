"""A tiny CIFAR-10 folder in the real ``cifar-10-batches-py`` pickle format, for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

__all__ = ["write_fake_cifar10"]


def write_fake_cifar10(root: Path, *, per_batch: int = 8, n_test: int = 10, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` with 5 train batches and a test batch.

    Images are random but class-dependent (a per-class colour offset), so a
    model can learn something. Returns ``root`` (what ``data_dir`` names).
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, size=(10, 3))

    def batch(n: int, name: str) -> dict[str, object]:
        labels = rng.integers(0, 10, size=n)
        noise = rng.integers(-40, 40, size=(n, 3, 32 * 32))
        data = np.clip(palette[labels][:, :, None] + noise, 0, 255).astype(np.uint8).reshape(n, 3072)
        return {"batch_label": name, "labels": labels.tolist(), "data": data, "filenames": [f"{i}.png" for i in range(n)]}

    for i in range(1, 6):
        with (folder / f"data_batch_{i}").open("wb") as handle:
            pickle.dump(batch(per_batch, f"training batch {i} of 5"), handle)
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump(batch(n_test, "testing batch 1 of 1"), handle)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}, handle)
    return root
