"""Parameter constraints declared as data and checked in one place.

The solver, the estimator and the fit API share these tables, so a bad value is
reported the same way everywhere: one :class:`~storage.errors.InputError` line that
names every offending parameter, the value received and the values allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from storage.errors import InputError

__all__ = ["Interval", "OneOf", "AnyOf", "SAGA_CONSTRAINTS", "check_params"]


@dataclass(frozen=True)
class Interval:
    """A real or integer range; ``None`` bounds are open to infinity."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        left_closed = self.closed in ("both", "left")
        right_closed = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left_closed)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not right_closed)):
            return False
        return True

    def describe(self) -> str:
        kind = "an int" if self.kind is int else "a finite number"
        lo = "(" if self.closed in ("right", "neither") else "["
        hi = ")" if self.closed in ("left", "neither") else "]"
        low = "-inf" if self.low is None else repr(self.low)
        high = "inf" if self.high is None else repr(self.high)
        return f"{kind} in {lo}{low}, {high}{hi}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    choices: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class AnyOf:
    """Accepted when any of its constraints accepts."""

    options: tuple[Interval | OneOf, ...]

    def accepts(self, value: Any) -> bool:
        return any(option.accepts(value) for option in self.options)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


# The solver's knobs (DESIGN.md, "Regression"; defaults in regression.saga).
SAGA_CONSTRAINTS: dict[str, Interval | OneOf | AnyOf] = {
    "n_alphas": Interval(int, 1, None),
    "eps": Interval(float, 0.0, 1.0, closed="neither"),
    "lr": AnyOf((Interval(float, 0.0, None, closed="neither"), OneOf(("auto",)))),
    "batch_size": Interval(int, 1, None),
    "tol": Interval(float, 0.0, None, closed="neither"),
    "max_epochs": Interval(int, 1, None),
    "patience": Interval(int, 1, None),
    "seed": Interval(int, 0, None),
}


def check_params(values: Mapping[str, Any], constraints: Mapping[str, Interval | OneOf | AnyOf]) -> None:
    """Raise one InputError listing every value in ``values`` its constraint rejects.

    Parameters
    ----------
    values : mapping of str to object
        Parameter name to value; names without a constraint are ignored.
    constraints : mapping of str to Interval, OneOf or AnyOf
        The declared constraints.

    Raises
    ------
    InputError
        When at least one value is rejected.
    """
    problems = [
        f"{name}={value!r} (expected {constraints[name].describe()})"
        for name, value in values.items()
        if name in constraints and not constraints[name].accepts(value)
    ]
    if problems:
        raise InputError("invalid parameter(s): " + "; ".join(problems))
