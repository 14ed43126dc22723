"""Bound tightening before the MILP, as a named choice: "ibp", "crown", "alpha" or "lp".

- ``ibp``: interval bounds (and the builder's interval of each affine form over the current columns).
- ``crown``: CROWN bounds intersected with IBP, and CROWN margin bounds for the top-k objective.
- ``alpha``: ``crown``, then α-CROWN (:mod:`mlrobust.bounds.alpha_margin`) on the margins the top-k proof still
  needs: optimised upper bounds of the open classes and, for k = 2, of convex combinations of pairs; the proven
  bound on the k-th largest margin is kept in ``Tightened.kth_upper``. By default (``alpha_options`` None) the
  last refined pre-activation's bounds are optimised jointly with the margins where that is cheap
  (``joint_intermediate="auto"``, :mod:`mlrobust.bounds.alpha_joint`); the pre-activation bounds that optimisation
  tightened replace CROWN's in ``Tightened.bounds`` (re-propagated by intervals), so the MILP and branch and bound
  start from them. With ``AlphaOptions.optimize_intermediate``
  the last ReLU pre-activation layer is re-bounded first (fewer unstable ReLUs for the MILP). Warm starts come from
  an :class:`~mlrobust.bounds.alpha_margin.AlphaCache` the caller keeps per query family.
- ``lp``: starts from ``crown`` and solves, layer by layer, two LPs (min and max) per still-unstable ReLU over the LP
  relaxation of the layers before it, then the LPs of the margins ``y_c - y_t``. Sound by construction: the new
  bound is computed from the LP's dual multipliers by weak duality (:func:`dual_lower_bound`), never taken from a
  primal value, so an LP stopped early or solved inexactly still yields a valid (if looser) bound. A time budget
  caps the work; neurons not reached keep their previous bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from mlrobust.bounds import margin_bounds, propagate
from mlrobust.bounds.alpha_crown import AlphaOptions, tighten_intermediate
from mlrobust.bounds.alpha_margin import AlphaCache, alpha_topk_bounds
from mlrobust.bounds.ibp import interval_affine
from mlrobust.bounds.result import Bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.milp.builder import MilpBuilder
from mlrobust.milp.encoding import AffineForm
from mlrobust.milp.layers.relu import relu_split
from mlrobust.milp.topk import margin_form

METHODS = ("ibp", "crown", "alpha", "lp")


@dataclass
class Tightened:
    """Bounds for every tensor over one box, and (when a target was given) bounds on its margins ``y_c - y_t``."""

    bounds: Bounds
    method: str
    margin_lower: np.ndarray | None = None
    margin_upper: np.ndarray | None = None
    target: int | None = None
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    kth_upper: float | None = None  # a proven upper bound of the k-th largest margin ("alpha": pairs included)
    k: int | None = None

    @property
    def num_unstable(self) -> int:
        return self.bounds.num_unstable


def interval_margins(bounds: Bounds, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Margin bounds from output intervals: ``lo_c - hi_t <= y_c - y_t <= hi_c - lo_t`` (target entry 0)."""
    lo, hi = bounds.output_lower, bounds.output_upper
    L, U = lo - hi[target], hi - lo[target]
    L[target] = U[target] = 0.0
    return L, U


def tail_margins(network: Network, bounds: Bounds, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Margin bounds from the interval of the last non-affine tensor through the network's affine tail.

    ``y = M h + c`` for the tensor ``h`` after the last ReLU/MaxPool; ``y_c - y_t = (M_c - M_t) h + c_c - c_t`` is
    bounded exactly over ``h``'s box. Often tighter than back-substitution through a max pool's relaxation.
    """
    from mlrobust.milp.layers.affine import affine_matrix

    n = network.num_classes
    M = sp.identity(n, format="csr")
    c = np.zeros(n)
    tensor = network.output_name
    while True:
        node = network.producer(tensor)
        if node is None or not node.op.affine or len(node.inputs) != 1:  # single-input affine ops have a matrix
            break
        W, b = affine_matrix(node, network.shape_of(node.inputs[0]))
        c = M @ b + c
        M = (M @ W).tocsr()
        tensor = node.inputs[0]
    D = (M - sp.csr_matrix(np.ones((n, 1))) @ M[target]).tocsr()
    lo_h, hi_h = bounds.lower[tensor].reshape(-1), bounds.upper[tensor].reshape(-1)
    pos, neg = D.maximum(0), D.minimum(0)
    dc = c - c[target]
    L = np.asarray(pos @ lo_h + neg @ hi_h).reshape(-1) + dc
    U = np.asarray(pos @ hi_h + neg @ lo_h).reshape(-1) + dc
    # outward rounding slack, as the bound propagation does
    mag = np.asarray(abs(D) @ np.maximum(np.abs(lo_h), np.abs(hi_h))).reshape(-1) + np.abs(dc)
    L, U = L - 1e-10 * mag, U + 1e-10 * mag
    L[target] = U[target] = 0.0
    return L, U


def repropagate(network: Network, lower: dict[str, np.ndarray], upper: dict[str, np.ndarray]) -> None:
    """Intersect every tensor's bounds with IBP applied to its (already tightened) inputs, in place."""
    for node in network.nodes:
        lo, hi = interval_affine(node, [lower[t] for t in node.inputs], [upper[t] for t in node.inputs])
        new_lo = np.maximum(lower[node.output], lo)
        new_hi = np.minimum(upper[node.output], hi)
        lower[node.output], upper[node.output] = new_lo, np.maximum(new_hi, new_lo)


# --- sound LP bounds --------------------------------------------------------------------------------------------
def dual_lower_bound(A: sp.csr_matrix, row_lower: np.ndarray, row_upper: np.ndarray, col_lower: np.ndarray,
                     col_upper: np.ndarray, cost: np.ndarray, offset: float, row_dual: np.ndarray) -> float:
    """A rigorous lower bound on ``min cost @ v + offset`` over the LP from *any* row multipliers.

    For every feasible ``v``: ``cost @ v = λ @ (A v) + (cost - Aᵀλ) @ v``; each term is bounded below using the row
    bounds and the (finite) column bounds. Multipliers whose sign would need an infinite row bound are set to 0.
    The result is valid whatever the quality of ``row_dual`` (weak duality); a small slack covers float rounding.
    """
    lam = np.asarray(row_dual, dtype=np.float64).copy()
    lam[(lam > 0) & ~np.isfinite(row_lower)] = 0.0
    lam[(lam < 0) & ~np.isfinite(row_upper)] = 0.0
    row_term = np.where(lam > 0, lam * np.where(np.isfinite(row_lower), row_lower, 0.0),
                        lam * np.where(np.isfinite(row_upper), row_upper, 0.0))
    reduced = cost - A.T @ lam
    col_term = np.where(reduced > 0, reduced * col_lower, reduced * col_upper)
    total = float(offset + row_term.sum() + col_term.sum())
    magnitude = float(abs(offset) + np.abs(row_term).sum() + np.abs(col_term).sum())
    return total - 1e-9 * (1.0 + magnitude)


class LpBounder:
    """The LP relaxation of a builder's current model, reused (warm-started) for many objectives."""

    def __init__(self, builder: MilpBuilder):
        from mlrobust.milp.highs_instance import new_highs

        self.col_lower, self.col_upper, _, self.A, self.row_lower, self.row_upper = builder.enc.arrays()
        self.ncols = self.col_lower.size
        h = new_highs()
        # No "threads" option: the simplex is serial, and HiGHS refuses to run when the option disagrees with the
        # thread scheduler an earlier solve in this process started.
        A = self.A
        h.passModel(self.ncols, A.shape[0], int(A.nnz), 2, 1, 0.0, np.zeros(self.ncols), self.col_lower,
                    self.col_upper, self.row_lower, self.row_upper, A.indptr.astype(np.int32),
                    A.indices.astype(np.int32), A.data.astype(np.float64), np.zeros(self.ncols, dtype=np.int32))
        self.h = h
        self.solves = 0
        self._all = np.arange(self.ncols, dtype=np.int32)

    def minimum(self, cost: np.ndarray, offset: float, time_limit: float | None) -> float:
        """A sound lower bound on ``min cost @ v + offset`` (``-inf`` if the LP gave no multipliers)."""
        h = self.h
        h.changeColsCost(self.ncols, self._all, np.asarray(cost, dtype=np.float64))
        if time_limit is not None:
            h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        h.run()
        self.solves += 1
        sol = h.getSolution()
        if not sol.dual_valid:
            return float("-inf")
        row_dual = np.asarray(sol.row_dual, dtype=np.float64)
        return dual_lower_bound(self.A, self.row_lower, self.row_upper, self.col_lower, self.col_upper,
                                cost, offset, row_dual)

    def bounds_of(self, form: AffineForm, deadline: float | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Sound (lower, upper) of each row of ``form`` over the relaxation; stops at ``deadline``."""
        n = form.size
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        A = form.widen(self.ncols)
        done = 0
        for i in range(n):  # one LP pair per neuron: the loop is over solver calls, not arithmetic
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                break
            row = A.getrow(i).toarray().reshape(-1)
            lo[i] = self.minimum(row, float(form.c[i]), left)
            left = None if deadline is None else deadline - time.perf_counter()
            hi[i] = -self.minimum(-row, -float(form.c[i]), left)
            done += 1
        return lo, hi, done


def lp_margins(builder: MilpBuilder, target: int, lower: np.ndarray, upper: np.ndarray,
               classes: np.ndarray | None = None, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Margin bounds ``(L, U)`` intersected with LP bounds over the builder's whole relaxation (sound, by duality).

    Only ``classes`` (default: all but the target) are solved; returns the new bounds and the number of LPs. Cheap
    next to per-neuron LP tightening (two LPs per class), and what decides which classes the top-k MILP keeps.
    """
    L, U = lower.astype(np.float64).copy(), upper.astype(np.float64).copy()
    D, all_classes = margin_form(builder.output_form, target, builder.enc.ncols)
    if classes is None:
        classes = all_classes
    rows = np.searchsorted(all_classes, np.asarray(classes, dtype=np.int64))
    if rows.size == 0 or (deadline is not None and time.perf_counter() >= deadline):
        return L, U, 0
    lp = LpBounder(builder)
    lo, hi, _ = lp.bounds_of(AffineForm(D.A[rows], D.c[rows]), deadline)
    cls = all_classes[rows]
    L[cls] = np.maximum(L[cls], lo)
    U[cls] = np.minimum(U[cls], hi)
    return L, np.maximum(U, L), lp.solves


# --- the named choices ------------------------------------------------------------------------------------------
def base_bounds(network: Network, lower: np.ndarray, upper: np.ndarray, method: str) -> tuple[Bounds, dict]:
    """IBP or CROWN bounds (``method`` "ibp", or anything else for CROWN) and a dict for notes about them."""
    return propagate(network, lower, upper, method="ibp" if method == "ibp" else "crown"), {}


def tighten(network: Network, lower: np.ndarray, upper: np.ndarray, method: str = "crown",
            target: int | None = None, time_budget: float | None = None,
            threads: int | None = 1, *, k: int = 2, alpha_options: AlphaOptions | None = None,
            alpha_cache: AlphaCache | None = None) -> Tightened:
    """Bounds over the box ``[lower, upper]`` with the named tightening; margin bounds too when ``target`` is given.

    ``time_budget`` (seconds) caps the LP work of ``"lp"`` and the optimisation of ``"alpha"``; IBP and CROWN are not
    interrupted. ``threads`` is the torch thread count for CROWN (None: leave torch's setting alone). ``k``,
    ``alpha_options`` and ``alpha_cache`` (warm starts) are for ``"alpha"``.
    """
    if method not in METHODS:
        raise InputError(f"unknown bound tightening {method!r}; choose one of {', '.join(METHODS)}")
    with torch_threads(threads):
        return _tighten(network, lower, upper, method, target, time_budget, k, alpha_options, alpha_cache)


def _alpha_options(options: AlphaOptions | None, time_budget: float | None, start: float) -> AlphaOptions:
    """The options with the time limit cut to what is left of ``time_budget`` (default: the tier's, intermediate
    bounds optimised jointly where that is cheap, ``joint_intermediate="auto"``)."""
    options = options or AlphaOptions(joint_intermediate="auto")
    if time_budget is None:
        return options
    left = max(float(time_budget) - (time.perf_counter() - start), 0.0)
    limit = left if options.time_limit is None else min(options.time_limit, left)
    return replace(options, time_limit=limit)


def _tighten(network: Network, lower: np.ndarray, upper: np.ndarray, method: str, target: int | None,
             time_budget: float | None, k: int = 2, alpha_options: AlphaOptions | None = None,
             alpha_cache: AlphaCache | None = None) -> Tightened:
    start = time.perf_counter()
    bounds, stats = base_bounds(network, lower, upper, "ibp" if method == "ibp" else "crown")
    if method == "alpha" and alpha_options is not None and alpha_options.optimize_intermediate:
        before = bounds.num_unstable
        bounds, rows = tighten_intermediate(network, bounds, _alpha_options(alpha_options, time_budget, start))
        stats.update({"alpha_intermediate_rows": rows, "unstable_before_alpha": before})
    stats["unstable_" + bounds.method.split("&")[0]] = bounds.num_unstable
    L = U = None
    if target is not None:
        L, U = interval_margins(bounds, target)
        tL, tU = tail_margins(network, bounds, target)
        L, U = np.maximum(L, tL), np.minimum(U, tU)
        if method != "ibp":  # CROWN margin bounds, reusing the intermediate bounds just computed
            cl, cu = margin_bounds(network, bounds.input_lower, bounds.input_upper, target, method="crown",
                                   bounds=bounds)
            L, U = np.maximum(L, cl), np.minimum(U, cu)
    if method == "alpha" and target is not None and L is not None and U is not None:
        opts = _alpha_options(alpha_options, time_budget, start)
        top = alpha_topk_bounds(network, bounds, target, k, L, U, options=opts, cache=alpha_cache,
                                family=(id(network), int(target)))
        stats.update(top.stats, crown_kth_upper=top.crown_kth_upper, alpha_seconds=top.seconds)
        if top.intermediate:  # jointly optimised pre-activation bounds: hand them on (the MILP's big-M, BaB's root)
            lows, ups = dict(bounds.lower), dict(bounds.upper)
            for t, (lo, hi) in top.intermediate.items():
                lows[t], ups[t] = np.maximum(lows[t], lo), np.minimum(ups[t], hi)
            repropagate(network, lows, ups)
            bounds = Bounds(network, lows, ups, bounds.method, bounds.seconds, dict(bounds.info))
            stats["unstable_alpha"] = bounds.num_unstable
        return Tightened(bounds, method, top.margin_lower, np.minimum(U, top.margin_upper), target,
                         time.perf_counter() - start, stats, kth_upper=top.kth_upper, k=k)
    if method != "lp":
        return Tightened(bounds, method, L, U, target, time.perf_counter() - start, stats)

    deadline = None if time_budget is None else start + float(time_budget)
    builder = MilpBuilder(network, bounds)
    lp_solves = lp_neurons = 0
    skipped = 0
    while not builder.done:
        node = builder.next_node
        if node is None:  # not done, so a node is next; a check that survives ``python -O``
            raise RuntimeError("the MILP builder reports more work but no next node")
        if node.kind == "Relu":
            t = node.inputs[0]
            builder.set_bounds(t, *builder.form_interval(t))
            _, _, unstable = relu_split(builder.lower[t], builder.upper[t])
            idx = np.flatnonzero(unstable)
            # Before any row exists the LP is the box, where the interval is already exact.
            if idx.size and builder.enc.nrows and (deadline is None or time.perf_counter() < deadline):
                lp = LpBounder(builder)
                lo, hi, done = lp.bounds_of(builder.forms[t].rows(idx, builder.enc.ncols), deadline)
                new_lo = builder.lower[t].reshape(-1).copy()
                new_hi = builder.upper[t].reshape(-1).copy()
                new_lo[idx] = np.maximum(new_lo[idx], lo)
                new_hi[idx] = np.minimum(new_hi[idx], hi)
                builder.set_bounds(t, new_lo, new_hi)
                lp_solves += lp.solves
                lp_neurons += done
                skipped += idx.size - done
            elif idx.size and builder.enc.nrows:
                skipped += idx.size
        builder.step()
    lower_d, upper_d = builder.lower, builder.upper
    repropagate(network, lower_d, upper_d)
    tightened = Bounds(network, lower_d, upper_d, "lp", time.perf_counter() - start, dict(bounds.info))
    if target is not None and L is not None and U is not None:  # L and U are set whenever a target is given
        fL, fU = builder.margin_interval(target)
        L, U = np.maximum(L, fL), np.minimum(U, fU)
        L, U, solves = lp_margins(builder, target, L, U, deadline=deadline)
        lp_solves += solves
    stats.update({"lp_solves": lp_solves, "lp_neurons": lp_neurons, "lp_skipped_for_time": skipped,
                  "unstable_lp": tightened.num_unstable})
    return Tightened(tightened, "lp", L, U, target, time.perf_counter() - start, stats)
