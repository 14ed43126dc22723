"""The bound tier: prove top-k membership from margin bounds alone (no MILP).

The k-th largest margin is at most the k-th largest upper bound ``U_c`` of ``y_c - y_t``; when that is below
``-ROBUST_TOLERANCE`` the box is robust. When even the k-th largest *lower* bound is ``>= 0``, every point of the
box violates the property, and the box centre is checked as the counterexample.

With ``method="alpha"`` the margins the proof still needs after CROWN are α-optimised (for k = 2 also convex
combinations of pairs of margins, see :mod:`mlrobust.bounds.alpha_margin`); the check keeps an
:class:`~mlrobust.bounds.alpha_margin.AlphaCache` so the slopes of one query warm-start the next query of the same
network and target (the nested, slightly growing boxes of a search), and a
:class:`~mlrobust.bounds.joint_policy.JointPolicy` that decides per query whether the intermediate bounds are
optimised jointly (``joint_intermediate="auto"``, the default) from the gain per second measured on the earlier
queries of the same network and target.
"""

from __future__ import annotations

import time

import numpy as np

from mlrobust.bounds.alpha_crown import AlphaOptions
from mlrobust.bounds.alpha_margin import AlphaCache
from mlrobust.bounds.joint_policy import JointPolicy
from mlrobust.bounds.tier import Tightened
from mlrobust.ir.graph import Network
from mlrobust.milp.tightening import tighten
from mlrobust.milp.topk import kth_largest
from mlrobust.verify.base import Mode
from mlrobust.verify.counterexample import TopKProperty, check_points, check_query
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import (
    ROBUST_TOLERANCE,
    NotRobust,
    Robust,
    Unknown,
    Verdict,
)


def margin_range(tight: Tightened, target: int, k: int) -> tuple[float, float]:
    """Proven ``(lower, upper)`` bounds on the k-th largest margin over the box."""
    if tight.margin_lower is None or tight.margin_upper is None:  # a check that survives ``python -O``
        raise ValueError("margin_range needs bounds tightened for a target (tighten(..., target=t))")
    others = np.delete(np.arange(tight.margin_lower.size), target)
    hi = kth_largest(tight.margin_upper[others], k)
    if tight.kth_upper is not None and tight.k == k:
        hi = min(hi, tight.kth_upper)
    return kth_largest(tight.margin_lower[others], k), hi


def verdict_from_bounds(tight: Tightened, network: Network, box: Box, target: int, k: int,
                        seconds: float | None = None) -> Verdict:
    """Robust if the bounds prove it, NotRobust if they prove every point violates it (centre checked), else Unknown."""
    lo, hi = margin_range(tight, target, k)
    stats = {"bounds": {"method": tight.method, "unstable_relus": tight.num_unstable, "margin_lower": lo,
                        "margin_upper": hi, **tight.stats}}
    secs = {"bounds": tight.seconds if seconds is None else seconds}
    if hi < -ROBUST_TOLERANCE:
        return Robust(tier="bounds", seconds=secs, stats=stats, bound=hi)
    if lo >= 0:
        point = check_points(network, box, [box.center], TopKProperty(target, k))[0]
        if point.confirmed:
            return NotRobust(tier="bounds", seconds=secs, stats=stats, weak_points=[point.weak_point()],
                             counterexample=point.x, margin=point.margin)
    return Unknown(tier="bounds", seconds=secs, stats=stats,
                   reason=f"{tight.method} bounds inconclusive: k-th largest margin in [{lo:.4g}, {hi:.4g}]")


class BoundCheck:
    """Incomplete verifier from sound bounds (``method``: "ibp", "crown", "alpha" or "lp").

    ``lp_time_budget`` caps the LP or α optimisation seconds per query; ``alpha_options`` the α-CROWN settings;
    ``warm_start`` keeps the α parameters across queries (per network and target), and the measurements that
    decide ``joint_intermediate="auto"`` per query (``joint_policy``; the choice and its reason are in the verdict's
    ``stats["bounds"]``).
    """

    name = "bounds"

    def __init__(self, method: str = "crown", lp_time_budget: float | None = 10.0,
                 alpha_options: AlphaOptions | None = None, warm_start: bool = True):
        self.method = method
        self.lp_time_budget = lp_time_budget
        self.alpha_options = alpha_options
        self.alpha_cache = AlphaCache() if warm_start else None
        self.joint_policy = JointPolicy() if warm_start else None

    def tighten(self, network: Network, box: Box, target: int, time_limit: float | None = None,
                k: int = 2) -> Tightened:
        budget = self.lp_time_budget
        if time_limit is not None:
            budget = time_limit if budget is None else min(budget, time_limit)
        return tighten(network, box.lower, box.upper, self.method, target=target, time_budget=budget, k=k,
                       alpha_options=self.alpha_options, alpha_cache=self.alpha_cache,
                       joint_policy=self.joint_policy)

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        check_query(network, box, target, k)
        start = time.perf_counter()
        tight = self.tighten(network, box, target, time_limit, k)
        return verdict_from_bounds(tight, network, box, target, k, time.perf_counter() - start)
