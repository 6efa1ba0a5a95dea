"""What every command module of the CLI shares: printing, running a library call, parsing values.

The command modules (:mod:`orchestrator.cli.sweep`, :mod:`~orchestrator.cli.regression`,
:mod:`~orchestrator.cli.analysis`) import this module and nothing else of the CLI;
:mod:`orchestrator.cli` imports them and registers their commands on the app, so
the imports form no circle.

A command is parse, call, print: :func:`run_command` runs the library call and
turns a dmsweep error into one stderr line and its exit code, saying the
library's parameter names (``rows``, ``n_alphas``) as this command's flags
(``--rows``, ``--k``).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import click
import typer
from pydantic import BaseModel
from rich.console import Console

from storage.errors import DmsweepError, InputError

__all__ = [
    "out",
    "err",
    "say",
    "JsonFlag",
    "run_command",
    "emit",
    "fail",
    "parse_range",
    "parse_bytes",
    "flag_names",
    "with_model_options",
]

T = TypeVar("T")

#: Human output on stdout; errors and progress on stderr.
out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def say(text: str) -> None:
    """One line of human output: no rich markup (lists of indices look like it), no wrapping."""
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def flag_names() -> dict[str, str]:
    """This command's parameters as the user types them: ``{"val_fraction": "--val-fraction", "store": "STORE"}``."""
    context = click.get_current_context(silent=True)
    if context is None:
        return {}
    names: dict[str, str] = {}
    for param in context.command.params:
        if param.name is None:
            continue
        if isinstance(param, click.Option):
            names[param.name] = max(param.opts, key=len)
        else:
            names[param.name] = param.human_readable_name
    return names


def _as_flags(exc: InputError) -> str:
    """The error's message with each parameter it names said as this command's flag."""
    message = str(exc)
    flags = flag_names()
    for param in exc.params:
        flag = flags.get(param)
        if flag is not None and flag != param:
            message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w])", flag, message, count=1)
    return message


def fail(exc: DmsweepError) -> typer.Exit:
    """Print a dmsweep error as one line on stderr; the Exit to raise, with its exit code."""
    message = _as_flags(exc) if isinstance(exc, InputError) else str(exc)
    err.print(f"dmsweep: error: {message}", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


def run_command(fn: Callable[[], T]) -> T:
    """Run a library call; turn dmsweep errors into one stderr line and their exit code.

    ``DMSWEEP_DEBUG=1`` lets unexpected exceptions through with their traceback.
    """
    try:
        return fn()
    except DmsweepError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print("dmsweep: interrupted", highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:
        if os.environ.get("DMSWEEP_DEBUG"):
            raise
        err.print(f"dmsweep: failed: {type(exc).__name__}: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON on stdout with ``--json``, else call ``human``."""
    if as_json:
        sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")
    else:
        human()


def parse_range(text: str | None, *, param: str) -> slice | None:
    """Parse ``START:END`` (either side may be empty) into a slice; ``param`` names it in errors."""
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        lo = int(start) if start.strip() else None
        hi = int(stop) if stop.strip() else None
    except ValueError:
        raise InputError(f"{param} must look like START:END (e.g. 0:1024), got {text!r}", params=(param,)) from None
    if (lo is not None and lo < 0) or (hi is not None and hi < 0) or (lo is not None and hi is not None and hi <= lo):
        raise InputError(f"{param} {text!r} is not a non-empty range of non-negative indices", params=(param,))
    return slice(lo, hi)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str | None, *, param: str) -> int | None:
    """Parse a size such as ``8GiB``, ``500MB`` or ``1048576``."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"{param} must be a size like 8GiB, 500MB or a number of bytes; got {text!r}", params=(param,))
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise InputError(f"{param} must be positive; got {text!r}", params=(param,))
    return value


def _cli_type(annotation: Any) -> type:
    """The type a command-line value is parsed as before the model validates it."""
    if annotation in (bool, int, float, str):
        return annotation  # type: ignore[no-any-return]
    if get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation)):
        return str
    return str  # unions and the like: the model parses the text (lax mode), with its own message


def with_model_options(
    model: type[BaseModel], *, into: str, exclude: tuple[str, ...] = ()
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Give a command one option per field of ``model`` and pass the validated model as ``into``.

    The options' names, defaults and help come from the model's fields (a field's
    ``json_schema_extra={"flag": "--k"}`` renames its flag), so a setting is
    declared once, in the model, and the CLI cannot drift from the library.
    A bad value fails like any other input error: one line, exit 2.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        hints = get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn).parameters.values() if p.name != into]
        generated: list[inspect.Parameter] = []
        for name, field in model.model_fields.items():
            if name in exclude:
                continue
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, Mapping) else {}
            flag = str(extra.get("flag") or "--" + name.replace("_", "-"))
            kind = _cli_type(field.annotation)
            decls = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,)
            option = typer.Option(*decls, help=field.description or "")
            generated.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                                               annotation=Annotated[kind, option]))
        names = [p.name for p in generated]
        last = [p for p in own if p.name == "as_json"]
        params = [p for p in own if p.name != "as_json"] + generated + last

        def command(**kwargs: Any) -> T:
            values = {name: kwargs.pop(name) for name in names}
            try:
                kwargs[into] = model(**values)
            except DmsweepError as exc:
                raise fail(exc) from None
            return fn(**kwargs)

        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        command.__module__ = fn.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
