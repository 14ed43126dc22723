"""Any solver Pyomo can drive (``pyomo:NAME``): the MILP is emitted as a Pyomo model and solved to optimality.

Pyomo's generic interface has no early stop on the objective's sign and no solution pool, so decide mode solves to
optimality here (still sound: the verdict uses the reported bound and re-checks the point). The proven bound is
Pyomo's ``results.problem.upper_bound`` (the dual bound of a maximisation); where a solver reports none, an optimal
objective stands in for it.
"""

from __future__ import annotations

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
    try:
        opt = pyo.SolverFactory(name)
    except Exception:
        return False
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
        model = to_pyomo(problem)
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
        objective = problem.objective_value(x) if x is not None else None
        bound = _finite_or(results.problem.upper_bound, float("inf"))
        if tc == TC.optimal:
            status = OPTIMAL
            if not np.isfinite(bound) and objective is not None:
                bound = objective
        elif tc in (TC.infeasible, TC.infeasibleOrUnbounded):
            status, bound = INFEASIBLE, float("-inf")
        elif tc in (TC.maxTimeLimit, TC.maxIterations, TC.maxEvaluations, TC.userInterrupt, TC.other):
            status = TIME_LIMIT
        else:
            status = ERROR
        return SolveResult(status=status, objective=objective, bound=bound, x=x, seconds=seconds, solver=self.name,
                           message=str(tc), stats={"pyomo_build_seconds": build})


def _finite_or(value, default: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if np.isfinite(value) else default
