"""``mlrobust vnnlib``: decide a VNN-LIB property on an ONNX model and answer as VNN-COMP tools do.

Prints ``unsat`` (the property holds: no input of the box reaches the output region), ``sat`` followed by the
counterexample in VNN-COMP's format (``((X_0 v) ... (Y_0 v) ...)``), ``timeout``, or ``unknown``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlrobust.cli import app


@app.command("vnnlib")
def vnnlib(
    model: Path = typer.Argument(..., help="ONNX model file."),
    prop: Path = typer.Argument(..., help="VNN-LIB property file (.vnnlib)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Time limit in seconds (default: none)."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver backend: highs, cbc, scip, gurobi, "
                                                           "pyomo:NAME or an installed plugin."),
    tightening: str = typer.Option("crown", "--tightening", help="Bounds before the MILP: ibp or crown."),
    verifier: str = typer.Option("cascade", "--verifier", help="After the attack and the bounds: cascade (MILP), "
                                                              "bab (branch and bound) or cascade-bab (both)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result to this file "
                                                            "(the VNN-COMP result file)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print which tier decided and the time (to "
                                                               "stderr)."),
) -> None:
    """Decide a VNN-LIB property: print unsat, sat with a counterexample, timeout or unknown."""
    from mlrobust.errors import InputError
    from mlrobust.ir.onnx_import import load_onnx
    from mlrobust.verify.vnnlib import VNNLIB_VERIFIERS, check_vnnlib, parse_vnnlib

    if tightening not in ("ibp", "crown"):
        raise InputError(f"--tightening must be ibp or crown, not {tightening!r}")
    if verifier not in VNNLIB_VERIFIERS:
        raise InputError(f"--verifier must be one of {', '.join(VNNLIB_VERIFIERS)}, not {verifier!r}")
    if timeout is not None and timeout <= 0:
        raise InputError("--timeout must be a positive number of seconds")
    if not prop.is_file():
        raise InputError(f"VNN-LIB file not found: {prop}")
    network = load_onnx(model)
    spec = parse_vnnlib(prop.read_text())
    result = check_vnnlib(network, spec, solver=solver, timeout=timeout, tightening=tightening, verifier=verifier)
    text = result.to_vnncomp()
    typer.echo(text, nl=False)
    if out is not None:
        out.write_text(text)
    if verbose:
        typer.echo(f"{result.status} by {result.tier or '-'} in {result.seconds:.2f} s"
                   + (f" ({result.reason})" if result.reason else ""), err=True)
