"""Any solver Pyomo can drive (``pyomo:NAME``): the MILP is emitted as a Pyomo model and solved to optimality.

Pyomo's generic interface has no early stop on the objective's sign and no solution pool, so decide mode solves to
optimality here (still sound: the verdict uses the reported bound and re-checks the point).

The model is handed over as a *minimisation* of ``-m``, and the proven bound is read as ``-results.problem.
lower_bound``: with a maximisation, Pyomo's CBC plugin reads the "best possible" value of a time-limited CBC 2.10
run (printed in CBC's internal minimisation sense) with the wrong sign, which would turn an open query into a
false proof. Minimisation is every plugin's native sense. A bound below the incumbent's own objective is
inconsistent and reported as an error, never used. Where a solver reports no bound, an optimal objective stands in.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mlrobust.backends.base import ERROR, INFEASIBLE, OPTIMAL, TIME_LIMIT, SolveResult, StopRule
from mlrobust.milp.problem import MilpProblem
from mlrobust.milp.pyomo_model import to_pyomo, values_from_pyomo


def pyomo_knows(name: str) -> bool:
    """Whether Pyomo's SolverFactory has a plugin called ``name`` (installed or not)."""
    try:
        import pyomo.environ as pyo
        from pyomo.opt.base.solvers import UnknownSolver
    except ImportError:
        return False
    # Asked about a name it does not know, Pyomo logs a dozen lines of warnings and a traceback (on stdout) before
    # answering; the answer is all that is wanted here.
    log = logging.getLogger("pyomo")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        opt = pyo.SolverFactory(name)
    except Exception:
        return False
    finally:
        log.setLevel(level)
    return opt is not None and not isinstance(opt, UnknownSolver)


class PyomoBackend:
    """Solve through ``pyomo.environ.SolverFactory(solver_name)``; ``options`` go to the solver verbatim."""

    install_hint = "see https://pyomo.readthedocs.io for how to install the solver executable or package"

    def __init__(self, solver_name: str, options: dict | None = None, name: str | None = None):
        self.solver_name = solver_name
        self.options = dict(options or {})
        self.name = name or f"pyomo:{solver_name}"

    def available(self) -> bool:
        if not pyomo_knows(self.solver_name):
            return False
        import pyomo.environ as pyo

        try:
            return bool(pyo.SolverFactory(self.solver_name).available(exception_flag=False))
        except Exception:
            return False

    def solve(self, problem: MilpProblem, *, time_limit: float | None = None, stop: StopRule | None = None,
              pool: int = 0) -> SolveResult:
        import pyomo.environ as pyo
        from pyomo.opt import TerminationCondition as TC

        start = time.perf_counter()
        model = to_pyomo(problem, minimize=True)
        build = time.perf_counter() - start
        opt = pyo.SolverFactory(self.solver_name)
        for key, value in self.options.items():
            opt.options[key] = value
        kwargs: dict = {"load_solutions": False}
        if time_limit is not None:
            kwargs["timelimit"] = max(float(time_limit), 1.0)
        try:
            results = opt.solve(model, **kwargs)
        except (TypeError, ValueError) as exc:
            if "timelimit" not in kwargs:
                raise
            del kwargs["timelimit"]  # a plugin without a time-limit keyword
            results = opt.solve(model, **kwargs)
            del exc
        seconds = time.perf_counter() - start
        tc = results.solver.termination_condition
        x = None
        if len(results.solution) > 0:
            model.solutions.load_from(results)
            x = values_from_pyomo(model, problem)
            # A run stopped before finding a feasible point may still hand back values (CBC does): drop them.
            if x is not None and problem.max_violation(x) > 1e-5 * (1.0 + float(np.max(np.abs(x), initial=0.0))):
                x = None
        objective = problem.objective_value(x) if x is not None else None
        bound = -_finite_or(results.problem.lower_bound, float("-inf"))
        if tc == TC.optimal:
            status = OPTIMAL
            if not np.isfinite(bound) and objective is not None:
                bound = objective
        elif tc in (TC.infeasible, TC.infeasibleOrUnbounded):
            status, bound = INFEASIBLE, float("-inf")
        elif tc in (TC.maxTimeLimit, TC.maxIterations, TC.maxEvaluations, TC.userInterrupt, TC.other,
                    TC.intermediateNonInteger):
            status = TIME_LIMIT
        else:
            status = ERROR
        message = str(tc)
        if objective is not None and bound < objective - 1e-6 * (1.0 + abs(objective)):
            status, message = ERROR, f"{tc}: reported bound {bound} is below the incumbent's objective {objective}"
            bound = float("inf")
        return SolveResult(status=status, objective=objective, bound=bound, x=x, seconds=seconds, solver=self.name,
                           message=message, stats={"pyomo_build_seconds": build})


def _finite_or(value, default: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if np.isfinite(value) else default
