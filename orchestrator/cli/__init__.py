"""`dmsweep`: a thin typer layer over the library API (parse, call, print).

Every command takes ``--json``; exit status 0 on success, 2 on bad input (one
line on stderr naming what is wrong, nothing written), 1 on failure. The
commands live in :mod:`orchestrator.cli.sweep` (init, run, status, extend,
verify, submit), :mod:`orchestrator.cli.regression` (fit, eval, import-npy,
export) and :mod:`orchestrator.cli.analysis` (analyze, report); they share
:mod:`orchestrator.cli.common` and are registered here.
"""

from __future__ import annotations

import typer

from orchestrator.cli import analysis, regression, sweep

__all__ = ["app", "main", "build_app"]


def build_app() -> typer.Typer:
    """The ``dmsweep`` application with every command registered."""
    application = typer.Typer(
        name="dmsweep",
        help="Datamodels at scale: train on random subsets with Ray, store in Zarr, fit SAGA LASSO datamodels.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module in (sweep, regression, analysis):
        module.register(application)
    return application


app = build_app()


def main() -> None:
    """Console-script entry point."""
    app()
