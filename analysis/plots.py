"""Figures of the applications, drawn with matplotlib's object API on the Agg canvas.

No ``pyplot``: figures are plain :class:`matplotlib.figure.Figure` objects (no
global figure registry, nothing shown), saved as PNG files or embedded bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.inputs import Examples

__all__ = ["Tile", "new_figure", "example_grid", "figure_png", "save_figure", "step_curve"]


@dataclass(frozen=True)
class Tile:
    """One example in a grid: its input and a caption (index, label, weight...)."""

    x: np.ndarray
    caption: str


def new_figure(width: float, height: float) -> Figure:
    """A figure attached to an Agg canvas (so it can be saved without pyplot)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def example_grid(rows: Sequence[tuple[str, Sequence[Tile]]], examples: Examples, *, title: str = "") -> Figure:
    """A grid of examples, one labelled row per group (e.g. target / positive / negative).

    Parameters
    ----------
    rows : sequence of (row label, tiles)
    examples : Examples
        Decides how a tile is drawn (picture or curve).
    title : str
    """
    n_cols = max(1, max((len(tiles) for _, tiles in rows), default=1))
    fig = new_figure(1.45 * n_cols + 0.4, 1.6 * len(rows) + (0.3 if title else 0))
    axes = np.atleast_2d(fig.subplots(len(rows), n_cols, squeeze=False))
    for r, (label, tiles) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(tiles):
                ax.axis("off")
                continue
            picture = examples.picture(tiles[c].x)
            if examples.kind == "curve":
                ax.plot(picture, lw=1.2, color="C0")
            else:
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(tiles[c].caption, fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def step_curve(ax: object, k: Sequence[int], fraction: Sequence[float], *, label: str | None = None) -> None:
    """Draw a cumulative fraction against k as a step line."""
    ax.step(k, fraction, where="post", label=label)  # type: ignore[attr-defined]


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG file; returns the path."""
    path = Path(path)
    path.write_bytes(figure_png(fig))
    return path
