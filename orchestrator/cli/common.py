"""What every command module of the CLI shares: printing, running a library call, parsing values.

The command modules (:mod:`orchestrator.cli.sweep`, :mod:`~orchestrator.cli.regression`,
:mod:`~orchestrator.cli.analysis`) import this module and nothing else of the CLI;
:mod:`orchestrator.cli` imports them and registers their commands on the app, so
the imports form no circle.

A command is parse, call, print. Each is registered through :func:`guarded`,
its error boundary: a dmsweep error raised anywhere in it becomes one stderr
line and its exit code, with the library's parameter names (``rows``,
``n_alphas``) said as this command's own flags (``--rows``, ``--k``), read from
the command's signature.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import typer
from typer.models import OptionInfo
from pydantic import BaseModel
from rich.console import Console

from storage.errors import DmsweepError, InputError

__all__ = [
    "out",
    "err",
    "say",
    "JsonFlag",
    "guarded",
    "emit",
    "parse_range",
    "parse_bytes",
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


def _flags(fn: Callable[..., Any]) -> dict[str, str]:
    """A command's options as the user types them: ``{"val_fraction": "--val-fraction", "n_alphas": "--k"}``.

    Positional arguments keep their names (an error about ``store`` reads the
    same either way).
    """
    flags: dict[str, str] = {}
    for name, hint in get_type_hints(fn, include_extras=True).items():
        infos = [a for a in getattr(hint, "__metadata__", ()) if isinstance(a, OptionInfo)]
        if not infos:
            continue
        info = infos[0]
        # In Annotated[..., typer.Option("--flag")] typer keeps the flag as the option's default.
        named = [info.default] if isinstance(info.default, str) and info.default.startswith("--") else []
        decls = [d.split("/")[0] for d in (*named, *(info.param_decls or ())) if d.startswith("--")]
        flags[name] = max(decls, key=len) if decls else "--" + name.replace("_", "-")
    return flags


def _as_flags(exc: InputError, flags: Mapping[str, str]) -> str:
    """The error's message with each parameter it names said as the command's flag."""
    message = str(exc)
    for param in exc.params:
        flag = flags.get(param)
        if flag is not None and flag != param:
            message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w])", flag, message, count=1)
    return message


def _say_error(text: str) -> None:
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` behind the CLI's error boundary, ready for ``app.command()``.

    A :class:`DmsweepError` prints ``dmsweep: error: ...`` (one line) and exits
    with its ``exit_code`` (2 for bad input); any other exception prints one
    ``dmsweep: failed: ...`` line and exits 1 (``DMSWEEP_DEBUG=1`` lets it
    through with its traceback); Ctrl-C exits 130.
    """
    flags = _flags(fn)

    def boundary(**kwargs: Any) -> T:
        try:
            return fn(**kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except DmsweepError as exc:
            message = _as_flags(exc, flags) if isinstance(exc, InputError) else str(exc)
            _say_error(f"dmsweep: error: {message}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _say_error("dmsweep: interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("DMSWEEP_DEBUG"):
                raise
            _say_error(f"dmsweep: failed: {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from None

    return _same_signature(boundary, fn)


def _same_signature(wrapper: Callable[..., T], fn: Callable[..., Any], params: list[inspect.Parameter] | None = None
                    ) -> Callable[..., T]:
    """Give ``wrapper`` the name, help and (resolved) signature typer reads from ``fn``."""
    if params is None:
        hints = get_type_hints(fn, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(fn).parameters.values()]
    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.__module__ = fn.__module__
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


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
    A bad value fails like any other input error (one line, exit 2) once the
    command is behind :func:`guarded`.
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

        def with_settings(**kwargs: Any) -> T:
            values = {name: kwargs.pop(name) for name in names}
            kwargs[into] = model(**values)  # an InputError here reaches the command's error boundary
            return fn(**kwargs)

        return _same_signature(with_settings, fn, params)

    return decorate
