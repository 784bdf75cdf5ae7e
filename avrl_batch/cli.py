"""The ``avrl`` command line. Commands are thin: they parse options and call the library.

Command modules live in ``avrl_batch/commands/`` and register themselves on ``app``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

app = typer.Typer(
    name="avrl",
    help=(
        "Find anomaly events (shooting, fights, chases, arrests...) in surveillance archives "
        "by listening and looking: train AVRL and scan buckets on Ray.\n\n"
        "Example: avrl demo   (synthetic footage -> train -> scan -> query, on a local Ray)"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    import avrl_batch.commands as commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"avrl_batch.commands.{mod}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: user errors become one line on stderr, exit 2."""
    from avrl_batch.commands.console import drop_benign_ray_lines
    from avrl_batch.errors import AvrlError

    drop_benign_ray_lines()
    _register_commands()
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:  # click returns Exit codes in non-standalone mode
            sys.exit(rv)
    except AvrlError as exc:
        from avrl_batch.redaction import redact

        typer.echo(f"error: {redact(str(exc))}", err=True)  # a message may quote a URL or value
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # usage errors from click, or from the copy of click that typer vendors
        # (typer._click): both have format_message/exit_code; an Abort has neither
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            typer.echo("aborted", err=True)
            sys.exit(1)
        raise

if __name__ == "__main__":
    # run as `python -m avrl_batch.cli`: commands register on the imported module's `app`,
    # not on this __main__ copy, so dispatch through the real module
    from avrl_batch.cli import main as _main

    _main()
