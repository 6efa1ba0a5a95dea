"""CLI commands over the regression API: fit, eval, import-npy, export."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.common import JsonFlag, err, guarded, emit, parse_bytes, parse_range, say, with_model_options
from regression.config import SolverConfig

__all__ = ["register"]


@with_model_options(SolverConfig, into="config")
def fit(
    store: Annotated[str, typer.Argument(help="A dmsweep store (a path or s3://bucket/prefix).")],
    name: Annotated[str, typer.Option(help="Name of the datamodels (datamodels/NAME in the store).")],
    config: SolverConfig,
    rows: Annotated[str | None, typer.Option(help="Model rows START:END to fit on (completed rows inside).")] = None,
    targets: Annotated[str | None, typer.Option(help="Target columns A:B to fit (default all).")] = None,
    shards: Annotated[int, typer.Option(help="Split targets into this many shards (Ray tasks when on Ray).")] = 1,
    output: Annotated[str, typer.Option(help="Output regressed on: margins/test or margins/train.")] = "margins/test",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    val_fraction: Annotated[float, typer.Option(
        help="Fraction of the rows held out for early stopping and the choice of lambda: exactly the last "
        "round(f*n) rows, wherever that falls.")] = 0.1,
    max_memory: Annotated[str | None, typer.Option(help="Bound on host memory, e.g. 8GiB.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing datamodels of this name.")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster to run shards on (default: in turn, here).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Fit one LASSO datamodel per target (shared noise removed, lambda path, best lambda by validation MSE, refit)."""
    from orchestrator.cli.fit_progress import RichFitProgress
    from orchestrator.ray_runtime import connect_if_asked
    from regression.fit import fit_datamodels

    row_range = parse_range(rows, param="rows")
    target_range = parse_range(targets, param="targets")
    memory = parse_bytes(max_memory, param="max_memory")
    connect_if_asked(address)
    result = fit_datamodels(
        store, name=name, config=config, rows=row_range, targets=target_range, shards=shards, device=device,
        val_fraction=val_fraction, output=output, max_memory=memory,  # type: ignore[arg-type]
        overwrite=overwrite, progress=RichFitProgress() if progress and not as_json else None,
    )
    emit(result.to_dict(), as_json, lambda: say(
        f"datamodels {result.name!r}: {result.targets[1] - result.targets[0]} targets fitted on "
        f"{result.n_train_rows} models (+{result.n_val_rows} for validation) in {result.wall_time:.1f}s on {result.device}; "
        f"mean val MSE {result.mean_val_mse:.4g}, mean non-zeros {result.mean_nnz:.1f}, "
        f"shards fitted {result.shards_fitted}, skipped {result.shards_skipped}\n"
        + (f"shared noise removed first: {result.noise_factors} components, {100 * result.noise_explained:.0f}% "
           "of the outputs' variance across models\n" if result.noise_factors else "")
        + f"settings: {_settings(config)}"))


def _settings(config: SolverConfig) -> str:
    """The solver settings in one line, as flags (what the defaults are, when none were given)."""
    parts = []
    for name, value in config.model_dump(mode="json").items():
        extra = SolverConfig.model_fields[name].json_schema_extra
        flag = str(extra.get("flag") if isinstance(extra, dict) and extra.get("flag") else "--" + name.replace("_", "-"))
        parts.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(parts)


def evaluate(
    store: Annotated[str, typer.Argument(help="Store holding the datamodels (a path or s3://bucket/prefix).")],
    name: Annotated[str, typer.Option(help="Name of the datamodels.")],
    eval_store: Annotated[str | None, typer.Option(help="A store of models on fresh subsets of the same data.")] = None,
    rows: Annotated[str | None, typer.Option(help="Held-out rows START:END (of the eval store, or of STORE).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """LDS: mean over targets of the Spearman correlation between predicted and actual outputs on held-out models."""
    from regression.lds import evaluate_lds

    result = evaluate_lds(store, name=name, eval_store=eval_store, rows=parse_range(rows, param="rows"))

    def human() -> None:
        say(f"LDS {result.lds:.3f} (Spearman, mean over {result.n_targets} targets; ±{result.spearman_std:.3f} across "
            f"targets), Pearson {result.pearson:.3f}, on {result.n_models} held-out models")
        if result.lds_mean is not None:
            say(f"LDS {result.lds_mean:.3f} against the mean of {result.replicates} replicates per mask "
                f"({result.n_masks} masks; ±{result.spearman_std_mean:.3f}), Pearson {result.pearson_mean:.3f}")
        say(f"protocol: {result.protocol}")

    emit(result.to_dict(), as_json, human)


@contextmanager
def _rows_bar(enabled: bool, description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich bar on stderr fed by a library's ``progress(done, total)`` callback (None when off)."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=err) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def import_npy(
    store: Annotated[str, typer.Argument(help="Store to create (a path or s3://bucket/prefix).")],
    masks: Annotated[str | None, typer.Option(
        help="Bool or 0/1 uint8 .npy [M, N_train] (the datamodels-data format): a path or s3://bucket/key.")] = None,
    margins: Annotated[str | None, typer.Option(help="Float .npy [M, N_test] (float16/32/64): a path or s3:// URI.")] = None,
    train_margins: Annotated[str | None, typer.Option(
        help="Float .npy [M, N_train] of margins on the training examples (a path or s3:// URI).")] = None,
    published: Annotated[str | None, typer.Option(
        help="A folder or s3:// prefix in the release's layout ({DATASET}/data/): reads train_masks_{PCT}pct.npy "
        "and test_margins_{PCT}pct.npy, and keeps the last 10,000 models for evaluation.")] = None,
    pct: Annotated[int | None, typer.Option(help="The release's subset percentage, with --published (10, 20, 50, 75).")] = None,
    eval_models: Annotated[int | None, typer.Option(
        help="The last N rows are models kept for evaluation: fit leaves them out, eval uses them "
        "(default 0; 10,000 with --published).")] = None,
    eval_store: Annotated[str | None, typer.Option(
        help="Put the evaluation models in a store of their own here (a path or s3:// URI).")] = None,
    replicates: Annotated[int, typer.Option(help="Models per mask: rows [i*R, (i+1)*R) share one mask (checked).")] = 1,
    block: Annotated[int, typer.Option(help="Rows per block/chunk (any row count works: the last block is shorter).")] = 1000,
    requester_pays: Annotated[bool, typer.Option(
        help="For s3:// inputs: agree to pay for the requests (the published datamodels buckets require it).")] = False,
    dataset_name: Annotated[str, typer.Option(help="A name for the dataset.")] = "imported",
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a store from .npy masks and margins (the published datamodels format), a block of rows at a time."""
    from storage.errors import InputError
    from storage.published import PUBLISHED_EVAL_MODELS, import_npy as import_files, published_files

    options: dict[str, Any] = {"source": "npy"}
    if published is not None:
        if pct is None or masks is not None or margins is not None:
            raise InputError("published needs pct, and replaces masks and margins", params=("published", "pct"))
        files = published_files(published, pct)
        masks, margins = files["masks"], files["margins"]
        options = {"source": "published", "eval_models": PUBLISHED_EVAL_MODELS}
    if masks is None or margins is None:
        raise InputError("give masks and margins, or published and pct", params=("masks", "margins", "published"))
    if eval_models is not None:
        options["eval_models"] = eval_models
    with _rows_bar(progress and not as_json, "importing rows") as advance:
        result = import_files(masks, margins, store, train_margins=train_margins, block=block,
                              eval_store=eval_store, replicates=replicates, dataset_name=dataset_name,
                              requester_pays=requester_pays, progress=advance, **options)
    rate = result.bytes_read / max(result.seconds, 1e-9) / 1e9

    def human() -> None:
        say(f"imported {result.num_models} models ({result.n_train} train / {result.n_test} test; "
            f"{', '.join(result.outputs)}) into {result.store} in {result.seconds:.1f}s ({rate:.2f} GB/s)")
        if result.eval_rows is not None:
            say(f"rows {result.eval_rows[0]}:{result.eval_rows[1]} are evaluation models: fit leaves them out, "
                "eval uses them")
        if result.eval_store is not None:
            say(f"evaluation models in {result.eval_store} (eval --eval-store {result.eval_store})")

    emit(result.to_dict(), as_json, human)


def export(
    store: Annotated[str, typer.Argument(help="Store holding the datamodels (a path or s3://bucket/prefix).")],
    out: Annotated[Path, typer.Argument(help="Output .pt file, or directory for npy.")],
    name: Annotated[str, typer.Option(help="Name of the datamodels.")],
    fmt: Annotated[str, typer.Option("--format", help="pt (a dict of tensors) or npy (a directory).")] = "pt",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write datamodels in the published format: {weight [N_train, T], bias [T], lam [T]}."""
    from storage.published import export as export_datamodels

    written = export_datamodels(store, name, fmt, out, overwrite=overwrite)  # type: ignore[arg-type]
    emit({"out": str(written), "format": fmt, "name": name}, as_json, lambda: say(f"wrote {written}"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(guarded(fit))
    app.command(name="eval")(guarded(evaluate))
    app.command(name="import-npy")(guarded(import_npy))
    app.command(name="export")(guarded(export))
