"""The ``wsss-bench`` command: a thin Typer layer over functions that tests call directly.

Each command group lives in :mod:`wsss_bench.commands` and exposes ``register(app)``.
A :class:`~wsss_bench.errors.WsssBenchError` becomes a one-line message on stderr and exit code 2;
``--debug`` (or ``WSSS_BENCH_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from wsss_bench import __version__
from wsss_bench.errors import WsssBenchError

app = typer.Typer(
    name="wsss-bench",
    help="Benchmark weakly-supervised semantic segmentation methods under one declared protocol.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: Command modules, each with ``register(app)``. Order is the order in ``--help``.
COMMAND_MODULES = [
    "wsss_bench.commands.run_cmd",
    "wsss_bench.commands.eval_cmd",
    "wsss_bench.commands.datasets_cmd",
    "wsss_bench.commands.report_cmd",
    "wsss_bench.commands.demo_cmd",
]

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsss-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _STATE["debug"] = debug or os.environ.get("WSSS_BENCH_DEBUG") == "1"


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int):  # typer.Exit(n) is returned, not raised, without standalone mode
            return rv
    except WsssBenchError as e:
        if _STATE["debug"] or "--debug" in (argv if argv is not None else sys.argv):
            raise
        msg = str(e).replace("\n", " ")
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        raise
    return 0


def run_main() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run_main()
