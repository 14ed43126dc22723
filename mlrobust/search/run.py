"""One search from start to result: prove the clean image, run the chosen method, certify maximality per layer,
and collect the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from mlrobust.bounds.alpha_crown import AlphaOptions
from mlrobust.bounds.joint_policy import JointPolicy
from mlrobust.errors import InputError
from mlrobust.search.baselines import bisect_scale, floored_uniform, layer_search, query_seconds, uniform_search
from mlrobust.search.boundary import (
    CHEAP_TIERS_EXHAUSTED,
    GIVE_UP_AFTER,
    Tier,
    push_to_boundary,
    rescaled_statuses,
    scale_to_boundary,
)
from mlrobust.search.cegis import CUTTINGS, cutting_weights
from mlrobust.search.certificate import certificate_search
from mlrobust.search.deadline import TimeLimitReached, hard_stop
from mlrobust.search.intervals import apply_upper_bounds, attack_upper_bounds, gap_order, known_upper_bounds
from mlrobust.search.maximality import LayerMaximality, certify
from mlrobust.search.optimizer import OptimizerOptions, optimize, shaped_starts
from mlrobust.search.problem import SearchProblem, status_of, tier_key
from mlrobust.search.result import SearchResult
from mlrobust.search.tiers import crown_tiers, push_tiers
from mlrobust.verify.bab.memory import DEFAULT_MEMORY_TARGET
from mlrobust.verify.bab.options import check_bytes
from mlrobust.verify.margin import topk_labels
from mlrobust.verify.verdict import Unknown

METHODS = ("boundary", "optimize", "certificate", "layer-search", "uniform")
#: Methods whose result may grow during the maximality check (the baselines are reported as they are).
GROWING = ("boundary", "optimize", "certificate")
#: Methods that grow along the bound's certificate first (mlrobust.search.certificate).
ALONG_CERTIFICATE = ("boundary", "certificate")
INITS = ("best", "uniform", "zero")
#: The automatic tolerance: an eighth of the uniform robust radius (found by bisection to AUTO_PROBE_TOL on the
#: cheap tiers), kept within [AUTO_DELTA_MIN, AUTO_DELTA_MAX].
AUTO_PROBE_TOL = 1e-4
AUTO_DELTA_MIN = 1e-4
AUTO_DELTA_MAX = 1e-2
AUTO_DELTA_FRACTION = 1 / 8
#: The object's floor from its refuted radius is capped at this share of its proven radius: at the proven radius
#: itself the bounds leave the rings no room (mnist2_pgd, image ex01: 9 of 43 layers stayed at 0).
OBJECT_FLOOR_CAP = 0.8
#: The shaped starts (two bisections of about SHAPE_QUERIES queries each) are computed only when they fit in
#: SHAPES_SHARE of the exploration's time left at the measured seconds per query: otherwise they take the time of
#: the certificate search, which is what grows the vector (Triple-MNIST under load: the starts took the whole
#: exploration and the result stayed at the object alone, w·ε 0.08 against 1.14 when the certificate search ran).
SHAPE_QUERIES = 10
SHAPES_SHARE = 0.5
#: The per-layer push needs about this many queries per open layer; where they do not fit in its time at the
#: measured seconds per query, the whole vector is first scaled on the bound tier (``_scale_on_bound_tier``) for at
#: most BOUND_SCALE_SHARE of the push's time, in steps from BOUND_SCALE_FIRST_STEP (galloping) down to
#: BOUND_SCALE_MIN_STEP.
PUSH_QUERIES_PER_LAYER = 2
BOUND_SCALE_SHARE = 0.5
BOUND_SCALE_FIRST_STEP = 0.1
BOUND_SCALE_MIN_STEP = 0.01


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
    on them, then ``refine``s with the full verifier until ``refine_share``; then ``upper_share`` of the time limit
    at most goes to upper bounds per layer by the attack alone (:mod:`mlrobust.search.intervals`), and the rest to
    the maximality check with the full verifier, largest gap first (the baselines search until ``refine_share``).

    ``push`` (default: on for the ``boundary`` method, which also skips the refinement) replaces that maximality
    check by the push to the boundary (:mod:`mlrobust.search.boundary`): after the exploration and the attack's
    upper bounds, every layer is bisected between its proven and its refuted epsilon by the cheap verifier tiers
    first (bounds, then a short branch and bound, then the MILP with ``push_milp``). With ``scale`` (and a
    cascade), once no layer is left to the cheaper tiers the MILP's time goes to growing the whole vector by a
    common factor instead of one layer at a time (:func:`~mlrobust.search.boundary.scale_to_boundary`: the MILP
    proves a few percent more of the vector where no bound does). The last ``final_upper_share`` of the time limit
    goes to the attack's upper bounds once more, now with the other layers at their final values.

    ``object_share`` (growing methods only): the object's epsilon never falls below this share of the object's own robust
    radius (layer 0 alone, the rings at 0), so the rings cannot buy size by starving the object the question is
    about; 0 lets the weights alone decide. The radius is found on the cheap tiers, then by the full verifier for at
    most ``object_refine_share`` of the time limit. With ``object_reference="refuted"`` (the boundary method's
    default) the share is taken of the attack's refuted radius (an upper bound of the true one), capped at the
    proven radius (see ``_object_floor``); with "proven" (the other methods', as before) of the proven radius.

    ``memory_target``: resident bytes the search's process should stay within (None: none); the push's branch and
    bound, the part whose memory grows with its work, plans every call under it (``BabOptions.memory_target_bytes``:
    the α/β rounds and the store of open domains get shares of what the process does not hold yet, and a call with
    no room left ends Unknown)."""

    method: str = "boundary"
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
    upper_share: float | None = None  # None: 0.2 for the boundary method (its upper bounds come first), else 0.1
    object_share: float = 0.5
    object_refine_share: float | None = None  # None: 0.1 for the boundary method, 0 for the others
    object_reference: str | None = None  # "refuted" or "proven" radius; None: "refuted" for boundary only
    push: bool | None = None
    push_milp: bool = True
    scale: bool = True
    final_upper_share: float = 0.05
    certificate_alpha: int = 0  # α-CROWN iterations for the certificate method's trust region (0: plain CROWN)
    memory_target: int | None = DEFAULT_MEMORY_TARGET  # bytes; the push's branch and bound plans under it
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)

    @property
    def upper_time_share(self) -> float:
        """``upper_share``, or the method's default where it is None: 0.2 for the boundary method (its upper bounds
        come first), else 0.1."""
        if self.upper_share is not None:
            return float(self.upper_share)
        return 0.2 if self.method == "boundary" else 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown search method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.cutting not in CUTTINGS:
            raise InputError(f"unknown cutting weights {self.cutting!r}; choose one of {', '.join(CUTTINGS)}")
        if self.init not in INITS:
            raise InputError(f"unknown initialisation {self.init!r}; choose one of {', '.join(INITS)}")
        if self.delta is not None and not (np.isfinite(self.delta) and 0 < self.delta <= 1):
            raise InputError(f"the tolerance delta must be in (0, 1] (or automatic), got {self.delta!r}")
        if not 0 <= self.object_share <= 1:
            raise InputError(f"the object's share of its own radius must be in [0, 1], got {self.object_share!r}")
        if self.object_refine_share is None:
            self.object_refine_share = 0.1 if self.method == "boundary" else 0.0
        if self.object_reference is None:
            self.object_reference = "refuted" if self.method == "boundary" else "proven"
        if self.object_reference not in ("refuted", "proven"):
            raise InputError(f"object_reference must be 'refuted' or 'proven', got {self.object_reference!r}")
        self.upper_share = self.upper_time_share
        if self.push is None:
            self.push = self.method == "boundary"
        if not 0 <= self.object_refine_share <= 1:
            raise InputError(f"object_refine_share must be in [0, 1], got {self.object_refine_share!r}")
        if not 0 <= self.final_upper_share < 1:
            raise InputError(f"final_upper_share must be in [0, 1), got {self.final_upper_share!r}")
        if not 0 <= self.upper_share <= 1:
            raise InputError(f"upper_share must be in [0, 1], got {self.upper_share!r}")
        check_bytes(self.memory_target, "memory_target")
        if not 0 < self.explore_share <= self.refine_share <= 1:
            raise InputError("time shares must satisfy 0 < explore_share <= refine_share <= 1, got "
                             f"{self.explore_share} and {self.refine_share}")


def _proof_tier(problem: SearchProblem, eps: np.ndarray) -> str:
    """The tier of the verifier query whose robust box contains that of ``eps`` (the proof of the result)."""
    for rec in reversed(problem.records):
        if rec.verdict.is_robust and rec.tier != "cache" and np.all(eps <= rec.eps):
            return rec.tier
    return "cache"


@dataclass
class _State:
    """What a search has reached so far (kept up to date, so an interruption can report it)."""

    eps: np.ndarray
    delta: float
    maximality: list[LayerMaximality] | None = None
    details: dict = field(default_factory=dict)
    iterations: int = 0
    stop_reason: str = ""
    t_search: float | None = None


def run_search(problem: SearchProblem, options: SearchOptions | None = None) -> SearchResult:
    """Search ``problem`` and return the result (epsilons proven robust, maximality per layer, statistics).

    Anytime: Ctrl-C (KeyboardInterrupt) during the search or the maximality check stops it and returns the largest
    vector proven so far, with the per-layer upper bounds the stored counterexamples give, flagged ``interrupted``.
    """
    opt = options or SearchOptions()
    n = problem.num_layers
    t0 = time.perf_counter()
    problem.phase = "start"
    problem.notify("phase", "proving the clean image")
    limit = problem.budget.time_limit
    try:
        with hard_stop(None if limit is None else limit - problem.elapsed()):
            clean = problem.query(np.zeros(n), purpose="clean image")
    except TimeLimitReached:
        clean = Unknown(tier="budget", reason="time limit reached before the clean image was proven")
    logits = problem.network.logits(problem.x0[None])
    clean_margin = float(problem.prop.margin(logits)[0])
    clean_topk = topk_labels(logits, problem.k)[0]
    if clean.is_not_robust:
        raise InputError(f"label {problem.target} is not among the top-{problem.k} labels on the clean image; "
                         f"the network predicts {clean_topk}")
    grow = (opt.method in GROWING) if opt.grow is None else opt.grow
    # a call that cannot finish in the time left falls back to the cascade's bound tier, then to plain CROWN
    problem.fallbacks = [v for v in (problem.cheap, crown_tiers(problem.verifier)) if v is not None]
    st = _State(np.zeros(n), opt.delta if opt.delta is not None else AUTO_DELTA_MAX)
    interrupted = False
    try:
        # The hard stop behind the phases' own deadlines: a stage that overruns the budget is cut (see deadline).
        with hard_stop(None if limit is None else limit - problem.elapsed()):
            if not clean.is_robust:
                st.stop_reason = f"the clean image itself is not proven ({getattr(clean, 'reason', '')})"
            else:
                _search(problem, opt, st, grow)
            problem.use_cheap, problem.deadline = False, None
            st.t_search = time.perf_counter() - t0
            st.eps = problem.clip(st.eps)
            if opt.certify and clean.is_robust:
                _certify(problem, opt, st, grow)
            else:
                st.maximality = [LayerMaximality(d, "unchecked", float(st.eps[d]),
                                                 reason="maximality check not run") for d in range(n)]
    except TimeLimitReached:
        # Not an interruption by the user: the result is final, but parts of the search were never tried.
        problem.use_cheap, problem.deadline = False, None
        reached = problem.clip(st.eps)
        best = problem.best_proven()
        # the vector the search stood at when the stop came, where a query proved it and nothing proven is larger:
        # a stop in a phase after the push (the final upper bounds) must not hand back an earlier, smaller vector
        keep = problem.known_robust(reached) is not None and problem.size(reached) >= problem.size(best)
        st.eps = reached if keep else best
        cut = f"time limit: stopped during {problem.phase}"
        st.stop_reason = cut + (f" (after {st.stop_reason})" if st.stop_reason else "")
        if st.maximality is None or not np.array_equal(st.eps, reached):
            # statuses about another vector say nothing about this one; those of the reported vector still hold
            # (the phase cut short, e.g. the final upper bounds, only ever adds refutations)
            st.maximality = [LayerMaximality(d, "unchecked", float(st.eps[d]), reason="time limit before the check")
                             for d in range(n)]
    except KeyboardInterrupt:
        interrupted = True
        problem.use_cheap, problem.deadline = False, None
        # the largest vector a query proved (the caches' record), never one still being tried
        st.eps = problem.best_proven()
        st.stop_reason = "interrupted" + (f" (after {st.stop_reason})" if st.stop_reason else "")
        st.maximality = [LayerMaximality(d, "unchecked", float(st.eps[d]), reason="interrupted before the check")
                         for d in range(n)]
    eps = st.eps
    st.details["costs"] = problem.costs.to_dict()
    policy = getattr(getattr(problem.verifier, "bounds", None), "joint_policy", None)
    if isinstance(policy, JointPolicy):  # the bound tier's joint-or-frozen calls (bounds/joint_policy.py)
        st.details["joint_policy"] = policy.totals()
    maximality = apply_upper_bounds(problem, eps, st.maximality or [], st.delta)
    t_search = st.t_search if st.t_search is not None else time.perf_counter() - t0
    problem.best_eps = eps.copy()
    problem.phase = "done"
    problem.notify("phase", "interrupted" if interrupted else "done")
    verified = bool(clean.is_robust and problem.known_robust(eps) is not None)
    total = time.perf_counter() - t0
    return SearchResult(
        method=opt.method,
        cutting=opt.cutting if opt.method in GROWING else None,
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
        stop_reason=st.stop_reason,
        delta=st.delta,
        clean_margin=clean_margin,
        clean_topk=clean_topk,
        verifier=getattr(problem.verifier, "name", type(problem.verifier).__name__),
        iterations=st.iterations,
        trace=list(problem.trace),
        details=st.details,
        interrupted=interrupted,
        object_radius=st.details.get("object", {}).get("radius_alone"),
        never_tried=never_tried(opt, st.details, maximality, grow, searched=bool(clean.is_robust)),
    )


def never_tried(opt: SearchOptions, details: dict, maximality: list[LayerMaximality], grow: bool,
                searched: bool = True) -> list[str]:
    """The parts of the search that never ran (the time limit, or an interruption, came first), in words: a result
    cut short says what it is missing. ``details`` are the search's records of the phases it ran."""
    if not searched:
        return ["the search (the clean image itself was not proven)"]
    out = []
    if opt.method in GROWING and opt.object_share > 0 and "object" not in details:
        out.append("the object's own radius (so no floor for the object's ε)")
    if opt.certify and opt.push and grow:
        if "upper_bounds" not in details:
            out.append("the attack's upper bounds per layer")
        if "push" not in details:
            out.append("pushing each layer to its boundary")
    dropped = details.get("object", {}).get("floor_dropped")
    if dropped:
        out.append(f"keeping the object's floor ε₀ ≥ {dropped:.2g} (the floored starts gave the rings nothing in the time "
                   "the exploration had, and one ε for every layer was larger: the floor is that ε; --object-share 0 "
                   "says so up front)")
    skipped_shapes = details.get("shaped_starts_skipped")
    if skipped_shapes:
        out.append(f"the shaped starts (about {skipped_shapes['seconds_per_query']:.2g} s a query: they did not fit "
                   "in the exploration's time left)")
    for tier, cost in details.get("costs", {}).get("tiers", {}).items():
        if cost.get("skipped"):
            per_call = cost.get("seconds_per_call")
            each = "" if per_call is None else f" (about {per_call:.2g} s each)"
            calls = "call" if cost["skipped"] == 1 else "calls"
            out.append(f"{cost['skipped']} {calls} of the {tier} tier{each}: not started, they could not finish in "
                       "the time left")
    unchecked = [m.layer for m in maximality if m.status == "unchecked"]
    if opt.certify and unchecked:
        out.append(f"{'layer' if len(unchecked) == 1 else 'layers'} {layer_ranges(unchecked)} never checked")
    return out


def layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0–2, 5, 7–8"``."""
    runs: list[list[int]] = []
    for d in sorted(layers):
        if runs and d == runs[-1][1] + 1:
            runs[-1][1] = d
        else:
            runs.append([d, d])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


def _deadline(problem: SearchProblem, share: float) -> float | None:
    limit = problem.budget.time_limit
    return None if limit is None else share * limit


def _object_floor(problem: SearchProblem, opt: SearchOptions, st: _State, lo: float) -> None:
    """The object's own robust radius (layer 0 alone, the rings at 0; bisection above ``lo``, which is known robust)
    and the floor that layer 0 keeps for the rest of the search.

    With ``object_reference="refuted"`` the floor is ``object_share`` of the object's *refuted* radius (the smallest object-alone epsilon at which the
    attack found a confirmed counterexample: an upper bound of the true radius, found by bisection with the attack
    alone), capped at OBJECT_FLOOR_CAP of the proven radius so that the floor itself stays proven and the rings keep
    some room. Half of a radius the bounds prove
    would be half of a weaker radius than the complete verifier proves (on mnist2_pgd ex00 the bounds prove 0.07,
    the MILP 0.128, the attack refutes 0.132); half of the refuted radius is at least half of the true one whenever
    the proven radius reaches it."""
    n = problem.num_layers

    def alone(v: float) -> np.ndarray:
        e = np.zeros(n)
        e[0] = v
        return problem.clip(e)

    radius = bisect_scale(problem, alone, lo, float(problem.saturation[0]), st.delta, "object alone")
    by_bounds = radius
    # the attack's upper bound of the radius (a few PGD runs on object-only boxes)
    attack_upper_bounds(problem, alone(radius), st.delta, layers=[0])
    up = known_upper_bounds(problem, alone(radius))[0]
    refuted = None if up is None else up.eps
    if problem.use_cheap and opt.object_refine_share:
        # the bounds alone can understate the object's radius a lot: the full verifier continues the bisection
        # between the proven and the refuted radius, for a short share of the budget
        saved, limit = problem.deadline, problem.budget.time_limit
        problem.use_cheap = False
        if limit is not None:
            problem.deadline = problem.elapsed() + float(opt.object_refine_share) * limit
        top = float(problem.saturation[0]) if refuted is None else refuted
        radius = bisect_scale(problem, alone, radius, top, st.delta, "object alone")
        problem.use_cheap, problem.deadline = True, saved
    problem.floor = np.zeros(n)
    reference = radius if (refuted is None or opt.object_reference == "proven") else refuted
    share = opt.object_share * reference
    problem.floor[0] = min(share, radius if opt.object_reference == "proven" else OBJECT_FLOOR_CAP * radius)
    st.details["object"] = {"radius_alone": radius, "radius_bounds": by_bounds, "refuted_alone": refuted,
                            "share": opt.object_share,
                            "floor": float(problem.floor[0])}


def _search(problem: SearchProblem, opt: SearchOptions, st: _State, grow: bool) -> None:
    """The search phases of ``opt.method``; ``st`` is updated as they go."""
    n = problem.num_layers
    cheap = opt.explore and problem.cheap is not None
    # with the push, the search ends with the exploration (the push refines every layer with the full verifier)
    search_end = (_deadline(problem, opt.explore_share if opt.push and grow else opt.refine_share)
                  if opt.certify else None)
    warm_saved, cheap_saved = problem.warm_attack, problem.cheap
    if opt.method in ALONG_CERTIFICATE and cheap:
        # the cheap phase of the certificate method asks plain CROWN only: its candidates are built for CROWN, its
        # steps are many and small, and the search's own attack (or α-CROWN on every undecided box) costs several
        # CROWN passes per query; the full verifier's phases and the upper-bound pass use everything as before
        problem.warm_attack = False
    if opt.method in GROWING and cheap:
        # bisections (the uniform probe, the object's radius, the shaped starts) ask plain CROWN: a dozen quick
        # bound computations each, where α-CROWN's optimisation on every undecided box near the answer costs ~10x
        problem.cheap = crown_tiers(problem.verifier) or problem.cheap
    # The uniform radius on the cheap tiers: the optimizer's start, and the scale of the automatic tolerance.
    probe = np.zeros(n)
    if opt.delta is None or (opt.method in GROWING and opt.init != "zero"):
        problem.use_cheap = cheap
        problem.deadline = _deadline(problem, opt.explore_share) if cheap else search_end
        probe = uniform_search(problem, AUTO_PROBE_TOL if opt.delta is None else opt.delta)
        if opt.delta is None:
            st.delta = auto_delta(float(np.max(probe)))
            st.details["delta_auto"] = {"uniform_radius": float(np.max(probe)), "delta": st.delta}
        if problem.cheap is not cheap_saved and opt.method == "optimize":
            # the cascade's own (α) tier takes the uniform radius a few steps further: a short bisection above
            # CROWN's answer (a handful of α queries instead of a dozen)
            problem.cheap = cheap_saved
            r = float(np.max(probe))
            probe = uniform_search(problem, AUTO_PROBE_TOL if opt.delta is None else opt.delta, lo=r,
                                   hi=1.5 * r + st.delta)
            problem.cheap = crown_tiers(problem.verifier) or cheap_saved
        problem.use_cheap = False
    st.eps = problem.clip(probe)
    delta = st.delta
    optimizer = replace(opt.optimizer, delta=delta)
    if opt.method in GROWING:
        cw = cutting_weights(problem, opt.cutting)
        st.details["cutting_weights"] = cw
        phases = []
        problem.use_cheap = cheap
        problem.deadline = _deadline(problem, opt.explore_share) if cheap else search_end
        unfloored = probe.copy()
        if opt.object_share > 0:
            _object_floor(problem, opt, st, float(probe[0]))
            if np.any(probe < problem.floor):
                # to delta only: the optimizer refines from here, and every bisection step is a bound computation
                probe = floored_uniform(problem, delta)
        start = probe if opt.init != "zero" else problem.clip(problem.floor)
        if opt.init == "best":
            per_query, left = query_seconds(problem), problem.remaining()
            if per_query is None or left is None or 2 * SHAPE_QUERIES * per_query <= SHAPES_SHARE * left:
                shapes = shaped_starts(problem, tol=min(AUTO_PROBE_TOL, delta))
            else:
                # two more bisections would take the time the certificate search grows the vector in
                shapes = []
                st.details["shaped_starts_skipped"] = {"seconds_per_query": per_query, "seconds_left": left}
            candidates = [("uniform", probe)] + shapes
            if "object" in st.details:
                alone = np.zeros(n)
                # the radius the cheap tiers proved: the search's phases run on them, and from the complete
                # verifier's radius they cannot grow any ring (mnist2_l0 ex00 at 120 s stayed at the object alone)
                alone[0] = st.details["object"]["radius_bounds"]
                candidates.append(("object alone", problem.clip(alone)))
            rings = [e for _, e in candidates if np.any(e[1:] > 0)]
            if (np.any(problem.floor > 0) and not rings and np.any(unfloored[1:] > 0)
                    and problem.size(unfloored) > max(problem.size(e) for _, e in candidates)):
                # the floored starts left every ring at 0 within the time the exploration had (a 3x300x300 network
                # at 1.5 s a bound computation: the floor at 0.8 of the object's radius left the 200 rings no room),
                # and the uniform vector is larger: the result would be the object alone, the worst of both. The
                # floor is lowered to the uniform radius (the object keeps at least that) and the uniform start is
                # taken; the JSON and the summary say so.
                st.details["object"].update(floor=float(unfloored[0]), floor_dropped=float(problem.floor[0]))
                problem.floor = np.zeros(n)
                problem.floor[0] = unfloored[0]
                candidates.append(("uniform (object floor dropped)", unfloored))
            st.details["starts"] = {name: problem.size(e) for name, e in candidates}
            name, start = max(candidates, key=lambda c: problem.size(c[1]))
            st.details["start"] = name
        st.eps = start
        if opt.method == "optimize":
            problem.cheap = cheap_saved  # the optimizer's exploration on the cascade's own bound tier
        if opt.method in ALONG_CERTIFICATE:
            # along the bound's own certificate first; then the optimizer's steps from there
            alpha = AlphaOptions(iterations=opt.certificate_alpha) if opt.certificate_alpha > 0 else None
            eps, crep = certificate_search(problem, start, delta, alpha=alpha)
            st.eps = eps
            st.details["certificate"] = {"iterations": crep.iterations, "accepted_steps": crep.accepted,
                                         "rejected_steps": crep.rejected, "whole_regions": crep.whole_region,
                                         "stop_reason": crep.stop_reason}
            start = eps
        eps, report = optimize(problem, start, cw, optimizer)
        st.eps = eps
        phases.append(("explore" if cheap else "optimize", report))
        problem.warm_attack, problem.cheap = warm_saved, cheap_saved
        if cheap and not opt.push:
            problem.use_cheap = False
            if opt.certify:
                # maximality on the cheap tiers first: settles (and grows) every layer they can decide
                problem.use_cheap, problem.deadline = True, search_end
                st.eps, st.maximality = certify(problem, st.eps, delta, grow=grow)
                problem.use_cheap = False
            if opt.refine and not problem.exhausted():
                # refinement with the full verifier (MILP included), small steps from where exploration stopped
                problem.phase, problem.deadline = "search", search_end
                eps, report = optimize(problem, st.eps, cw, optimizer, radius=4 * delta, theta=0.5,
                                       patience=opt.refine_patience)
                st.eps = eps
                phases.append(("refine", report))
        st.iterations = sum(r.iterations for _, r in phases)
        st.stop_reason = "; ".join(f"{name}: {r.stop_reason}" for name, r in phases)
        st.details["optimizer"] = {name: {"iterations": r.iterations, "accepted_steps": r.accepted,
                                          "refuted_steps": r.refuted_steps, "cuts": r.cuts,
                                          "successful_cuts": r.cut_successes, "stop_reason": r.stop_reason}
                                   for name, r in phases}
    elif opt.method == "uniform":
        # continues above the probe's radius (proven robust) with the full verifier
        problem.deadline = search_end
        st.eps = uniform_search(problem, delta, lo=float(np.max(probe)))
        st.stop_reason = problem.exhausted() or f"binary search to delta = {delta:g}"
        st.iterations = problem.iteration
    else:
        problem.deadline = search_end
        problem.best_eps = np.zeros(n)  # the baseline's own progress, not the probe's
        st.eps = np.zeros(n)
        st.eps = layer_search(problem, delta)
        st.stop_reason = problem.exhausted() or f"per-layer binary searches to delta = {delta:g}"
        st.iterations = problem.iteration


def _certify(problem: SearchProblem, opt: SearchOptions, st: _State, grow: bool) -> None:
    """Upper bounds per layer by the attack alone, then the maximality check with the verifier, largest gap first."""
    cheap = opt.explore and problem.cheap is not None
    delta = st.delta
    if opt.push and grow:
        _push(problem, opt, st)
        return
    if cheap and st.maximality is None:
        problem.use_cheap = True
        st.eps, st.maximality = certify(problem, st.eps, delta, grow=grow)
        problem.use_cheap = False
    _upper_bounds(problem, opt, st)
    current = st.maximality or [LayerMaximality(d, "unchecked", float(st.eps[d])) for d in range(problem.num_layers)]
    order = gap_order(st.eps, problem.saturation, apply_upper_bounds(problem, st.eps, current, delta))
    # the full verifier for every layer still open, largest gap first (settled ones are answered by the caches);
    # it stops asking after GIVE_UP_AFTER undecided layers in a row, and the time left narrows the gaps from above
    st.eps, st.maximality = certify(problem, st.eps, delta, grow=grow, order=order, previous=st.maximality,
                                    give_up_after=GIVE_UP_AFTER)
    limit = problem.budget.time_limit
    if limit is not None and problem.elapsed() < limit and any(m.status == "unchecked" for m in st.maximality):
        problem.phase = "upper bounds"
        problem.notify("phase", "upper bounds by the attack, at the final vector")
        st.details["final_upper_bounds"] = attack_upper_bounds(problem, st.eps, delta, deadline=limit)


def _upper_bounds(problem: SearchProblem, opt: SearchOptions, st: _State) -> None:
    """The attack's upper bounds on every layer at ``st.eps``, for ``upper_share`` of the time limit."""
    problem.phase = "upper bounds"
    problem.notify("phase", "upper bounds by the attack")
    limit = problem.budget.time_limit
    upper_end = None if limit is None else min(limit, problem.elapsed() + opt.upper_time_share * limit)
    st.details["upper_bounds"] = attack_upper_bounds(problem, st.eps, st.delta, deadline=upper_end)


def _scale_on_bound_tier(problem: SearchProblem, st: _State, tier: Tier, end: float | None,
                         keep: Callable[[np.ndarray], None]) -> str | None:
    """Where the per-layer push cannot reach every open layer at the measured seconds per query
    (PUSH_QUERIES_PER_LAYER queries each), grow the whole vector by a common factor on the push's cheapest tier
    first, for at most BOUND_SCALE_SHARE of the push's time: one query moves every layer, in the direction in which
    the vector sits inside the boundary (the attack breaks s·ε* at s ≈ 1.5–2.7). Returns its stop reason, or None
    when the push can afford every layer (the per-layer push alone, as before)."""
    if end is None or tier.verifier is None:
        return None
    call = problem.costs.mean(tier_key(tier.verifier))
    if call is None:  # not measured yet: plain CROWN's cost is a lower estimate of the cascade's bound tier
        call = problem.costs.mean(tier_key(crown_tiers(problem.verifier) or tier.verifier))
    if call is None:
        return None
    per_query = call + (problem.costs.mean("warm-attack") or 0.0)
    left = end - problem.elapsed()
    open_layers = int(np.count_nonzero(st.eps < problem.saturation))
    if left <= 0 or open_layers * PUSH_QUERIES_PER_LAYER * per_query <= left:
        return None
    problem.notify("phase", f"scaling the whole vector on the {tier.name} tier")
    st.eps, scaled = scale_to_boundary(problem, st.eps, tier, deadline=problem.elapsed() + BOUND_SCALE_SHARE * left,
                                       first_step=BOUND_SCALE_FIRST_STEP, min_step=BOUND_SCALE_MIN_STEP,
                                       on_improve=keep)
    st.details["bound_scale"] = dict(scaled.to_dict(), tier=tier.name, seconds_per_query=per_query,
                                     open_layers=open_layers)
    return scaled.stop_reason


def _push(problem: SearchProblem, opt: SearchOptions, st: _State) -> None:
    """Upper bounds per layer by the attack alone, then the push to the boundary for the rest of the budget."""
    delta = st.delta
    _upper_bounds(problem, opt, st)
    limit = problem.budget.time_limit
    problem.notify("phase", "pushing every layer to its boundary")
    bounds_seconds = None if problem.cheap is None else problem.costs.mean(tier_key(problem.cheap))
    tiers = push_tiers(problem.verifier, problem.budget.query_time_limit, milp=opt.push_milp,
                       bounds_seconds=bounds_seconds, memory_target=opt.memory_target)

    def keep(eps: np.ndarray) -> None:
        st.eps = eps  # an interruption reports the latest proven vector

    final_upper = None if limit is None else limit * (1 - float(opt.final_upper_share))
    bound_scaled = _scale_on_bound_tier(problem, st, tiers[0], final_upper, keep)
    # with a complete last tier (the cascade's MILP), its time goes to the whole vector (the scale step) once the
    # cheaper tiers have nothing left: single-layer MILP queries at the bound's frontier buy a few delta each
    scale = opt.scale and opt.push_milp and len(tiers) > 1
    st.eps, st.maximality, report = push_to_boundary(problem, st.eps, delta, tiers, deadline=final_upper,
                                                     on_improve=keep, stop_before=len(tiers) - 1 if scale else None)
    st.details["push"] = dict(report.to_dict(), tiers=[t.name for t in tiers])
    # the stop line names every phase that ran, the push last (it usually ends the search)
    phases = [st.stop_reason] + ([f"bound scale: {bound_scaled}"] if bound_scaled else [])
    phases.append(f"push: {report.stop_reason}")
    if scale and report.stop_reason == CHEAP_TIERS_EXHAUSTED:
        problem.notify("phase", "scaling the whole vector with the complete verifier")
        st.eps, scaled = scale_to_boundary(problem, st.eps, tiers[-1], deadline=final_upper, on_improve=keep)
        st.maximality = rescaled_statuses(st.maximality, st.eps)
        st.details["scale"] = scaled.to_dict()
        phases.append(f"scale: {scaled.stop_reason}")
    st.stop_reason = "; ".join(p for p in phases if p)
    if limit is not None and opt.final_upper_share > 0 and problem.elapsed() < limit:
        # the first upper bounds were found with the other layers at the pre-push vector: with them at their final
        # values a layer breaks earlier, so the attack bisects again from the final vector (cheap, PGD only)
        problem.phase = "upper bounds"
        problem.notify("phase", "upper bounds by the attack, at the final vector")
        st.details["final_upper_bounds"] = attack_upper_bounds(problem, st.eps, delta, deadline=limit)
