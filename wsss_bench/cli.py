"""The ``wsss-bench`` command: a thin Typer layer over functions that tests call directly.

Each command group lives in :mod:`wsss_bench.commands` and exposes ``register(app)``. The command
modules are imported only when their command runs (or its ``--help`` is asked for): the root
``--help`` lists the commands from :data:`COMMANDS`, so starting the CLI imports neither torch nor
any command module.

Errors: a :class:`~wsss_bench.errors.WsssBenchError` and every usage error (unknown option or
command, a value of the wrong type, a bad choice, a missing argument) become one line on stderr,
``error: ...``, and exit code 2; a usage error names the command and carries a hint (did you mean,
the valid choices, where the help is). ``--debug`` (or ``WSSS_BENCH_DEBUG=1``) shows the traceback
of a ``WsssBenchError`` instead.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.core

from wsss_bench import __version__
from wsss_bench.commands._options import click_module
from wsss_bench.errors import WsssBenchError

_click: Any = click_module()

_EXIT = tuple({typer.Exit, getattr(_click.exceptions, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(_click.exceptions, "Abort", typer.Abort)})

PROG = "wsss-bench"

#: Every command: name -> (module with ``register(app)``, one-line help shown by ``wsss-bench --help``).
#: The line must be the first paragraph of the command's own help (a test checks it). Order is the
#: order in ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("wsss_bench.commands.run_cmd",
            "Run methods' localisation-map inference over a split and score it under the protocol."),
    "methods": ("wsss_bench.commands.run_cmd",
                "List installed method adapters and segmenters (entry-point groups wsss_bench.methods, "
                "wsss_bench.segmenters)."),
    "eval": ("wsss_bench.commands.eval_cmd", "Score what any code base produced, without a method adapter."),
    "datasets": ("wsss_bench.commands.datasets_cmd",
                 "Check dataset layouts, prepare COCO semantic masks, generate the synthetic set."),
    "leaderboard": ("wsss_bench.commands.report_cmd",
                    "Build a leaderboard from run records: Markdown, HTML, CSV, LaTeX, JSON and plots."),
    "compare": ("wsss_bench.commands.report_cmd", "Paired bootstrap over images: is A's mIoU really higher than B's?"),
    "export-voc-test": ("wsss_bench.commands.report_cmd",
                        "Pack VOC 2012 test predictions for the evaluation server (validated palette PNGs)."),
    "train-seg": ("wsss_bench.commands.train_cmd",
                  "Train a segmenter on pseudo labels under a declared recipe, then score it on val."),
    "demo": ("wsss_bench.commands.demo_cmd",
             "The embedded demo: train its small models (run it with `wsss-bench run`)."),
}

_STATE = {"debug": False}


def reflow(text: str | None) -> str | None:
    """Help text as paragraphs: the line breaks inside a paragraph of a docstring become spaces
    (typer's rich mode would keep them, breaking lines in mid-sentence at any width). A paragraph
    starting with ``\\b`` keeps its lines."""
    if not text:
        return text
    paras = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paras)


def _reflow_all(cmd: Any) -> None:
    cmd.help = reflow(cmd.help)
    for sub in (getattr(cmd, "commands", None) or {}).values():
        _reflow_all(sub)


def _module_group(module: str) -> Any:
    """The click group holding every command that ``module.register`` adds (built once per module)."""
    cache: dict[str, Any] = _module_group.__dict__.setdefault("cache", {})
    if module not in cache:
        sub = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
        importlib.import_module(module).register(sub)
        group = typer.main.get_group(sub)
        _reflow_all(group)
        cache[module] = group
    return cache[module]


def load_command(name: str) -> Any:
    """The click command ``name`` of :data:`COMMANDS`, importing its module."""
    module = COMMANDS[name][0]
    cmd = _module_group(module).commands.get(name)
    if cmd is None:  # pragma: no cover - a COMMANDS entry that its module does not register
        raise RuntimeError(f"{module}.register() adds no command {name!r}")
    return cmd


class _LazyCommands(MutableMapping):
    """``group.commands`` for :class:`LazyGroup`: names known up front, commands built on access."""

    def __init__(self, eager: dict[str, Any]):
        self._loaded = dict(eager)

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, cmd: Any) -> None:
        self._loaded[name] = cmd

    def __delitem__(self, name: str) -> None:  # pragma: no cover - click never deletes commands
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (n for n in self._loaded if n not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._loaded))


class LazyGroup(typer.core.TyperGroup):
    """The root group: imports a command's module only when that command is resolved.

    While the root help is drawn, commands are light stand-ins carrying the one-line help of
    :data:`COMMANDS`, so ``wsss-bench --help`` imports no command module.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(dict(self.commands))
        self._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if self._listing and cmd_name in COMMANDS:
            return typer.core.TyperCommand(cmd_name, help=COMMANDS[cmd_name][1], short_help=COMMANDS[cmd_name][1])
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name=PROG,
    cls=LazyGroup,
    help="Benchmark weakly-supervised semantic segmentation methods under one declared protocol.\n\n"
         "Example: [bold]wsss-bench run[/bold] (the embedded demo: every method on synthetic shapes)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _STATE["debug"] = debug or os.environ.get("WSSS_BENCH_DEBUG") == "1"


def usage_error_line(e: Any, argv: list[str] | None = None) -> str:
    """One line for a click usage error: the command, click's message, and where the help is."""
    ctx = getattr(e, "ctx", None)
    msg = " ".join(e.format_message().split())
    cause = e.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors) and ": Input should" in msg:  # typer >= 0.29 coerces with pydantic: name the value
        try:
            bad = errors()[0].get("input")
        except Exception:  # noqa: BLE001 - best effort only
            bad = None
        if bad is not None:
            head, _, tail = msg.partition(": Input should")
            msg = f"{head}: {bad!r} (input should{tail.rstrip('.')})"
    msg = msg.replace(": Value error, ", ": ")  # pydantic's prefix to a validator's own message
    where = ctx.command_path if ctx is not None else _command_path(argv)
    return f"{where}: {msg.rstrip('.')} (see '{where} --help')"


def _command_path(argv: list[str] | None) -> str:
    """``wsss-bench [group] command`` named by ``argv`` (for the errors click raises without a context)."""
    args = list(argv if argv is not None else sys.argv[1:])
    words = [a for a in args if not a.startswith("-")]
    path = [PROG]
    if words and words[0] in COMMANDS:
        path.append(words[0])
        cmd = load_command(words[0])
        if isinstance(cmd, typer.core.TyperGroup) and len(words) > 1 and words[1] in cmd.commands:
            path.append(words[1])
    return " ".join(path)


def _debug_requested(argv: list[str] | None) -> bool:
    args = argv if argv is not None else sys.argv[1:]
    return _STATE["debug"] or "--debug" in args or os.environ.get("WSSS_BENCH_DEBUG") == "1"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    _STATE["debug"] = False
    try:
        rv = app(args=argv, standalone_mode=False, prog_name=PROG)
        if isinstance(rv, int):  # typer.Exit(n) is returned, not raised, without standalone mode
            return rv
    except WsssBenchError as e:
        if _debug_requested(argv):
            raise
        msg = str(e).replace("\n", " ")
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except _EXIT as e:
        return e.exit_code
    except _ABORT:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _click.exceptions.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            # a group called alone (``wsss-bench``, ``wsss-bench datasets``) shows its help (exit 0); a
            # command with required options called without any shows its help too, with exit code 2.
            # (typer's rich mode has already drawn the help on stdout; plain mode returns it here.)
            text = e.format_message()
            if text.strip():
                print(text)
            return 0 if isinstance(e.ctx.command, typer.core.TyperGroup) else 2
        if isinstance(e, _click.exceptions.UsageError):
            print(f"error: {usage_error_line(e, argv)}", file=sys.stderr)
            return 2
        print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return e.exit_code or 1
    return 0


def run_main() -> None:  # pragma: no cover - console script wrapper
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run_main()
