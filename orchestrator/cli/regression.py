"""CLI commands over the regression API: fit, eval, import-npy, export.

Registered on :data:`orchestrator.cli.app` when that module is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import typer

from orchestrator.cli import JsonFlag, _call, _emit, _out, app, parse_range
from storage.errors import InputError

__all__ = ["parse_bytes"]

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str | None, *, option: str) -> int | None:
    """Parse a size such as ``8GiB``, ``500MB`` or ``1048576``."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"{option} must be a size like 8GiB, 500MB or a number of bytes; got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise InputError(f"{option} must be positive; got {text!r}")
    return value


def _maybe_connect_ray(address: str | None) -> None:
    """Join a Ray cluster so that target shards run as Ray tasks."""
    if address is None and "RAY_ADDRESS" not in os.environ:
        return
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)


@app.command()
def fit(
    store: Annotated[Path, typer.Argument(help="Sweep store.")],
    name: Annotated[str, typer.Option(help="Name of the datamodels (datamodels/NAME in the store).")],
    rows: Annotated[str | None, typer.Option(help="Model rows START:END to fit on (completed rows inside).")] = None,
    targets: Annotated[str | None, typer.Option(help="Target columns A:B to fit (default all).")] = None,
    shards: Annotated[int, typer.Option(help="Split targets into this many shards (Ray tasks when on Ray).")] = 1,
    output: Annotated[str, typer.Option(help="Output regressed on: margins/test or margins/train.")] = "margins/test",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    val_fraction: Annotated[float, typer.Option(help="Last fraction of the rows held out for early stopping.")] = 0.1,
    refit: Annotated[bool, typer.Option(help="Refit on train+validation rows at each chosen lambda.")] = False,
    k: Annotated[int, typer.Option("--k", help="Lambda steps on the path.")] = 100,
    eps: Annotated[float, typer.Option(help="Smallest lambda as a fraction of lambda_max.")] = 1e-6,
    lr: Annotated[str, typer.Option(help="SAGA step size, or 'auto'.")] = "5e-3",
    batch_size: Annotated[int, typer.Option(help="SAGA minibatch rows.")] = 2000,
    tol: Annotated[float, typer.Option(help="Per-target convergence tolerance.")] = 1e-4,
    max_epochs: Annotated[int, typer.Option(help="Epochs per lambda step at most.")] = 100,
    patience: Annotated[int, typer.Option(help="Lambda steps without validation improvement before a target stops.")] = 5,
    max_memory: Annotated[str | None, typer.Option(help="Bound on host memory, e.g. 8GiB.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing datamodels of this name.")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster to run shards on (default: in turn, here).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Fit one LASSO datamodel per target (SAGA path, best lambda by validation MSE)."""
    from regression.fit import fit_datamodels

    def call():  # type: ignore[no-untyped-def]
        if output not in ("margins/test", "margins/train"):
            raise InputError(f"--output must be margins/test or margins/train; got {output!r}")
        step: float | Literal["auto"]
        try:
            step = "auto" if lr == "auto" else float(lr)
        except ValueError:
            raise InputError(f"--lr must be a number or 'auto'; got {lr!r}") from None
        row_range = parse_range(rows, option="--rows")
        target_range = parse_range(targets, option="--targets")
        memory = parse_bytes(max_memory, option="--max-memory")
        _maybe_connect_ray(address)
        return fit_datamodels(
            store, name=name, rows=row_range, targets=target_range, shards=shards, device=device,
            val_fraction=val_fraction, refit=refit, output=output, n_alphas=k, eps=eps, lr=step,  # type: ignore[arg-type]
            batch_size=batch_size, tol=tol, max_epochs=max_epochs, patience=patience, max_memory=memory,
            overwrite=overwrite, progress=progress and not as_json,
        )

    result = _call(call)
    _emit(result.to_dict(), as_json, lambda: _out.print(
        f"datamodels {result.name!r}: {result.targets[1] - result.targets[0]} targets fitted on "
        f"{result.n_train_rows} models (+{result.n_val_rows} for validation) in {result.wall_time:.1f}s on {result.device}; "
        f"mean val MSE {result.mean_val_mse:.4g}, mean non-zeros {result.mean_nnz:.1f}, "
        f"shards fitted {result.shards_fitted}, skipped {result.shards_skipped}", highlight=False))


@app.command(name="eval")
def evaluate(
    store: Annotated[Path, typer.Argument(help="Store holding the datamodels.")],
    name: Annotated[str, typer.Option(help="Name of the datamodels.")],
    eval_store: Annotated[Path | None, typer.Option(help="A store of models on fresh subsets of the same data.")] = None,
    rows: Annotated[str | None, typer.Option(help="Held-out rows START:END (of the eval store, or of STORE).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """LDS: mean over targets of the Spearman correlation between predicted and actual outputs on held-out models."""
    from regression.lds import evaluate_lds

    def call():  # type: ignore[no-untyped-def]
        if eval_store is None and rows is None:
            raise InputError("give --eval-store EVAL or --rows START:END to say which held-out models to evaluate on")
        return evaluate_lds(store, name=name, eval_store=eval_store, rows=parse_range(rows, option="--rows"))

    result = _call(call)
    _emit(result.to_dict(), as_json, lambda: _out.print(
        f"LDS {result.lds:.3f} (Spearman, mean over {result.n_targets} targets; ±{result.spearman_std:.3f} across targets), "
        f"Pearson {result.pearson:.3f}, on {result.n_models} held-out models", highlight=False))


@app.command(name="import-npy")
def import_npy_command(
    store: Annotated[Path, typer.Argument(help="Store to create.")],
    masks: Annotated[Path, typer.Option(help="Bool .npy [M, N_train] (the datamodels-data format).")],
    margins: Annotated[Path, typer.Option(help="Float .npy [M, N_test].")],
    block: Annotated[int, typer.Option(help="Rows per block/chunk; must divide M.")] = 1000,
    dataset_name: Annotated[str, typer.Option(help="A name for the dataset.")] = "imported",
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create a store from published .npy masks and margins (memory-mapped, row block by row block)."""
    from storage.published import import_npy

    result = _call(lambda: import_npy(masks, margins, store, block=block, dataset_name=dataset_name,
                                      progress=progress and not as_json))
    _emit(result.to_dict(), as_json, lambda: _out.print(
        f"imported {result.num_models} models ({result.n_train} train / {result.n_test} test) into {result.store} "
        f"in {result.seconds:.1f}s", highlight=False))


@app.command(name="export")
def export_command(
    store: Annotated[Path, typer.Argument(help="Store holding the datamodels.")],
    out: Annotated[Path, typer.Argument(help="Output .pt file, or directory for npy.")],
    name: Annotated[str, typer.Option(help="Name of the datamodels.")],
    format: Annotated[str, typer.Option("--format", help="pt (a dict of tensors) or npy (a directory).")] = "pt",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write datamodels in the published format: {weight [N_train, T], bias [T], lam [T]}."""
    from storage.published import export

    def call() -> Path:
        if format not in ("pt", "npy"):
            raise InputError(f"--format must be pt or npy; got {format!r}")
        return export(store, name, format, out, overwrite=overwrite)  # type: ignore[arg-type]

    written = _call(call)
    _emit({"out": str(written), "format": format, "name": name}, as_json,
          lambda: _out.print(f"wrote {written}", highlight=False))
