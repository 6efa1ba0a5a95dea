"""CLI commands over :mod:`analysis`: ``dmsweep analyze KIND STORE ...`` and ``dmsweep report STORE``.

Each command parses its options, calls the library, writes the result (JSON
and figures) into ``--out`` (default ``<store>.analysis/<kind>/`` next to the
store) and prints a summary, or the result as JSON with ``--json``. Bad input
is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any

import typer

from orchestrator.cli.common import JsonFlag, guarded, emit, parse_range, say
from orchestrator.cli.selection import parse_indices, parse_selection
from storage.errors import InputError

__all__ = ["register"]

StoreArg = Annotated[str, typer.Argument(help="Sweep store holding the datamodels (a path or s3://bucket/prefix).")]
NameOpt = Annotated[str | None, typer.Option(help="Datamodels name (default: the store's only datamodels).")]
OutOpt = Annotated[
    Path | None, typer.Option(help="Folder for the JSON result and figures (default: <store>.analysis/<kind>/).")
]
TargetsOpt = Annotated[
    str | None, typer.Option(help="Targets (test examples, or train ones for train-margin datamodels): 3,17 or 0:100 or all.")
]


def _finish(data: dict[str, Any], files: list[Path], as_json: bool, human: Any) -> None:
    data = {**data, "files": [str(f) for f in files]}

    def show() -> None:
        human()
        if files:
            say(f"wrote {len(files)} file{'s' if len(files) != 1 else ''} to {files[0].parent}")

    emit(data, as_json, show)


def counterfactual(
    store: StoreArg,
    name: NameOpt = None,
    targets: TargetsOpt = None,
    remove: Annotated[str | None, typer.Option(help="Training examples removed from the full set: 3,17 or 0:50.")] = None,
    remove_file: Annotated[Path | None, typer.Option(help="Removed examples: .npy of ints or bool mask, or a text file of ints.")] = None,
    subset: Annotated[str | None, typer.Option(help="The training subset kept instead: indices or ranges.")] = None,
    subset_file: Annotated[Path | None, typer.Option(help="The training subset kept, as a file.")] = None,
    out: OutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Predicted margin of targets for a training subset or a set of removed examples, with error bars."""
    from analysis.counterfactual import predict_counterfactual
    from analysis.load import check_out_dir, datamodels_shape, prepare_out_dir

    check_out_dir(out)
    shape = datamodels_shape(store, name=name)
    removed = parse_selection(remove, remove_file, size=shape.n_train, param="remove")
    kept = parse_selection(subset, subset_file, size=shape.n_train, param="subset")
    chosen = None if targets is None else _targets(targets, shape)
    result = predict_counterfactual(store, name=shape.name, targets=chosen, removed=removed, subset=kept)
    result, files = result, result.write(prepare_out_dir(out, store, "counterfactual"))

    def human() -> None:
        what = (f"without {len(result.removed)} training examples" if result.mode == "removed"
                else f"on a subset of {result.subset_size} training examples")
        say(f"{result.name}: predicted {result.output} {what} ({100 * result.subset_fraction:.1f}% of the "
                   f"training set; fitted at {100 * result.fit_fraction:.0f}%), ± RMS residual on "
                   f"{result.error_rows} {result.error_source}")
        for t, p, s, f in zip(result.targets, result.predicted, result.std, result.full):
            say(f"  target {t:>6}: {p:+.3f} ± {s:.3f}  ({'correct' if p > 0 else 'wrong'}; "
                       f"full training set {f:+.3f})")

    _finish(result.to_dict(), files, as_json, human)


def _targets(text: str | None, shape: Any) -> Any:
    return parse_indices(text, size=shape.targets.stop, lo=shape.targets.start, param="targets")


def _analyse_examples(
    store: str, name: str | None, targets: str | None, out: Path | None, kind: str,
    analyse: Callable[[str, Any, Any], tuple[Any, Callable[[Path], list[Path]]]],
) -> tuple[Any, list[Path]]:
    """What the commands that draw training examples share: check ``--out``, find the
    datamodels and targets, load the recipe's examples, analyse, write into ``--out``.

    ``analyse(name, targets, examples)`` returns the result and a function that
    writes it into a folder.
    """
    from analysis.inputs import load_examples
    from analysis.load import check_out_dir, datamodels_shape, prepare_out_dir
    from storage.sweep_store import SweepStore

    check_out_dir(out)
    shape = datamodels_shape(store, name=name)
    chosen = _targets(targets, shape)
    examples = load_examples(SweepStore.open(store))
    result, write = analyse(shape.name, chosen, examples)
    return result, write(prepare_out_dir(out, store, kind))


def brittleness(
    store: StoreArg,
    name: NameOpt = None,
    targets: TargetsOpt = None,
    max_k: Annotated[int | None, typer.Option(help="Largest removal set considered (default: no limit).")] = None,
    verify: Annotated[bool, typer.Option(help="Retrain models without each candidate set to check the flips.")] = False,
    verify_targets: Annotated[int, typer.Option(help="Candidates retrained, smallest removal sets first.")] = 10,
    seeds: Annotated[int, typer.Option(help="Models per candidate (and full-set control models).")] = 3,
    seed: Annotated[int, typer.Option(help="Base seed of the retraining sweep.")] = 0,
    address: Annotated[str | None, typer.Option(help="Ray cluster for --verify (default: a local Ray).")] = None,
    out: OutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Smallest predicted removal set that flips each target's prediction; --verify retrains to check."""
    from analysis.brittleness import brittleness as predict
    from analysis.load import check_out_dir, datamodels_shape, default_out_dir, prepare_out_dir
    from analysis.verify import plan_verification, verify_brittleness
    from orchestrator.retrain import SweepRetrainer

    check_out_dir(out)
    shape = datamodels_shape(store, name=name)
    chosen = _targets(targets, shape)
    result = predict(store, name=shape.name, targets=chosen, max_k=max_k)
    if verify:
        # Both refuse bad input before the output folder or the retraining store exist.
        where = Path(out) if out is not None else default_out_dir(store, "brittleness")
        retrain = SweepRetrainer(store, out_dir=where, seed=seed, address=address)
        plan_verification(result, seeds=seeds, max_targets=verify_targets)
    directory = prepare_out_dir(out, store, "brittleness")
    if verify:
        outcome = verify_brittleness(result, retrain=retrain, seeds=seeds, max_targets=verify_targets)
        result.verification = outcome.to_dict()
    result, files = result, result.write(directory)

    def human() -> None:
        n = len(result.targets)
        say(f"{result.name}: {result.n_flippable}/{n} targets flippable by removing at most {result.max_k} "
                   f"training examples (median set size {result.median_size})")
        for k in (1, 5, 10, 50, 100, 500):
            if k <= result.max_k:
                say(f"  removing <= {k:>3}: {100 * result.curve_fraction[k - 1]:5.1f}% of targets flip")
        for t in result.targets[:10]:
            size = "no flip" if t.size is None else f"{t.size} examples {t.removal[:8]}{'...' if t.size > 8 else ''}"
            say(f"  target {t.target:>6} (full {t.full:+.2f}): {size}")
        if result.verification:
            v = result.verification
            say(f"verified by retraining {v['seeds']} models per candidate: {v['n_confirmed']}/"
                       f"{v['n_candidates']} predicted flips confirmed ({100 * v['confirmation_rate']:.0f}%; "
                       f"{100 * v['flip_fraction']:.0f}% of models flipped; controls agree "
                       f"{100 * v['control_agreement']:.0f}%)")

    _finish(result.to_dict(), files, as_json, human)


def neighbors(
    store: StoreArg,
    name: NameOpt = None,
    targets: Annotated[str, typer.Option(help="Targets: 3,17 or 0:4.")] = "0",
    k: Annotated[int, typer.Option("--k", help="Training examples per sign.")] = 8,
    out: OutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Training examples with the largest positive and negative weights of each target, with a figure."""
    from analysis.neighbors import nearest_training_examples

    def analyse(dm_name: str, chosen: Any, examples: Any) -> tuple[Any, Callable[[Path], list[Path]]]:
        found = nearest_training_examples(store, name=dm_name, targets=chosen, k=k, examples=examples)
        return found, lambda folder: found.write(folder, examples)

    result, files = _analyse_examples(store, name, targets, out, "neighbors", analyse)

    def human() -> None:
        for entry in result.targets:
            say(f"{result.target_split} example {entry.target} (label {entry.label}):")
            for sign, items in (("+", entry.positive), ("-", entry.negative)):
                listed = ", ".join(f"#{n.train_index} (y={n.label}, {n.weight:+.3f})" for n in items) or "none"
                say(f"  {sign} {listed}")

    _finish(result.to_dict(), files, as_json, human)


def leakage(
    store: StoreArg,
    name: NameOpt = None,
    top: Annotated[int, typer.Option(help="Pairs listed.")] = 20,
    figure_pairs: Annotated[int, typer.Option(help="Pairs drawn in the figure.")] = 8,
    out: OutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train-test pairs whose datamodel weight is an outlier, ranked, with input distances and a figure."""
    from analysis.leakage import find_leakage

    def analyse(dm_name: str, _all: Any, examples: Any) -> tuple[Any, Callable[[Path], list[Path]]]:
        if figure_pairs < 1:
            raise InputError(f"figure_pairs must be at least 1; got {figure_pairs}", params=("figure_pairs",))
        found = find_leakage(store, name=dm_name, top=top, examples=examples)
        return found, lambda folder: found.write(folder, examples, n_figure=figure_pairs)

    result, files = _analyse_examples(store, name, None, out, "leakage", analyse)

    def human() -> None:
        scale = f" (median distance {result.median_distance:.2f})" if result.median_distance is not None else ""
        say(f"{result.name}: top {len(result.pairs)} of {result.n_scored} train-{result.target_split} "
                   f"pairs by outlier score{scale}")
        say("  rank  train  target   weight  score  distance  closer")
        for p in result.pairs:
            d = "n/a" if p.distance is None else f"{p.distance:8.3f}"
            say(f"  {p.rank:>4}  {p.train_index:>5}  {p.target:>6}  {p.weight:+.3f}  {p.score:5.1f}  {d:>8}  "
                       f"{'n/a' if p.distance_rank is None else p.distance_rank:>6}")

    _finish(result.to_dict(), files, as_json, human)


def embed(
    store: StoreArg,
    name: NameOpt = None,
    targets: TargetsOpt = None,
    components: Annotated[int, typer.Option(help="PCA components.")] = 5,
    clusters: Annotated[int, typer.Option(help="Spectral clusters.")] = 8,
    extremes: Annotated[int, typer.Option(help="Targets shown at each end of a component / per cluster.")] = 8,
    seed: Annotated[int, typer.Option(help="Random state of the clustering.")] = 0,
    out: OutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Normalised datamodel weights as embeddings: PCA components and spectral subpopulations."""
    from analysis.embed import embed_datamodels

    def analyse(dm_name: str, chosen: Any, examples: Any) -> tuple[Any, Callable[[Path], list[Path]]]:
        found = embed_datamodels(store, name=dm_name, targets=chosen, n_components=components,
                                 n_clusters=clusters, n_extremes=extremes, seed=seed, examples=examples)
        return found, lambda folder: found.write(folder, examples)

    result, files = _analyse_examples(store, name, targets, out, "embed", analyse)

    def human() -> None:
        say(f"{result.name}: {len(result.targets)} {result.target_split} targets embedded "
                   f"({len(result.excluded)} all-zero left out)")
        for c in result.components:
            say(f"  PC{c.component + 1} ({100 * c.explained_variance_ratio:.1f}%): high {c.top[:6]}, "
                       f"low {c.bottom[:6]}")
        for c in result.clusters:
            labels = ", ".join(f"{k}:{v}" for k, v in c.label_counts.items()) or "labels n/a"
            say(f"  cluster {c.cluster}: {c.size} targets ({labels}); central {c.central[:6]}")

    _finish(result.to_dict(), files, as_json, human)


def lds_curve_command(
    store: StoreArg,
    name: NameOpt = None,
    points: Annotated[str | None, typer.Option(help="Prefix sizes in models, e.g. 128,256,512 (default n/8,n/4,n/2).")] = None,
    eval_store: Annotated[str | None, typer.Option(help="A store of models on fresh subsets to evaluate on.")] = None,
    eval_rows: Annotated[str | None, typer.Option(help="Held-out rows START:END (default: rows the fit did not use).")] = None,
    targets: Annotated[str | None, typer.Option(help="Target columns A:B to fit and evaluate (a cheaper curve).")] = None,
    device: Annotated[str, typer.Option(help="Device of the prefix fits: auto, cpu, cuda[:i].")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show the fits' progress.")] = True,
    out: OutOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """LDS against the number of training models (refits on growing prefixes of the rows)."""
    from analysis.lds_curve import lds_curve
    from analysis.load import check_out_dir, prepare_out_dir
    from orchestrator.cli.fit_progress import RichFitProgress

    check_out_dir(out)
    sizes = None
    if points is not None:
        try:
            sizes = [int(p) for p in points.split(",") if p.strip()]
        except ValueError:
            raise InputError(f"points must be model counts like 128,256,512; got {points!r}",
                             params=("points",)) from None
        if not sizes:
            raise InputError("points is empty", params=("points",))
    result = lds_curve(store, name=name, points=sizes, eval_store=eval_store,
                       eval_rows=parse_range(eval_rows, param="eval_rows"),
                       targets=parse_range(targets, param="targets"), device=device,
                       progress=RichFitProgress() if progress and not as_json else None)
    result, files = result, result.write(prepare_out_dir(out, store, "lds-curve"))

    def human() -> None:
        n_eval = sum(b - a for a, b in result.eval_rows)
        say(f"{result.name}: LDS on {n_eval} held-out models, targets {result.targets[0]}:{result.targets[1]}")
        for p in result.points:
            say(f"  {p.n_models:>7} models: LDS {p.lds:.3f} (±{p.spearman_std:.3f}), Pearson {p.pearson:.3f}")

    _finish(result.to_dict(), files, as_json, human)


def report(
    store: Annotated[str, typer.Argument(help="Sweep store with fitted datamodels (a path or s3://bucket/prefix).")],
    name: NameOpt = None,
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: <store>.analysis/report.html).")] = None,
    lds_curve: Annotated[str, typer.Option(help="auto (recorded or computed), stored (only a recorded one) or skip.")] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Write one self-contained HTML page: sweep summary, LDS curve, brittleness, neighbours, leakage, embedding."""
    from analysis.report import build_report
    from storage.status import store_status

    result = build_report(store, name=name, out=out, status=store_status(store),
                          lds_curve_mode=lds_curve)  # type: ignore[arg-type]
    emit(result.to_dict(), as_json, lambda: say(
        f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, {result.images} figures; sections: "
        f"{', '.join(result.sections)})" + "".join(f"\n  note: {n}" for n in result.notes)))


def register(app: typer.Typer) -> None:
    """Add ``analyze KIND`` and ``report`` to ``app``."""
    analyze_app = typer.Typer(
        name="analyze",
        help="Applications of fitted datamodels: counterfactual, brittleness, neighbors, leakage, embed, lds-curve.",
        no_args_is_help=True,
    )
    for kind in (counterfactual, brittleness, neighbors, leakage, embed):
        analyze_app.command()(guarded(kind))
    analyze_app.command(name="lds-curve")(guarded(lds_curve_command))
    app.add_typer(analyze_app, name="analyze")
    app.command()(guarded(report))
