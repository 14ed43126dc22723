"""Two-sided answers per layer: besides the proven ``eps*_d``, an upper bound ``refuted_eps_d`` — the smallest
epsilon of layer ``d`` (the other layers at ``eps*``) at which a confirmed counterexample is known — with that
counterexample. The true boundary of the layer lies in ``[eps*_d, refuted_eps_d]``; a layer whose gap is at most the
tolerance is *certified maximal*.

Upper bounds are read off the stored counterexamples without any solver call: a point lies in the box of ``eps``
iff its per-layer deviation from the image (``SearchProblem.required_eps``) is componentwise ``<= eps``, so a
counterexample whose deviation is within ``eps*`` in every layer but ``d`` refutes layer ``d`` at its own deviation
there. (Soundness makes that deviation exceed ``eps*_d``: otherwise the point would lie in the proven box.)

Where the stored points say nothing, :func:`attack_upper_bounds` looks for new ones, cheaply: stored
counterexamples and weak points clipped into the box that grows layer ``d`` alone (re-checked on the network), then
PGD warm-started from them, with bisection on ``eps_d`` by the attack alone. Every point is confirmed on both
executors before it is stored; the attack never proves anything, it only lowers upper bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mlrobust.search.maximality import LayerMaximality
from mlrobust.search.problem import SearchProblem
from mlrobust.verify.counterexample import CheckedPoint, check_points

#: A stored point counts as inside ``eps*`` in the other layers up to this (absolute) rounding slack; the reported
#: counterexample is then checked to lie in the box of its refuted vector, exactly.
INSIDE_SLACK = 1e-12
#: PGD of the upper-bound search: random restarts beside the warm starts, and steps.
UPPER_RESTARTS = 3
UPPER_STEPS = 30
#: Attack-only bisection steps per layer at most.
UPPER_BISECTIONS = 8


@dataclass
class LayerUpper:
    """The best known refutation of growing one layer: the epsilon of the layer and the stored counterexample."""

    eps: float
    index: int  # into problem.counterexamples


def known_upper_bounds(problem: SearchProblem, eps: np.ndarray) -> list[LayerUpper | None]:
    """Per layer, the smallest ``eps_d`` at which a stored counterexample refutes ``eps`` grown in layer ``d`` alone
    (None where no stored point does). One vectorised pass over all stored counterexamples."""
    n = problem.num_layers
    if not problem.counterexamples:
        return [None] * n
    req = problem.counterexample_required_eps  # (N, n)
    outside = req > eps[None, :] + INSIDE_SLACK
    n_out = outside.sum(axis=1)
    out: list[LayerUpper | None] = []
    for d in range(n):
        # inside eps* in every other layer: no violation, or the only one is in layer d
        ok = (n_out - outside[:, d]) == 0
        if not np.any(ok):
            out.append(None)
            continue
        cand = np.flatnonzero(ok)
        i = int(cand[np.argmin(req[cand, d])])
        out.append(LayerUpper(float(max(req[i, d], eps[d])), i))
    return out


def _refuted_vector(eps: np.ndarray, d: int, value: float) -> np.ndarray:
    trial = eps.copy()
    trial[d] = value
    return trial


def _exact_value(problem: SearchProblem, eps: np.ndarray, d: int, up: LayerUpper) -> float | None:
    """The refuted epsilon of ``up``, nudged up by ulps until the box of the refuted vector contains the point
    exactly (the deviation was computed in floating point); None if it does not."""
    x = problem.counterexamples[up.index].x.reshape(problem.x0.shape)
    value = up.eps
    for _ in range(4):
        if problem.box(_refuted_vector(eps, d, value)).contains(x):
            return value
        value = float(np.nextafter(value, np.inf)) + 1e-15
    return None


def apply_upper_bounds(problem: SearchProblem, eps: np.ndarray, maximality: list[LayerMaximality],
                       delta: float) -> list[LayerMaximality]:
    """Fill every layer's ``refuted_eps`` and counterexample from the stored counterexamples (no solver call);
    a layer whose gap is at most ``delta`` is reported ``refuted`` (certified maximal at resolution ``delta``)."""
    uppers = known_upper_bounds(problem, eps)
    for d, m in enumerate(maximality):
        m.eps = float(eps[d])
        up = uppers[d]
        value = None if up is None else _exact_value(problem, eps, d, up)
        if up is None or value is None:
            if m.status == "refuted" and m.refuted_eps is None and m.tried is not None:
                m.refuted_eps = float(m.tried)  # the certify step's own refutation (point kept on the record)
            continue
        cex = problem.counterexamples[up.index]
        if m.refuted_eps is None or value <= m.refuted_eps:
            m.refuted_eps = value
            # shared with the store (read-only there), not copied: a 200-layer image refutes a hundred layers or
            # more, often with the same few points, and a copy each took 2 MB per layer at 3x300x300
            m.counterexample = cex.x.reshape(problem.x0.shape)
            m.margin = float(cex.margin)
            m.refuted_tier = cex.tier
        if m.status not in ("refuted", "saturated") and m.gap is not None and m.gap <= delta * (1 + 1e-9):
            m.status, m.tier = "refuted", m.refuted_tier or cex.tier
            m.tried = float(min(eps[d] + delta, problem.saturation[d]))
            m.reason = f"a counterexample at eps {value:.4g} in this layer (within delta of eps*)"
    return maximality


def attack_upper_bounds(problem: SearchProblem, eps: np.ndarray, delta: float,
                        deadline: float | None = None, layers: list[int] | None = None) -> dict:
    """Lower every layer's upper bound with the attack alone (see the module doc), until ``deadline`` (seconds
    since the search started). Found counterexamples are stored in ``problem``. Returns statistics."""
    from mlrobust.verify.attack import pgd

    eps = problem.clip(eps)
    sat = problem.saturation
    start = time.perf_counter()
    stats: dict[str, float] = {"attacks": 0, "projected": 0, "found": 0}
    order = list(range(problem.num_layers)) if layers is None else list(layers)

    def over() -> bool:
        # an attempt the measured cost per attack says cannot finish before the deadline is not started: it would
        # run past the time limit (the hard stop would then cut the whole search short)
        return ((deadline is not None and not problem.costs.fits("upper-bound attack", deadline - problem.elapsed()))
                or problem.exhausted() is not None)

    def attempt(d: int, value: float) -> float | None:
        """A confirmed counterexample in the box of ``eps`` grown to ``value`` in layer ``d``: its deviation in
        layer d (stored in the problem), or None."""
        trial = _refuted_vector(eps, d, value)
        box = problem.box(trial)
        starts = problem.warm_starts(box)
        if starts:
            # clipped stored points first: a forward pass, no attack
            stats["projected"] += 1
            hits = [p for p in check_points(problem.network, box, starts, problem.prop) if p.confirmed]
            if hits:
                best = max(hits, key=lambda p: p.margin)
                problem.add_counterexample(best.x, best.margin, trial, "projection")
                stats["found"] += 1
                return float(problem.required_eps(best.x[None])[0, d])
        stats["attacks"] += 1
        result = pgd(problem.network, box, problem.prop, restarts=len(starts) + UPPER_RESTARTS,
                     steps=UPPER_STEPS, starts=starts, seed=int(stats["attacks"]))
        cex = result.counterexample
        if cex is None:
            problem.add_weak_points(trial, [p.weak_point() for p in result.points[:2]])
            return None
        problem.add_counterexample(cex.x, cex.margin, trial, "attack")
        stats["found"] += 1
        return float(problem.required_eps(cex.x[None])[0, d])

    def timed_attempt(d: int, value: float) -> float | None:
        with problem.costs.measure("upper-bound attack"):  # the whole attempt: replayed points, then PGD
            return attempt(d, value)

    def attempt_many(pairs: list[tuple[int, float]]) -> list[float | None]:
        """``attempt`` for every (layer, value) of one round, the PGD runs in the pool's workers: the warm starts
        are taken from the state before the round, the seeds are the order's, and every point a worker found is
        re-checked here before it is stored (as ``attempt`` does, in the same order)."""
        from mlrobust.search.pool import AttackJob, run_attack_job

        assert problem.pool is not None
        plans = []
        for d, value in pairs:
            trial = _refuted_vector(eps, d, value)
            box = problem.box(trial)
            plans.append((d, trial, box, problem.warm_starts(box)))
        hits: dict[int, CheckedPoint] = {}
        jobs: list[AttackJob] = []
        asked: list[int] = []
        left = None if deadline is None else max(deadline - problem.elapsed(), 0.0)
        for j, (d, trial, box, starts) in enumerate(plans):
            if starts:
                stats["projected"] += 1
                confirmed = [p for p in check_points(problem.network, box, starts, problem.prop) if p.confirmed]
                if confirmed:
                    hits[j] = max(confirmed, key=lambda p: p.margin)
                    continue
            stats["attacks"] += 1
            jobs.append(AttackJob(box, problem.target, problem.k, starts, len(starts) + UPPER_RESTARTS, UPPER_STEPS,
                                  seed=int(stats["attacks"]), time_limit=left))
            asked.append(j)
        outcomes = dict(zip(asked, problem.pool.map(run_attack_job, jobs)))
        for outcome in outcomes.values():
            problem.costs.record("upper-bound attack", outcome.seconds)
        found: list[float | None] = []
        for j, (d, trial, box, _) in enumerate(plans):
            point: CheckedPoint | None = hits.get(j)
            tier = "projection"
            out = outcomes.get(j)
            if out is not None and out.counterexample is not None:
                checked = check_points(problem.network, box, [out.counterexample], problem.prop)[0]
                point, tier = (checked, "attack") if checked.confirmed and box.contains(checked.x) else (None, "")
            if point is None:
                if out is not None:
                    problem.add_weak_points(trial, out.points)
                found.append(None)
                continue
            problem.add_counterexample(point.x, point.margin, trial, tier)
            stats["found"] += 1
            found.append(float(problem.required_eps(point.x[None])[0, d]))
        return found

    parallel = problem.pool is not None and problem.pool.parallel
    chunk = 2 * problem.pool.workers if problem.pool is not None else 1  # a round's jobs between deadline checks
    # Breadth first: every layer gets its first upper bound (the whole range) before any layer is bisected, then
    # bisection steps go round the layers, largest gap first, so a short deadline still leaves a bound on most
    # layers. ``lo`` is the largest value at which the attack failed (a hint, not a proof). With a parallel pool a
    # round's attempts run together (each one only ever bounds its own layer, so they do not depend on each other).
    lo = {d: float(eps[d]) for d in order if eps[d] < sat[d]}
    steps = {d: 0 for d in lo}
    if parallel:
        first = [d for d in lo if known_upper_bounds(problem, eps)[d] is None]
        for at in range(0, len(first), chunk):
            if over():
                break
            part = first[at:at + chunk]
            for d, value in zip(part, attempt_many([(d, float(sat[d])) for d in part])):
                if value is None:
                    del lo[d]
        while lo and not over():
            uppers = known_upper_bounds(problem, eps)
            gaps = {d: (u.eps - lo[d]) for d in lo if (u := uppers[d]) is not None}
            open_ = sorted((d for d, g in gaps.items() if g > delta and steps[d] < UPPER_BISECTIONS),
                           key=lambda d: -gaps[d])
            if not open_:
                break
            for at in range(0, len(open_), chunk):
                if over():
                    break
                part = open_[at:at + chunk]
                mids = {d: (lo[d] + uppers[d].eps) / 2 for d in part}  # type: ignore[union-attr]
                for d in part:
                    steps[d] += 1
                for d, value in zip(part, attempt_many([(d, mids[d]) for d in part])):
                    if value is None:
                        lo[d] = mids[d]
    else:
        for d in list(lo):
            if over():
                break
            if known_upper_bounds(problem, eps)[d] is None and timed_attempt(d, float(sat[d])) is None:
                del lo[d]  # not even the full range of the layer breaks: nothing for the attack here
        while lo and not over():
            uppers = known_upper_bounds(problem, eps)
            gaps = {d: (u.eps - lo[d]) for d in lo if (u := uppers[d]) is not None}
            open_ = [d for d, g in gaps.items() if g > delta and steps[d] < UPPER_BISECTIONS]
            if not open_:
                break
            for d in sorted(open_, key=lambda d: -gaps[d]):
                if over():
                    break
                hi = known_upper_bounds(problem, eps)[d]
                if hi is None or hi.eps - lo[d] <= delta:
                    continue
                mid = (lo[d] + hi.eps) / 2
                steps[d] += 1
                if timed_attempt(d, mid) is None:
                    lo[d] = mid
    stats["seconds"] = time.perf_counter() - start
    problem.stats.seconds["upper-bounds"] = problem.stats.seconds.get("upper-bounds", 0.0) + stats["seconds"]
    return stats


def gap_order(eps: np.ndarray, saturation: np.ndarray, maximality: list[LayerMaximality]) -> list[int]:
    """Layers by decreasing gap (a layer without an upper bound counts up to its saturation): where the verifier's
    time buys the most."""
    gaps = [(m.refuted_eps if m.refuted_eps is not None else float(saturation[m.layer])) - float(eps[m.layer])
            for m in maximality]
    return [int(i) for i in np.argsort(-np.asarray(gaps), kind="stable")]
