"""SolverConfig: the solver's settings, their constraints and how strings are read."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from regression.config import SolverConfig
from storage.errors import InputError


def test_defaults_are_the_measured_best() -> None:
    # The published grid, the largest safe step, a refit on train + validation rows, and the
    # tol, batch and patience measured on validation rows (docs/decisions.md, "Regression
    # defaults"); the published 5e-3 step stays available as a value.
    assert SolverConfig().model_dump() == {
        "n_alphas": 200, "eps": 1e-6, "lr": "auto", "batch_size": 1000, "tol": 1e-3, "max_epochs": 100,
        "patience": 3, "choose": "min", "seed": 0, "refit": True, "l2": 0.0, "average": 0, "debias": "none",
        "ridge": 0.0, "engine": "auto", "precision": "auto", "path_tol": 1e-2, "noise_factors": 5,
    }
    assert SolverConfig(lr=5e-3, refit=False).lr == 5e-3


def test_strings_are_read_as_a_command_line_passes_them() -> None:
    assert SolverConfig(lr="5e-3").lr == 0.005
    assert SolverConfig(lr="auto").lr == "auto"
    assert SolverConfig(n_alphas="7", eps="1e-3").model_dump()["n_alphas"] == 7


@pytest.mark.parametrize(
    "settings, param",
    [
        ({"lr": -1}, "lr"),
        ({"lr": 0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"eps": 1}, "eps"),
        ({"eps": 0}, "eps"),
        ({"tol": float("nan")}, "tol"),
        ({"n_alphas": 0}, "n_alphas"),
        ({"n_alphas": 2.5}, "n_alphas"),
        ({"n_alphas": True}, "n_alphas"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"patience": 0}, "patience"),
        ({"seed": -1}, "seed"),
        ({"n_alpha": 10}, "n_alpha"),  # unknown field
    ],
)
def test_bad_values_name_the_field(settings: dict, param: str) -> None:
    with pytest.raises(InputError, match=param) as err:
        SolverConfig(**settings)
    assert err.value.params == (param,)


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InputError) as err:
        SolverConfig(eps=2.0, seed=-1)
    assert err.value.params == ("eps", "seed")


def test_frozen_json_round_trip_and_help_text() -> None:
    config = SolverConfig(lr="auto", n_alphas=10, refit=True)
    with pytest.raises(ValidationError):
        config.lr = 1.0  # type: ignore[misc]
    assert SolverConfig(**json.loads(json.dumps(config.model_dump(mode="json")))) == config
    fields = SolverConfig.model_fields
    assert all(field.description for field in fields.values())
    assert fields["n_alphas"].json_schema_extra == {"flag": "--k"}
