"""Gurobi through gurobipy's matrix API (``addMVar``/``addMConstr`` take the CSR rows in bulk).

Decide mode uses ``BestObjStop`` (stop at an incumbent with margin >= 0) and ``BestBdStop`` (stop once the bound
proves margin < -tolerance); optimise mode keeps a solution pool (``PoolSolutions``). The pip build of gurobipy
carries a size-limited licence (2000 variables and 2000 linear constraints): a larger model raises
:class:`~mlrobust.errors.SolverLimitError` saying so, instead of Gurobi's error code.
"""

from __future__ import annotations

import time

import numpy as np

from mlrobust.backends.base import ERROR, INFEASIBLE, OPTIMAL, STOPPED, TIME_LIMIT, SolveResult, StopRule
from mlrobust.errors import SolverLimitError
from mlrobust.milp.problem import MilpProblem

#: gurobipy's error code for "Model too large for size-limited license".
SIZE_LIMIT_ERROR = 10010
PIP_LICENCE_LIMIT = 2000


class GurobiBackend:
    name = "gurobi"
    install_hint = "pip install gurobipy   (the pip build carries a size-limited licence: 2000 variables/constraints)"

    def __init__(self, threads: int | None = None, mip_gap: float = 1e-4, **params: object):
        self.threads = threads
        self.mip_gap = mip_gap
        self.params = params

    def available(self) -> bool:
        try:
            import gurobipy  # noqa: F401
        except ImportError:
            return False
        return True

    def solve(self, problem: MilpProblem, *, time_limit: float | None = None, stop: StopRule | None = None,
              pool: int = 0) -> SolveResult:
        import gurobipy as gp
        from gurobipy import GRB

        start = time.perf_counter()
        try:
            env = gp.Env(empty=True)
            env.setParam("OutputFlag", 0)
            env.start()
        except gp.GurobiError as exc:
            raise SolverLimitError(f"Gurobi could not start (licence?): {exc}") from exc
        model = gp.Model("mlrobust", env=env)
        try:
            return self._solve(gp, GRB, model, problem, time_limit, stop, pool, start)
        except gp.GurobiError as exc:
            if getattr(exc, "errno", None) == SIZE_LIMIT_ERROR:
                raise SolverLimitError(
                    f"the model has {problem.num_cols} variables and {problem.num_rows} constraints, more than the "
                    f"size-limited Gurobi licence allows ({PIP_LICENCE_LIMIT} each, the licence of the pip build "
                    f"of gurobipy); use a full Gurobi licence or another backend such as 'highs'") from exc
            raise
        finally:
            model.dispose()
            env.dispose()

    def _solve(self, gp, GRB, model, problem: MilpProblem, time_limit, stop, pool, start) -> SolveResult:
        vtype = np.where(problem.integer, np.where((problem.col_lower == 0) & (problem.col_upper == 1), GRB.BINARY,
                                                   GRB.INTEGER), GRB.CONTINUOUS)
        v = model.addMVar(problem.num_cols, lb=problem.col_lower, ub=problem.col_upper, vtype=vtype)
        A, lo, hi = problem.A, problem.row_lower, problem.row_upper
        eq = np.isfinite(lo) & (lo == hi)
        le = np.isfinite(hi) & ~eq
        ge = np.isfinite(lo) & ~eq
        for mask, sense, rhs in ((eq, "=", lo), (le, "<", hi), (ge, ">", lo)):
            if mask.any():
                model.addMConstr(A[np.flatnonzero(mask)], v, sense, rhs[mask])
        model.setMObjective(None, problem.objective, float(problem.offset), sense=GRB.MAXIMIZE)
        model.Params.MIPGap = self.mip_gap
        if self.threads is not None:
            model.Params.Threads = int(self.threads)
        if time_limit is not None:
            model.Params.TimeLimit = max(float(time_limit), 0.01)
        if stop is not None:
            model.Params.BestObjStop = float(stop.primal_at_least)
            model.Params.BestBdStop = float(np.nextafter(stop.dual_below, -np.inf))
        if pool > 0:
            model.Params.PoolSolutions = int(pool) + 1
        if problem.start is not None:
            v.Start = np.asarray(problem.start, dtype=np.float64)
        for key, value in self.params.items():
            model.setParam(key, value)
        handover = time.perf_counter() - start
        state = {"checks": 0, "accepted": False}

        def callback(m, where) -> None:
            if where != GRB.Callback.MIPSOL or stop is None or stop.on_incumbent is None:
                return
            obj = m.cbGet(GRB.Callback.MIPSOL_OBJ)
            if state["checks"] < stop.max_checks and stop.check_from <= obj < stop.primal_at_least:
                state["checks"] += 1
                if stop.on_incumbent(np.asarray(m.cbGetSolution(v), dtype=np.float64)):
                    state["accepted"] = True
                    m.terminate()

        model.optimize(callback if (stop is not None and stop.on_incumbent is not None) else None)
        seconds = time.perf_counter() - start
        st = model.Status
        x = None
        objective = None
        solutions: list[np.ndarray] = []
        if model.SolCount > 0:
            x = np.asarray(v.X, dtype=np.float64)
            objective = float(model.ObjVal)
            for i in range(1, min(model.SolCount, pool + 1)):
                model.Params.SolutionNumber = i
                solutions.append(np.asarray(v.Xn, dtype=np.float64))
        if model.IsMIP:
            bound = float(model.ObjBound) if np.isfinite(model.ObjBound) else float("inf")
        else:  # an LP has no ObjBound: its optimum is the bound
            bound = objective if (st == GRB.OPTIMAL and objective is not None) else float("inf")
        if st == GRB.OPTIMAL:
            status = OPTIMAL
        elif st == GRB.USER_OBJ_LIMIT or (st == GRB.INTERRUPTED and state["accepted"]):
            status = STOPPED
        elif st in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):
            status, bound = INFEASIBLE, float("-inf")
        elif st in (GRB.TIME_LIMIT, GRB.INTERRUPTED, GRB.NODE_LIMIT, GRB.SOLUTION_LIMIT):
            status = TIME_LIMIT
        else:
            status = ERROR
        return SolveResult(status=status, objective=objective, bound=bound, x=x, pool=solutions, seconds=seconds,
                           nodes=int(model.NodeCount), solver=self.name, message=f"Gurobi status {st}",
                           stats={"handover_seconds": handover, "incumbent_checks": state["checks"],
                                  "incumbent_accepted": state["accepted"]})
