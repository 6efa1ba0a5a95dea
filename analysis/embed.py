"""Datamodel embeddings and subpopulations: PCA and spectral clustering of normalised weight vectors.

Each target's weight vector θ_x / ‖θ_x‖ is an embedding of that target in
"training-data space": two targets are close when the same training examples
move them the same way (Ilyas et al. 2022, section 5). PCA components of the
embeddings and spectral clusters of them (scikit-learn) expose subpopulations;
for each component the targets at its two extremes, and for each cluster its
most central members, are what a user looks at. Targets whose datamodel is all
zero have no direction and are left out.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.inputs import Examples, load_examples
from analysis.load import check_positive_int, load_datamodels
from analysis.plots import Tile, example_grid, new_figure, save_figure
from storage.errors import InputError

__all__ = ["Component", "Subpopulation", "EmbedResult", "embed_datamodels", "embedding_figure", "extremes_figure",
           "clusters_figure"]


@dataclass
class Component:
    """One principal component of the embeddings and the targets at its extremes."""

    component: int
    explained_variance_ratio: float
    top: list[int]
    bottom: list[int]


@dataclass
class Subpopulation:
    """One spectral cluster: its size, label counts and most central targets."""

    cluster: int
    size: int
    central: list[int]
    label_counts: dict[str, int]


@dataclass
class EmbedResult:
    """Embeddings of the targets and what structure they show.

    Attributes
    ----------
    name, store, output, target_split : str
    targets : list of int
        The embedded targets (output indices).
    excluded : list of int
        Targets left out (all-zero datamodels).
    components : list of Component
    clusters : list of Subpopulation
    coords : list of [float, float]
        Each embedded target's scores on the first two components.
    assignment : list of int
        Each embedded target's cluster.
    labels : list of int or None
        Each embedded target's label, when the dataset is available.
    """

    name: str
    store: str
    output: str
    target_split: str
    targets: list[int]
    excluded: list[int]
    components: list[Component]
    clusters: list[Subpopulation]
    coords: list[list[float]]
    assignment: list[int]
    labels: list[int] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: str | Path, examples: Examples | None) -> list[Path]:
        """Write ``embed.json``, ``embedding.png`` and, with examples, ``component_<c>.png``/``clusters.png``."""
        out = Path(out_dir)
        path = out / "embed.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        written = [path, save_figure(embedding_figure(self), out / "embedding.png")]
        if examples is not None:
            for component in self.components:
                fig = extremes_figure(self, examples, component)
                written.append(save_figure(fig, out / f"component_{component.component}.png"))
            written.append(save_figure(clusters_figure(self, examples), out / "clusters.png"))
        return written


def embed_datamodels(
    store_path: str | Path,
    *,
    name: str | None = None,
    targets: np.ndarray | list[int] | None = None,
    n_components: int = 5,
    n_clusters: int = 8,
    n_extremes: int = 8,
    seed: int = 0,
    examples: Examples | None = None,
) -> EmbedResult:
    """PCA and spectral clustering of the chosen targets' normalised datamodel weights.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
    targets : array of int, shape [K], optional
        Output indices (default all).
    n_components : int
        PCA components reported.
    n_clusters : int
        Spectral clusters (``affinity="nearest_neighbors"``, ``assign_labels="cluster_qr"``).
    n_extremes : int
        Targets listed at each end of a component and per cluster.
    seed : int
        Random state of the clustering.
    examples : Examples, optional
        For labels (loaded from the recipe when not given).

    Raises
    ------
    InputError
        Unknown datamodels, targets outside the fitted ones, too few embeddable
        targets for the components/clusters asked.
    """
    from sklearn.cluster import SpectralClustering
    from sklearn.decomposition import PCA

    dm = load_datamodels(store_path, name=name)
    chosen = dm.choose_targets(targets)
    for value, param in ((n_components, "n_components"), (n_clusters, "n_clusters"), (n_extremes, "n_extremes")):
        check_positive_int(value, param)
    w = dm.weight[:, dm.columns(chosen)].T.astype(np.float64)  # [K, N_train]
    norms = np.linalg.norm(w, axis=1)
    keep = norms > 0
    embedded, excluded = chosen[keep], chosen[~keep]
    need = max(n_components, n_clusters) + 1
    if embedded.size < need:
        raise InputError(
            f"{embedded.size} targets have a non-zero datamodel; {n_components} components and {n_clusters} "
            f"clusters need at least {need}", params=("n_components", "n_clusters")
        )
    if n_components > dm.n_train:
        raise InputError(f"n_components={n_components} exceeds the {dm.n_train} training examples",
                         params=("n_components",))
    e = w[keep] / norms[keep, None]
    pca = PCA(n_components=n_components, random_state=seed)
    scores = pca.fit_transform(e)
    components = []
    for c in range(n_components):
        order = np.argsort(-scores[:, c], kind="stable")
        components.append(Component(
            component=c, explained_variance_ratio=float(pca.explained_variance_ratio_[c]),
            top=embedded[order[:n_extremes]].tolist(), bottom=embedded[order[::-1][:n_extremes]].tolist(),
        ))
    clustering = SpectralClustering(
        n_clusters=n_clusters, affinity="nearest_neighbors", n_neighbors=min(10, embedded.size - 1),
        assign_labels="cluster_qr", random_state=seed,
    )
    assignment = clustering.fit_predict(e)
    examples = examples if examples is not None else load_examples(dm.store)
    labels = examples.inputs(dm.target_kind)[1][embedded] if examples is not None else None
    clusters = []
    for k in range(n_clusters):
        members = np.flatnonzero(assignment == k)
        if members.size == 0:
            continue
        centre = e[members].mean(0)
        order = members[np.argsort(-(e[members] @ centre), kind="stable")]
        counts = Counter(labels[members].tolist()) if labels is not None else Counter()
        clusters.append(Subpopulation(
            cluster=k, size=int(members.size), central=embedded[order[:n_extremes]].tolist(),
            label_counts={str(label): int(n) for label, n in sorted(counts.items())},
        ))
    second = scores[:, :2] if n_components >= 2 else np.c_[scores[:, 0], np.zeros(len(scores))]
    return EmbedResult(
        name=dm.name, store=str(dm.store.path), output=dm.output, target_split=dm.target_kind,
        targets=embedded.tolist(), excluded=excluded.tolist(), components=components, clusters=clusters,
        coords=second.tolist(), assignment=assignment.astype(int).tolist(),
        labels=None if labels is None else labels.astype(int).tolist(),
    )


def embedding_figure(result: EmbedResult) -> Any:
    """Targets on the first two PCA components, coloured by spectral cluster (and by label when known)."""
    coords = np.asarray(result.coords)
    panels = 2 if result.labels is not None else 1
    fig = new_figure(4.2 * panels, 3.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    colourings = [("spectral cluster", np.asarray(result.assignment))]
    if result.labels is not None:
        colourings.append(("label", np.asarray(result.labels)))
    for ax, (what, colour) in zip(axes, colourings):
        points = ax.scatter(coords[:, 0], coords[:, 1], c=colour, cmap="tab10", s=8, alpha=0.8)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(f"{len(coords)} {result.target_split} datamodel embeddings, by {what}", fontsize=8)
        fig.colorbar(points, ax=ax, shrink=0.8)
    return fig


def extremes_figure(result: EmbedResult, examples: Examples, component: Component) -> Any:
    """The targets at the two ends of one principal component."""
    x, y = examples.inputs(result.target_split)
    rows = [
        (f"PC{component.component + 1} high", [Tile(x[t], f"#{t} y={y[t]}") for t in component.top]),
        (f"PC{component.component + 1} low", [Tile(x[t], f"#{t} y={y[t]}") for t in component.bottom]),
    ]
    return example_grid(rows, examples, title=f"Extremes of principal component {component.component + 1} "
                                                f"({100 * component.explained_variance_ratio:.1f}% of variance)")


def clusters_figure(result: EmbedResult, examples: Examples, *, per_cluster: int = 8) -> Any:
    """One row per spectral cluster: its most central targets."""
    x, y = examples.inputs(result.target_split)
    rows = [(f"cluster {c.cluster} (n={c.size})", [Tile(x[t], f"#{t} y={y[t]}") for t in c.central[:per_cluster]])
            for c in result.clusters]
    return example_grid(rows, examples, title="Most central members of each datamodel subpopulation")
