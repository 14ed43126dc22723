"""The oracle-guided optimizer (in the manner of Kabaha & Drachsler-Cohen, VMCAI 2023): grow a robust epsilon
vector along the gradient of the relaxed objective ``w . eps - lambda * M(eps)``.

``M(eps)`` is the worst-case top-k margin over the neighborhood (robust iff ``M < 0``); the constraint ``M < 0`` is
moved into the objective with a multiplier ``lambda``. At the current robust vector ``eps*`` the weak points (the
strongest inputs the verifier and a short attack know in its box) give ``M*`` and ``G = dM/d eps``
(:mod:`mlrobust.search.gradients`). One iteration:

1. direction ``d = w - lambda * G`` with ``lambda = theta * (w . G) / (G . G)``: ``theta = 0`` grows along the
   weights only, ``theta = 1`` moves along the boundary's tangent (``G . d = 0``: more size at the same margin),
   ``theta > 1`` also steps back from it. Layers at 0 cannot shrink, saturated layers cannot grow;
2. step length ``t``: where the linear model ``M* + t G . d`` reaches the margin ``safety * M*`` (still negative),
   capped by the trust radius ``eta`` and at least ``delta``;
3. query the candidate. Robust: accept it, double ``eta``, and lower ``theta`` when the trust radius (not the
   margin) limited the step. Refuted or unknown: CEGIS cuts towards ``eps*`` (:mod:`mlrobust.search.cegis`),
   ``theta`` rises, and unless a cut gained at least half a tolerance step (``delta * max(w) / 2``), ``eta``
   halves.

The linear model is corrected by a factor ``kappa`` on the slope, learnt from what each step really did (the
ratio of the observed margin change to the predicted one, geometrically smoothed): the worst-case margin of a ReLU
network is piecewise linear and often flat where a weak point sits on a kink of the top-k objective, or steeper
than its tangent where new pixels come into play.

It stops when ``eta`` falls below the tolerance ``delta``, when no direction is left, or when the budget is spent.
Every accepted vector was proven robust by a query; nothing is accepted on the strength of the linear model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlrobust.search.cegis import cegis
from mlrobust.search.gradients import worst_case_gradient
from mlrobust.search.problem import SearchProblem
from mlrobust.verify.verdict import NotRobust


@dataclass
class OptimizerOptions:
    """Knobs of the optimizer (defaults measured on the shipped models; see docs/design.md, "Search")."""

    delta: float = 0.002
    initial_radius: float | None = None  # None: twice the start's largest epsilon, at least 8 delta
    max_radius: float = 0.5
    theta: float = 0.0  # start by growing along the weights; raised on refutations
    theta_step: float = 0.25
    theta_max: float = 1.5
    safety: float = 0.25  # aim the linear model at a margin of safety * M*
    max_cuts: int = 6
    max_iterations: int = 200
    patience: int | None = None  # stop after this many undecided (Unknown) queries in a row


@dataclass
class OptimizerReport:
    iterations: int = 0
    stop_reason: str = ""
    accepted: int = 0
    refuted_steps: int = 0
    cut_successes: int = 0
    cuts: int = 0
    history: list[dict] = field(default_factory=list)


def shaped_starts(problem: SearchProblem, powers: tuple[float, ...] = (0.25, 0.5),
                  tol: float = 1e-4) -> list[tuple[str, np.ndarray]]:
    """Robust starting vectors along shapes ``eps_d ~ (w_d / G_d)^p`` (``G`` the margin's per-layer gradient at the
    clean image): the linearised problem's solution favours layers that cost little margin per unit of size, and
    the power ``p`` tempers it (``p = 0`` is the uniform vector). Each shape is scaled by bisection to the largest
    proven-robust multiple."""
    from mlrobust.search.baselines import bisect_scale
    from mlrobust.search.gradients import eps_gradient, margin_gradients

    n = problem.num_layers
    _, grads = margin_gradients(problem.network, problem.x0[None], problem.target, problem.k)
    G = eps_gradient(problem.nbhd, problem.box(np.zeros(n)), grads)[0]
    if not np.any(G > 0):
        return []
    g_min = 1e-6 * float(G.max())
    out = []
    for p in powers:
        shape = (problem.weights / np.maximum(G, g_min)) ** p
        shape = shape / shape.max()
        top = float(np.max(problem.saturation / np.maximum(shape, 1e-12)))

        def make(v: float, shape: np.ndarray = shape) -> np.ndarray:
            return problem.clip(np.maximum(v * shape, problem.floor))

        scale = bisect_scale(problem, make, 0.0, top, tol, f"shape p={p:g}")
        out.append((f"shape p={p:g}", make(scale)))
    return out


def _direction(w: np.ndarray, G: np.ndarray, theta: float, eps: np.ndarray, sat: np.ndarray,
               floor: np.ndarray | None = None) -> np.ndarray:
    """``w - lambda * G`` projected onto the feasible moves, scaled to a max-norm of 1 (zeros: no move left).
    Layers at their ``floor`` (default 0) cannot shrink."""
    wn = w / np.max(w)
    gg = float(G @ G)
    d = wn - (theta * float(wn @ G) / gg) * G if gg > 0 else wn.copy()
    d[(eps <= (0.0 if floor is None else floor)) & (d < 0)] = 0.0
    d[(eps >= sat) & (d > 0)] = 0.0
    top = float(np.max(np.abs(d)))
    return d / top if top > 0 else d


def _undecided_run(problem: SearchProblem, since: int) -> int:
    """Unknown verdicts (other than a spent budget) in a row at the end of the query log, from index ``since``."""
    run = 0
    for rec in reversed(problem.records[since:]):
        if rec.status != "unknown" or rec.tier == "budget":
            break
        run += 1
    return run


def optimize(problem: SearchProblem, eps_start: np.ndarray, cw: np.ndarray,
             options: OptimizerOptions | None = None, radius: float | None = None,
             theta: float | None = None, patience: int | None = None) -> tuple[np.ndarray, OptimizerReport]:
    """Grow the robust ``eps_start`` (proven robust by a query before) and return the best robust vector found.

    ``radius`` and ``theta`` override the options' starting trust radius and multiplier scale (a refinement
    phase resumes with small steps along the boundary). ``patience`` stops the run after that many undecided
    queries in a row (an exact verifier that times out again and again is better spent elsewhere)."""
    patience = (options or OptimizerOptions()).patience if patience is None else patience
    first_record = len(problem.records)
    opt = options or OptimizerOptions()
    report = OptimizerReport()
    w, sat = problem.weights, problem.saturation
    eps_star = problem.clip(eps_start)
    problem.improve(eps_star)
    eta = opt.initial_radius if radius is None else radius
    if eta is None:
        eta = max(8 * opt.delta, 2 * float(np.max(eps_star)))
    eta = min(eta, opt.max_radius)
    theta = opt.theta if theta is None else theta
    kappa = 1.0  # correction of the linear model's slope, learnt from the steps

    def learn(kappa: float, predicted: float, observed: float) -> float:
        if predicted <= 1e-12:
            return kappa
        ratio = float(np.clip(max(observed, 0.0) / predicted, 0.02, 50.0))
        return float(np.clip(np.sqrt(kappa * ratio), 0.02, 50.0))

    def state(eps: np.ndarray) -> tuple[float, np.ndarray]:
        points = problem.weak_points(eps)
        m, G = worst_case_gradient(problem.network, problem.nbhd, problem.box(eps), points, problem.target,
                                   problem.k)
        # The margin that matters is the one the verifier can prove: its bound where it gave one (the weak points'
        # margin is only a lower estimate of the worst case, and incomplete tiers need slack beyond it).
        bound = problem.proven_bound(eps)
        return (max(m, bound) if bound is not None else m), G

    # One cheap probe first: if even the full range is robust there is nothing to search (a refutation is
    # usually the attack's, in milliseconds, and its counterexample seeds the cache).
    problem.phase = "search"
    full = problem.clip(sat)
    if problem.size(full) > problem.size(eps_star) and problem.query(full, purpose="full range").is_robust:
        problem.improve(full)
        report.stop_reason = "the full range is robust"
        return full, report
    m_star, G = state(eps_star)
    while True:
        why = problem.exhausted()
        if why:
            report.stop_reason = why
            break
        if eta < opt.delta:
            report.stop_reason = f"converged (step below delta = {opt.delta:g})"
            break
        if report.iterations >= opt.max_iterations:
            report.stop_reason = "iteration limit"
            break
        if patience is not None and _undecided_run(problem, first_record) >= patience:
            report.stop_reason = f"{patience} undecided queries in a row"
            break
        report.iterations += 1
        problem.iteration = report.iterations
        d = _direction(w, G, theta, eps_star, sat, problem.floor)
        if not np.any(d):
            report.stop_reason = "no direction left (every layer at a bound)"
            break
        slope = float(G @ d)
        # the linear model's step to a margin of safety * M* (M* < 0 at a robust vector)
        slope_eff = kappa * slope
        t_margin = (1.0 - opt.safety) * -m_star / slope_eff if slope_eff > 1e-12 and m_star < 0 else np.inf
        t = float(np.clip(t_margin, opt.delta, eta))
        candidate = problem.clip(np.maximum(eps_star + t * d, problem.floor))
        gain = problem.size(candidate) - problem.size(eps_star)
        entry: dict[str, object] = {"iteration": report.iterations, "theta": theta, "eta": eta, "t": t, "margin": m_star,
                 "size": problem.size(eps_star), "kappa": kappa}
        predicted = slope * t
        if gain <= 1e-12:
            # the move only reshapes (or is blocked by saturation): a tangent step with nothing to gain
            eta /= 2
            theta = max(0.0, theta - opt.theta_step)
            entry["outcome"] = "no gain"
            report.history.append(entry)
            continue
        problem.phase = "search"
        verdict = problem.query(candidate, purpose=f"step {report.iterations}")
        moved = verdict.is_robust
        if verdict.is_robust:
            eps_star = candidate
            report.accepted += 1
            problem.improve(eps_star)
            if t >= eta:  # the trust radius, not the margin, limited the step: grow more boldly
                theta = max(0.0, theta - opt.theta_step)
            eta = min(2 * eta, opt.max_radius)
            entry["outcome"] = "robust"
        else:
            report.refuted_steps += 1
            problem.phase = "cegis"
            cut = cegis(problem, candidate, eps_star, cw, delta=opt.delta, max_cuts=opt.max_cuts)
            report.cuts += cut.cuts
            entry["outcome"] = "refuted" if verdict.is_not_robust else "unknown"
            # the margin the verifier can prove reached at least 0 (Unknown), or the counterexample's (refuted)
            reached = float(verdict.margin) if isinstance(verdict, NotRobust) else 0.0
            kappa = max(kappa, learn(kappa, predicted, reached - m_star))
            entry["cuts"] = cut.statuses
            gained = 0.0
            if cut.eps is not None and problem.size(cut.eps) > problem.size(eps_star):
                gained = problem.size(cut.eps) - problem.size(eps_star)
                eps_star = cut.eps
                moved = True
                report.cut_successes += 1
                problem.improve(eps_star)
            if gained < opt.delta * float(np.max(w)) / 2:
                # nothing (worth a query) gained in this direction: a smaller trust radius
                eta /= 2
            # closer to the boundary's tangent: trade size between layers rather than push outwards
            theta = min(opt.theta_max, theta + opt.theta_step)
        report.history.append(entry)
        if moved:
            m_old = m_star
            m_star, G = state(eps_star)
            if entry["outcome"] == "robust":
                kappa = learn(kappa, predicted, m_star - m_old)
    return eps_star, report
