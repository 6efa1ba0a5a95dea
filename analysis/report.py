"""``dmsweep report``: one self-contained static HTML page about a sweep and its datamodels.

Every figure is a PNG embedded as a ``data:`` URI, with no script, stylesheet or
image fetched from anywhere, so the file opens in a browser from disk and can be
mailed or checked in. Sections: the sweep's summary (models, accuracy,
throughput, failures), the datamodels (fit, LDS), the LDS curve, the
brittleness curve, nearest training examples of a few targets, the most
suspicious train–test pairs, and the datamodel embedding.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from analysis.brittleness import brittleness, brittleness_figure
from analysis.embed import clusters_figure, embed_datamodels, embedding_figure
from analysis.inputs import load_examples
from analysis.lds_curve import lds_curve, lds_curve_figure, stored_lds_curve
from analysis.leakage import find_leakage, leakage_figure
from analysis.load import default_out_dir, load_datamodels
from analysis.neighbors import nearest_training_examples, neighbors_figure
from analysis.plots import figure_png
from storage.errors import InputError
from storage.ledger import BlockStatus
from storage.status import StoreStatus, store_status

__all__ = ["ReportResult", "build_report", "default_report_path"]

#: Completed rows read at most for the accuracy summary.
_MAX_SUMMARY_ROWS = 8192

LdsCurveMode = Literal["auto", "stored", "skip"]


@dataclass
class ReportResult:
    """What was written.

    Attributes
    ----------
    path : str
        The HTML file.
    name : str
        The datamodels reported on.
    sections : list of str
        Section titles, in order.
    images : int
        Embedded images.
    bytes : int
        Size of the file.
    notes : list of str
        Sections left out and why.
    seconds : float
    """

    path: str
    name: str
    sections: list[str]
    images: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_report_path(store_path: str | Path) -> Path:
    """``<store without .zarr>.analysis/report.html`` next to the store."""
    return default_out_dir(store_path, "report.html")


class _Page:
    """The HTML being assembled."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sections: list[str] = []
        self.images = 0

    def section(self, title: str, intro: str = "") -> None:
        self.sections.append(title)
        self.parts.append(f"<h2>{html.escape(title)}</h2>")
        if intro:
            self.parts.append(f"<p>{html.escape(intro)}</p>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> None:
        out = ["<table>"]
        if header:
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
        out.append("</table>")
        self.parts.append("".join(out))

    def figure(self, fig: Any, alt: str) -> None:
        data = base64.b64encode(figure_png(fig)).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>')
        self.images += 1

    def render(self, title: str) -> str:
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
            "font-size:.9em;text-align:left}th{background:#f3f3f3}img{max-width:100%}figure{margin:.5em 0}"
            "h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(self.parts)
            + "\n</body></html>\n"
        )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _provenance(store: Any) -> str:
    provenance = store.metadata.provenance
    files = ", ".join(f"{role}: {path}" for role, path in provenance.files.items())
    return f"{provenance.source}" + (f" ({files})" if files else "") + (f"; {provenance.description}" if provenance.description else "")


def build_report(
    store_path: str | Path,
    *,
    name: str | None = None,
    out: str | Path | None = None,
    status: StoreStatus | None = None,
    lds_curve_mode: LdsCurveMode = "auto",
    n_neighbor_targets: int = 3,
    seed: int = 0,
) -> ReportResult:
    """Write the HTML report of a store and its datamodels ``name``.

    Parameters
    ----------
    store_path : str or Path
    name : str, optional
        Datamodels (default: the store's only ones).
    out : str or Path, optional
        The HTML file (default :func:`default_report_path`); its folder is created.
    status : StoreStatus, optional
        The store's progress record (:func:`storage.status.store_status`, read
        afresh when not given).
    lds_curve_mode : ``auto``, ``stored`` or ``skip``
        ``auto`` shows the curve recorded by ``dmsweep analyze lds-curve`` or
        computes it (fits on row prefixes); ``stored`` only shows a recorded one.
    n_neighbor_targets : int
        Targets whose nearest training examples are shown.
    seed : int
        Random state of the clustering.

    Raises
    ------
    InputError
        No store, no or unknown datamodels, ``out`` is a directory.
    """
    started = time.perf_counter()
    if lds_curve_mode not in ("auto", "stored", "skip"):
        raise InputError(f"lds_curve_mode must be auto, stored or skip; got {lds_curve_mode!r}",
                         params=("lds_curve_mode",))
    dm = load_datamodels(store_path, name=name)
    path = Path(out) if out is not None else default_report_path(store_path)
    if path.is_dir():
        raise InputError(f"out {str(path)!r} is a directory; give the HTML file's path", params=("out",))
    store = dm.store
    status = status if status is not None else store_status(store.path)
    page = _Page()
    notes: list[str] = []
    try:
        examples = load_examples(store)
    except InputError as exc:  # the data is not on this machine: the report still has every number
        examples = None
        notes.append(f"figures of examples left out: {exc}")

    # -- the sweep -------------------------------------------------------------------
    rows = store.completed_rows()[:_MAX_SUMMARY_ROWS]
    margins = store.read("margins/test", rows).astype(np.float32) if rows.size else np.zeros((0, 0))
    accuracy = (margins > 0).mean(1) if rows.size else np.zeros(0)
    table = store.ledger.table()
    seconds = float(np.nansum(table["seconds"][table["status"] == BlockStatus.COMPLETE]))
    spec = store.spec
    page.section("Sweep" if spec is not None else "Imported models")
    page.table([
        ("store", str(store.path)),
        ("recipe", f"{spec.recipe.name} {spec.recipe.params}") if spec is not None else
        ("imported from", _provenance(store)),
        ("dataset", f"{store.dataset.name}: {store.dataset.n_train} train / {store.dataset.n_test} test"),
        ("subset fraction α", _fmt(dm.fit_fraction())),
        ("models", f"{status.completed_models} completed of {status.num_models} "
                   f"({status.completed_blocks} blocks of {status.block})"),
        ("failed blocks", f"{status.failed_blocks}" + (f": {[f.block for f in status.failures]}" if status.failures else "")),
        ("pending blocks", str(status.pending_blocks)),
        ("throughput", f"{_fmt(status.models_per_second)} models/s (recent completions)"),
        ("block time (sum over workers)", f"{seconds:.0f} s" if np.isfinite(seconds) else "n/a"),
        ("test accuracy per model", f"{accuracy.mean():.3f} ± {accuracy.std():.3f} (mean ± std over {rows.size} models)"
         if rows.size else "n/a"),
        ("nodes", ", ".join(f"{n}: {m} models" for n, m in status.per_node_models.items()) or "n/a"),
    ])

    # -- the datamodels ---------------------------------------------------------------
    lds = dm.attrs.get("lds") or {}
    nnz = (dm.weight != 0).sum(0)
    page.section("Datamodels")
    page.table([
        ("name", dm.name),
        ("output", dm.output),
        ("targets", f"{dm.targets.start}..{dm.targets.stop - 1} ({len(dm.targets)})"),
        ("fitted on", f"{dm.fit_rows().size} models (rows {dm.attrs.get('rows')})"),
        ("non-zero weights per target", f"{nnz.mean():.1f} mean, {int(np.median(nnz))} median"),
        ("validation MSE", _fmt(float(np.nanmean(dm.val_mse)) if np.isfinite(dm.val_mse).any() else None)),
        ("LDS (held-out)", f"{_fmt(lds.get('lds'))} on {lds.get('n_models')} models" if lds else
         "not evaluated (dmsweep eval)"),
    ])

    # -- LDS curve ---------------------------------------------------------------------
    page.section("LDS curve", "LDS on held-out models of datamodels fitted on growing prefixes of the rows; "
                              "a curve still rising at the right says more models are worth training.")
    curve = stored_lds_curve(store.path, name=dm.name) if lds_curve_mode != "skip" else None
    if curve is None and lds_curve_mode == "auto":
        try:
            curve = lds_curve(store.path, name=dm.name)
        except InputError as exc:
            notes.append(f"LDS curve: {exc}")
    if curve is not None:
        page.figure(lds_curve_figure(curve), "LDS curve")
        page.table([(str(p.n_models), _fmt(p.lds), _fmt(p.pearson), str(p.n_targets)) for p in curve.points],
                   ("models", "LDS", "Pearson", "targets"))
    else:
        page.text(notes[-1] if notes else "No LDS curve recorded (dmsweep analyze lds-curve computes it).")

    # -- brittleness --------------------------------------------------------------------
    brittle = brittleness(store.path, name=dm.name)
    page.section("Brittleness", "Fraction of targets whose prediction the datamodels predict flips when at most "
                                "k training examples (those with the largest weights) are removed.")
    page.figure(brittleness_figure(brittle), "brittleness curve")
    page.text(f"{brittle.n_flippable} of {len(brittle.targets)} targets flippable; median removal-set size "
              f"{_fmt(brittle.median_size)}.")

    # -- nearest training examples ---------------------------------------------------------
    page.section("Nearest training examples", "For a few targets (those with the largest datamodel norm): the "
                                              "training examples with the largest positive and negative weights.")
    norms = np.linalg.norm(dm.weight, axis=0)
    picks = (dm.targets.start + np.argsort(-norms, kind="stable")[:n_neighbor_targets]).tolist()
    neighbors = nearest_training_examples(store.path, name=dm.name, targets=picks, examples=examples)
    for entry in neighbors.targets:
        if examples is not None:
            page.figure(neighbors_figure(neighbors, examples, entry), f"neighbours of target {entry.target}")
        else:
            page.table([("+", ", ".join(f"#{n.train_index} ({n.weight:+.3f})" for n in entry.positive)),
                        ("−", ", ".join(f"#{n.train_index} ({n.weight:+.3f})" for n in entry.negative))],
                       (f"target {entry.target}", "training examples"))

    # -- leakage ----------------------------------------------------------------------------
    leak = find_leakage(store.path, name=dm.name, top=10, examples=examples)
    page.section("Train–test leakage", "Pairs whose weight is an outlier both for the training example and for the "
                                       "target; near-duplicates have a small input distance (d) and distance rank 0.")
    if examples is not None and leak.pairs:
        page.figure(leakage_figure(leak, examples, n=8), "most suspicious pairs")
    page.table([(str(p.rank), str(p.train_index), str(p.target), f"{p.weight:+.3f}", f"{p.score:.1f}",
                 _fmt(p.distance), _fmt(p.distance_rank)) for p in leak.pairs],
               ("rank", "train", "target", "weight", "score", "distance", "distance rank"))

    # -- embedding ---------------------------------------------------------------------------
    page.section("Datamodel embeddings", "Normalised datamodel weight vectors on their first two principal "
                                         "components, with spectral clusters (subpopulations).")
    try:
        embedding = embed_datamodels(store.path, name=dm.name, n_components=2,
                                     n_clusters=min(8, max(2, len(dm.targets) // 20)), seed=seed, examples=examples)
        page.figure(embedding_figure(embedding), "datamodel embedding")
        if examples is not None:
            page.figure(clusters_figure(embedding, examples), "cluster members")
        page.table([(str(c.cluster), str(c.size), ", ".join(f"{k}:{v}" for k, v in c.label_counts.items()))
                    for c in embedding.clusters], ("cluster", "size", "labels"))
    except InputError as exc:
        notes.append(f"embedding: {exc}")
        page.text(str(exc))

    page.parts.append(f"<p><small>Generated by dmsweep report in {time.perf_counter() - started:.1f} s.</small></p>")
    text = page.render(f"dmsweep report: {store.path.name} / {dm.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return ReportResult(path=str(path), name=dm.name, sections=page.sections, images=page.images,
                        bytes=len(text.encode()), notes=notes, seconds=time.perf_counter() - started)
