"""CLI commands over the regression API: fit, eval, import-npy, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.common import JsonFlag, guarded, emit, parse_bytes, parse_range, say, with_model_options
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
    val_fraction: Annotated[float, typer.Option(help="Last fraction of the rows held out for early stopping.")] = 0.1,
    max_memory: Annotated[str | None, typer.Option(help="Bound on host memory, e.g. 8GiB.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing datamodels of this name.")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster to run shards on (default: in turn, here).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Fit one LASSO datamodel per target (SAGA path, best lambda by validation MSE)."""
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
        f"shards fitted {result.shards_fitted}, skipped {result.shards_skipped}"))


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
    emit(result.to_dict(), as_json, lambda: say(
        f"LDS {result.lds:.3f} (Spearman, mean over {result.n_targets} targets; ±{result.spearman_std:.3f} across targets), "
        f"Pearson {result.pearson:.3f}, on {result.n_models} held-out models"))


def import_npy(
    store: Annotated[str, typer.Argument(help="Store to create (a path or s3://bucket/prefix).")],
    masks: Annotated[Path, typer.Option(help="Bool .npy [M, N_train] (the datamodels-data format).")],
    margins: Annotated[Path, typer.Option(help="Float .npy [M, N_test].")],
    block: Annotated[int, typer.Option(help="Rows per block/chunk; must divide M.")] = 1000,
    dataset_name: Annotated[str, typer.Option(help="A name for the dataset.")] = "imported",
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a store from published .npy masks and margins (memory-mapped, row block by row block)."""
    from storage.published import import_npy as import_files

    result = import_files(masks, margins, store, block=block, dataset_name=dataset_name,
                          progress=progress and not as_json)
    emit(result.to_dict(), as_json, lambda: say(
        f"imported {result.num_models} models ({result.n_train} train / {result.n_test} test) into {result.store} "
        f"in {result.seconds:.1f}s"))


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
