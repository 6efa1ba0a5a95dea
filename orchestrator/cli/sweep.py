"""CLI commands over the sweep API: schema, init, run, status, extend, verify, submit."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from orchestrator.cli.common import JsonFlag, guarded, emit, err, say
from storage.status import StoreStatus

__all__ = ["register"]

StoreArg = Annotated[str, typer.Argument(help="A dmsweep store (a sweep's, or an imported one): a path or s3://bucket/prefix.")]
SpecArg = Annotated[Path, typer.Argument(help="Sweep spec (YAML).")]


def schema(as_json: JsonFlag = True) -> None:
    """Print the JSON schema of the sweep spec."""
    from storage.spec import SweepSpec

    sys.stdout.write(json.dumps(SweepSpec.model_json_schema(), indent=2) + "\n")


def init(spec: SpecArg, as_json: JsonFlag = False) -> None:
    """Create the store from the spec (a no-op if it exists and matches)."""
    from orchestrator.api import init_sweep, load_spec

    store = init_sweep(load_spec(spec))
    data = {"store": str(store.path), "num_models": store.num_models, "block": store.block,
            "num_blocks": store.num_blocks, "dataset": store.dataset.model_dump(), "outputs": list(store.outputs)}
    emit(data, as_json, lambda: say(
        f"store {store.path}: {store.num_models} models in {store.num_blocks} blocks of {store.block}; "
        f"dataset {store.dataset.name} ({store.dataset.n_train} train / {store.dataset.n_test} test)"))


#: `run`'s exit status when a signal stopped it before the sweep was done: resumable as it is.
EXIT_STOPPED = 3


def run(
    spec: SpecArg,
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
    drain_timeout_s: Annotated[
        float,
        typer.Option("--drain-timeout", help="On SIGTERM or Ctrl-C: seconds to wait for the running blocks' "
                                             "receipts before stopping without them (they are redone on resume)."),
    ] = 20.0,
    as_json: JsonFlag = False,
) -> None:
    """Init the store if needed, then run or resume the sweep.

    Exit status: 0 done; 1 failed blocks or a failure; 2 bad input (an address
    no Ray answers at included); 3 stopped by SIGTERM or SIGINT (receipts in
    flight ledgered, lease released: run it again to resume); 4 the store
    refused a write (disk full, permission denied, read-only: resumable once fixed).
    """
    from orchestrator.api import load_spec, run_sweep
    from orchestrator.run_options import DriverOptions

    options = DriverOptions(workers=workers, drain_timeout_s=drain_timeout_s)
    result = run_sweep(load_spec(spec), address=address, progress=progress and not as_json, lease_ttl_s=lease_ttl,
                       options=options)
    emit(result.to_dict(), as_json, lambda: say(
        f"{result.completed_blocks}/{result.num_blocks} blocks complete "
        f"({result.newly_completed_blocks} this run, {result.models_per_second:.1f} models/s, "
        f"{result.wall_seconds:.1f}s); failed blocks: {result.failed_blocks or 'none'}"))
    if result.stopped and not result.done:
        err.print(
            f"dmsweep: stopped by {result.stopped}: {result.completed_blocks}/{result.num_blocks} blocks complete "
            f"({result.ledgered_while_stopping} ledgered while stopping), lease released; "
            "run the same command again to resume", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_STOPPED)
    if result.failed_blocks:
        raise typer.Exit(1)


def _print_status(status: StoreStatus) -> None:
    rate = f"{status.models_per_second:.1f} models/s" if status.models_per_second else "n/a"
    eta = f"{status.eta_seconds:.0f}s" if status.eta_seconds is not None else "n/a"
    what = f"recipe {status.source}" if status.kind == "sweep" else status.source
    say(f"{status.store}  {what}")
    say(f"  models   {status.completed_models}/{status.num_models} ({100 * status.fraction_done:.1f}%)  "
        f"blocks complete {status.completed_blocks}, failed {status.failed_blocks}, pending {status.pending_blocks}")
    if status.kind == "sweep":
        say(f"  rate     {rate}  ETA {eta}  driver "
            f"{'running, ' + status.driver if status.driver_running and status.driver else 'not running'}")
    for node, models in status.per_node_models.items():
        say(f"  node {node}: {models} models")
    for failure in status.failures:
        say(f"  block {failure.block} failed after {failure.attempts} attempts on {failure.node or '?'}:")
        say("    " + failure.error.replace("\n", "\n    "))


def status(
    store: StoreArg,
    watch: Annotated[float | None, typer.Option(help="Refresh every N seconds until done (Ctrl-C to stop).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Progress, throughput, ETA and failures, read from the store itself."""
    from storage.status import store_status

    pause = threading.Event()  # never set: its wait is an interruptible pause between refreshes
    while True:
        result = store_status(store)
        emit(result.to_dict(), as_json, lambda: _print_status(result))
        if watch is None or result.completed_blocks == result.num_blocks:
            return
        try:
            pause.wait(watch)
        except KeyboardInterrupt:
            return


def extend(
    store: StoreArg,
    num_models: Annotated[int, typer.Option("--num-models", help="New total number of models.")],
    as_json: JsonFlag = False,
) -> None:
    """Grow a sweep; the next `dmsweep run` fills the new blocks."""
    from orchestrator.api import extend_sweep

    grown = extend_sweep(store, num_models=num_models)
    data = {"store": str(grown.path), "num_models": grown.num_models, "num_blocks": grown.num_blocks}
    emit(data, as_json, lambda: say(f"{grown.path}: now {grown.num_models} models ({grown.num_blocks} blocks)"))


def verify(
    store: StoreArg,
    repair: Annotated[bool, typer.Option(help="Mark bad blocks for recomputation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check every completed block's chunks against their checksums."""
    from orchestrator.api import verify_sweep

    report = verify_sweep(store, repair=repair)
    data = {"checked_blocks": report.checked_blocks, "ok": report.ok, "repaired": report.repaired,
            "problems": [{"block": p.block_id, "reason": p.reason} for p in report.problems]}

    def human() -> None:
        say(f"checked {report.checked_blocks} completed blocks: {'all good' if report.ok else f'{len(report.problems)} bad'}")
        for problem in report.problems:
            say(f"  block {problem.block_id}: {problem.reason}")
        if report.repaired:
            say("  marked for recomputation: run the sweep again to redo them")

    emit(data, as_json, human)
    if not report.ok and not repair:
        raise typer.Exit(1)


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
    job = submit_command(address, command or [], working_dir=ship_dir, submission_id=submission_id)
    data: dict[str, Any] = {"job_id": job.job_id, "address": job.address, "entrypoint": job.entrypoint,
                            "working_dir": job.working_dir}
    if not as_json:
        sys.stdout.write(job.job_id + "\n")  # the id alone on stdout, for scripts
        sys.stdout.flush()
    exit_code = 0
    if follow:
        outcome = follow_job(address, job.job_id, write=err.file.write)
        data.update(status=outcome.status, exit_code=outcome.exit_code, message=outcome.message)
        exit_code = outcome.exit_code
    emit(data, as_json, lambda: err.print(
        f"job {job.job_id} {data.get('status', 'submitted')} on {address}", highlight=False, markup=False))
    if exit_code:
        raise typer.Exit(exit_code)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(guarded(schema))
    app.command()(guarded(init))
    app.command()(guarded(run))
    app.command()(guarded(status))
    app.command()(guarded(extend))
    app.command()(guarded(verify))
    app.command(context_settings={"allow_interspersed_args": False})(guarded(submit))
