"""The ``mlrobust`` command line: one Typer app, one module per subcommand."""

from __future__ import annotations

import sys

import typer

from mlrobust.errors import MlrobustError

app = typer.Typer(
    name="mlrobust",
    help="Maximal robust layered neighborhoods for multi-label image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Maximal robust layered neighborhoods for multi-label image classifiers."""


def _register() -> None:
    # Each subcommand module adds itself to ``app``; imported here so ``mlrobust --help`` lists them all.
    import importlib

    for module in ("inspect_cmd", "data_cmd", "verify_cmd", "vnnlib_cmd", "batch_cmd"):
        try:
            importlib.import_module(f"mlrobust.cli.{module}")
        except ModuleNotFoundError as exc:  # a subcommand not written yet
            if exc.name != f"mlrobust.cli.{module}":
                raise


def main() -> None:
    """Console entry point: runs the app and turns mlrobust's own errors into a clear message and exit code 2."""
    _register()
    try:
        # Non-standalone mode returns exit codes instead of raising them: typer.Exit(code) from a command, and 130
        # for Ctrl-C (typer turns KeyboardInterrupt into Exit(130)); our commands themselves return None.
        code = app(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                print("interrupted", file=sys.stderr)
            sys.exit(code)
    except MlrobustError as exc:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
