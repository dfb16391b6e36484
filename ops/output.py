"""How every ``darkroom-ops`` command answers: one home for ``--json`` and
for progress bars.

A command decorated with :func:`output` returns its result (dicts, lists,
plain values) instead of printing it: with ``--json`` it is printed as JSON
on stdout, else as the lines ``lines(result)`` makes; ``failed(result)``
true makes the exit code 1 after the output. An error (OpsError,
DomainError) is printed to stderr, and with ``--json`` also as
``{"error": {"code", "message"}}`` on stdout, so a script reading stdout
always gets JSON. Progress bars (:func:`progress`) draw on stderr, on a
terminal, and not at all with ``--json`` (a script wants the answer only).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

JSON_KEY = "darkroom_ops.json"


def wants_json() -> bool:
    """Whether the running command was given ``--json``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get(JSON_KEY))


def emit(result: Any, as_json: bool, lines: Callable[[Any], Iterable[str]]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        for line in lines(result):
            click.echo(line)


def error(message: str, code: str) -> None:
    """An expected failure: on stderr, and as JSON on stdout with ``--json``."""
    click.echo(f"error: {message}" + (f" ({code})" if code not in ("error", "usage") else ""),
               err=True)
    if wants_json():
        click.echo(json.dumps({"error": {"code": code, "message": message}}, indent=2))


def output(lines: Callable[[Any], Iterable[str]],
           failed: Callable[[Any], bool] | None = None):
    """Give a command ``--json``; it returns its result, printed here."""

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, as_json: bool, **kwargs):
            click.get_current_context().meta[JSON_KEY] = as_json
            result = command(*args, **kwargs)
            emit(result, as_json, lines)
            if failed is not None and failed(result):
                raise click.exceptions.Exit(1)

        wrapper.__click_params__ = list(getattr(command, "__click_params__", []))
        return click.option("--json", "as_json", is_flag=True,
                            help="Machine-readable output (stdout).")(wrapper)

    return decorate


def progress(items: Iterable | None = None, label: str = "", length: int | None = None):
    """A click progress bar on stderr (a context manager; iterate it, or
    ``update(n)`` it when ``items`` is None and ``length`` given). It is
    drawn only on a terminal, and hidden with ``--json``."""
    return click.progressbar(items, length=length, label=label, file=sys.stderr, show_pos=True,
                             hidden=wants_json())


def bar(label: str, length: int):
    """:func:`progress` of ``length`` steps, in the shape work modules take as
    their ``progress`` parameter: ``progress(label, steps)`` (ops/backups,
    doctor)."""
    return progress(label=label, length=length)


class _Silent:
    def update(self, n_steps: int, current_item: Any = None) -> None:
        pass


def silent(label: str = "", length: int = 0):
    """A bar that draws nothing, for work that reports progress when no
    command line is watching (the default of ``progress`` parameters)."""
    return contextlib.nullcontext(_Silent())
