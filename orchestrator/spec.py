"""Reading a sweep spec: one YAML file, validated (recipe parameters included) before anything is written.

The spec's model, :class:`storage.spec.SweepSpec`, lives with the store that
records it; this module turns a file or a mapping into one, and checks that the
recipe it names exists and accepts its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from storage.errors import DmsweepError, InputError, SpecError
from storage.spec import OutputsSpec, RecipeSpec, ResourcesSpec, SweepSpec, spec_differences, spec_hash
from storage.validation import validate_model
from workers.recipe import build_recipe

__all__ = [
    "RecipeSpec",
    "OutputsSpec",
    "ResourcesSpec",
    "SweepSpec",
    "load_spec",
    "parse_spec",
    "spec_hash",
    "spec_differences",
]


def parse_spec(data: Any, *, source: str = "spec", check_recipe: bool = True) -> SweepSpec:
    """Validate a mapping as a :class:`SweepSpec` (and, with ``check_recipe``, the recipe's params).

    Raises
    ------
    SpecError
        One line naming every invalid field, prefixed with ``source``.
    """
    try:
        spec = validate_model(SweepSpec, data, source=source)
    except InputError as exc:
        raise SpecError(str(exc), params=exc.params) from None
    if check_recipe:
        try:
            build_recipe(spec.recipe.name, spec.recipe.params)
        except DmsweepError as exc:  # RecipeError and friends, already one line
            raise SpecError(f"{source}: {exc}", params=("recipe",)) from None
    return spec


def load_spec(path: str | Path, *, check_recipe: bool = True) -> SweepSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec {str(path)!r}: {exc.strerror}", params=("spec",)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})", params=("spec",)) from None
    return parse_spec(data, source=str(path), check_recipe=check_recipe)
