"""The two baselines the optimizer is compared with, on the same problem, caches and verifier.

- **uniform**: one epsilon for every layer, by binary search (the classic L-inf robustness radius, restricted to
  the neighborhood's pixels — here: all of them);
- **layer-search**: the naive per-layer search — binary search on ``eps_0`` with the other layers at 0, then on
  ``eps_1`` with ``eps_0`` fixed, and so on outwards.

Unknown counts as not robust (nothing unproven is accepted). Each binary search first tries its upper end (the
layer's saturation): far layers often stay robust at full range, and one query then settles them.
"""

from __future__ import annotations

import math

import numpy as np

from mlrobust.search.costs import bisection_steps
from mlrobust.search.problem import SearchProblem, tier_key

#: A bisection may spend at most this share of the phase's time left; when its plain halving steps (to delta) would
#: cost more at the measured seconds per call, it halves in log scale instead (:func:`geometric_plan`).
BISECTION_SHARE = 0.25
#: Relative resolution at which a bisection in log scale stops (a 3 % step of the radius).
GEOMETRIC_REL = 1 / 32


def geometric_plan(problem: SearchProblem, lo: float, hi: float, delta: float) -> bool:
    """Whether a bisection of ``[lo, hi]`` to ``delta`` should halve in log scale: its plain steps, at the measured
    seconds per query (:func:`query_seconds`, from :mod:`mlrobust.search.costs`), would take more than
    BISECTION_SHARE of the phase's time left. Before that verifier's first call, and without a time limit: no."""
    mean = query_seconds(problem)
    left = problem.remaining()
    if mean is None or left is None:
        return False
    return bisection_steps(hi - lo, delta) * mean > BISECTION_SHARE * max(left, 0.0)


def query_seconds(problem: SearchProblem) -> float | None:
    """The measured seconds of one query that reaches the phase's verifier: its call, plus the search's warm
    attack before it where that runs (None before the verifier's first call)."""
    active = problem.cheap if (problem.use_cheap and problem.cheap is not None) else problem.verifier
    mean = problem.costs.mean(tier_key(active))
    if mean is None:
        return None
    warm = problem.costs.mean("warm-attack") if problem.warm_attack else None
    return mean + (warm or 0.0)


def bisect_scale(problem: SearchProblem, make, lo: float, hi: float, delta: float, purpose: str) -> float:
    """Largest ``v`` in [lo, hi] (to ``delta``) with ``make(v)`` proven robust; ``make(lo)`` must be robust.

    Plain halving where the calls are cheap enough; where they are not (:func:`geometric_plan`, decided from the
    measured costs once the top end is asked) the midpoint is geometric and the search stops at GEOMETRIC_REL relative
    resolution: a radius of unknown magnitude takes about half the calls to find within a few percent."""
    if hi <= lo:
        return lo
    verdict = problem.query(make(hi), purpose=f"{purpose} at {hi:.4g}")
    if verdict.is_robust:
        problem.improve(make(hi))
        return hi
    # planned once, after the top end measured the verifier: a plan changed halfway wastes the steps of both
    geometric = geometric_plan(problem, lo, hi, delta)
    while hi - lo > delta and not problem.exhausted():
        base = max(lo, delta)
        if geometric and lo > 0 and hi <= lo * (1 + GEOMETRIC_REL):
            break
        mid = math.sqrt(base * hi) if geometric and hi > base else (lo + hi) / 2
        problem.iteration += 1
        verdict = problem.query(make(mid), purpose=f"{purpose} at {mid:.4g}")
        if verdict.is_robust:
            lo = mid
            problem.improve(make(mid))
        elif verdict.tier == "budget":
            break  # no tier can answer in the time left: halving further would only count unasked queries
        else:
            hi = mid
    return lo


def uniform_search(problem: SearchProblem, delta: float, lo: float = 0.0, hi: float | None = None) -> np.ndarray:
    """The largest single epsilon (to ``delta``) proven robust for all layers at once; ``lo`` is a value already
    known to be robust (the search continues above it), ``hi`` an upper end to search below (default: saturation)."""
    problem.phase = "search"
    n = problem.num_layers
    top = float(np.max(problem.saturation)) if hi is None else min(float(hi), float(np.max(problem.saturation)))
    best = bisect_scale(problem, lambda v: problem.clip(np.full(n, v)), float(lo), top, delta, "uniform")
    return problem.clip(np.full(n, best))


def floored_uniform(problem: SearchProblem, delta: float) -> np.ndarray:
    """The largest ``max(v, floor)`` vector (one ``v`` for every layer, none below the problem's floor) proven
    robust, to ``delta``; the floor itself must be known robust."""
    n = problem.num_layers
    top = float(np.max(problem.saturation))

    def make(v: float) -> np.ndarray:
        return problem.clip(np.maximum(np.full(n, v), problem.floor))

    return make(bisect_scale(problem, make, 0.0, top, delta, "uniform above the object's floor"))


def layer_search(problem: SearchProblem, delta: float) -> np.ndarray:
    """Per-layer binary searches from the object outwards, each with the earlier layers fixed."""
    problem.phase = "search"
    eps = np.zeros(problem.num_layers)
    for d in range(problem.num_layers):
        if problem.exhausted():
            break

        def make(v: float, d: int = d) -> np.ndarray:
            trial = eps.copy()
            trial[d] = v
            return problem.clip(trial)

        eps[d] = bisect_scale(problem, make, 0.0, float(problem.saturation[d]), delta, f"layer {d}")
    return problem.clip(eps)
