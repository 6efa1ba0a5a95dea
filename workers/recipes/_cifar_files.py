"""Reading a local CIFAR-10 folder (the ``cifar-10-batches-py`` pickle format).

This is the format torchvision's ``CIFAR10`` reads. We read it ourselves by
default because torchvision's class insists on the md5 sums of the official
files, which rules out small test folders in the same format; the recipe can
still ask torchvision to load and verify the official files
(``verify_checksums``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from storage.errors import RecipeError

__all__ = ["FOLDER", "TRAIN_FILES", "TEST_FILE", "META_FILE", "cifar_root", "read_cifar_split"]

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"


def cifar_root(data_dir: Path) -> Path:
    """The torchvision root holding ``cifar-10-batches-py``, given either folder.

    Raises
    ------
    RecipeError
        When the folder does not exist or lacks one of the CIFAR-10 files.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise RecipeError(f"CIFAR-10 data_dir {str(data_dir)!r} does not exist or is not a directory")
    root = data_dir.parent if data_dir.name == FOLDER else data_dir
    folder = root / FOLDER
    if not folder.is_dir():
        raise RecipeError(
            f"CIFAR-10 data_dir {str(data_dir)!r} holds no {FOLDER!r} folder "
            "(extract cifar-10-python.tar.gz there; nothing is downloaded)"
        )
    missing = [name for name in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (folder / name).is_file()]
    if missing:
        raise RecipeError(f"CIFAR-10 folder {str(folder)!r} is missing {', '.join(missing)}")
    return root


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise RecipeError(f"{str(path)!r} is not a CIFAR-10 batch file ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise RecipeError(f"{str(path)!r}: expected data [n, 3072] and n labels, got {data.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise RecipeError(f"{str(path)!r}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_split(root: Path, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of the train or test split."""
    folder = Path(root) / FOLDER
    names = TRAIN_FILES if train else (TEST_FILE,)
    parts = [_read_batch(folder / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
