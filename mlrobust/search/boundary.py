"""Push a proven vector to the boundary, one layer at a time: bisect every layer's epsilon between what is proven
(``eps*_d``) and what is refuted (``refuted_eps_d``, a confirmed counterexample with the other layers at ``eps*``),
the other layers staying where they are.

Why it is sound and why it converges:

- every accepted value is proven by a query of the whole vector (a sound verifier tier); the vector only grows;
- a refutation of ``eps* + t e_d`` stays a refutation while the other layers grow: the box only gets larger, so the
  counterexample stays inside it. A layer pushed to within ``delta`` of a confirmed counterexample is therefore
  *certified maximal* at resolution ``delta`` for the final vector too, whatever the later layers did.

``delta`` is an absolute resolution in epsilon (the same unit as the epsilons, the [0, 1] pixel range), one number
for every layer: "certified" says that ``eps*_d + delta`` is refuted, with the other layers at their final value.
By default it is an eighth of the uniform robust radius (:func:`mlrobust.search.run.auto_delta`), so it scales with
the network's robustness, not with each layer's own ``eps*_d`` — a relative resolution would call a layer with a
tiny ``eps*_d`` certified while its absolute gap is large, and demand needless precision from a large one.

Verifier tiers are tried cheapest first (e.g. the bound tier, then branch and bound with a short limit, then the
MILP): each tier gallops up from ``eps*_d`` (steps of ``delta``, doubling after each proof, then bisection below
the first value it could not prove) until it can no longer prove a step of ``delta`` (its own *frontier*); then the
next tier takes the layer over from there. The search's warm attack (PGD from the last
counterexamples and weak points, :class:`~mlrobust.search.problem.SearchProblem`) runs before every verifier call,
so refutations move ``refuted_eps`` down as the proofs move ``eps*`` up. Layers are scheduled cheapest tier first,
the object first among equals, then at the bound tier by the smallest open interval (the layers closest to settled
get the verifier's time first: the widest intervals rarely close within a budget) and at a costlier tier by the
margin bound the bound tier left at the layer's last undecided value (the smallest gap to close first: most branch
and bound or MILP queries near the boundary end undecided, so they go where a proof is likeliest).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mlrobust.search.intervals import known_upper_bounds
from mlrobust.search.maximality import LayerMaximality
from mlrobust.search.problem import SearchProblem
from mlrobust.verify.base import Verifier
from mlrobust.verify.verdict import Verdict

#: Relative slack on delta comparisons (a gap of exactly delta, up to rounding, counts as within delta).
REL = 1e-9
#: The push's stop reason with ``stop_before``: every open layer waits for the tier kept for the whole vector.
CHEAP_TIERS_EXHAUSTED = "cheap tiers exhausted"
#: A costly tier (branch and bound, the MILP) that has left this many layers in a row without a single proof is
#: not asked about the remaining layers: on the shipped models it decided 0 of 43 layers in two minutes, at seconds
#: per undecided query. Its time goes to the next tier, the whole-vector scale step or the final upper bounds.
GIVE_UP_AFTER = 3
#: The bound tier's next step is aimed at this share of the predicted distance to where its margin bound crosses 0
#: (a secant through the proven bound at eps and the bound left at the last undecided value): a little short of
#: it, so that the step is proven rather than left undecided again.
SECANT_SHARE = 0.9


@dataclass
class Tier:
    """One verifier of the push: its name, the verifier (None: the problem's own) and its per-query time limit."""

    name: str
    verifier: Verifier | None
    time_limit: float | None


@dataclass
class PushReport:
    """What the push did: queries by tier and outcome, layers it settled, why it stopped."""

    queries: Counter = field(default_factory=Counter)
    proven: int = 0
    refuted: int = 0
    undecided: int = 0
    escalations: int = 0
    stop_reason: str = ""
    predicted_out_of_reach: int = 0  # bound-tier questions not asked: the secant put a delta step out of its reach
    skipped_tiers: list[str] = field(default_factory=list)  # costly tiers given up on (see GIVE_UP_AFTER)
    skipped_layers: int = 0  # layers passed over by a skipped tier

    def to_dict(self) -> dict:
        return {"queries": dict(self.queries), "proven": self.proven, "refuted": self.refuted,
                "undecided": self.undecided, "escalations": self.escalations, "stop_reason": self.stop_reason,
                "predicted_out_of_reach": self.predicted_out_of_reach, "skipped_tiers": list(self.skipped_tiers),
                "skipped_layers": self.skipped_layers}


@dataclass
class _Layer:
    """The push's state of one layer: the tier it is at and that tier's frontier (the smallest value the tier
    left undecided; None: none yet)."""

    level: int = 0
    frontier: float | None = None
    step: float = 0.0  # the next step above eps*_d (galloping: doubles after every proof at this tier)
    queries: int = 0
    stuck: bool = False
    undecided_at: float | None = None  # the last value a tier left undecided, and that tier
    undecided_tier: str = ""
    margin: float | None = None  # the bound tier's upper bound on the k-th largest margin at that value
    proofs_here: int = 0  # steps proven at the current tier
    skipped: bool = False  # passed over by a tier given up on (a costly tier that proved nothing)


def push_to_boundary(problem: SearchProblem, eps: np.ndarray, delta: float, tiers: list[Tier],
                     deadline: float | None = None, layers: list[int] | None = None,
                     on_improve: Callable[[np.ndarray], None] | None = None, stop_before: int | None = None,
                     give_up_after: int | None = GIVE_UP_AFTER) -> tuple[np.ndarray, list[LayerMaximality], PushReport]:
    """Push the proven ``eps`` to the boundary (see the module doc) until every layer is settled, ``deadline``
    (seconds since the search started) or the budget. Returns the grown vector (always proven), the per-layer
    statuses (``refuted_eps`` is filled afterwards from the stored counterexamples by
    :func:`~mlrobust.search.intervals.apply_upper_bounds`) and a report. ``on_improve`` sees every accepted vector
    (an interruption then still holds the latest one). ``stop_before``: stop (CHEAP_TIERS_EXHAUSTED) once
    every open layer waits for tier ``stop_before`` or a later one — for a caller that spends that tier's time on
    the whole vector instead (:func:`scale_to_boundary`). ``give_up_after``: a tier after the first that leaves that
    many layers without a single proof is not asked about the others (None: always asked); the bound tier's steps
    aim where the secant of its margin bounds predicts a proof (:func:`secant_reach`), and a layer whose predicted
    reach is below a delta step goes to the next tier without a query."""
    if not tiers:
        raise ValueError("push_to_boundary needs at least one verifier tier")
    eps = problem.clip(eps).copy()
    sat = problem.saturation
    n = problem.num_layers
    report = PushReport()
    todo = list(range(n)) if layers is None else list(layers)
    state = {d: _Layer(step=delta) for d in todo}
    tol = delta * (1 + REL)
    problem.phase = "boundary"
    # what the push learns about its tiers: the bound tier's proven margin bound at the current eps (for the secant
    # step), and per costly tier the layers it left without a proof (for giving the tier up)
    base_bound = problem.proven_bound(eps)
    failures = [0] * len(tiers)
    proofs = [0] * len(tiers)
    given_up: set[int] = set()

    def left_without_proof(s: _Layer) -> None:
        """A layer leaves its tier (to the next, or stuck at the last): count it against a costly tier that proved
        nothing there, and give that tier up after ``give_up_after`` such layers."""
        if s.level >= 1 and s.proofs_here == 0:
            failures[s.level] += 1
            if (give_up_after is not None and proofs[s.level] == 0 and failures[s.level] >= give_up_after
                    and s.level not in given_up):
                given_up.add(s.level)
                report.skipped_tiers.append(tiers[s.level].name)

    def escalate(s: _Layer) -> None:
        left_without_proof(s)
        s.level, s.frontier, s.step, s.proofs_here = s.level + 1, None, delta, 0
        report.escalations += 1

    def top(d: int, up: float | None) -> float:
        t = float(sat[d]) if up is None else float(up)
        f = state[d].frontier
        return t if f is None else min(t, f)

    def is_open(d: int, up: float | None) -> bool:
        s = state[d]
        if s.stuck or eps[d] >= sat[d]:
            return False
        if up is not None and up - eps[d] <= tol:
            return False  # certified: a confirmed counterexample within delta
        return top(d, up) - eps[d] > tol or s.level + 1 < len(tiers)

    while True:
        spent = _spent(problem, deadline, "the push's deadline")
        if spent:
            report.stop_reason = spent
            break
        uppers = known_upper_bounds(problem, eps)
        cands = []
        for d in todo:
            known = uppers[d]
            up = None if known is None else known.eps
            if is_open(d, up):
                # cheapest tier first, then the object; at the bound tier the layer closest to settled (fewest
                # bisection steps left: the verifier's time goes where it buys certified layers first), at a
                # costlier tier the layer whose last undecided query had the smallest margin bound (the gap the
                # tier must close there: the likeliest proof for seconds of branch and bound or MILP)
                s = state[d]
                closeness = 0.0 if s.level == 0 else (np.inf if s.margin is None else s.margin)
                cands.append((s.level, d != 0, closeness, top(d, up) - eps[d], d, up))
        if not cands:
            report.stop_reason = "every layer settled"
            break
        level, _, _, _, d, up = min(cands)
        if stop_before is not None and level >= stop_before:
            report.stop_reason = CHEAP_TIERS_EXHAUSTED
            break
        s = state[d]
        hi = top(d, up)
        if level in given_up:
            # a costly tier that left GIVE_UP_AFTER layers in a row without a proof: not asked again
            report.skipped_layers += 1
            s.skipped = True
            if level + 1 >= len(tiers):
                s.stuck = True
            else:
                s.level, s.frontier, s.step, s.proofs_here = s.level + 1, None, delta, 0
            continue
        if hi - eps[d] <= tol:
            # this tier cannot prove a delta step above eps*_d: the next tier takes the layer over
            escalate(s)
            continue
        reach = (secant_reach(float(eps[d]), s.undecided_at, s.margin, base_bound)
                 if level == 0 and len(tiers) > 1 and s.undecided_tier == tiers[0].name else None)
        if reach is not None and reach - eps[d] <= tol:
            # the bound's own trend says it cannot prove even a delta step here: the next tier, without asking
            report.predicted_out_of_reach += 1
            escalate(s)
            continue
        if up is None and s.frontier is None and s.queries == 0 and s.level == 0:
            mid = float(sat[d])  # no refutation known: the whole range first (far layers often stay robust)
        elif reach is not None:
            # a little short of where the bound is predicted to cross 0 (never below a delta step)
            mid = float(min(eps[d] + max(delta, SECANT_SHARE * (reach - eps[d])), hi))
        else:
            # gallop up from eps*_d (delta, 2 delta, 4 delta, ...), never past the middle of the interval: the
            # first step tells at once whether this tier can move the layer at all
            mid = float(min(eps[d] + min(s.step, max(delta, (hi - eps[d]) / 2)), hi))
        trial = eps.copy()
        trial[d] = mid
        tier = tiers[level]
        problem.iteration = d
        s.queries += 1
        verdict = problem.query(trial, purpose=f"boundary of layer {d} ({tier.name})", verifier=tier.verifier,
                                time_limit=tier.time_limit)
        report.queries[f"{tier.name}:{_outcome(verdict)}"] += 1
        if verdict.is_robust:
            eps = problem.clip(trial)
            s.step *= 2
            s.proofs_here += 1
            proofs[level] += 1
            report.proven += 1
            # the proven bound at the new eps (the bound tier's; another tier's proof leaves it unknown)
            base_bound = _margin_bound(verdict, None) if level == 0 else None
            problem.improve(eps)
            if on_improve is not None:
                on_improve(eps.copy())
        elif verdict.is_not_robust:
            report.refuted += 1  # the query stored the (confirmed) counterexample: the upper bound moves down
        elif verdict.tier == "budget":
            report.stop_reason = getattr(verdict, "reason", "budget")
            break
        else:
            report.undecided += 1
            s.frontier, s.undecided_at, s.undecided_tier = mid, mid, tier.name
            s.margin = _margin_bound(verdict, s.margin)
            s.step = delta
            if mid - eps[d] <= tol and s.level + 1 >= len(tiers):
                s.stuck = True
                left_without_proof(s)
    return eps, _statuses(problem, eps, delta, state, tiers, report.stop_reason), report


def secant_reach(eps_d: float, undecided_at: float | None, margin_there: float | None,
                 margin_here: float | None) -> float | None:
    """Where the bound tier's margin bound is predicted to cross 0 on layer ``d``: the secant through the proven
    bound ``margin_here`` (< 0) at ``eps_d`` and the bound ``margin_there`` (> 0) left at ``undecided_at``. None when
    either is unknown. The bound grows faster than linearly in epsilon (more ReLUs become unstable), so the secant
    tends to fall short of the true crossing: a step aimed there is usually proven."""
    if undecided_at is None or margin_there is None or margin_here is None:
        return None
    if not (margin_here < 0 < margin_there) or undecided_at <= eps_d:
        return None
    return eps_d + (undecided_at - eps_d) * (-margin_here) / (margin_there - margin_here)


@dataclass
class ScaleReport:
    """What the final scale step did: the factor it proved over the push's vector, its queries, why it stopped."""

    scale: float = 1.0
    queries: Counter = field(default_factory=Counter)
    stop_reason: str = ""

    def to_dict(self) -> dict:
        return {"scale": self.scale, "queries": dict(self.queries), "stop_reason": self.stop_reason}


def scale_to_boundary(problem: SearchProblem, eps: np.ndarray, tier: Tier, deadline: float | None = None,
                      first_step: float = 0.02, min_step: float = 0.005,
                      on_improve: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray, ScaleReport]:
    """Grow the whole proven vector by a common factor with ``tier`` (the complete verifier), galloping: ``s`` is
    multiplied by ``1 + step`` (``step`` doubling after each proof, halving after each failure, down to
    ``min_step``) until ``deadline`` (seconds since the search started).

    Why: the cheaper tiers stop where their relaxation does, and a single layer's step there buys little (each
    layer's own boundary lies far above, with the others fixed); the MILP proves the whole vector a few percent
    larger where no bound does, which is exactly the direction in which the vector sits inside the boundary (the
    attack scale). Never past a known refutation: a layer refuted at ``r_d`` caps ``s`` below ``r_d / eps_d``."""
    eps = problem.clip(eps).copy()
    report = ScaleReport()
    uppers = known_upper_bounds(problem, eps)
    cap = float("inf")
    for d, up in enumerate(uppers):
        if up is not None and eps[d] > 0:
            cap = min(cap, float(up.eps / eps[d]))
    step = float(first_step)
    problem.phase = "boundary"
    while True:
        spent = _spent(problem, deadline, "time limit")
        if spent:
            report.stop_reason = spent
            break
        if step < min_step:
            report.stop_reason = f"step below {min_step:g}"
            break
        factor = 1.0 + step
        if report.scale * factor >= cap:
            step /= 2
            continue
        trial = problem.clip(eps * factor)
        if np.array_equal(trial, eps):
            report.stop_reason = "every layer saturated"
            break
        limit = tier.time_limit
        if deadline is not None:
            left = deadline - problem.elapsed()
            limit = left if limit is None else min(limit, left)
        verdict = problem.query(trial, purpose=f"scale x{report.scale * factor:.4g} ({tier.name})",
                                verifier=tier.verifier, time_limit=limit)
        report.queries[_outcome(verdict)] += 1
        if verdict.is_robust:
            eps, report.scale, step = trial, report.scale * factor, step * 2
            problem.improve(eps)
            if on_improve is not None:
                on_improve(eps.copy())
        elif verdict.tier == "budget":
            report.stop_reason = getattr(verdict, "reason", "budget")
            break
        else:
            if verdict.is_not_robust:
                cap = min(cap, report.scale * factor)
            step /= 2
    return eps, report


def rescaled_statuses(maximality: list[LayerMaximality], eps: np.ndarray) -> list[LayerMaximality]:
    """The push's per-layer statuses after the vector grew: a status about a value the layer has passed (an
    undecided ``tried`` now at or below ``eps_d``) no longer says anything and becomes ``unchecked``; refutations
    stay valid (the box only grew) and are filled in again by apply_upper_bounds."""
    out = []
    for m in maximality:
        e = float(eps[m.layer])
        if m.status == "unknown" and (m.tried is None or m.tried <= e):
            out.append(LayerMaximality(m.layer, "unchecked", e, reason="grown past the push's last undecided "
                                                                         "value by the final scale step"))
        else:
            m.eps = e
            out.append(m)
    return out


def _spent(problem: SearchProblem, deadline: float | None, past_deadline: str) -> str | None:
    """Why a loop of queries must stop now (the search's budget, or ``past_deadline`` once ``deadline``, in seconds
    since the search started, has passed), or None."""
    why = problem.exhausted()
    if why:
        return why
    if deadline is not None and problem.elapsed() >= deadline:
        return past_deadline
    return None


def _margin_bound(verdict: Verdict, previous: float | None) -> float | None:
    """The proven upper bound on the k-th largest margin an undecided verdict's bound tier reported (``previous``
    where it reported none)."""
    value = verdict.stats.get("bounds", {}).get("margin_upper")
    return previous if value is None or not np.isfinite(value) else float(value)


def _outcome(verdict: Verdict) -> str:
    return "robust" if verdict.is_robust else ("not_robust" if verdict.is_not_robust else "unknown")


def _statuses(problem: SearchProblem, eps: np.ndarray, delta: float, state: dict[int, _Layer], tiers: list[Tier],
              why: str) -> list[LayerMaximality]:
    """Per layer after the push: saturated, within delta of a refutation (reported ``refuted`` by
    apply_upper_bounds from the stored counterexample), undecided by the strongest tier, or not reached."""
    sat = problem.saturation
    uppers = known_upper_bounds(problem, eps)
    out = []
    for d in range(problem.num_layers):
        s = state.get(d)
        up = uppers[d]
        if eps[d] >= sat[d]:
            out.append(LayerMaximality(d, "saturated", float(eps[d]), reason="the layer spans all of [0, 1]"))
        elif up is not None and up.eps - eps[d] <= delta * (1 + REL):
            out.append(LayerMaximality(d, "unchecked", float(eps[d]), reason="within delta of a counterexample"))
        elif s is not None and s.skipped and s.undecided_at is not None:
            out.append(LayerMaximality(d, "unknown", float(eps[d]), s.undecided_at, s.undecided_tier,
                                       open_by=s.margin,
                                       reason="not asked of the costlier tiers: they proved nothing on the "
                                              f"first {GIVE_UP_AFTER} layers they were given"))
        elif s is not None and (s.stuck or (s.level == len(tiers) - 1 and s.frontier is not None
                                             and s.frontier - eps[d] <= delta * (1 + REL))):
            out.append(LayerMaximality(d, "unknown", float(eps[d]), s.frontier, tiers[-1].name, open_by=s.margin,
                                       reason=f"the strongest tier ({tiers[-1].name}) left eps + delta undecided"))
        elif s is not None and s.undecided_at is not None:
            out.append(LayerMaximality(d, "unknown", float(eps[d]), s.undecided_at, s.undecided_tier,
                                       open_by=s.margin, reason=f"undecided by the {s.undecided_tier} tier; the push stopped ({why}) "
                                              "before a stronger tier settled it"))
        else:
            out.append(LayerMaximality(d, "unchecked", float(eps[d]),
                                       reason=f"the push stopped ({why}) before settling this layer"))
    return out
