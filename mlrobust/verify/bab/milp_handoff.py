"""The MILP hand-off: the last open domains of a top-k branch and bound decided by the exact MILP, worst first,
each on its own box and CROWN bounds refreshed under its splits."""

from __future__ import annotations

import time

import numpy as np

from mlrobust.bounds.margin import linear_bounds
from mlrobust.bounds.result import Bounds
from mlrobust.bounds.tier import Tightened
from mlrobust.ir.graph import Network
from mlrobust.verify.bab.bounding import Engine, domain_views
from mlrobust.verify.bab.store import DomainStore
from mlrobust.verify.bab_bounds import SplitCrown
from mlrobust.verify.counterexample import CheckedPoint, TopKProperty, check_points
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import NotRobust, Robust


def milp_handoff(milp: MilpVerifier, network: Network, box: Box, engine: Engine, store: DomainStore,
                 topk: tuple[int, int], deadline: float | None, stats: dict
                 ) -> tuple[str, float, CheckedPoint | None]:
    """Decide every open domain of ``store`` with the MILP on the domain's own bounds (worst first; the time left
    shared evenly among those not yet decided). A domain is taken up only when its set-up (CROWN refresh, margin
    bounds) and the MILP's own overrun of its limit, as the last domain took them, leave its solve time before
    ``deadline``; each solve's limit ends by then.

    Returns ("proven", worst MILP bound, None), ("violated", inf, point) or ("unknown", worst open bound, None);
    on "unknown" the undecided domains are back in ``store``.
    """
    target, k = topk
    crown_engine = engine if isinstance(engine, SplitCrown) else engine.crown
    open_doms = store.pop(len(store))
    views = domain_views(open_doms, store.layout)
    worst = float("-inf")
    stats["milp_domains"] = 0
    t0 = time.perf_counter()
    overhead = 0.0  # the last domain's seconds outside its MILP's time limit (set-up, and the solve's overrun)
    try:
        for i, dom in enumerate(views):
            began = time.perf_counter()
            if deadline is not None and began + overhead >= deadline:
                # a MILP started now would only overrun: this domain and the rest stay open
                store.push(open_doms.take(np.arange(i, open_doms.size)))
                return "unknown", store.worst(), None
            refreshed = crown_engine.refresh(dom, deadline)
            if refreshed is None:
                continue  # empty: nothing to prove there
            _, rec = refreshed
            bounds = Bounds(network, dict(rec.lower), dict(rec.upper), "crown")
            sub = Box(dom.lower, dom.upper)
            rows = np.eye(network.num_classes)
            rows[:, target] -= 1.0
            m_lo, m_hi = linear_bounds(network, sub.lower, sub.upper, rows, bounds=bounds)
            m_lo[target] = m_hi[target] = 0.0
            tight = Tightened(bounds, "crown", m_lo, m_hi, target)
            left = None
            if deadline is not None:
                # the set-up just measured and the last solve's overrun are kept back from this solve's share
                left = (deadline - time.perf_counter() - overhead) / (len(views) - i)
                if left <= 0.0:
                    store.push(open_doms.take(np.arange(i, open_doms.size)))
                    return "unknown", store.worst(), None
            solve_start = time.perf_counter()
            v = milp.verify(network, sub, target, k, "decide", left, tightened=tight)
            stats["milp_domains"] += 1
            if left is not None:
                overhead = (solve_start - began) + max(time.perf_counter() - solve_start - left, 0.0)
            if isinstance(v, NotRobust) and v.counterexample is not None:
                point = check_points(network, box, [v.counterexample], TopKProperty(target, k))[0]
                if point.confirmed:
                    return "violated", float("inf"), point
            if not isinstance(v, Robust):
                store.push(open_doms.take(np.arange(i, open_doms.size)))
                return "unknown", store.worst(), None
            worst = max(worst, float(v.bound))
    finally:
        stats["milp_seconds"] = time.perf_counter() - t0
    return "proven", worst, None
