"""Verifier micro-benchmarks of the suite: build and solve time per bound tightening and per solver, the one-MILP
top-k encoding against the pairwise scheme of the reference thesis, and agreement between backends.

Queries come in two kinds:

- **tiny**: random 4x4-input ReLU MLPs with 10 classes (fixed seeds) and boxes around random centres; every
  solver decides them in well under a second, so they are where backends must agree verdict for verdict.
- **model**: boxes on the shipped models and images, *calibrated* to where the MILP matters: the object-only
  neighborhood (epsilon on layer 0, the perturbed object) at multiples of the largest epsilon that CROWN bounds
  alone prove robust. Below that radius no MILP runs; above it the MILP decides what the bounds cannot.

The pairwise scheme (the reference thesis's, |C|^2 MILPs per query): for top-2 membership of label t, one MILP per
pair {c1, c2} of other labels maximises min(y_c1 - y_t, y_c2 - y_t); t leaves the top-2 somewhere in the box iff
some pair's optimum is >= 0. Here it is built with the project's own MILP builder (same bounds, same network
encoding, built once per query and copied per pair) and the disjunction objective of ``mlrobust.milp.disjunction``
with one clause, so the comparison isolates the encodings. Pairs that the margin bounds already exclude are
skipped (as the one-MILP encoding prunes classes), which only helps the baseline. Unordered pairs are used: the
ordered-pair count |C|^2 of the thesis would double its work again.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlrobust.backends.base import OPTIMAL, STOPPED, StopRule
from mlrobust.backends.registry import get_backend
from mlrobust.errors import MlrobustError, SolverLimitError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Dense, Relu, Reshape
from mlrobust.milp.builder import MilpBuilder
from mlrobust.milp.disjunction import Clause, add_disjunction
from mlrobust.milp.problem import MilpProblem
from mlrobust.milp.tightening import Tightened, tighten
from mlrobust.verify.bound_check import margin_range
from mlrobust.verify.counterexample import TopKProperty, check_points
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE


@dataclass
class Query:
    """One verification query: is ``target`` among the top-``k`` everywhere in ``box``?"""

    name: str
    kind: str  # "tiny" or "model"
    network: Network
    box: Box
    target: int
    k: int = 2
    info: dict = field(default_factory=dict)


# --- queries ------------------------------------------------------------------------------------------------------
def tiny_network(seed: int, hidden: tuple[int, ...] = (12, 12), classes: int = 10) -> Network:
    """A random ReLU MLP on a 1x4x4 input (He-scaled weights, fixed seed)."""
    rng = np.random.default_rng(seed)
    nodes, cur, n_in = [Node("flatten", Reshape((16,)), ("input",), "flat", (16,))], "flat", 16
    for i, width in enumerate(hidden):
        w = rng.normal(0, np.sqrt(2.0 / n_in), (width, n_in))
        nodes.append(Node(f"fc{i}", Dense(w, rng.normal(0, 0.1, width)), (cur,), f"h{i}", (width,)))
        nodes.append(Node(f"relu{i}", Relu(), (f"h{i}",), f"a{i}", (width,)))
        cur, n_in = f"a{i}", width
    w = rng.normal(0, np.sqrt(2.0 / n_in), (classes, n_in))
    nodes.append(Node("out", Dense(w, rng.normal(0, 0.1, classes)), (cur,), "logits", (classes,)))
    return Network("input", (1, 1, 4, 4), nodes, "logits")


def tiny_queries(n: int, seed: int = 0, factors: tuple[float, ...] = (1.2, 1.5, 2.0, 3.0)) -> list[Query]:
    """``n`` tiny queries (target: the top label at the centre), at ``factors`` (in turn) times the largest radius
    CROWN proves, so the MILP has work to do and both verdicts occur."""
    out = []
    for i in range(n):
        net = tiny_network(seed + i, hidden=(16, 16))
        rng = np.random.default_rng(10_000 + seed + i)
        x = rng.uniform(0.2, 0.8, (1, 4, 4))
        target = int(np.argmax(net.logits(x[None])[0]))
        lo, hi = 0.0, 0.5
        for _ in range(12):  # bisection on the radius CROWN proves
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if crown_proves(net, Box.around(x, mid), target, 2) else (lo, mid)
        f = factors[i % len(factors)]
        out.append(Query(f"tiny{i}", "tiny", net, Box.around(x, lo * f), target, 2,
                         {"crown_radius": lo, "factor": f, "eps": lo * f}))
    return out


def crown_proves(network: Network, box: Box, target: int, k: int) -> bool:
    tight = tighten(network, box.lower, box.upper, "crown", target=target)
    return margin_range(tight, target, k)[1] < -ROBUST_TOLERANCE


def calibrated_radius(network: Network, nbhd: Any, target: int, k: int, layers: int = 1, iters: int = 10) -> float:
    """The largest epsilon on the first ``layers`` layers (0 elsewhere) that CROWN bounds prove robust, by
    bisection to 1/2^iters."""
    def box(e: float) -> Box:
        eps = np.zeros(nbhd.num_layers)
        eps[:layers] = e
        return nbhd.box(eps)

    lo, hi = 0.0, 1.0
    if crown_proves(network, box(hi), target, k):
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if crown_proves(network, box(mid), target, k):
            lo = mid
        else:
            hi = mid
    return lo


def model_queries(name: str, network: Network, nbhd: Any, target: int, k: int, factors: tuple[float, ...],
                  layers: int = 1) -> list[Query]:
    """Queries at ``factor`` times the CROWN-provable radius of the object-only neighborhood."""
    base = calibrated_radius(network, nbhd, target, k, layers)
    out = []
    for f in factors:
        eps = np.zeros(nbhd.num_layers)
        eps[:layers] = min(base * f, 1.0)
        out.append(Query(f"{name}@{f:g}x", "model", network, nbhd.box(eps), target, k,
                         {"crown_radius": base, "factor": f, "eps": float(eps[0]), "layers": layers}))
    return out


# --- one query, one configuration -----------------------------------------------------------------------------------
def status_of(verdict: Any) -> str:
    return "robust" if verdict.is_robust else ("not_robust" if verdict.is_not_robust else "unknown")


def solve_query(q: Query, tightening: str = "crown", solver: str = "highs", mode: str = "decide",
                time_limit: float = 30.0, lp_time_budget: float = 10.0) -> dict:
    """The exact MILP verifier (no cascade) on ``q``: verdict, tightening/build/solve seconds, model size."""
    row: dict[str, Any] = {"query": q.name, "kind": q.kind, "tightening": tightening, "solver": solver, "mode": mode}
    try:
        ver = MilpVerifier(solver, tightening, lp_time_budget=lp_time_budget)
        start = time.perf_counter()
        verdict = ver.verify(q.network, q.box, q.target, q.k, mode, time_limit)
        total = time.perf_counter() - start
    except SolverLimitError as exc:
        return {**row, "status": "skipped", "reason": str(exc)}
    except MlrobustError as exc:
        return {**row, "status": "error", "reason": str(exc)}
    s = verdict.stats
    row.update(status=status_of(verdict), seconds=total, tighten_seconds=s.get("tighten_seconds"),
               build_seconds=s.get("build_seconds"), solve_seconds=s.get("solve_seconds"),
               binaries=s.get("binaries"), unstable_relus=s.get("unstable_relus"), variables=s.get("variables"),
               constraints=s.get("constraints"), objective=s.get("objective"), bound=s.get("bound"),
               solver_status=s.get("status"))
    if s.get("solve_seconds") == 0.0 and "status" not in s:
        row["decided_by_bounds"] = True
        row["bound"] = s["margin_bounds"][1]
    return row


# --- the pairwise scheme --------------------------------------------------------------------------------------------
def _subset_problem(builder: MilpBuilder, subset: tuple[int, ...], target: int, L: np.ndarray,
                    U: np.ndarray) -> MilpProblem:
    """The network's encoding plus ``max m, m <= y_c - y_t`` for ``c`` in ``subset`` (a one-clause disjunction)."""
    enc = copy.deepcopy(builder.enc)
    classes = builder.network.num_classes
    G = np.zeros((len(subset), classes))
    for j, c in enumerate(subset):  # G y <= 0  <=>  y_t - y_c <= 0; the clause's g_j = y_c - y_t
        G[j, target], G[j, c] = 1.0, -1.0
    obj = add_disjunction(enc, builder.output_form, [Clause(G, np.zeros(len(subset)))], [L[list(subset)]],
                          [U[list(subset)]])
    col_lower, col_upper, integer, A, row_lower, row_upper = enc.arrays()
    c = np.zeros(enc.ncols)
    c[obj.objective_col] = 1.0
    return MilpProblem(col_lower.copy(), col_upper.copy(), integer.copy(), A, row_lower.copy(), row_upper.copy(), c,
                       0.0, builder.input_cols.copy(), builder.input_base.copy(), builder.network.sample_shape,
                       obj.objective_col, enc.col_kinds(), enc.row_kinds(), {})


def pairwise(q: Query, solver: str = "highs", tightening: str = "crown", mode: str = "decide",
             time_limit: float = 30.0, tight: Tightened | None = None) -> dict:
    """Decide (or, in ``mode="optimize"``, maximise) ``q`` with one MILP per k-subset of the other labels."""
    start = time.perf_counter()
    backend = get_backend(solver)
    tight = tight or tighten(q.network, q.box.lower, q.box.upper, tightening, target=q.target)
    t_tight = time.perf_counter() - start
    t0 = time.perf_counter()
    builder = MilpBuilder(q.network, tight.bounds).run()
    L, U = builder.margin_interval(q.target)
    L = np.maximum(L, tight.margin_lower)
    U = np.maximum(np.minimum(U, tight.margin_upper), L)
    t_build = time.perf_counter() - t0
    others = [c for c in range(q.network.num_classes) if c != q.target]
    prop = TopKProperty(q.target, q.k)
    solved = pruned = 0
    t_solve = 0.0
    best_value = -np.inf  # max over subsets of the optimum (optimize mode)
    best_bound = -np.inf  # max over subsets of the proven bound
    cex = None
    timed_out = False
    for subset in itertools.combinations(others, q.k):
        if float(np.min(U[list(subset)])) < -ROBUST_TOLERANCE:
            pruned += 1  # some label of the subset never beats the target: no MILP needed
            best_bound = max(best_bound, float(np.min(U[list(subset)])))
            continue
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            timed_out = True
            break
        t0 = time.perf_counter()
        problem = _subset_problem(builder, subset, q.target, L, U)
        t_build += time.perf_counter() - t0
        stop = StopRule(0.0, -ROBUST_TOLERANCE) if mode == "decide" else None
        res = backend.solve(problem, time_limit=left, stop=stop)
        t_solve += res.seconds
        solved += 1
        best_bound = max(best_bound, float(res.bound))
        if res.objective is not None:
            best_value = max(best_value, float(res.objective))
        if res.status not in (OPTIMAL, STOPPED):
            timed_out = True
        if res.x is not None and res.objective is not None and res.objective >= 0:
            point = check_points(q.network, q.box, [problem.input_from(res.x)], prop)[0]
            if point.confirmed:
                cex = point
                if mode == "decide":
                    break
    if cex is not None:
        status = "not_robust"
    elif not timed_out and best_bound < -ROBUST_TOLERANCE:
        status = "robust"
    else:
        status = "unknown"
    return {"query": q.name, "solver": solver, "tightening": tightening, "mode": mode, "status": status,
            "subsets": solved + pruned, "solved": solved, "pruned": pruned, "tighten_seconds": t_tight,
            "build_seconds": t_build, "solve_seconds": t_solve, "seconds": time.perf_counter() - start - t_tight,
            "value": best_value if np.isfinite(best_value) else None, "bound": best_bound}


def topk_vs_pairwise(q: Query, solver: str = "highs", mode: str = "decide", time_limit: float = 30.0) -> dict:
    """Both encodings on ``q`` with the same CROWN bounds: verdicts, MILPs, seconds (tightening excluded)."""
    tight = tighten(q.network, q.box.lower, q.box.upper, "crown", target=q.target)
    ver = MilpVerifier(solver, "crown")
    start = time.perf_counter()
    verdict = ver.verify(q.network, q.box, q.target, q.k, mode, time_limit, tightened=tight)
    one_seconds = time.perf_counter() - start
    s = verdict.stats
    one = {"status": status_of(verdict), "seconds": one_seconds, "build_seconds": s.get("build_seconds"),
           "solve_seconds": s.get("solve_seconds"), "binaries": s.get("binaries"), "objective": s.get("objective"),
           "bound": s.get("bound", s.get("margin_bounds", (None, None))[1])}
    pair = pairwise(q, solver, "crown", mode, time_limit, tight)
    both = {one["status"], pair["status"]}
    return {"query": q.name, "kind": q.kind, "solver": solver, "mode": mode, "one_milp": one, "pairwise": pair,
            "conflict": both == {"robust", "not_robust"},
            "ratio": (pair["seconds"] / one_seconds) if one_seconds > 0 else None}


# --- backend agreement ----------------------------------------------------------------------------------------------
def available_solvers(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        try:
            get_backend(name)
        except MlrobustError:
            continue
        out.append(name)
    return out


def agreement(rows: list[dict]) -> list[dict]:
    """Per query, the verdict of every solver; ``conflict`` when one proves robust and another refutes."""
    by_query: dict[str, dict[str, str]] = {}
    for r in rows:
        by_query.setdefault(r["query"], {})[r["solver"] + ("" if r.get("tightening") in (None, "crown")
                                                           else f"/{r['tightening']}")] = r["status"]
    out = []
    for qname, verdicts in by_query.items():
        decided = {v for v in verdicts.values() if v in ("robust", "not_robust")}
        out.append({"query": qname, "verdicts": verdicts, "conflict": len(decided) > 1})
    return out
