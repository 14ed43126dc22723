"""The exact verifier: tighten bounds, build the top-k MILP, solve it with a backend, turn the answer into a verdict.

Soundness rules applied here:
- Robust only when the solver's *proven* bound on the k-th largest margin is ``< -ROBUST_TOLERANCE``.
- NotRobust only for a point that, snapped into the box, violates the property on the float64 numpy IR *and* the
  float32 torch executor. A solver point that fails the check is polished by a short PGD run started from it;
  if that does not confirm a counterexample either, the verdict is Unknown.
- A time limit, a solver error or an optimum inside the tolerance band ``[-ROBUST_TOLERANCE, 0)`` is Unknown.
"""

from __future__ import annotations

import time

import numpy as np

from mlrobust.backends.base import SolverBackend, SolveResult, StopRule
from mlrobust.backends.registry import get_backend
from mlrobust.bounds.tier import Tightened
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.milp.builder import MilpBuilder
from mlrobust.milp.problem import MilpProblem
from mlrobust.milp.tightening import METHODS, lp_margins, tighten
from mlrobust.verify.attack import pgd
from mlrobust.verify.base import Mode
from mlrobust.verify.counterexample import CheckedPoint, TopKProperty, check_query, weak_points
from mlrobust.verify.decision import decide_after_solve
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust, Unknown, Verdict


class MilpVerifier:
    """Complete (up to the time limit) top-k verifier over a MILP solver backend.

    ``solver``: a backend name ("highs", "cbc", "scip", "gurobi", "pyomo:NAME", an entry point) or object.
    ``tightening``: "ibp", "crown", "alpha" or "lp" (``lp_time_budget`` seconds of LP tightening at most).
    ``pool``: in optimise mode, how many solutions beyond the maximiser to ask the solver for.
    ``margin_lp``: tighten the margin bounds ``y_c - y_t`` by LP over the encoded network before the top-k
    objective is added (two LPs per class; in decide mode only for classes that might still reach 0). Tight margin
    bounds let decide mode drop classes and shrink the big-M constants, which often decides the query outright.
    ``warm_start``: hand the solver a feasible point to start from — the best of the ``hints`` given to
    :meth:`verify` (the cascade passes its attack's points), or else the best point of a short PGD run (in decide
    mode, if that run already confirms a counterexample, it is the answer).
    """

    name = "milp"

    def __init__(self, solver: str | SolverBackend | None = "highs", tightening: str = "crown",
                 lp_time_budget: float | None = 10.0, pool: int = 4, polish_steps: int = 20,
                 margin_lp: bool = True, warm_start: bool = True):
        if tightening not in METHODS:
            raise InputError(f"unknown bound tightening {tightening!r}; choose one of {', '.join(METHODS)}")
        self.backend = get_backend(solver)
        self.tightening = tightening
        self.lp_time_budget = lp_time_budget
        self.pool = pool
        self.polish_steps = polish_steps
        self.margin_lp = margin_lp
        self.warm_start = warm_start
        self.last_problem: MilpProblem | None = None

    def tighten(self, network: Network, box: Box, target: int, time_limit: float | None = None,
                k: int = 2) -> Tightened:
        budget = self.lp_time_budget
        if time_limit is not None:
            budget = time_limit / 2 if budget is None else min(budget, time_limit / 2)
        return tighten(network, box.lower, box.upper, self.tightening, target=target, time_budget=budget, k=k)

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None, *, tightened: Tightened | None = None,
               hints: list[np.ndarray] | None = None) -> Verdict:
        """Decide (or, with ``mode="optimize"``, maximise) the k-th largest margin over ``box``.

        ``tightened`` reuses bounds computed earlier for this box and target (the cascade passes its CROWN bounds);
        ``hints`` are inputs of the box known to have large margins (the cascade passes its attack's points).
        """
        check_query(network, box, target, k)
        if mode not in ("decide", "optimize"):
            raise InputError(f"mode must be 'decide' or 'optimize', not {mode!r}")
        start = time.perf_counter()
        prop = TopKProperty(target, k)
        hints = [np.asarray(h, dtype=np.float64) for h in (hints or [])]
        t_start_attack = 0.0
        if self.warm_start and not hints:
            attack = pgd(network, box, prop, restarts=4, steps=20, seed=0)
            t_start_attack = attack.seconds
            if attack.counterexample is not None and mode == "decide":  # optimise mode still wants the maximiser
                cex = attack.counterexample
                return NotRobust(tier="milp", seconds={"milp": time.perf_counter() - start},
                                 stats={"found_by": "warm-start attack", "start_attack_seconds": t_start_attack},
                                 weak_points=weak_points(attack.points, None if mode == "optimize" else 1),
                                 counterexample=cex.x, margin=cex.margin)
            hints = [p.x for p in attack.points[:1]]
        t0 = time.perf_counter()
        if tightened is None or tightened.target != target or tightened.margin_upper is None:
            tightened = self.tighten(network, box, target, time_limit, k)
        t_tight = time.perf_counter() - t0
        if tightened.margin_lower is None or tightened.margin_upper is None:  # tighten(target=...) sets both
            raise ValueError("the tightened bounds carry no margin bounds for the target")
        builder = MilpBuilder(network, tightened.bounds).run()
        L, U = builder.margin_interval(target)
        L = np.maximum(L, tightened.margin_lower)
        U = np.maximum(np.minimum(U, tightened.margin_upper), L)
        margin_lps, t_margin = 0, time.perf_counter()
        if self.margin_lp and tightened.method != "lp":
            classes = np.delete(np.arange(network.num_classes), target)
            if mode == "decide":  # classes that cannot reach -tolerance are dropped anyway
                classes = classes[U[classes] >= -ROBUST_TOLERANCE]
            if classes.size >= k:
                budget = None if self.lp_time_budget is None else time.perf_counter() + self.lp_time_budget
                if time_limit is not None:
                    limit = start + time_limit / 2
                    budget = limit if budget is None else min(budget, limit)
                L, U, margin_lps = lp_margins(builder, target, L, U, classes, budget)
        t_margin = time.perf_counter() - t_margin
        # Decide mode needs only the sign: classes that cannot reach -tolerance are left out of the disjunction.
        obj = builder.add_topk(target, k, L, U, -ROBUST_TOLERANCE if mode == "decide" else None)
        problem = builder.problem(obj.objective_col, {
            "class_binaries": int(obj.class_binaries.size), "classes_pruned": obj.pruned,
            "dropped_upper": obj.dropped_upper, "margin_lower_bound": obj.m_lower,
            "margin_upper_bound": obj.m_upper, "target": int(target), "k": int(k)})
        if self.warm_start:
            # Without a start HiGHS can spend a whole time limit without any feasible point of a big-M model,
            # although every input of the box completes to one: start from the best hint or the box centre.
            candidates = [box.clip(h) for h in hints] + [box.center]
            margins = prop.margin(network.logits(np.stack(candidates)))
            problem.start = builder.assignment(candidates[int(np.argmax(margins))])
        self.last_problem = problem
        t_build = problem.stats["build_seconds"]
        stats = {
            "solver": getattr(self.backend, "name", type(self.backend).__name__), "tightening": tightened.method,
            "tighten_seconds": t_tight, "build_seconds": t_build, "variables": problem.num_cols,
            "binaries": problem.num_binaries, "constraints": problem.num_rows, "nonzeros": problem.nnz,
            "unstable_relus": problem.stats["unstable_relus"], "tightening_stats": dict(tightened.stats),
            "margin_bounds": (problem.stats["margin_lower_bound"], problem.stats["margin_upper_bound"]),
            "margin_lps": margin_lps, "margin_lp_seconds": t_margin, "class_binaries": obj.class_binaries.size,
            "start_attack_seconds": t_start_attack, "warm_start": problem.start is not None,
        }
        m_hi = float(problem.stats["margin_upper_bound"])
        if max(m_hi, obj.dropped_upper) < -ROBUST_TOLERANCE:  # the bounds alone already decide
            stats["solve_seconds"] = 0.0
            return Robust(tier="milp", seconds={"milp": time.perf_counter() - start}, stats=stats,
                          bound=max(m_hi, obj.dropped_upper))
        remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - start), 0.05)
        polished: list[CheckedPoint] = []
        stop = None
        if mode == "decide":
            # Incumbents just below 0 are handed to a short PGD run; a confirmed counterexample ends the solve.
            m_lo = float(problem.stats["margin_lower_bound"])

            def polish_incumbent(v: np.ndarray) -> bool:
                res = pgd(network, box, prop, restarts=1, steps=self.polish_steps, starts=[problem.input_from(v)],
                          step_scale=0.5, include_center=False)
                if res.counterexample is not None:
                    polished.append(res.counterexample)
                    return True
                return False

            stop = StopRule(0.0, -ROBUST_TOLERANCE, on_incumbent=polish_incumbent if self.polish_steps else None,
                            check_from=-0.1 * (m_hi - m_lo))
        result = self.backend.solve(problem, time_limit=remaining, stop=stop,
                                    pool=self.pool if mode == "optimize" else 0)
        dropped = float(problem.stats.get("dropped_upper", float("-inf")))
        if dropped > float("-inf") and result.bound < dropped:
            # the proven bound of the restricted problem covers the kept classes; the dropped ones are capped by
            # their own upper bounds (all below -tolerance)
            result.bound = dropped
        stats["polished_incumbents"] = len(polished)
        stats.update({"solve_seconds": result.seconds, "status": result.status, "objective": result.objective,
                      "bound": result.bound, "nodes": result.nodes, "solver_message": result.message,
                      **{f"solver_{key}": v for key, v in result.stats.items()}})
        return self._verdict(network, box, prop, problem, result, stats, start, mode, polished)

    def _verdict(self, network: Network, box: Box, prop: TopKProperty, problem: MilpProblem, result: SolveResult,
                 stats: dict, start: float, mode: Mode, polished: list[CheckedPoint] | None = None) -> Verdict:
        decision = decide_after_solve(network, box, prop, problem, result, polish_steps=self.polish_steps,
                                      polished=polished)
        if decision.polished:
            stats["polished"] = True
        wps = weak_points(decision.points, None if mode == "optimize" else 1)
        seconds = {"milp": time.perf_counter() - start}
        cex = decision.counterexample
        if cex is not None:
            if decision.conflict:
                stats["conflict"] = "solver bound below zero but a counterexample was confirmed"
            return NotRobust(tier="milp", seconds=seconds, stats=stats, weak_points=wps, counterexample=cex.x,
                             margin=cex.margin)
        if decision.status == "holds":
            return Robust(tier="milp", seconds=seconds, stats=stats, weak_points=wps, bound=float(result.bound))
        return Unknown(tier="milp", seconds=seconds, stats=stats, weak_points=wps, reason=decision.reason)
