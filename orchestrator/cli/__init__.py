"""`dmsweep`: a thin typer layer over the library API (parse, call, print).

Every command takes ``--json``; exit status 0 on success, 2 on bad input (one
line on stderr naming what is wrong, nothing written), 1 on failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from storage.errors import DmsweepError, InputError

__all__ = ["app", "main", "parse_range"]

app = typer.Typer(
    name="dmsweep",
    help="Datamodels at scale: train on random subsets with Ray, store in Zarr, fit SAGA LASSO datamodels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_out = Console()
_err = Console(stderr=True)

T = TypeVar("T")
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def _call(fn: Callable[[], T]) -> T:
    """Run a library call; turn dmsweep errors into one stderr line and their exit code."""
    try:
        return fn()
    except DmsweepError as exc:
        _err.print(f"dmsweep: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err.print("dmsweep: interrupted", highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:
        if os.environ.get("DMSWEEP_DEBUG"):
            raise
        _err.print(f"dmsweep: failed: {type(exc).__name__}: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")
    else:
        human()


def parse_range(text: str | None, *, option: str) -> slice | None:
    """Parse ``START:END`` (either side may be empty) into a slice."""
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        lo = int(start) if start.strip() else None
        hi = int(stop) if stop.strip() else None
    except ValueError:
        raise InputError(f"{option} must look like START:END (e.g. 0:1024), got {text!r}") from None
    if (lo is not None and lo < 0) or (hi is not None and hi < 0) or (lo is not None and hi is not None and hi <= lo):
        raise InputError(f"{option} {text!r} is not a non-empty range of non-negative indices")
    return slice(lo, hi)


# -- sweep commands ------------------------------------------------------------------
@app.command()
def schema(as_json: JsonFlag = True) -> None:
    """Print the JSON schema of the sweep spec."""
    from orchestrator.spec import SweepSpec

    sys.stdout.write(json.dumps(SweepSpec.model_json_schema(), indent=2) + "\n")


@app.command()
def init(spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML).")], as_json: JsonFlag = False) -> None:
    """Create the store from the spec (a no-op if it exists and matches)."""
    from orchestrator.api import init_sweep, load_spec

    store = _call(lambda: init_sweep(load_spec(spec)))
    data = {"store": str(store.path), "num_models": store.num_models, "block": store.block,
            "num_blocks": store.num_blocks, "dataset": store.dataset.to_dict(), "outputs": list(store.outputs)}
    _emit(data, as_json, lambda: _out.print(
        f"store {store.path}: {store.num_models} models in {store.num_blocks} blocks of {store.block}; "
        f"dataset {store.dataset.name} ({store.dataset.n_train} train / {store.dataset.n_test} test)"))


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML).")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
    progress: Annotated[bool, typer.Option(help="Show the live progress view.")] = True,
    lease_ttl: Annotated[
        float, typer.Option(help="Seconds without a heartbeat after which this driver's lease may be taken over.")
    ] = 30.0,
    workers: Annotated[
        int | None,
        typer.Option(help="Keep this many worker actors even before the cluster has room for them "
                          "(an autoscaling cluster adds nodes for the pending ones). Default: one per slot, "
                          "recounted as nodes join."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Init the store if needed, then run or resume the sweep."""
    from orchestrator.api import load_spec, run_sweep
    from orchestrator.driver import DriverOptions

    result = _call(
        lambda: run_sweep(load_spec(spec), address=address, progress=progress and not as_json, lease_ttl_s=lease_ttl,
                          options=DriverOptions(workers=workers))
    )
    _emit(result.to_dict(), as_json, lambda: _out.print(
        f"{result.completed_blocks}/{result.num_blocks} blocks complete "
        f"({result.newly_completed_blocks} this run, {result.models_per_second:.1f} models/s, "
        f"{result.wall_seconds:.1f}s); failed blocks: {result.failed_blocks or 'none'}"))
    if result.failed_blocks:
        raise typer.Exit(1)


def _print_status(status: Any) -> None:
    rate = f"{status.models_per_second:.1f} models/s" if status.models_per_second else "n/a"
    eta = f"{status.eta_seconds:.0f}s" if status.eta_seconds is not None else "n/a"
    _out.print(
        f"{status.store}  recipe {status.recipe}\n"
        f"  models   {status.completed_models}/{status.num_models} ({100 * status.fraction_done:.1f}%)  "
        f"blocks complete {status.completed_blocks}, failed {status.failed_blocks}, pending {status.pending_blocks}\n"
        f"  rate     {rate}  ETA {eta}  driver {'running, ' + status.driver if status.driver_running else 'not running'}",
        highlight=False,
    )
    for node, models in status.per_node_models.items():
        _out.print(f"  node {node}: {models} models", highlight=False)
    for failure in status.failures:
        _out.print(f"  block {failure.block} failed after {failure.attempts} attempts on {failure.node or '?'}:", highlight=False)
        _out.print("    " + failure.error.replace("\n", "\n    "), highlight=False, markup=False)


@app.command()
def status(
    store: Annotated[Path, typer.Argument(help="Sweep store.")],
    watch: Annotated[float | None, typer.Option(help="Refresh every N seconds until done (Ctrl-C to stop).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Progress, throughput, ETA and failures, read from the store itself."""
    from orchestrator.status import sweep_status

    while True:
        result = _call(lambda: sweep_status(store))
        _emit(result.to_dict(), as_json, lambda: _print_status(result))
        if watch is None or result.completed_blocks == result.num_blocks:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


@app.command()
def extend(
    store: Annotated[Path, typer.Argument(help="Sweep store.")],
    num_models: Annotated[int, typer.Option("--num-models", help="New total number of models.")],
    as_json: JsonFlag = False,
) -> None:
    """Grow a sweep; the next `dmsweep run` fills the new blocks."""
    from orchestrator.api import extend_sweep

    grown = _call(lambda: extend_sweep(store, num_models=num_models))
    data = {"store": str(grown.path), "num_models": grown.num_models, "num_blocks": grown.num_blocks}
    _emit(data, as_json, lambda: _out.print(f"{grown.path}: now {grown.num_models} models ({grown.num_blocks} blocks)"))


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="Sweep store.")],
    repair: Annotated[bool, typer.Option(help="Mark bad blocks for recomputation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check every completed block's chunks against their checksums."""
    from orchestrator.api import verify_sweep

    report = _call(lambda: verify_sweep(store, repair=repair))
    data = {"checked_blocks": report.checked_blocks, "ok": report.ok, "repaired": report.repaired,
            "problems": [{"block": p.block_id, "reason": p.reason} for p in report.problems]}

    def human() -> None:
        _out.print(f"checked {report.checked_blocks} completed blocks: {'all good' if report.ok else f'{len(report.problems)} bad'}")
        for problem in report.problems:
            _out.print(f"  block {problem.block_id}: {problem.reason}", highlight=False, markup=False)
        if report.repaired:
            _out.print("  marked for recomputation: run the sweep again to redo them")

    _emit(data, as_json, human)
    if not report.ok and not repair:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    address: Annotated[str, typer.Option(help="The cluster's dashboard address, http://HEAD:8265.", envvar="RAY_API_SERVER_ADDRESS")],
    command: Annotated[list[str] | None, typer.Argument(help="The dmsweep command to run as the job, after '--' (run SPEC, fit STORE --name N...).")] = None,
    follow: Annotated[bool, typer.Option(help="Stream the job's logs until it ends; exit with its status.")] = False,
    working_dir: Annotated[Path | None, typer.Option(help="Directory shipped as the job's working_dir (default: this checkout).")] = None,
    ship: Annotated[bool, typer.Option(help="Ship the code with the job; --no-ship uses the dmsweep installed on the cluster.")] = True,
    submission_id: Annotated[str | None, typer.Option(help="Job id to use (default: Ray picks one).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a dmsweep command (a sweep, a fit...) as a Ray job to a running cluster; print its id."""
    from orchestrator.submit import default_working_dir, follow_job, submit_command

    ship_dir = (working_dir or default_working_dir()) if ship else None
    job = _call(lambda: submit_command(address, command or [], working_dir=ship_dir, submission_id=submission_id))
    data: dict[str, Any] = {"job_id": job.job_id, "address": job.address, "entrypoint": job.entrypoint,
                            "working_dir": job.working_dir}
    if not as_json:
        sys.stdout.write(job.job_id + "\n")  # the id alone on stdout, for scripts
        sys.stdout.flush()
    exit_code = 0
    if follow:
        outcome = _call(lambda: follow_job(address, job.job_id, write=_err.file.write))
        data.update(status=outcome.status, exit_code=outcome.exit_code, message=outcome.message)
        exit_code = outcome.exit_code
    _emit(data, as_json, lambda: _err.print(
        f"job {job.job_id} {data.get('status', 'submitted')} on {address}", highlight=False, markup=False))
    if exit_code:
        raise typer.Exit(exit_code)


# Commands that live in their own modules register themselves on `app` when imported.
from orchestrator import cli_regression as _cli_regression  # noqa: E402,F401  (fit, eval, import-npy, export)
from orchestrator import cli_analysis as _cli_analysis  # noqa: E402,F401  (analyze, report)
