"""The decision pipeline shared by the top-k verifiers (``verify``) and VNN-LIB (``vnnlib``).

Two steps that must not drift apart between the two faces of the tool:

- the attack tier: one set of PGD settings (a :class:`~mlrobust.verify.attack.PgdAttack`, whose defaults the
  cascade uses too), run on any output property;
- the verdict after a MILP solve: every solver point re-checked on the network, a point the MILP calls violating
  but the network does not polished by a short PGD run from it, then *violated* only for a confirmed point,
  *holds* only for a proven bound below ``-ROBUST_TOLERANCE``, *timeout* or *unknown* otherwise.

Callers turn a :class:`Decision` into their own vocabulary (NotRobust / Robust / Unknown, or sat / unsat /
timeout / unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlrobust.backends.base import INFEASIBLE, OPTIMAL, STOPPED, TIME_LIMIT, SolveResult
from mlrobust.ir.graph import Network
from mlrobust.milp.problem import MilpProblem
from mlrobust.verify.attack import AttackResult, PgdAttack, pgd
from mlrobust.verify.counterexample import CheckedPoint, OutputProperty, check_points
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE

DecisionStatus = Literal["violated", "holds", "timeout", "unknown"]


def run_attack(network: Network, box: Box, prop: OutputProperty, attack: PgdAttack | None = None,
               time_limit: float | None = None) -> AttackResult:
    """The attack tier on any output property, with the settings of ``attack`` (default: ``PgdAttack()``, the
    cascade's own)."""
    settings = attack or PgdAttack()
    return pgd(network, box, prop, restarts=settings.restarts, steps=settings.steps, seed=settings.seed,
               time_limit=time_limit, diversify=settings.diversify)


@dataclass
class Decision:
    """What a MILP solve decided about a property over a box."""

    status: DecisionStatus
    counterexample: CheckedPoint | None = None
    points: list[CheckedPoint] = field(default_factory=list)
    reason: str = ""
    polished: bool = False  # the solver's point was polished by PGD
    conflict: bool = False  # a counterexample although the solver proved a bound below zero


def decide_after_solve(network: Network, box: Box, prop: OutputProperty, problem: MilpProblem,
                       result: SolveResult, *, polish_steps: int = 20,
                       polished: list[CheckedPoint] | None = None) -> Decision:
    """The decision from a solver's answer: its points (and ``polished`` ones found during the solve) checked on
    the network, a short PGD polish when the MILP's optimum violates the property but its point does not."""
    solutions = ([result.x] if result.x is not None else []) + list(result.pool)
    points: list[CheckedPoint] = check_points(network, box, [problem.input_from(v) for v in solutions], prop)
    points += polished or []
    cex = max((p for p in points if p.confirmed), key=lambda p: p.margin, default=None)
    was_polished = False
    if cex is None and result.objective is not None and result.objective >= 0 and points:
        # The solver's point violates the property in the MILP but not (yet) on the real network: a few PGD
        # steps from it usually cross the boundary the solver reached within its tolerances.
        polish = pgd(network, box, prop, restarts=1, steps=max(polish_steps, 1), starts=[points[0].x],
                     step_scale=0.5, include_center=False)
        points.extend(polish.points)
        cex = polish.counterexample
        was_polished = True
    if cex is not None:
        return Decision("violated", cex, points, polished=was_polished,
                        conflict=bool(result.bound < -ROBUST_TOLERANCE))
    if result.status in (OPTIMAL, STOPPED, TIME_LIMIT) and result.bound < -ROBUST_TOLERANCE:
        return Decision("holds", None, points, polished=was_polished)
    if result.status == TIME_LIMIT:
        reason = f"time limit reached (best margin found {result.objective}, bound {result.bound:.4g})"
        return Decision("timeout", None, points, reason, was_polished)
    if result.status == INFEASIBLE:
        reason = "solver reported the MILP infeasible (numerical trouble: the box is never empty)"
    elif result.status in (OPTIMAL, STOPPED):
        reason = (f"optimum {result.objective} lies within the tolerance band [-{ROBUST_TOLERANCE}, 0) "
                  f"or its point was not confirmed on the network")
    else:
        reason = f"solver {result.solver or 'backend'} failed: {result.message}"
    return Decision("unknown", None, points, reason, was_polished)
