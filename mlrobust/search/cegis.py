"""CEGIS shrinking with cutting weights: when an expanded vector is refuted, pull it back towards the last robust
vector ``eps*`` by ``eps' = eps * cw + eps* * (1 - cw)``, again and again, until a cut is proven robust.

A cutting weight of 1 keeps a layer's expansion, 0 drops it at once. Every cut is a query, so the counterexamples of
earlier cuts are tried first (the problem's caches): a counterexample that still lies in the smaller box, or that
still violates the property after clipping into it, refutes the cut without a solver call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlrobust.errors import InputError
from mlrobust.search.gradients import layer_saliency
from mlrobust.search.problem import SearchProblem

CUTTINGS = ("fixed", "sensitivity")


def fixed_cutting_weights(num_layers: int) -> np.ndarray:
    """``cw_d = ((r - d) / (r + 1))^5`` for layers ``d = 0..r``: ``((r/(r+1))^5, ((r-1)/(r+1))^5, ..., 0)``.

    Near layers keep most of their expansion, the farthest layer falls back at once (far layers shrink more).
    """
    r = int(num_layers) - 1
    if r < 0:
        raise InputError("a neighborhood needs at least one layer")
    d = np.arange(r + 1, dtype=np.float64)
    return ((r - d) / (r + 1)) ** 5


def sensitivity_cutting_weights(saliency: np.ndarray) -> np.ndarray:
    """Cutting weights from per-layer saliency: ``cw_d = cw_max * s_d / max(s)``, ``cw_max = (r/(r+1))^5``.

    The most sensitive layer keeps as much of its expansion as the nearest layer does under the fixed weights, and
    less sensitive layers shrink more, in proportion. (Capping below 1 keeps every layer shrinking, so repeated cuts
    always converge to ``eps*``.) A saliency of zero everywhere falls back to the fixed weights.
    """
    s = np.asarray(saliency, dtype=np.float64)
    top = float(np.max(s)) if s.size else 0.0
    fixed = fixed_cutting_weights(s.size)
    if not np.isfinite(top) or top <= 0:
        return fixed
    return fixed[0] * np.clip(s / top, 0.0, 1.0)


def cutting_weights(problem: SearchProblem, cutting: str) -> np.ndarray:
    """The cutting weights named ``cutting`` ("fixed" or "sensitivity") for ``problem``."""
    if cutting == "fixed":
        return fixed_cutting_weights(problem.num_layers)
    if cutting == "sensitivity":
        return sensitivity_cutting_weights(layer_saliency(problem.network, problem.nbhd, problem.target, problem.k))
    raise InputError(f"unknown cutting weights {cutting!r}; choose one of {', '.join(CUTTINGS)}")


@dataclass
class CutOutcome:
    """The robust vector a run of cuts reached (None: none within the limits) and the statuses of the cuts."""

    eps: np.ndarray | None
    statuses: list[str] = field(default_factory=list)

    @property
    def cuts(self) -> int:
        return len(self.statuses)


def cegis(problem: SearchProblem, candidate: np.ndarray, eps_star: np.ndarray, cw: np.ndarray, *,
          delta: float, max_cuts: int = 6) -> CutOutcome:
    """Cut the refuted ``candidate`` towards the robust ``eps_star`` until a cut is robust.

    Stops without a result after ``max_cuts`` cuts, when the cut differs from ``eps_star`` by less than ``delta / 2``
    in every layer (nothing worth proving is left), when it would not be larger than ``eps_star``, or when the budget
    is spent.
    """
    eps = problem.clip(candidate)
    eps_star = problem.clip(eps_star)
    outcome = CutOutcome(None)
    for i in range(max_cuts):
        if problem.exhausted():
            break
        eps = problem.clip(eps * cw + eps_star * (1.0 - cw))
        if np.max(np.abs(eps - eps_star)) < delta / 2 or problem.size(eps) <= problem.size(eps_star):
            break
        verdict = problem.query(eps, purpose=f"cut {i + 1}")
        outcome.statuses.append("robust" if verdict.is_robust else "refuted" if verdict.is_not_robust else "unknown")
        if verdict.is_robust:
            outcome.eps = eps
            break
    return outcome
