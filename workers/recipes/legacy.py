"""``legacy``: run an existing datamodels training script unchanged.

The published datamodels scripts expose ``main(index: int, logdir: str) -> dict``
returning at least ``masks`` (bool [N_train], the subset the model trained on)
and ``margins`` (float [N_test]). This adapter calls ``main`` once per model
index of a block (logdir ``block.workdir / str(index)``), checks every result
and returns the block's ``masks`` and ``margins/test``. Any missing key, wrong
shape, wrong dtype or non-finite margin fails the whole block with a
:class:`~storage.errors.BlockFailedError` naming the model index, so nothing
partial or corrupt is ever written.

``script`` is either a Python file (``path/to/train.py``, optionally
``path/to/train.py:function``) or an importable ``package.module:function``;
the function defaults to ``main``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from storage.errors import BlockFailedError, RecipeError
from storage.layout import DatasetInfo
from workers.recipe import Recipe, RecipeParams, TrainingBlock

__all__ = ["LegacyParams", "LegacyScript", "load_entry_point"]

MainFn = Callable[[int, str], Any]


def _split_script(script: str) -> tuple[str, str]:
    """``"target:function"`` → (target, function); the function defaults to ``main``."""
    target, sep, function = script.rpartition(":")
    # A lone Windows drive letter or no colon at all: the whole string is the target.
    if not sep or not target or "/" in function or "\\" in function:
        return script, "main"
    return target, function


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


class LegacyParams(RecipeParams):
    """Parameters of ``legacy``: the script and the sizes of its outputs."""

    script: str = Field(description="path/to/train.py[:function] or package.module:function (default function main)")
    n_train: int = Field(ge=1, description="length of the masks the script returns")
    n_test: int = Field(ge=1, description="length of the margins the script returns")
    n_classes: int = Field(10, ge=2, description="classes of the task (recorded in the store)")
    dataset_name: str = Field("legacy", min_length=1, description="dataset name recorded in the store")

    @field_validator("script")
    @classmethod
    def _check_script(cls, value: str) -> str:
        target, function = _split_script(value)
        if not function.isidentifier():
            raise ValueError(f"{function!r} is not a function name")
        if _is_file_target(target):
            if not Path(target).expanduser().is_file():
                raise ValueError(f"script file {target!r} does not exist")
        elif not all(part.isidentifier() for part in target.split(".")):
            raise ValueError(f"{target!r} is neither a .py file nor a 'package.module:function' path")
        return value


def load_entry_point(script: str) -> MainFn:
    """Import the training function named by ``script``.

    Raises
    ------
    RecipeError
        When the file or module cannot be imported or has no such function.
    """
    target, function = _split_script(script)
    try:
        if _is_file_target(target):
            path = Path(target).expanduser().resolve()
            module_name = f"dmsweep_legacy_{abs(hash(str(path)))}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise RecipeError(f"legacy script {str(path)!r} cannot be loaded as a Python module")
            module = importlib.util.module_from_spec(spec)
            # Registered before running so dataclasses/pickle inside the script resolve it.
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"legacy script {script!r} failed to import: {type(exc).__name__}: {exc}") from exc
    entry = getattr(module, function, None)
    if not callable(entry):
        raise RecipeError(f"legacy script {script!r} has no function {function!r}")
    return entry


def _as_array(value: Any) -> np.ndarray:
    """numpy view of an array-like (torch tensors included, without importing torch here)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class LegacyScript(Recipe):
    """Adapter for ``main(index, logdir) -> {"masks", "margins"}`` training scripts."""

    name = "legacy"
    Params = LegacyParams
    params: LegacyParams
    provides_masks = True
    supported_outputs = frozenset({"margins/test"})

    def __init__(self, params: LegacyParams) -> None:  # type: ignore[override]
        super().__init__(params)
        self._main: MainFn | None = None

    def dataset_info(self) -> DatasetInfo:
        p = self.params
        return DatasetInfo(name=p.dataset_name, n_train=p.n_train, n_test=p.n_test, n_classes=p.n_classes)

    def setup(self, device: str) -> None:
        # The script picks its own device, as it always did.
        self._main = load_entry_point(self.params.script)

    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        main = self._main if self._main is not None else load_entry_point(self.params.script)
        indices = np.asarray(block.indices, dtype=np.int64)
        masks = np.empty((len(indices), self.params.n_train), dtype=bool)
        margins = np.empty((len(indices), self.params.n_test), dtype=np.float32)
        for row, index in enumerate(indices):
            logdir = Path(block.workdir) / str(int(index))
            logdir.mkdir(parents=True, exist_ok=True)
            try:
                result = main(int(index), str(logdir))
            except Exception as exc:
                raise BlockFailedError(
                    f"block {block.block_id}: legacy main({int(index)}, ...) raised {type(exc).__name__}: {exc}"
                ) from exc
            masks[row], margins[row] = self._check(result, int(index), block.block_id)
        return {"masks": masks, "margins/test": margins}

    def _check(self, result: Any, index: int, block_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Validate one model's result; return its mask bool [N_train] and margins float32 [N_test]."""
        where = f"block {block_id}, model {index}: legacy main"
        if not isinstance(result, dict):
            raise BlockFailedError(f"{where} returned {type(result).__name__}, expected a dict with masks and margins")
        missing = [key for key in ("masks", "margins") if key not in result]
        if missing:
            raise BlockFailedError(f"{where} returned no {' or '.join(missing)} (keys: {sorted(map(str, result))})")
        mask = _as_array(result["masks"])
        margin = _as_array(result["margins"])
        if mask.dtype != np.bool_:
            raise BlockFailedError(f"{where}: masks has dtype {mask.dtype}, expected bool")
        if mask.shape != (self.params.n_train,):
            raise BlockFailedError(f"{where}: masks has shape {mask.shape}, expected ({self.params.n_train},)")
        if not np.issubdtype(margin.dtype, np.floating):
            raise BlockFailedError(f"{where}: margins has dtype {margin.dtype}, expected a float dtype")
        if margin.shape != (self.params.n_test,):
            raise BlockFailedError(f"{where}: margins has shape {margin.shape}, expected ({self.params.n_test},)")
        if not np.all(np.isfinite(margin)):
            raise BlockFailedError(f"{where}: margins holds {int((~np.isfinite(margin)).sum())} non-finite values")
        return mask, margin.astype(np.float32)
