"""The solver-backend protocol: solve a :class:`~mlrobust.milp.problem.MilpProblem` and say what was proven.

A backend reports an incumbent (a feasible point and its objective) and a *proven* upper bound on the optimum
(the dual bound, for the maximisation every mlrobust MILP is). The verifier trusts only these two numbers and checks
every incumbent on the real network, so a backend needs no other guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from mlrobust.milp.problem import MilpProblem

#: Statuses a backend reports.
OPTIMAL = "optimal"  # the gap is closed: ``bound`` is (up to the solver's tolerance) the optimum
STOPPED = "stopped"  # decide mode stopped early: an incumbent reached ``primal_at_least`` or the bound fell below
TIME_LIMIT = "time_limit"
INFEASIBLE = "infeasible"
ERROR = "error"


@dataclass(frozen=True)
class StopRule:
    """Decide mode: stop once an incumbent has objective ``>= primal_at_least`` or the bound is ``< dual_below``.

    ``on_incumbent`` (optional) is offered every new incumbent whose objective is ``>= check_from`` (column values);
    returning True means the caller turned it into a confirmed answer (e.g. a local search from it crossed the
    boundary) and the solver may stop. Backends without solution callbacks ignore it.
    """

    primal_at_least: float = 0.0
    dual_below: float = -1e-4
    on_incumbent: Callable[[np.ndarray], bool] | None = field(default=None, compare=False)
    check_from: float = float("-inf")
    max_checks: int = 20


@dataclass
class SolveResult:
    """What a backend found. ``bound`` is a proven upper bound on the optimum (``inf`` if none)."""

    status: str
    objective: float | None = None  # best incumbent's objective (None: no feasible point found)
    bound: float = float("inf")
    x: np.ndarray | None = None  # column values of the incumbent
    pool: list[np.ndarray] = field(default_factory=list)  # further solutions (column values), best first
    seconds: float = 0.0
    nodes: int | None = None
    solver: str = ""
    message: str = ""
    stats: dict = field(default_factory=dict)


@runtime_checkable
class SolverBackend(Protocol):
    """A MILP solver mlrobust can use. ``solve`` maximises ``problem``'s objective.

    ``stop`` (decide mode) lets the solver stop as soon as the sign is known; ``pool`` asks for up to that many
    additional good solutions where the solver keeps a pool. Raise :class:`~mlrobust.errors.SolverLimitError` when
    the solver refuses the model (licence size limits).
    """

    name: str

    def available(self) -> bool: ...

    def solve(self, problem: MilpProblem, *, time_limit: float | None = None, stop: StopRule | None = None,
              pool: int = 0) -> SolveResult: ...


def best_first(problem: MilpProblem, solutions: list[np.ndarray], limit: int) -> list[np.ndarray]:
    """Distinct solutions ordered by objective (best first), at most ``limit``."""
    seen: list[np.ndarray] = []
    for v in sorted(solutions, key=lambda s: -problem.objective_value(s)):
        if all(np.max(np.abs(v - w)) > 1e-9 for w in seen):
            seen.append(v)
        if len(seen) >= limit:
            break
    return seen
