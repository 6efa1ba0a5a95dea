"""Checking predicted flips by retraining: models trained on the training set minus each candidate set.

For each candidate target (the smallest predicted removal sets first) the
sweep's own recipe trains ``seeds`` models on the full training set minus the
target's removal set, plus ``seeds`` control models on the full training set.
A predicted flip is *confirmed* when most of its models' outputs have the
flipped sign.

Training is not this package's business: :func:`verify_brittleness` builds the
masks and hands them to a :class:`Retrainer`, a function the caller passes in.
The orchestrator's (:class:`orchestrator.retrain.SweepRetrainer`) runs them as an
ordinary sweep with explicit masks, one block per candidate, in a store of its
own that a re-run resumes instead of retraining.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from analysis.brittleness import BrittlenessResult, TargetBrittleness
from storage.errors import InputError
from storage.sweep_store import SweepStore

__all__ = [
    "Retrained",
    "Retrainer",
    "VerifiedFlip",
    "VerificationResult",
    "VerificationPlan",
    "plan_verification",
    "verify_brittleness",
]


@dataclass(frozen=True)
class Retrained:
    """What a :class:`Retrainer` returns.

    Attributes
    ----------
    outputs : ndarray of float, shape [M, width]
        Row ``i`` is the output (``margins/test`` or ``margins/train``) of the
        model trained on ``masks[i]``.
    store : str
        Where the retrained models are kept.
    models_trained : int
        Models trained by this call (0 when an earlier call already had them all).
    """

    outputs: np.ndarray
    store: str
    models_trained: int


class Retrainer(Protocol):
    """Trains one model per mask row with the datamodels' own recipe and returns their outputs.

    ``block`` rows are trained (and resumable) together: a candidate's seeds.
    """

    def __call__(self, masks: np.ndarray, *, output: str, block: int) -> Retrained: ...


@dataclass
class VerifiedFlip:
    """Retraining outcome for one target's predicted removal set.

    Attributes
    ----------
    target, size : int
        Output index, removal-set size.
    predicted_full, predicted_after : float
        The datamodel's predictions with the full set and after the removal.
    margins : list of float
        The retrained models' outputs on the target, one per seed.
    flipped : list of bool
        Whether each model's output has the flipped sign.
    control_margins : list of float
        Outputs of the full-training-set control models on the target.
    confirmed : bool
        More than half the seeds flipped.
    """

    target: int
    size: int
    predicted_full: float
    predicted_after: float
    margins: list[float]
    flipped: list[bool]
    control_margins: list[float]
    confirmed: bool


@dataclass
class VerificationResult:
    """How many predicted flips really flip.

    Attributes
    ----------
    store : str
        The retraining sweep's store.
    seeds : int
        Models per candidate (and control models).
    n_candidates, n_confirmed : int
    confirmation_rate : float
        ``n_confirmed / n_candidates``.
    flip_fraction : float
        Fraction of all retrained models whose output flipped.
    control_agreement : float
        Fraction of (target, control model) pairs whose full-training-set output
        has the sign the datamodel predicted for the full set.
    models_trained : int
        Models trained by this call (0 when the store was already complete).
    seconds : float
    flips : list of VerifiedFlip
    """

    store: str
    seeds: int
    n_candidates: int
    n_confirmed: int
    confirmation_rate: float
    flip_fraction: float
    control_agreement: float
    models_trained: int
    seconds: float
    flips: list[VerifiedFlip]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerificationPlan:
    """The retraining sweep, before anything runs.

    Attributes
    ----------
    candidates : list of TargetBrittleness
        Targets checked, smallest removal sets first.
    masks : ndarray of bool, shape [(len(candidates) + 1) * seeds, N_train]
        Block ``i`` (``seeds`` rows) trains without candidate ``i``'s set; the last
        block is the full-training-set control.
    seeds : int
    """

    candidates: list[TargetBrittleness]
    masks: np.ndarray
    seeds: int


def plan_verification(result: BrittlenessResult, *, seeds: int = 3, max_targets: int = 10) -> VerificationPlan:
    """Choose the candidates and build the retraining masks (nothing is written or trained).

    Raises
    ------
    InputError
        Bad ``seeds``/``max_targets``, or no chosen target with a predicted flip.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"seeds must be an int >= 1; got {seeds!r}", params=("seeds",))
    if isinstance(max_targets, bool) or not isinstance(max_targets, int) or max_targets < 1:
        raise InputError(f"max_targets must be an int >= 1; got {max_targets!r}", params=("max_targets",))
    flippable = sorted((t for t in result.targets if t.size is not None), key=lambda t: (t.size, t.target))
    candidates = flippable[:max_targets]
    if not candidates:
        raise InputError("no chosen target has a predicted flipping removal set; nothing to verify", params=("targets",))
    n_train = SweepStore.open(result.store, mode="r").dataset.n_train
    masks = np.ones(((len(candidates) + 1) * seeds, n_train), dtype=bool)
    for i, candidate in enumerate(candidates):
        masks[i * seeds : (i + 1) * seeds, candidate.removal] = False
    return VerificationPlan(candidates=candidates, masks=masks, seeds=seeds)


def verify_brittleness(
    result: BrittlenessResult, *, retrain: Retrainer, seeds: int = 3, max_targets: int = 10
) -> VerificationResult:
    """Retrain on the training set minus each candidate set and count the confirmed flips.

    Parameters
    ----------
    result : BrittlenessResult
        Predicted removal sets (:func:`analysis.brittleness.brittleness`).
    retrain : Retrainer
        Trains the models (``orchestrator.api.retrainer_for(store, ...)`` runs them
        as a sweep on Ray).
    seeds : int
        Models per candidate, and control models on the full training set.
    max_targets : int
        Candidates at most, the smallest removal sets first.

    Returns
    -------
    VerificationResult

    Raises
    ------
    InputError
        See :func:`plan_verification` (checked before anything is trained).
    DmsweepError
        The retraining failed.
    """
    started = time.perf_counter()
    plan = plan_verification(result, seeds=seeds, max_targets=max_targets)
    retrained = retrain(plan.masks, output=result.output, block=seeds)
    if retrained.outputs.shape[0] != plan.masks.shape[0]:
        raise InputError(f"the retrainer returned {retrained.outputs.shape[0]} rows for {plan.masks.shape[0]} masks",
                         params=("retrain",))
    outputs = np.asarray(retrained.outputs, dtype=np.float64)
    control_rows = slice(len(plan.candidates) * seeds, (len(plan.candidates) + 1) * seeds)
    flips: list[VerifiedFlip] = []
    agree = []
    for i, candidate in enumerate(plan.candidates):
        margins = outputs[i * seeds : (i + 1) * seeds, candidate.target]
        control = outputs[control_rows, candidate.target]
        flipped = margins <= 0 if candidate.predicted_correct else margins > 0
        agree.extend((control > 0) == candidate.predicted_correct)
        flips.append(VerifiedFlip(
            target=candidate.target, size=int(candidate.size), predicted_full=candidate.full,
            predicted_after=float(candidate.after), margins=margins.tolist(), flipped=flipped.tolist(),
            control_margins=control.tolist(), confirmed=bool(flipped.sum() * 2 > seeds),
        ))
    confirmed = sum(f.confirmed for f in flips)
    return VerificationResult(
        store=retrained.store, seeds=seeds, n_candidates=len(flips), n_confirmed=int(confirmed),
        confirmation_rate=confirmed / len(flips),
        flip_fraction=float(np.mean([x for f in flips for x in f.flipped])),
        control_agreement=float(np.mean(agree)), models_trained=int(retrained.models_trained),
        seconds=time.perf_counter() - started, flips=flips,
    )
