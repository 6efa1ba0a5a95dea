"""Validating what users (and stores) hand us: pydantic models that fail as one InputError line.

Everything a user writes (a sweep spec, solver settings, recipe parameters) is a
:class:`UserModel`. Building one with a bad value raises
:class:`~storage.errors.InputError` (not pydantic's ``ValidationError``) whose
message names every offending field, its problem and the value received, and
whose ``params`` are those field names, so a front end can say them its own way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from storage.errors import InputError

__all__ = ["UserModel", "format_validation_error", "validation_params", "validate_model"]

M = TypeVar("M", bound=BaseModel)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming every invalid field, its problem and the value received."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        received = f" (got {err['input']!r})" if err.get("type") != "missing" and "input" in err else ""
        parts.append(f"{loc or '<root>'}: {err['msg']}{received}")
    return "; ".join(parts)


def validation_params(exc: ValidationError) -> tuple[str, ...]:
    """The top-level field names a validation error is about, in order, without repeats."""
    names = [str(err["loc"][0]) for err in exc.errors() if err["loc"]]
    return tuple(dict.fromkeys(names))


def validate_model(cls: type[M], data: Any, *, source: str = "") -> M:
    """``cls.model_validate(data)``, failing as one :class:`InputError` line prefixed with ``source``."""
    if not isinstance(data, Mapping):
        raise InputError(f"{source + ': ' if source else ''}expected a mapping of fields, got {type(data).__name__}")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        lead = f"{source}: " if source else ""
        raise InputError(lead + format_validation_error(exc), params=validation_params(exc)) from None


class UserModel(BaseModel):
    """Base of every model a user writes: unknown fields refused, immutable, one-line errors.

    ``UserModel(field=value)`` raises :class:`InputError` on a bad value, so a
    notebook gets the same message the CLI prints.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InputError(format_validation_error(exc), params=validation_params(exc)) from None

    # Marks this __init__ as pydantic's own, so a UserModel nested in another is
    # validated by pydantic directly (its errors keep their place, "outputs.train_margins")
    # rather than through this constructor.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]
