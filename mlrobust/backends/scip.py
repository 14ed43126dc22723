"""SCIP through pyscipopt (one ``addVar`` per column and one linear constraint per row).

Decide mode uses SCIP's ``limits/primal`` (stop at an incumbent with margin >= 0) and ``limits/dual`` (stop once
the dual bound proves margin < -tolerance); optimise mode returns SCIP's stored solutions as the pool.
"""

from __future__ import annotations

import time

import numpy as np

from mlrobust.backends.base import ERROR, INFEASIBLE, OPTIMAL, STOPPED, TIME_LIMIT, SolveResult, StopRule, best_first
from mlrobust.milp.problem import MilpProblem


class ScipBackend:
    name = "scip"
    install_hint = "pip install pyscipopt"

    def __init__(self, threads: int | None = None, gap: float = 1e-4, **params: object):
        self.gap = gap
        self.params = params
        del threads  # SCIP solves on one thread

    def available(self) -> bool:
        try:
            import pyscipopt  # noqa: F401
        except ImportError:
            return False
        return True

    def solve(self, problem: MilpProblem, *, time_limit: float | None = None, stop: StopRule | None = None,
              pool: int = 0) -> SolveResult:
        import pyscipopt
        from pyscipopt.scip import Expr, Term

        start = time.perf_counter()
        m = pyscipopt.Model()
        m.hideOutput()
        binary = problem.integer & (problem.col_lower == 0) & (problem.col_upper == 1)
        vtype = np.where(binary, "B", np.where(problem.integer, "I", "C"))
        variables = [m.addVar(lb=float(a), ub=float(b), vtype=str(t))
                     for a, b, t in zip(problem.col_lower, problem.col_upper, vtype)]
        A = problem.A
        indptr, indices, data = A.indptr, A.indices.tolist(), A.data.tolist()
        for i in range(problem.num_rows):  # pyscipopt has no bulk row API for sparse matrices
            s, e = indptr[i], indptr[i + 1]
            expr = Expr({Term(variables[j]): c for j, c in zip(indices[s:e], data[s:e])})
            lo, hi = float(problem.row_lower[i]), float(problem.row_upper[i])
            if np.isfinite(lo) and lo == hi:
                m.addCons(expr == lo)
                continue
            if np.isfinite(lo):
                m.addCons(expr >= lo)
            if np.isfinite(hi):
                m.addCons(expr <= hi)
        nz = np.flatnonzero(problem.objective)
        m.setObjective(Expr({Term(variables[j]): float(problem.objective[j]) for j in nz}) + float(problem.offset),
                       sense="maximize")
        m.setParam("limits/gap", float(self.gap))
        if time_limit is not None:
            m.setParam("limits/time", max(float(time_limit), 0.01))
        if stop is not None:
            # Maximisation: stop once the primal bound is >= primal_at_least or the dual bound is <= dual_below.
            m.setParam("limits/primal", float(stop.primal_at_least))
            m.setParam("limits/dual", float(np.nextafter(stop.dual_below, -np.inf)))
        for key, value in self.params.items():
            m.setParam(key, value)
        if problem.start is not None:
            sol = m.createSol()
            for var, val in zip(variables, np.asarray(problem.start, dtype=np.float64)):
                m.setSolVal(sol, var, float(val))
            m.addSol(sol, free=True)
        handover = time.perf_counter() - start
        m.optimize()
        seconds = time.perf_counter() - start
        st = m.getStatus()
        sols = m.getSols()
        found = [np.array([m.getSolVal(sol, var) for var in variables], dtype=np.float64) for sol in sols[: pool + 1]]
        solutions = best_first(problem, found, pool + 1) if found else []
        objective = problem.objective_value(solutions[0]) if solutions else None
        bound = float(m.getDualbound())
        if st == "optimal":
            status = OPTIMAL
        elif st in ("primallimit", "duallimit"):
            status = STOPPED
        elif st in ("infeasible", "inforunbd"):
            status, bound = INFEASIBLE, float("-inf")
        elif st in ("timelimit", "userinterrupt", "nodelimit", "totalnodelimit", "stallnodelimit", "gaplimit",
                    "sollimit", "bestsollimit", "memlimit", "restartlimit"):
            status = OPTIMAL if st == "gaplimit" else TIME_LIMIT
        else:
            status = ERROR
        if not np.isfinite(bound) and status != INFEASIBLE:
            bound = float("inf")
        return SolveResult(status=status, objective=objective, bound=bound,
                           x=solutions[0] if solutions else None, pool=solutions[1:], seconds=seconds,
                           nodes=int(m.getNNodes()), solver=self.name, message=f"SCIP status {st}",
                           stats={"handover_seconds": handover})
