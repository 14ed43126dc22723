"""``mlrobust vnnlib``: decide a VNN-LIB property on an ONNX model and answer as VNN-COMP tools do.

Prints ``unsat`` (the property holds: no input of the box reaches the output region), ``sat`` followed by the
counterexample in VNN-COMP's format (``((X_0 v) ... (Y_0 v) ...)``), ``timeout``, or ``unknown``; the exit code
says the same (0 unsat, 10 sat, 20 timeout or unknown).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from mlrobust.cli import (
    ANSWER_LOCK,
    EXIT_CODES_HELP,
    EXIT_COUNTEREXAMPLE,
    EXIT_OK,
    EXIT_UNKNOWN,
    app,
    check_device_option,
    hard_deadline,
)
from mlrobust.cli.files import atomic_write_text, input_file, output_file
from mlrobust.errors import InputError
from mlrobust.verify.spec import VNNLIB_VERIFIERS

#: Exit code of each answer.
VNNLIB_EXIT = {"unsat": EXIT_OK, "sat": EXIT_COUNTEREXAMPLE, "timeout": EXIT_UNKNOWN, "unknown": EXIT_UNKNOWN}


@app.command("vnnlib", epilog=EXIT_CODES_HELP)
def vnnlib(
    model: Path = typer.Argument(..., help="ONNX model file."),
    prop: Path = typer.Argument(..., help="VNN-LIB property file (.vnnlib)."),
    timeout: Optional[float] = typer.Option(None, "--time-limit", "--timeout", help="Time limit in seconds of wall "
                                            "time, start-up included (default: none; --timeout is the same "
                                            "option, the name VNN-COMP scripts use)."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver backend: highs, cbc, scip, gurobi, "
                                                           "pyomo:NAME or an installed plugin."),
    tightening: str = typer.Option("crown", "--tightening", help="Bounds before the MILP: ibp or crown."),
    verifier: str = typer.Option("cascade-bab", "--verifier",
                                 help="After the attack and the bounds: cascade-bab (branch and bound, then the "
                                      "MILP), cascade (MILP) or bab (branch and bound)."),
    device: str = typer.Option("cpu", "--device", help="Where the branch and bound (bab, cascade-bab) runs its "
                                                       "α/β bounds: cpu or cuda (a GPU torch sees)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result to this file "
                                                            "(the VNN-COMP result file; its folder is created)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print which tier decided and the time (to "
                                                               "stderr)."),
    output: Optional[str] = typer.Option(None, "--output", help="Verify this tensor (or node) of the graph instead "
                                         "of its output, e.g. the scores in front of an ArgMax tail."),
) -> int:
    """Decide a VNN-LIB property: print unsat, sat with a counterexample, timeout or unknown."""
    from mlrobust.cli.verify_cmd import check_solver, notes, time_left

    input_file(model, "model file")
    input_file(prop, "VNN-LIB file")
    if tightening not in ("ibp", "crown"):
        raise InputError(f"--tightening must be ibp or crown, not {tightening!r}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--time-limit must be a positive number of seconds, not {timeout!r}")
    if verifier not in VNNLIB_VERIFIERS:
        raise InputError(f"--verifier must be one of {', '.join(VNNLIB_VERIFIERS)}, not {verifier!r}")
    check_solver(solver)
    check_device_option(device)
    if out is not None:
        output_file(out, "--out")

    from mlrobust.verify.vnnlib_parse import parse_vnnlib

    spec = parse_vnnlib(prop)  # before the model and the verifier stack: a broken property is reported at once

    from mlrobust.ir.onnx_import import load_onnx
    from mlrobust.verify.vnnlib import check_vnnlib

    def give_up() -> int:
        if out is not None:
            atomic_write_text(out, "timeout\n")
        typer.echo("timeout")
        if verbose:
            typer.echo("timeout at the hard deadline (the solver did not stop in time)", err=True)
        return EXIT_UNKNOWN

    watchdog = None if timeout is None else hard_deadline(timeout, give_up)
    with notes():
        network = load_onnx(model, output=output)
        result = check_vnnlib(network, spec, solver=solver, tightening=tightening, verifier=verifier, device=device,
                              timeout=None if timeout is None else time_left(timeout))
    with ANSWER_LOCK:
        if watchdog is not None:
            watchdog.cancel()
        text = result.to_vnncomp()
        if out is not None:
            atomic_write_text(out, text)
        typer.echo(text, nl=False)
    if verbose:
        typer.echo(f"{result.status} by {result.tier or '-'} in {result.seconds:.2f} s"
                   + (f" ({result.reason})" if result.reason else ""), err=True)
    return VNNLIB_EXIT.get(result.status, EXIT_UNKNOWN)
