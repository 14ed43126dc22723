"""The ``mlrobust`` command line: one Typer app, one module per subcommand, and the one place that turns every
outcome into an exit code.

Exit codes (the same for every command that answers a question; see docs/cli.md):

- 0: proven robust / unsat / the search or the job finished
- 10: a counterexample (not robust / sat)
- 20: unknown / timeout
- 2: a usage or input error (one ``error: ...`` line on stderr, no traceback)
- 130: interrupted (Ctrl-C); whatever was written is complete, never half a file
- 1: an internal error (a bug: one line, the traceback only with ``MLROBUST_TRACEBACK=1``)

Only Typer and the standard library are imported here and in the command modules' top level: argument and file
errors come back before numpy, torch or a model are loaded.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import typer

from mlrobust import __version__
from mlrobust.errors import MlrobustError


def _process_age() -> float:
    """Seconds since this process started (Linux, from /proc; 0 where that is not known)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 0.0)  # field 22: start time in ticks
    except (OSError, ValueError, IndexError):
        return 0.0


#: ``time.monotonic()`` when the process started (estimated at the import of this module).
PROCESS_START = time.monotonic() - _process_age()
_IMPORTED = time.monotonic()
#: When the current command started: time limits count from here. For the first command of a fresh process (the
#: console script) that is the start of the process, so the start-up (interpreter, imports) counts too; a command
#: run later in a longer-lived process (a test, a notebook) counts from its own start.
CLOCK = {"start": _IMPORTED, "commands": 0}


def _start_clock() -> None:
    now = time.monotonic()
    # The console script's first command is its process's by definition, however long the start-up took (on a
    # loaded machine the imports before this callback took over 2 s, and that time went uncounted); elsewhere
    # a command run soon after the import is taken as the process's own.
    fresh = CLOCK["commands"] == 0 and (HARD_DEADLINES["enabled"]
                                        or (now - _IMPORTED < 2.0 and _IMPORTED - PROCESS_START < 2.0))
    CLOCK["start"] = PROCESS_START if fresh else now
    CLOCK["commands"] += 1


def seconds_since_start() -> float:
    """Seconds since the current command started (see :data:`CLOCK`)."""
    return time.monotonic() - CLOCK["start"]


#: Whether a command may end its own process at a hard deadline: only in the console script (:func:`console`),
#: never in a test, a notebook or any other process that merely calls :func:`run`.
HARD_DEADLINES = {"enabled": False}
#: Held by whoever writes a command's final answer: the finished work or the hard deadline, never both.
ANSWER_LOCK = threading.Lock()
#: Seconds past the limit at which the hard deadline ends the process (the soft limits stop the work before it).
HARD_DEADLINE_GRACE = 0.3


def hard_deadline(limit: float, give_up: Callable[[], int]) -> Optional[threading.Timer]:
    """End the console script's process ``limit`` (+ a grace of :data:`HARD_DEADLINE_GRACE`) seconds after the
    command started, whatever the work is doing, after ``give_up()`` has written the command's "timeout" answer and
    returned its exit code.

    The work stops itself at its own (earlier) deadline; this is the backstop for a solver inside a long C call that
    reaches neither its time limit nor its interrupt callback (HiGHS during a round of cut separation has run 4 s
    past it). Solvers release the GIL while they run, so the timer thread gets its turn. The command takes
    :data:`ANSWER_LOCK` before it writes its own answer; whichever side takes it first answers. Returns the timer
    (None outside the console script).
    """
    if not HARD_DEADLINES["enabled"]:
        return None

    def fire() -> None:
        if not ANSWER_LOCK.acquire(blocking=False):
            return  # the command is writing its own answer
        try:
            code = give_up()
        except BaseException:  # whatever happens, the process ends now: the limit is the promise
            code = EXIT_UNKNOWN
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    timer = threading.Timer(max(limit - seconds_since_start(), 0.0) + HARD_DEADLINE_GRACE, fire)
    timer.daemon = True
    timer.start()
    return timer

def check_device_option(device: str) -> str:
    """``--device``: "cpu" (checked without importing torch, so bad input is still reported at once) or "cuda",
    which needs a GPU torch sees."""
    if device != "cpu":
        from mlrobust.ir.torch_exec import check_device

        check_device(device)
    return device


EXIT_OK = 0
EXIT_COUNTEREXAMPLE = 10
EXIT_UNKNOWN = 20
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1

#: Appended to the help of every command that answers a question.
EXIT_CODES_HELP = ("Exit codes: 0 proven robust / unsat / finished, 10 counterexample (not robust / sat), "
                   "20 unknown / timeout, 2 usage or input error, 130 interrupted.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlrobust {__version__}")
        raise typer.Exit(0)


app = typer.Typer(
    name="mlrobust",
    help="Maximal robust layered neighborhoods for multi-label image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback(epilog=EXIT_CODES_HELP)
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """Maximal robust layered neighborhoods for multi-label image classifiers."""
    _start_clock()


_COMMANDS = ("inspect_cmd", "data_cmd", "verify_cmd", "vnnlib_cmd", "batch_cmd", "report_cmd")


def _register() -> None:
    """Import every subcommand module (each adds itself to ``app``) so ``mlrobust --help`` lists them all."""
    for module in _COMMANDS:
        importlib.import_module(f"mlrobust.cli.{module}")


def _error(message: str) -> None:
    # One line, whatever the terminal width: rich would wrap a long path onto several lines.
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)


def _exception_types(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception class ``name`` from click itself and from the copy Typer >= 0.29 ships (``typer._click``),
    whose classes are not subclasses of click's: catching only one of them let usage errors end in a traceback."""
    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions", "typer.exceptions", "typer"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def _usage_message(exc: BaseException) -> str:
    """A click usage error as one line, with the command whose ``--help`` explains it."""
    fmt = getattr(exc, "format_message", None)
    text = fmt() if callable(fmt) else str(exc)
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) if ctx is not None else None
    return f"{text} (see '{path} --help')" if path else text


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit code (never raises, except
    SystemExit from code that calls ``sys.exit`` itself)."""
    args = list(sys.argv[1:] if argv is None else argv)
    click_errors = _exception_types("ClickException")
    exits = _exception_types("Exit")
    aborts = _exception_types("Abort")
    no_args_help = _exception_types("NoArgsIsHelpError")
    try:
        _register()
        # Non-standalone mode returns what the command returns (our exit code), and 130 for Ctrl-C (typer turns
        # KeyboardInterrupt into Exit(130)); errors reach the handlers below instead of being printed by click.
        code: Any = app(args=args, prog_name="mlrobust", standalone_mode=False)
    except MlrobustError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except exits as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
    except aborts:  # end of input at a prompt
        code = EXIT_INTERRUPTED
    except no_args_help as exc:  # a command group without arguments: its help, as a usage error
        fmt = getattr(exc, "format_message", None)
        print(fmt() if callable(fmt) else str(exc), file=sys.stderr)
        return EXIT_USAGE
    except click_errors as exc:
        _error(_usage_message(exc))
        return EXIT_USAGE
    except OSError as exc:  # a file that vanished or a disk that filled up during the run
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _error(f"{exc.strerror or exc}{where}")
        return EXIT_USAGE
    except Exception as exc:  # a bug: one line, the traceback on request
        if os.environ.get("MLROBUST_TRACEBACK"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set MLROBUST_TRACEBACK=1 to see where; please "
               f"report it)")
        return EXIT_INTERNAL
    if code is None:
        return EXIT_OK
    if isinstance(code, bool) or not isinstance(code, int):
        return EXIT_OK
    if code == EXIT_INTERRUPTED:
        print("interrupted", file=sys.stderr)
    return code


def main() -> None:
    """Run the command line on ``sys.argv`` and ``sys.exit`` with its exit code."""
    sys.exit(run())


#: Commands whose process ends with ``os._exit`` when run as the console script (see :func:`console`). Not
#: ``batch`` and ``data``: they may hold worker processes or a Dask client whose shutdown hooks must run.
FAST_EXIT = ("verify", "vnnlib", "inspect")


def console() -> None:
    """The ``mlrobust`` console script: :func:`main`, but the process of a finished ``verify``, ``vnnlib`` or
    ``inspect`` ends at once. Python's own shutdown (torch's above all) takes a second or more, which would count
    against the wall-time limits; every output is already complete (written atomically) and the streams are flushed
    here, so nothing is lost by skipping it."""
    HARD_DEADLINES["enabled"] = True
    code = run()
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    if command not in FAST_EXIT:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)
