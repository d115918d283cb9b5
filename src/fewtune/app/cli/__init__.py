"""The `fewtune` command: a thin layer over the library; every decision lives in the library.

One module per concept: train, predict, models (info, add, remove), evaluate (evaluate, benchmark,
compare), serve, demo, cache; text holds what they print through. This module makes the typer app,
registers the commands (in the order `--help` lists them) and runs it.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from fewtune._version import __version__
from fewtune.app.cli import demo, evaluate, models, predict, serve, train
from fewtune.app.cli.cache import cache_app
from fewtune.app.cli.text import err
from fewtune.errors import FewtuneError

app = typer.Typer(
    name="fewtune",
    help="From a handful of labelled images to a classifier you can trust.\n\n"
    "Put a few photos per class in DATA/<class>/, then `fewtune train DATA -o model.fewtune` "
    "and `fewtune predict model.fewtune new_photos/`. Try `fewtune demo` first.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"fewtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


for command in (
    train.train,
    predict.predict,
    models.info,
    evaluate.evaluate,
    evaluate.benchmark,
    evaluate.compare,
    models.add,
    models.remove,
    serve.serve,
    demo.demo,
):
    app.command()(command)
app.add_typer(cache_app, name="cache")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with one line, a bug exits 1."""
    try:
        app(args=argv, prog_name="fewtune")
    except FewtuneError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("FEWTUNE_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (a bug in fewtune; rerun with "
            "FEWTUNE_DEBUG=1 for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )
        sys.exit(1)
