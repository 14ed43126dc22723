"""One search from start to result: prove the clean image, run the chosen method, certify maximality per layer,
and collect the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from mlrobust.errors import InputError
from mlrobust.search.baselines import layer_search, uniform_search
from mlrobust.search.cegis import CUTTINGS, cutting_weights
from mlrobust.search.maximality import LayerMaximality, certify
from mlrobust.search.optimizer import OptimizerOptions, optimize, shaped_starts
from mlrobust.search.problem import SearchProblem, status_of
from mlrobust.search.result import SearchResult
from mlrobust.verify.margin import topk_labels

METHODS = ("optimize", "layer-search", "uniform")
INITS = ("best", "uniform", "zero")
#: The automatic tolerance: an eighth of the uniform robust radius (found by bisection to AUTO_PROBE_TOL on the
#: cheap tiers), kept within [AUTO_DELTA_MIN, AUTO_DELTA_MAX].
AUTO_PROBE_TOL = 1e-4
AUTO_DELTA_MIN = 1e-4
AUTO_DELTA_MAX = 1e-2
AUTO_DELTA_FRACTION = 1 / 8


def auto_delta(uniform_radius: float) -> float:
    """The tolerance for a neighborhood whose uniform robust radius is ``uniform_radius``: resolution relative to
    the scale of the answer (a fixed delta is far too coarse for a fragile network and too fine for a robust one)."""
    return float(np.clip(AUTO_DELTA_FRACTION * uniform_radius, AUTO_DELTA_MIN, AUTO_DELTA_MAX))


@dataclass
class SearchOptions:
    """How to search.

    ``grow`` (let layers that can still grow do so during the maximality check) defaults to on for the optimizer and
    off for the baselines, whose results are reported as they are. With a cascade verifier the optimizer first
    ``explore``s on its cheap tiers (attack and bounds) until ``explore_share`` of the time limit, checks maximality
    on them, then ``refine``s with the full verifier until ``refine_share``; the rest of the time goes to the
    maximality check with the full verifier (the baselines search until ``refine_share``)."""

    method: str = "optimize"
    cutting: str = "fixed"
    delta: float | None = None  # None: automatic (see auto_delta)
    certify: bool = True
    grow: bool | None = None
    init: str = "best"  # start from the best of the uniform and the shaped probes (see optimizer.shaped_starts)
    explore: bool = True
    refine: bool = True
    explore_share: float = 0.4
    refine_patience: int | None = 2
    refine_share: float = 0.7
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown search method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.cutting not in CUTTINGS:
            raise InputError(f"unknown cutting weights {self.cutting!r}; choose one of {', '.join(CUTTINGS)}")
        if self.init not in INITS:
            raise InputError(f"unknown initialisation {self.init!r}; choose one of {', '.join(INITS)}")
        if self.delta is not None and not (np.isfinite(self.delta) and 0 < self.delta <= 1):
            raise InputError(f"the tolerance delta must be in (0, 1] (or automatic), got {self.delta!r}")
        if not 0 < self.explore_share <= self.refine_share <= 1:
            raise InputError("time shares must satisfy 0 < explore_share <= refine_share <= 1, got "
                             f"{self.explore_share} and {self.refine_share}")


def _proof_tier(problem: SearchProblem, eps: np.ndarray) -> str:
    """The tier of the verifier query whose robust box contains that of ``eps`` (the proof of the result)."""
    for rec in reversed(problem.records):
        if rec.verdict.is_robust and rec.tier != "cache" and np.all(eps <= rec.eps):
            return rec.tier
    return "cache"


def run_search(problem: SearchProblem, options: SearchOptions | None = None) -> SearchResult:
    """Search ``problem`` and return the result (epsilons proven robust, maximality per layer, statistics)."""
    opt = options or SearchOptions()
    n = problem.num_layers
    t0 = time.perf_counter()
    problem.phase = "start"
    problem.notify("phase", "proving the clean image")
    clean = problem.query(np.zeros(n), purpose="clean image")
    logits = problem.network.logits(problem.x0[None])
    clean_margin = float(problem.prop.margin(logits)[0])
    clean_topk = topk_labels(logits, problem.k)[0]
    if clean.is_not_robust:
        raise InputError(f"label {problem.target} is not among the top-{problem.k} labels on the clean image; "
                         f"the network predicts {clean_topk}")
    eps = np.zeros(n)
    details: dict = {}
    iterations = 0
    stop_reason = ""
    grow = (opt.method == "optimize") if opt.grow is None else opt.grow
    limit = problem.budget.time_limit

    def deadline(share: float) -> float | None:
        return None if limit is None else share * limit

    cheap = opt.explore and problem.cheap is not None
    search_end = deadline(opt.refine_share) if opt.certify else None
    maximality: list[LayerMaximality] | None = None
    delta = opt.delta if opt.delta is not None else AUTO_DELTA_MAX
    if not clean.is_robust:
        stop_reason = f"the clean image itself is not proven ({getattr(clean, 'reason', '')})"
    else:
        # The uniform radius on the cheap tiers: the optimizer's start, and the scale of the automatic tolerance.
        probe = np.zeros(n)
        if opt.delta is None or (opt.method == "optimize" and opt.init != "zero"):
            problem.use_cheap = cheap
            problem.deadline = deadline(opt.explore_share) if cheap else search_end
            probe = uniform_search(problem, AUTO_PROBE_TOL if opt.delta is None else opt.delta)
            problem.use_cheap = False
            if opt.delta is None:
                delta = auto_delta(float(np.max(probe)))
                details["delta_auto"] = {"uniform_radius": float(np.max(probe)), "delta": delta}
        optimizer = replace(opt.optimizer, delta=delta)
        if opt.method == "optimize":
            cw = cutting_weights(problem, opt.cutting)
            details["cutting_weights"] = cw
            phases = []
            problem.use_cheap = cheap
            problem.deadline = deadline(opt.explore_share) if cheap else search_end
            start = probe if opt.init != "zero" else np.zeros(n)
            if opt.init == "best":
                candidates = [("uniform", probe)] + shaped_starts(problem, tol=min(AUTO_PROBE_TOL, delta))
                details["starts"] = {name: problem.size(e) for name, e in candidates}
                name, start = max(candidates, key=lambda c: problem.size(c[1]))
                details["start"] = name
            eps, report = optimize(problem, start, cw, optimizer)
            phases.append(("explore" if cheap else "optimize", report))
            if cheap:
                problem.use_cheap = False
                if opt.certify:
                    # maximality on the cheap tiers first: settles (and grows) every layer they can decide
                    problem.use_cheap, problem.deadline = True, search_end
                    eps, maximality = certify(problem, eps, delta, grow=grow)
                    problem.use_cheap = False
                if opt.refine and not problem.exhausted():
                    # refinement with the full verifier (MILP included), small steps from where exploration stopped
                    problem.phase, problem.deadline = "search", search_end
                    eps, report = optimize(problem, eps, cw, optimizer, radius=4 * delta, theta=0.5,
                                           patience=opt.refine_patience)
                    phases.append(("refine", report))
            iterations = sum(r.iterations for _, r in phases)
            stop_reason = "; ".join(f"{name}: {r.stop_reason}" for name, r in phases)
            details["optimizer"] = {name: {"iterations": r.iterations, "accepted_steps": r.accepted,
                                           "refuted_steps": r.refuted_steps, "cuts": r.cuts,
                                           "successful_cuts": r.cut_successes, "stop_reason": r.stop_reason}
                                    for name, r in phases}
        elif opt.method == "uniform":
            # continues above the probe's radius (proven robust) with the full verifier
            problem.deadline = search_end
            eps = uniform_search(problem, delta, lo=float(np.max(probe)))
            stop_reason = problem.exhausted() or f"binary search to delta = {delta:g}"
            iterations = problem.iteration
        else:
            problem.deadline = search_end
            problem.best_eps = np.zeros(n)  # the baseline's own progress, not the probe's
            eps = layer_search(problem, delta)
            stop_reason = problem.exhausted() or f"per-layer binary searches to delta = {delta:g}"
            iterations = problem.iteration
    problem.use_cheap, problem.deadline = False, None
    t_search = time.perf_counter() - t0
    eps = problem.clip(eps)
    if opt.certify and clean.is_robust:
        if cheap and maximality is None:
            problem.use_cheap = True
            eps, maximality = certify(problem, eps, delta, grow=grow)
            problem.use_cheap = False
        # the full verifier for every layer the cheap tiers left open (settled ones are answered by the caches)
        eps, maximality = certify(problem, eps, delta, grow=grow, previous=maximality)
    else:
        maximality = [LayerMaximality(d, "unchecked", float(eps[d]), reason="maximality check not run")
                      for d in range(n)]
    problem.best_eps = eps.copy()
    problem.phase = "done"
    problem.notify("phase", "done")
    verified = bool(clean.is_robust and problem.known_robust(eps) is not None)
    total = time.perf_counter() - t0
    return SearchResult(
        method=opt.method,
        cutting=opt.cutting if opt.method == "optimize" else None,
        target=problem.target,
        k=problem.k,
        epsilons=eps,
        weights=problem.weights.copy(),
        layer_counts=problem.nbhd.counts.copy(),
        saturation=problem.saturation.copy(),
        mask=np.asarray(problem.nbhd.mask).copy(),
        image=np.asarray(problem.nbhd.image).copy(),
        verified=verified,
        proof_tier=_proof_tier(problem, eps) if verified else status_of(clean),
        maximality=maximality,
        stats=problem.stats,
        timings={"total": total, "search": t_search, "maximality": total - t_search},
        stop_reason=stop_reason,
        delta=delta,
        clean_margin=clean_margin,
        clean_topk=clean_topk,
        verifier=getattr(problem.verifier, "name", type(problem.verifier).__name__),
        iterations=iterations,
        trace=list(problem.trace),
        details=details,
    )
