"""LP bound tightening over the MILP's relaxation, and the full choice of tightenings: the bound tier's "ibp",
"crown" and "alpha" (:mod:`mlrobust.bounds.tier`) and "lp".

``lp`` starts from the tier's ``crown`` and solves, layer by layer, two LPs (min and max) per still-unstable ReLU over
the LP relaxation of the layers before it (the MILP encoding with its binaries relaxed), then the LPs of the margins
``y_c - y_t``. Sound by construction: the new bound is computed from the LP's dual multipliers by weak duality
(:func:`dual_lower_bound`), never taken from a primal value, so an LP stopped early or solved inexactly still yields a
valid (if looser) bound. A time budget caps the work; neurons not reached keep their previous bounds.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from mlrobust.bounds.alpha_crown import AlphaOptions
from mlrobust.bounds.alpha_margin import AlphaCache
from mlrobust.bounds.ibp import intersect_intervals
from mlrobust.bounds.joint_policy import JointPolicy
from mlrobust.bounds.result import Bounds
from mlrobust.bounds.tier import METHODS as TIER_METHODS
from mlrobust.bounds.tier import Tightened
from mlrobust.bounds.tier import tighten as tighten_bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.milp.builder import MilpBuilder
from mlrobust.milp.encoding import AffineForm
from mlrobust.milp.layers.relu import relu_split
from mlrobust.milp.topk import margin_form

METHODS = (*TIER_METHODS, "lp")

__all__ = ["METHODS", "LpBounder", "Tightened", "dual_lower_bound", "lp_margins", "tighten"]


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
def tighten(network: Network, lower: np.ndarray, upper: np.ndarray, method: str = "crown",
            target: int | None = None, time_budget: float | None = None,
            threads: int | None = 1, *, k: int = 2, alpha_options: AlphaOptions | None = None,
            alpha_cache: AlphaCache | None = None, joint_policy: JointPolicy | None = None) -> Tightened:
    """Bounds over the box ``[lower, upper]`` with the named tightening (:data:`METHODS`); margin bounds too when
    ``target`` is given. "ibp", "crown" and "alpha" are the bound tier's (:func:`mlrobust.bounds.tier.tighten`,
    same arguments); ``time_budget`` (seconds) also caps the LP work of "lp". ``threads``: torch threads for CROWN.
    """
    if method not in METHODS:
        raise InputError(f"unknown bound tightening {method!r}; choose one of {', '.join(METHODS)}")
    if method != "lp":
        return tighten_bounds(network, lower, upper, method, target, time_budget, threads, k=k,
                              alpha_options=alpha_options, alpha_cache=alpha_cache, joint_policy=joint_policy)
    start = time.perf_counter()
    base = tighten_bounds(network, lower, upper, "crown", target, None, threads)
    return _lp_tighten(network, base, target, time_budget, start)


def _lp_tighten(network: Network, base: Tightened, target: int | None, time_budget: float | None,
                start: float) -> Tightened:
    """``base`` (the tier's CROWN result) tightened by LPs over the MILP relaxation, layer by layer."""
    bounds, stats, L, U = base.bounds, dict(base.stats), base.margin_lower, base.margin_upper
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
    lower_d, upper_d = intersect_intervals(network, builder.lower, builder.upper)
    tightened = Bounds(network, lower_d, upper_d, "lp", time.perf_counter() - start, dict(bounds.info))
    if target is not None and L is not None and U is not None:  # L and U are set whenever a target is given
        fL, fU = builder.margin_interval(target)
        L, U = np.maximum(L, fL), np.minimum(U, fU)
        L, U, solves = lp_margins(builder, target, L, U, deadline=deadline)
        lp_solves += solves
    stats.update({"lp_solves": lp_solves, "lp_neurons": lp_neurons, "lp_skipped_for_time": skipped,
                  "unstable_lp": tightened.num_unstable})
    return Tightened(tightened, "lp", L, U, target, time.perf_counter() - start, stats)
