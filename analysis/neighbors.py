"""Nearest training examples of a target: its datamodel's largest positive and negative weights.

A large positive weight θ_i says that including training example i raises the
target's output (helps the correct class); a large negative one that it lowers
it. The examples behind them are the target's "nearest" training examples in
the sense of the datamodel (Ilyas et al. 2022, section 4).
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

__all__ = ["Neighbor", "TargetNeighbors", "NeighborsResult", "nearest_training_examples", "neighbors_figure"]


@dataclass
class Neighbor:
    """One training example and its weight in the target's datamodel."""

    train_index: int
    weight: float
    label: int | None


@dataclass
class TargetNeighbors:
    """A target's top-k positive and negative training examples (non-zero weights only)."""

    target: int
    label: int | None
    positive: list[Neighbor]
    negative: list[Neighbor]


@dataclass
class NeighborsResult:
    """Nearest training examples of chosen targets.

    Attributes
    ----------
    name, store, output : str
    target_split : str
        ``test`` or ``train``: which examples the targets are.
    k : int
    targets : list of TargetNeighbors
    """

    name: str
    store: str
    output: str
    target_split: str
    k: int
    targets: list[TargetNeighbors]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path, examples: Examples | None) -> list[Path]:
        """Write ``neighbors.json`` and, with examples, ``neighbors_<target>.png`` per target."""
        out = Path(out_dir)
        path = out / "neighbors.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        written = [path]
        if examples is not None:
            for entry in self.targets:
                fig = neighbors_figure(self, examples, entry)
                written.append(save_figure(fig, out / f"neighbors_{self.target_split}{entry.target}.png"))
        return written


def nearest_training_examples(
    store_path: str | Path,
    *,
    name: str | None = None,
    targets: np.ndarray | list[int] | None = None,
    k: int = 8,
    examples: Examples | None = None,
) -> NeighborsResult:
    """The ``k`` largest positive and negative datamodel weights of each target, with labels.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
    targets : array of int, shape [K]
        Output indices.
    k : int
        Examples per sign.
    examples : Examples, optional
        The dataset, for labels (loaded from the recipe when not given; labels
        are None when the recipe cannot provide it).

    Raises
    ------
    InputError
        Unknown datamodels, targets outside the fitted ones, k < 1.
    """
    dm = load_datamodels(store_path, name=name)
    chosen = dm.choose_targets(targets, required=True)
    check_positive_int(k, "k")
    examples = examples if examples is not None else load_examples(dm.store)
    y_train = examples.y_train if examples is not None else None
    y_target = examples.inputs(dm.target_kind)[1] if examples is not None else None

    def neighbor(i: int, w: np.ndarray) -> Neighbor:
        return Neighbor(int(i), float(w[i]), None if y_train is None else int(y_train[i]))

    entries = []
    for target, column in zip(chosen.tolist(), dm.columns(chosen)):
        w = dm.weight[:, column]
        order = np.argsort(-w, kind="stable")
        positive = [neighbor(i, w) for i in order[:k] if w[i] > 0]
        negative = [neighbor(i, w) for i in order[::-1][:k] if w[i] < 0]
        entries.append(TargetNeighbors(
            target=int(target), label=None if y_target is None else int(y_target[target]),
            positive=positive, negative=negative,
        ))
    return NeighborsResult(name=dm.name, store=str(dm.store.path), output=dm.output, target_split=dm.target_kind,
                           k=k, targets=entries)


def neighbors_figure(result: NeighborsResult, examples: Examples, entry: TargetNeighbors) -> Any:
    """Three rows: the target; its most positive training examples; its most negative ones."""
    x_target = examples.inputs(result.target_split)[0][entry.target]

    def tiles(neighbors: list[Neighbor]) -> list[Tile]:
        return [Tile(examples.x_train[n.train_index], f"#{n.train_index} y={n.label}\nw={n.weight:+.3f}")
                for n in neighbors]

    rows = [
        (f"{result.target_split} target", [Tile(x_target, f"#{entry.target} y={entry.label}")]),
        ("helps (+)", tiles(entry.positive)),
        ("hurts (−)", tiles(entry.negative)),
    ]
    return example_grid(rows, examples, title=f"Training examples with the largest datamodel weights "
                                               f"for {result.target_split} example {entry.target}")
