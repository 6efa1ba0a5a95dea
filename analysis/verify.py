"""Checking predicted flips by retraining: a sweep on the training set minus each candidate set.

For each candidate target (the smallest predicted removal sets first) the
sweep's own recipe trains ``seeds`` models on the full training set minus the
target's removal set, plus ``seeds`` control models on the full training set.
The models run through the orchestrator as an ordinary sweep whose masks are
given explicitly (spec ``masks_file``), one block per candidate, in a store of
their own next to the analysis output; a re-run with the same candidates
resumes that store instead of retraining. A predicted flip is *confirmed* when
most of its models' outputs have the flipped sign.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.brittleness import BrittlenessResult, TargetBrittleness
from storage.errors import BlockFailedError, InputError
from storage.sweep_store import SweepStore

__all__ = ["VerifiedFlip", "VerificationResult", "VerificationPlan", "plan_verification", "verify_brittleness"]


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
    spec : dict
        The sweep spec (``masks_file`` names ``masks_file`` below).
    store, masks_file : Path
    """

    candidates: list[TargetBrittleness]
    masks: np.ndarray
    spec: dict[str, Any]
    store: Path
    masks_file: Path


def plan_verification(
    result: BrittlenessResult, *, out_dir: str | Path, seeds: int = 3, max_targets: int = 10, seed: int = 0
) -> VerificationPlan:
    """Choose the candidates and build the retraining sweep's masks and spec (nothing is written).

    Raises
    ------
    InputError
        Bad ``seeds``/``max_targets``, nothing flippable, or a store whose spec
        names no recipe to retrain with.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"seeds must be an int >= 1; got {seeds!r}")
    if isinstance(max_targets, bool) or not isinstance(max_targets, int) or max_targets < 1:
        raise InputError(f"max_targets must be an int >= 1; got {max_targets!r}")
    store = SweepStore.open(result.store, mode="r")
    stored = store.spec
    recipe = stored.get("recipe")
    if not isinstance(recipe, dict) or "name" not in recipe:
        raise InputError(f"store {result.store!r} records no recipe in its spec; --verify needs one to retrain")
    flippable = sorted((t for t in result.targets if t.size is not None), key=lambda t: (t.size, t.target))
    candidates = flippable[:max_targets]
    if not candidates:
        raise InputError("no chosen target has a predicted flipping removal set; nothing to verify")
    n_train = store.dataset.n_train
    masks = np.ones(((len(candidates) + 1) * seeds, n_train), dtype=bool)
    for i, candidate in enumerate(candidates):
        masks[i * seeds : (i + 1) * seeds, candidate.removal] = False
    outputs = {"train_margins": result.output == "margins/train"}
    digest = hashlib.sha256(
        masks.tobytes() + json.dumps([recipe, seed, outputs], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    out = Path(out_dir).resolve()
    spec = {
        "store": str(out / f"verify-{digest}.zarr"),
        "recipe": {"name": recipe["name"], "params": recipe.get("params") or {}},
        "masks_file": str(out / f"verify-{digest}.npy"),
        "num_models": int(masks.shape[0]),
        "block": seeds,
        "seed": seed,
        "outputs": outputs,
        **{k: stored[k] for k in ("resources", "retries", "timeout_s") if k in stored},
    }
    return VerificationPlan(candidates=candidates, masks=masks, spec=spec, store=Path(spec["store"]),
                 masks_file=Path(spec["masks_file"]))


def verify_brittleness(
    result: BrittlenessResult,
    *,
    out_dir: str | Path,
    seeds: int = 3,
    max_targets: int = 10,
    seed: int = 0,
    address: str | None = None,
) -> VerificationResult:
    """Retrain on the training set minus each candidate set and count the confirmed flips.

    Runs on the Ray already initialised in this process, the cluster at
    ``address``, or a local Ray started for the purpose.

    Parameters
    ----------
    result : BrittlenessResult
        Predicted removal sets (:func:`analysis.brittleness.brittleness`).
    out_dir : str or Path
        Where the retraining store and its masks file go (an existing directory).
    seeds : int
        Models per candidate, and control models on the full training set.
    max_targets : int
        Candidates at most, the smallest removal sets first.
    seed : int
        Base seed of the retraining sweep.
    address : str, optional
        Ray cluster address.

    Returns
    -------
    VerificationResult

    Raises
    ------
    InputError
        See :func:`plan_verification`.
    DmsweepError
        The retraining sweep failed.
    """
    from orchestrator.api import run_sweep  # the orchestrator (and Ray) only when retraining
    from orchestrator.spec import parse_spec

    started = time.perf_counter()
    plan = plan_verification(result, out_dir=out_dir, seeds=seeds, max_targets=max_targets, seed=seed)
    spec = parse_spec(plan.spec, source="brittleness verification")
    if not plan.masks_file.exists():
        np.save(plan.masks_file, plan.masks)
    run = run_sweep(spec, address=address, progress=False)
    if not run.done:
        raise BlockFailedError(f"retraining sweep {plan.store} left blocks {run.failed_blocks} failed")
    store = SweepStore.open(plan.store, mode="r")
    outputs = store.read(result.output, slice(0, plan.masks.shape[0])).astype(np.float64)
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
        store=str(plan.store), seeds=seeds, n_candidates=len(flips), n_confirmed=int(confirmed),
        confirmation_rate=confirmed / len(flips),
        flip_fraction=float(np.mean([x for f in flips for x in f.flipped])),
        control_agreement=float(np.mean(agree)), models_trained=int(run.newly_completed_blocks * seeds),
        seconds=time.perf_counter() - started, flips=flips,
    )
