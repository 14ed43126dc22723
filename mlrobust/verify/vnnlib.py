"""VNN-LIB properties: decide them with the pipeline ``verify`` uses (PGD, CROWN bounds, MILP;
:mod:`mlrobust.verify.decision`); reading them is :mod:`mlrobust.verify.vnnlib_parse`.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` (flattened, C order) and asserts the *counterexample
region*: bounds on the inputs and linear constraints on the outputs, combined with ``and``/``or``. "sat" means an
input in the box reaches the output region (the property is violated), "unsat" that none does (it holds).

The assertions are brought into disjunctive normal form; each disjunct must split into single-variable bounds on
inputs (a box) and linear inequalities on outputs. Disjuncts with the same input box are decided together as one
MILP over a disjunction of conjunctions (:mod:`mlrobust.milp.disjunction`). Strict inequalities are read as
non-strict (the usual reading in VNN-COMP, whose checker works with a tolerance anyway).

A region whose clauses say exactly "label t is not in the top k" (:func:`~mlrobust.verify.vnnlib_parse.region_topk`,
e.g. every MNIST and image-classifier property) also gets the bound tier of ``verify`` where CROWN leaves it open:
α-CROWN on the margins with jointly optimised intermediate bounds, which then tighten the MILP and the branch and
bound's root.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlrobust.backends.base import SolverBackend, StopRule
from mlrobust.backends.registry import get_backend
from mlrobust.bounds import linear_bounds
from mlrobust.bounds.tier import base_bounds, tighten
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.milp.builder import MilpBuilder
from mlrobust.milp.clause import Clause
from mlrobust.milp.disjunction import add_disjunction, clause_forms, clause_margin
from mlrobust.verify.attack import PgdAttack
from mlrobust.verify.counterexample import CheckedPoint, check_points, torch_module
from mlrobust.verify.decision import decide_after_solve, run_attack
from mlrobust.verify.spec import VNNLIB_VERIFIERS, Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE
from mlrobust.verify.vnnlib_parse import MAX_DISJUNCTS, VnnlibProperty, VnnlibRegion, parse_vnnlib, region_topk

#: Steps of the attack run before the bounds (the rest of the attack runs after them, when they leave the property
#: open): enough for the counterexamples PGD finds at once (the anchor's sat instances fell within 1-5 steps).
QUICK_ATTACK_STEPS = 10
#: Share of the time left the α-CROWN top-k tier may take on a region that is a top-k membership (its optimisation
#: stops early once it stops gaining; well under a second per query on the reference CNNs).
TOPK_TIER_SHARE = 0.25

__all__ = ["QUICK_ATTACK_STEPS", "MAX_DISJUNCTS", "VnnlibProperty", "VnnlibRegion", "VnnlibResult", "ClauseProperty",
           "parse_vnnlib", "decide_region", "check_vnnlib"]

@dataclass(frozen=True)
class ClauseProperty:
    """The output property of one region as an :class:`OutputProperty`: margin ``max_i min_j g_ij >= 0`` = sat."""

    clauses: tuple[Clause, ...]

    def margin(self, logits: np.ndarray) -> np.ndarray:
        return clause_margin(logits, list(self.clauses))

    def margin_torch(self, logits: torch.Tensor) -> torch.Tensor:
        return self.clause_margins_torch(logits).max(dim=1).values

    def clause_margins_torch(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, n_clauses): each clause's margin ``min_j g_ij`` (the attack aims restarts at single clauses)."""
        vals = []
        for cl in self.clauses:
            G = torch.as_tensor(cl.G, dtype=logits.dtype)
            h = torch.as_tensor(cl.h, dtype=logits.dtype)
            vals.append((h[None, :] - logits @ G.T).min(dim=1).values)
        return torch.stack(vals, dim=1)


@dataclass
class VnnlibResult:
    """``status``: "sat", "unsat", "timeout" or "unknown"; for sat the confirmed input and its outputs."""

    status: str
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    seconds: float = 0.0
    tier: str = ""
    reason: str = ""
    stats: dict = field(default_factory=dict)

    def to_vnncomp(self) -> str:
        """The result in VNN-COMP's format: the status line, then for sat ``((X_0 v) ... (Y_0 v) ...)``."""
        if self.status != "sat" or self.x is None or self.y is None:
            return self.status + "\n"
        # ``+ 0.0`` turns -0.0 into 0.0: a pixel at the bottom of its range reads 0, not -0
        entries = [f"(X_{i} {float(v) + 0.0!r})" for i, v in enumerate(self.x.reshape(-1))]
        entries += [f"(Y_{j} {float(v) + 0.0!r})" for j, v in enumerate(self.y.reshape(-1))]
        return "sat\n(" + "\n ".join(entries) + ")\n"


def _region_box(network: Network, region: VnnlibRegion) -> Box:
    n = int(np.prod(network.sample_shape))
    if region.lower.size != n:
        raise InputError(f"the VNN-LIB property declares {region.lower.size} inputs; the model has {n}")
    return Box(region.lower.reshape(network.sample_shape), region.upper.reshape(network.sample_shape))


def _crown_clause_bounds(network: Network, box: Box, clauses: list[Clause],
                         bounds) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """CROWN bounds of every ``g_ij = h_ij - G_ij y``, every clause's rows in one backward pass (a top-2 property
    has 36 clauses: one pass each cost most of an instance's bound step)."""
    G = np.concatenate([np.asarray(cl.G, dtype=np.float64) for cl in clauses])
    c_lo, c_hi = linear_bounds(network, box.lower, box.upper, -G, bounds=bounds)
    ends = np.cumsum([cl.h.size for cl in clauses])[:-1]
    return ([lo + cl.h for lo, cl in zip(np.split(c_lo, ends), clauses)],
            [hi + cl.h for hi, cl in zip(np.split(c_hi, ends), clauses)])


def _clause_bounds(builder: MilpBuilder, clauses: list[Clause],
                   crown: tuple[list[np.ndarray], list[np.ndarray]] | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bounds of every ``g_ij`` from the MILP's output form, intersected with the CROWN ones (None: the bounds are
    IBP, or the deadline passed before CROWN ran; the interval ones are looser, still sound)."""
    col_lower, col_upper, *_ = builder.enc.arrays()

    forms = clause_forms(builder.output_form, clauses, builder.enc.ncols)
    lows, highs = [], []
    for i, form in enumerate(forms):
        lo, hi = form.interval(col_lower, col_upper)
        if crown is not None:
            lo, hi = np.maximum(lo, crown[0][i]), np.minimum(hi, crown[1][i])
        lows.append(lo)
        highs.append(np.maximum(hi, lo))
    return lows, highs


def _best_clause_upper(highs: list[np.ndarray]) -> float:
    """The upper bound of the region's margin ``max_i min_j g_ij``."""
    return max(float(np.min(h)) for h in highs)


def decide_region(network: Network, region: VnnlibRegion, solver: str | SolverBackend | None = "highs",
                  time_limit: float | None = None, attack: PgdAttack | None = None,
                  tightening: str = "crown", verifier: str = "cascade", device: str = "cpu") -> VnnlibResult:
    """Decide one region with the pipeline ``verify`` uses (:mod:`mlrobust.verify.decision`): the attack (with
    ``attack``'s settings, by default the cascade's; its first :data:`QUICK_ATTACK_STEPS` steps before the bounds,
    all of it after them when they leave the region open), bounds, then the MILP and the same verdict rule.

    ``verifier``: "cascade" (as above), "bab" (branch and bound instead of the MILP) or "cascade-bab" (branch and
    bound for half the time left, then the MILP). ``device``: where the branch and bound runs its α/β bounds.
    """
    if verifier not in VNNLIB_VERIFIERS:
        raise InputError(f"unknown verifier {verifier!r}; choose one of {', '.join(VNNLIB_VERIFIERS)}")
    start = time.perf_counter()
    box = _region_box(network, region)
    clauses = list(region.clauses)
    prop = ClauseProperty(tuple(clauses))
    deadline = None if time_limit is None else start + time_limit

    def left() -> float | None:
        return None if deadline is None else max(deadline - time.perf_counter(), 0.0)

    def sat(point: CheckedPoint, tier: str) -> VnnlibResult:
        with torch.no_grad():
            y = torch_module(network).logits(torch.as_tensor(point.x[None], dtype=torch.float32))[0].double().numpy()
        return VnnlibResult("sat", point.x.reshape(-1), y, time.perf_counter() - start, tier,
                            stats={"margin": point.margin, "margin_float32": point.margin_torch})

    if any(cl.h.size == 0 for cl in clauses):  # a clause with no output constraint: every input is a witness
        point = check_points(network, box, [box.center], prop)[0]
        return sat(point, "bounds")
    # A short attack, then the bounds, then the rest of the attack: most counterexamples fall in the first few
    # steps, and a property the bounds prove would otherwise pay the whole attack first (on small nets that is
    # most of the time of an instance decided by bounds: benchmarks/results/anchor_vnncomp.md)
    settings = attack or PgdAttack()
    quick = PgdAttack(restarts=settings.restarts, steps=min(settings.steps, QUICK_ATTACK_STEPS), seed=settings.seed,
                      diversify=settings.diversify)
    found = run_attack(network, box, prop, quick, time_limit=left())
    if found.counterexample is not None:
        return sat(found.counterexample, "attack")
    if deadline is not None and time.perf_counter() >= deadline:  # the bounds below cannot be interrupted
        return VnnlibResult("timeout", seconds=time.perf_counter() - start, tier="attack",
                            stats={"attack_best": found.best.margin if found.best else None})
    with torch_threads(1):
        bounds, _ = base_bounds(network, box.lower, box.upper, "ibp" if tightening == "ibp" else "crown")
    crown = None
    form = region_topk(region, network.num_classes)
    tier = None
    stats: dict = {"attack_best": found.best.margin if found.best else None}
    if bounds.method != "ibp" and (deadline is None or time.perf_counter() < deadline):
        crown = _crown_clause_bounds(network, box, clauses, bounds)
        stats["bound_before_milp"] = _best_clause_upper(crown[1])
        if stats["bound_before_milp"] < -ROBUST_TOLERANCE:  # proven before the MILP is even built
            return VnnlibResult("unsat", seconds=time.perf_counter() - start, tier="bounds", stats=stats)
        if form is not None and (deadline is None or time.perf_counter() < deadline):
            # a top-k membership ("target is not in the top-k" for every k-subset): verify's own bound tier,
            # α-CROWN on the margins with the last pre-activation layer optimised jointly; its intermediate bounds
            # then serve the MILP's big-M constants and the branch and bound's root
            left_now = left()
            tier = tighten(network, box.lower, box.upper, "alpha", target=form[0], k=form[1],
                           time_budget=None if left_now is None else TOPK_TIER_SHARE * left_now)
            stats["topk_tier"] = {"target": form[0], "k": form[1], "kth_upper": tier.kth_upper,
                                  "seconds": tier.seconds}
            if tier.kth_upper is not None and tier.kth_upper < -ROBUST_TOLERANCE:
                return VnnlibResult("unsat", seconds=time.perf_counter() - start, tier="bounds", stats=stats)
            bounds = tier.bounds
    builder = MilpBuilder(network, bounds).run()
    lows, highs = _clause_bounds(builder, clauses, crown)
    m_hi = stats["bound_before_milp"] = _best_clause_upper(highs)
    if m_hi < -ROBUST_TOLERANCE:
        return VnnlibResult("unsat", seconds=time.perf_counter() - start, tier="bounds", stats=stats)
    if settings.steps > quick.steps and (deadline is None or time.perf_counter() < deadline):
        found = run_attack(network, box, prop, settings, time_limit=left())
        if found.counterexample is not None:
            return sat(found.counterexample, "attack")
        if found.best is not None:
            best = stats["attack_best"]
            stats["attack_best"] = found.best.margin if best is None else max(best, found.best.margin)
    if deadline is not None and time.perf_counter() >= deadline:
        return VnnlibResult("timeout", seconds=time.perf_counter() - start, tier="bounds", stats=stats)
    if verifier in ("bab", "cascade-bab"):
        from mlrobust.verify.bab import BabVerifier, clause_spec

        brancher = BabVerifier(device=device)
        root = bounds if bounds.method.startswith("crown") else None
        spec = None
        if form is None:
            spec = clause_spec(clauses, prop)
            spec.cap = np.concatenate([_cert_caps(h) for h in highs])  # the bounds above, sound on every sub-domain
        # the share is taken last, right before the call that starts its clock, so that its limit ends with ours
        remaining = left()
        share = remaining if remaining is None or verifier == "bab" else remaining / 2
        if form is not None:
            # the top-k branch and bound (verify's): its spec of k-subsets with optimised row mixtures, started
            # from the tier's margin bounds
            bab = brancher.run(network, box, None, share, attack=False, root_bounds=root, topk=form,
                               margin_upper=None if tier is None else tier.margin_upper)
        else:
            bab = brancher.run(network, box, spec, share, attack=False, root_bounds=root)
        stats["bab"] = bab.stats
        if bab.status == "violated" and bab.counterexample is not None:
            point = check_points(network, box, [bab.counterexample.x], prop)[0]  # on the region's own clauses
            if point.confirmed:
                return sat(point, "bab")
        if bab.status == "proven":
            return VnnlibResult("unsat", seconds=time.perf_counter() - start, tier="bab", stats=stats)
        if verifier == "bab" or (deadline is not None and time.perf_counter() >= deadline):
            status = "timeout" if "time limit" in bab.reason else "unknown"
            return VnnlibResult(status, seconds=time.perf_counter() - start, tier="bab", reason=bab.reason,
                                stats=stats)
    obj = add_disjunction(builder.enc, builder.output_form, clauses, lows, highs, prune_below=-ROBUST_TOLERANCE)
    problem = builder.problem(obj.objective_col, {"clause_binaries": int(obj.clause_binaries.size)})
    backend = get_backend(solver)
    result = backend.solve(problem, time_limit=left(), stop=StopRule(0.0, -ROBUST_TOLERANCE))
    result.bound = max(result.bound, obj.dropped_upper)
    stats.update({"status": result.status, "objective": result.objective, "bound": result.bound,
                  "binaries": problem.num_binaries, "variables": problem.num_cols, "solve_seconds": result.seconds})
    decision = decide_after_solve(network, box, prop, problem, result)
    if decision.counterexample is not None:
        return sat(decision.counterexample, "milp")
    seconds = time.perf_counter() - start
    status = {"holds": "unsat", "timeout": "timeout"}.get(decision.status, "unknown")
    return VnnlibResult(status, seconds=seconds, tier="milp", reason=decision.reason if status == "unknown" else "",
                        stats=stats)


def _cert_caps(highs: np.ndarray) -> np.ndarray:
    """Known upper bounds of one clause's certificate rows (:func:`mlrobust.verify.bab.clause_spec`): its own rows,
    then (for more than one row) their average, bounded by the average of their bounds."""
    highs = np.asarray(highs, dtype=np.float64).reshape(-1)
    return highs if highs.size <= 1 else np.append(highs, highs.mean())


def check_vnnlib(network: Network, prop: VnnlibProperty | str | Path, solver: str | SolverBackend | None = "highs",
                 timeout: float | None = None, tightening: str = "crown", verifier: str = "cascade",
                 device: str = "cpu") -> VnnlibResult:
    """Decide a whole VNN-LIB property: sat as soon as one region is sat, unsat when every region is unsat.

    ``verifier``: how each region is decided after the attack and the bounds (see :func:`decide_region`);
    ``device``: where its branch and bound runs the α/β bounds ("cpu" or "cuda").
    """
    if verifier not in VNNLIB_VERIFIERS:
        raise InputError(f"unknown verifier {verifier!r}; choose one of {', '.join(VNNLIB_VERIFIERS)}")
    start = time.perf_counter()  # reading the property is part of the call's time
    if not isinstance(prop, VnnlibProperty):
        prop = parse_vnnlib(prop)
    if prop.num_outputs != network.num_classes:
        raise InputError(f"the VNN-LIB property declares {prop.num_outputs} outputs; the model has "
                         f"{network.num_classes}")
    n = int(np.prod(network.sample_shape))
    if prop.num_inputs != n:
        raise InputError(f"the VNN-LIB property declares {prop.num_inputs} inputs; the model has {n}")
    if not prop.regions:
        return VnnlibResult("unsat", seconds=0.0, tier="parse", reason="every disjunct is empty")
    results: list[VnnlibResult] = []
    for region in prop.regions:
        left = None if timeout is None else timeout - (time.perf_counter() - start)
        if left is not None and left <= 0:
            results.append(VnnlibResult("timeout", reason="no time left for this region"))
            break
        res = decide_region(network, region, solver, left, tightening=tightening, verifier=verifier, device=device)
        if res.status == "sat":
            res.seconds = time.perf_counter() - start
            return res
        results.append(res)
    seconds = time.perf_counter() - start
    if len(results) == 1:
        results[0].seconds = seconds
        return results[0]
    statuses = [r.status for r in results]
    tiers = ",".join(sorted({r.tier for r in results if r.tier}))
    stats = {"regions": len(prop.regions), "statuses": statuses}
    if len(results) == len(prop.regions) and all(s == "unsat" for s in statuses):
        return VnnlibResult("unsat", seconds=seconds, tier=tiers, stats=stats)
    status = "timeout" if "timeout" in statuses else "unknown"
    reasons = "; ".join(r.reason for r in results if r.reason)
    return VnnlibResult(status, seconds=seconds, tier=tiers, reason=reasons, stats=stats)
