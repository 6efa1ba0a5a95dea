"""The solver's settings, declared once: names, defaults, constraints and help text.

:class:`SolverConfig` is the single place the SAGA knobs are written out. The array
API, the store API, the estimator and the shard jobs all take one, and the CLI
builds its options from :attr:`SolverConfig.model_fields` (the ``description`` of
a field is its help text, ``json_schema_extra["flag"]`` its flag when that differs
from the field name).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from storage.errors import InputError
from storage.validation import UserModel

__all__ = ["SolverConfig", "as_config"]


class SolverConfig(UserModel):
    """Settings of the SAGA LASSO path solver and of what it does at each target's chosen λ.

    The defaults are the best settings measured on a real mnist1d sweep
    (docs/benchmarks.md, docs/decisions.md), not the published constants: the
    largest safe step (``lr="auto"``) and a refit on train + validation rows at
    the chosen λ. The published ``fast_l1`` step stays available as ``lr=5e-3``.

    Building one with a bad value raises :class:`~storage.errors.InputError` whose
    ``params`` name the offending fields. Strings are read as pydantic's lax mode
    reads them (``lr="5e-3"`` is 0.005, ``lr="auto"`` stays ``"auto"``), so a
    command line can pass what it parsed; non-finite numbers are refused.

    See :mod:`regression.engine` for what each setting does to the algorithm.
    """

    # NaN compares false with every bound and inf passes the lower ones: refuse both outright.
    model_config = ConfigDict(allow_inf_nan=False)

    n_alphas: int = Field(
        200, ge=1, json_schema_extra={"flag": "--k"},
        description="Number of lambda steps on the regularisation path (the paper's k).",
    )
    eps: float = Field(
        1e-6, gt=0, lt=1,
        description="Smallest lambda on the path as a fraction of lambda_max (0 < eps < 1).",
    )
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="SAGA step size in standardised units, capped at 1/L; 'auto' (default) takes 1/L itself "
        "(the published fast_l1 step is 5e-3). The Gram engine chooses its own steps (backtracking from 3/L).",
    )
    batch_size: int = Field(
        1000, ge=1,
        description="Rows per SAGA minibatch, and per pass of the Gram engine's streamed reads (batches begin at "
        "store-block edges).",
    )
    tol: float = Field(
        1e-3, gt=0,
        description="Relative weight change per epoch (SAGA) or iteration (Gram) below which a target has "
        "converged at a lambda.",
    )
    path_tol: float = Field(
        1e-2, gt=0,
        description="Tolerance of the path's lambda steps when each target is solved again at its chosen lambda "
        "afterwards (the refit, or --average), which uses tol; without either the path runs at tol.",
    )
    max_epochs: int = Field(
        100, ge=1,
        description="Epochs (SAGA) or iterations (Gram) per lambda step, and for the refit, at most.",
    )
    patience: int = Field(
        3, ge=1,
        description="Lambda steps without a validation-MSE improvement before a target stops.",
    )
    choose: Literal["min", "1se"] = Field(
        "min",
        description="Which lambda the validation MSE picks: its minimum, or the largest lambda within one "
        "standard error of it (glmnet's lambda.1se).",
    )
    seed: int = Field(
        0, ge=0,
        description="Seed of the minibatch order and of the step-size estimate.",
    )
    refit: bool = Field(
        True,
        description="Refit each target on train + validation rows at its chosen lambda (--no-refit keeps the "
        "path's weights, fitted on the training rows alone).",
    )
    l2: float = Field(
        0.0, ge=0,
        description="Ridge part of an elastic net: (l2/2)*||w||^2 added to the LASSO objective in standardised "
        "units (0: the LASSO).",
    )
    average: int = Field(
        0, ge=0,
        description="Average each target's weights over its chosen lambda and this many path steps on either "
        "side (0: the chosen lambda alone).",
    )
    debias: Literal["none", "ls", "relaxed"] = Field(
        "none",
        description="After the LASSO: 'ls' refits least squares on each target's selected examples, 'relaxed' "
        "blends the LASSO and least-squares weights with a per-target mix chosen on validation rows.",
    )
    ridge: float = Field(
        0.0, ge=0,
        description="L2 penalty of the least-squares debias, in the standardised objective's units.",
    )
    noise_factors: int = Field(
        5, ge=0,
        description="Shared noise removed before the fit: the top principal components of the training rows' "
        "outputs across many targets (what every target's output shares from model to model, which no mask "
        "explains), each target's loading fitted on its training rows; used only where the output has at least "
        "100 targets per component (0: fit the outputs as stored).",
    )
    engine: Literal["auto", "saga", "gram"] = Field(
        "auto",
        description="How each lambda step is solved: 'saga' streams minibatches of masks every epoch (any size); "
        "'gram' forms the standardised Gram matrix once and runs accelerated proximal gradient on it (when "
        "features <= 2 x rows and it fits in memory); 'auto' (default) picks gram where it applies.",
    )
    precision: Literal["auto", "fp32", "tf32", "bf16"] = Field(
        "auto",
        description="Matrix products in fp32, TF32, or bf16 with fp32 accumulation (SAGA: on the exact 0/1 masks, "
        "mean and std as rank-1 corrections; Gram: the within-step changes, against an fp32 product per step); "
        "'auto' (default): bf16 for the Gram engine where the device multiplies bf16 natively, else fp32.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse a bool for every field but the bool ones."""
        # Lax mode reads True as 1; a flag where a number belongs is a mistake, not a 1.
        if isinstance(value, bool) and info.field_name and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError("expected a number, not a bool")
        return value


def as_config(config: SolverConfig | None) -> SolverConfig:
    """``config``, or the defaults when None; what every API taking ``config`` calls first.

    Raises
    ------
    InputError
        ``config`` is neither None nor a :class:`SolverConfig` (``params=("config",)``).
    """
    if config is None:
        return SolverConfig()
    if not isinstance(config, SolverConfig):
        raise InputError(
            f"config must be a SolverConfig (build one with SolverConfig(**settings)); got {type(config).__name__}",
            params=("config",),
        )
    return config
