"""The bound tier: tightened bounds over a box as a named choice, "ibp", "crown" or "alpha", with margin bounds.

This is what the cascade's bound check and the MILP builder's callers ask for bounds:

- ``ibp``: interval bounds.
- ``crown``: CROWN bounds intersected with IBP, and CROWN margin bounds for the top-k objective.
- ``alpha``: ``crown``, then α-CROWN (:mod:`mlrobust.bounds.alpha_margin`) on the margins the top-k proof still
  needs: optimised upper bounds of the open classes and, for k = 2, of convex combinations of pairs; the proven
  bound on the k-th largest margin is kept in ``Tightened.kth_upper``. By default (``alpha_options`` None) the
  last refined pre-activation's bounds may be optimised jointly with the margins (``joint_intermediate="auto"``,
  :mod:`mlrobust.bounds.alpha_joint`; decided per call as below); the pre-activation bounds that optimisation
  tightened replace CROWN's in ``Tightened.bounds`` (re-propagated by intervals), so the MILP and branch and bound
  start from them. With ``AlphaOptions.optimize_intermediate`` the last ReLU pre-activation layer is re-bounded
  first (fewer unstable ReLUs for the MILP). Warm starts come from an
  :class:`~mlrobust.bounds.alpha_margin.AlphaCache` the caller keeps per query family; a caller asking a sequence
  of related queries also keeps a :class:`~mlrobust.bounds.joint_policy.JointPolicy`, which then decides "auto"
  per call by the gain per second measured on the earlier calls (``stats["joint_choice"]``, ``"joint_reason"``).

LP tightening over the MILP's relaxation (``"lp"``) needs the MILP encoding, so it lives after it, in
:mod:`mlrobust.milp.tightening`, which starts from this module's ``crown`` result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from mlrobust.bounds import margin_bounds, propagate
from mlrobust.bounds.alpha_crown import AlphaOptions, tighten_intermediate
from mlrobust.bounds.alpha_margin import AlphaCache, TopKBound, alpha_topk_bounds
from mlrobust.bounds.ibp import intersect_intervals
from mlrobust.bounds.joint_policy import JointPolicy
from mlrobust.bounds.result import Bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.ops.base import affine_matrix

METHODS = ("ibp", "crown", "alpha")

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


def base_bounds(network: Network, lower: np.ndarray, upper: np.ndarray, method: str) -> tuple[Bounds, dict]:
    """IBP or CROWN bounds (``method`` "ibp", or anything else for CROWN) and a dict for notes about them."""
    return propagate(network, lower, upper, method="ibp" if method == "ibp" else "crown"), {}


def tighten(network: Network, lower: np.ndarray, upper: np.ndarray, method: str = "crown",
            target: int | None = None, time_budget: float | None = None,
            threads: int | None = 1, *, k: int = 2, alpha_options: AlphaOptions | None = None,
            alpha_cache: AlphaCache | None = None, joint_policy: JointPolicy | None = None) -> Tightened:
    """Bounds over the box ``[lower, upper]`` with the named tightening; margin bounds too when ``target`` is given.

    ``time_budget`` (seconds) caps the optimisation of ``"alpha"``; IBP and CROWN are not interrupted.
    ``threads`` is the torch thread count for CROWN (None: leave torch's setting alone). ``k``, ``alpha_options``,
    ``alpha_cache`` (warm starts) and ``joint_policy`` (decides ``joint_intermediate="auto"`` per call from the
    earlier calls; without one "auto" runs the joint pass below its work cap) are for ``"alpha"``.
    """
    if method not in METHODS:
        raise InputError(f"unknown bound tightening {method!r}; choose one of {', '.join(METHODS)}")
    with torch_threads(threads):
        return _tighten(network, lower, upper, method, target, time_budget, k, alpha_options, alpha_cache,
                        joint_policy)


def _alpha_options(options: AlphaOptions | None, time_budget: float | None, start: float) -> AlphaOptions:
    """The options with the time limit cut to what is left of ``time_budget`` (default: the tier's,
    intermediate bounds optimised jointly or not as "auto" decides, ``joint_intermediate="auto"``)."""
    options = options or AlphaOptions(joint_intermediate="auto")
    if time_budget is None:
        return options
    left = max(float(time_budget) - (time.perf_counter() - start), 0.0)
    limit = left if options.time_limit is None else min(options.time_limit, left)
    return replace(options, time_limit=limit)


def _tighten(network: Network, lower: np.ndarray, upper: np.ndarray, method: str, target: int | None,
             time_budget: float | None, k: int = 2, alpha_options: AlphaOptions | None = None,
             alpha_cache: AlphaCache | None = None, joint_policy: JointPolicy | None = None) -> Tightened:
    start = time.perf_counter()
    policy_start = None if joint_policy is None else joint_policy.clock()
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
        family = (id(network), int(target))
        notes: dict = {}
        if joint_policy is not None and policy_start is not None and opts.joint_intermediate == "auto":

            def alpha(joint: bool) -> TopKBound:  # "auto" when joint: the work cap still guards the pass
                left = replace(_alpha_options(alpha_options, time_budget, start),
                               joint_intermediate="auto" if joint else "off")
                return alpha_topk_bounds(network, bounds, target, k, L, U, options=left, cache=alpha_cache,
                                         family=family)

            top, notes = joint_policy.run(family, alpha, policy_start)
        else:
            top = alpha_topk_bounds(network, bounds, target, k, L, U, options=opts, cache=alpha_cache, family=family)
        stats.update(top.stats, **notes, crown_kth_upper=top.crown_kth_upper, alpha_seconds=top.seconds)
        if top.intermediate:  # jointly optimised pre-activation bounds: hand them on (the MILP's big-M, BaB's root)
            lows, ups = dict(bounds.lower), dict(bounds.upper)
            for t, (lo, hi) in top.intermediate.items():
                lows[t], ups[t] = np.maximum(lows[t], lo), np.minimum(ups[t], hi)
            lows, ups = intersect_intervals(network, lows, ups)
            bounds = Bounds(network, lows, ups, bounds.method, bounds.seconds, dict(bounds.info))
            stats["unstable_alpha"] = bounds.num_unstable
        return Tightened(bounds, method, top.margin_lower, np.minimum(U, top.margin_upper), target,
                         time.perf_counter() - start, stats, kth_upper=top.kth_upper, k=k)
    return Tightened(bounds, method, L, U, target, time.perf_counter() - start, stats)
