"""Train–test leakage: (train, test) pairs whose datamodel weight is an outlier on both sides.

A near-duplicate of a test example in the training set shows up as a weight that
is large for *that* test example compared with every other training example, and
large for *that* training example compared with every other test example: a
one-to-one relation. The score of a pair (i, t) is therefore

    score(i, t) = min(θ[i, t] / r_i, θ[i, t] / c_t)

where r_i is the RMS of training example i's weights over all the other targets
and c_t the RMS of target t's weights over all the other training examples
(both leave the pair's own weight out, so a dominant weight does not hide
itself). Pairs are ranked by score; each comes with the input-space distance
and where that training example ranks among all of them by distance to the
target, so a user can confirm a near-duplicate by eye and by number.

For datamodels of training examples (``margins/train``) a pair (i, i) is the
example itself and is left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.inputs import Examples, load_examples
from analysis.load import check_positive_int, load_datamodels
from analysis.plots import Tile, example_grid, save_figure

__all__ = ["LeakagePair", "LeakageResult", "leakage_scores", "find_leakage", "leakage_figure"]


@dataclass
class LeakagePair:
    """One candidate leaked pair.

    Attributes
    ----------
    rank : int
        0 for the most suspicious pair.
    train_index, target : int
        The training example and the target (output index).
    weight : float
        θ[train_index, target].
    score : float
        The outlier score (see the module docstring).
    row_ratio, col_ratio : float
        Weight over the training example's / the target's RMS weight.
    distance : float or None
        Euclidean distance between the two inputs (None without the dataset).
    distance_rank : int or None
        How many training examples are closer to the target in input space
        (0: this one is the nearest).
    train_label, target_label : int or None
    """

    rank: int
    train_index: int
    target: int
    weight: float
    score: float
    row_ratio: float
    col_ratio: float
    distance: float | None
    distance_rank: int | None
    train_label: int | None
    target_label: int | None


@dataclass
class LeakageResult:
    """The top-ranked pairs.

    Attributes
    ----------
    name, store, output, target_split : str
    n_scored : int
        Pairs with a positive weight (the ones that can be ranked).
    median_distance : float or None
        Median input-space distance from a target to a training example, for scale.
    pairs : list of LeakagePair
    """

    name: str
    store: str
    output: str
    target_split: str
    n_scored: int
    median_distance: float | None
    pairs: list[LeakagePair]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path, examples: Examples | None, *, n_figure: int = 8) -> list[Path]:
        """Write ``leakage.json`` and, with examples, ``leakage_pairs.png`` (the top ``n_figure`` pairs)."""
        out = Path(out_dir)
        path = out / "leakage.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        written = [path]
        if examples is not None and self.pairs:
            written.append(save_figure(leakage_figure(self, examples, n=n_figure), out / "leakage_pairs.png"))
        return written


def leakage_scores(weight: np.ndarray, *, exclude_diagonal_offset: int | None = None) -> np.ndarray:
    """The outlier score of every (train, target) pair.

    Parameters
    ----------
    weight : ndarray, shape [N_train, T]
    exclude_diagonal_offset : int, optional
        For train-example targets starting at this training index: the pairs
        (i, i) are set to -inf.

    Returns
    -------
    ndarray of float64, shape [N_train, T]
        ``min(θ/r_i, θ/c_t)`` with leave-the-pair-out RMS scales; -inf where θ ≤ 0.
    """
    w = np.asarray(weight, dtype=np.float64)
    n, t = w.shape
    sq = w * w
    # Leave-one-out RMS of each row (over other targets) and column (over other examples).
    row = np.sqrt(np.maximum(sq.sum(1, keepdims=True) - sq, 0) / max(t - 1, 1))
    col = np.sqrt(np.maximum(sq.sum(0, keepdims=True) - sq, 0) / max(n - 1, 1))
    tiny = np.finfo(np.float64).tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.minimum(w / np.maximum(row, tiny), w / np.maximum(col, tiny))
    score[w <= 0] = -np.inf
    if exclude_diagonal_offset is not None:
        cols = np.arange(t)
        rows = cols + exclude_diagonal_offset
        keep = rows < n
        score[rows[keep], cols[keep]] = -np.inf
    return score


def find_leakage(
    store_path: str | Path,
    *,
    name: str | None = None,
    top: int = 20,
    examples: Examples | None = None,
) -> LeakageResult:
    """Rank (train, target) pairs by how much of an outlier their datamodel weight is.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
    top : int
        Pairs returned.
    examples : Examples, optional
        The dataset (loaded from the recipe when not given); without it no
        distances or labels.

    Raises
    ------
    InputError
        Unknown datamodels, ``top`` < 1.
    """
    check_positive_int(top, "top")
    dm = load_datamodels(store_path, name=name)
    offset = dm.targets.start if dm.target_kind == "train" else None
    score = leakage_scores(dm.weight, exclude_diagonal_offset=offset)
    finite = np.isfinite(score)
    n_scored = int(finite.sum())
    flat = np.flatnonzero(finite.reshape(-1))
    best = flat[np.argsort(-score.reshape(-1)[flat], kind="stable")[:top]]
    examples = examples if examples is not None else load_examples(dm.store)
    x_t = y_t = None
    if examples is not None:
        x_t, y_t = examples.inputs(dm.target_kind)
        x_train = examples.x_train.reshape(len(examples.x_train), -1).astype(np.float64)
    w = dm.weight.astype(np.float64)
    n, t = w.shape
    sq = w * w
    pairs, medians = [], []
    for rank, flat_index in enumerate(best.tolist()):
        i, column = divmod(flat_index, t)
        target = dm.targets.start + column
        row_rms = np.sqrt(max(sq[i].sum() - sq[i, column], 0) / max(t - 1, 1))
        col_rms = np.sqrt(max(sq[:, column].sum() - sq[i, column], 0) / max(n - 1, 1))
        distance = distance_rank = train_label = target_label = None
        if examples is not None and x_t is not None and y_t is not None:
            d = np.linalg.norm(x_train - x_t[target].reshape(1, -1).astype(np.float64), axis=1)
            if dm.target_kind == "train":
                d[target] = np.inf  # the example itself is not a neighbour
            distance, distance_rank = float(d[i]), int((d < d[i]).sum())
            medians.append(float(np.median(d[np.isfinite(d)])))
            train_label, target_label = int(examples.y_train[i]), int(y_t[target])
        pairs.append(LeakagePair(
            rank=rank, train_index=int(i), target=int(target), weight=float(w[i, column]),
            score=float(score[i, column]),
            row_ratio=float(w[i, column] / row_rms) if row_rms > 0 else float("inf"),
            col_ratio=float(w[i, column] / col_rms) if col_rms > 0 else float("inf"),
            distance=distance, distance_rank=distance_rank, train_label=train_label, target_label=target_label,
        ))
    return LeakageResult(
        name=dm.name, store=str(dm.store.path), output=dm.output, target_split=dm.target_kind, n_scored=n_scored,
        median_distance=float(np.median(medians)) if medians else None, pairs=pairs,
    )


def leakage_figure(result: LeakageResult, examples: Examples, *, n: int = 8) -> Any:
    """The top ``n`` pairs side by side: target above, training example below, with distance and score."""
    x_t = examples.inputs(result.target_split)[0]
    pairs = result.pairs[:n]
    top = [Tile(x_t[p.target], f"{result.target_split} #{p.target} y={p.target_label}") for p in pairs]
    bottom = [Tile(examples.x_train[p.train_index],
                   f"train #{p.train_index} y={p.train_label}\nd={p.distance:.2f} s={p.score:.1f}") for p in pairs]
    scale = f" (median distance {result.median_distance:.2f})" if result.median_distance is not None else ""
    return example_grid([("target", top), ("training ex.", bottom)], examples,
                        title=f"Most suspicious train–{result.target_split} pairs by datamodel weight{scale}")
