"""The scale benchmark's bisection: it finds the largest proven scale of a verifier whose answer is known, stops at
the budget, and never reports a scale the verifier did not prove."""

from __future__ import annotations

import math

from benchmarks.bench_scale import geomean, proven_scale
from mlrobust.verify.verdict import NotRobust, Robust, Unknown


class ThresholdVerifier:
    """Robust up to ``proves``, a counterexample from ``breaks`` on, unknown in between (the box is the scale)."""

    name = "threshold"

    def __init__(self, proves: float, breaks: float):
        self.proves, self.breaks, self.calls = proves, breaks, 0

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        self.calls += 1
        if box <= self.proves:
            return Robust(tier="fake")
        if box >= self.breaks:
            return NotRobust(tier="fake")
        return Unknown(tier="fake")


def test_bisection_finds_the_threshold_within_tolerance():
    res = proven_scale(ThresholdVerifier(1.37, 9.0), "t", None, 0, lambda s: s, upper=4.0, budget=60.0,
                       query_limit=10.0, max_queries=30)
    assert 1.37 / 1.02 <= res.proven <= 1.37
    assert res.refuted is None
    assert all(q.verdict == "robust" for q in res.queries if q.scale <= res.proven)


def test_a_verifier_that_proves_nothing_below_one_reports_a_smaller_scale_or_zero():
    res = proven_scale(ThresholdVerifier(0.3, 0.8), "t", None, 0, lambda s: s, upper=4.0, budget=60.0,
                       query_limit=10.0, max_queries=30)
    assert 0.3 / 1.02 <= res.proven <= 0.3
    assert res.refuted is not None and res.refuted >= 0.8
    none = proven_scale(ThresholdVerifier(-1.0, 9.0), "t", None, 0, lambda s: s, upper=4.0, budget=60.0,
                        query_limit=10.0, max_queries=5)
    assert none.proven == 0.0 and len(none.queries) == 5


def test_budget_and_query_cap_stop_the_bisection():
    v = ThresholdVerifier(1.37, 9.0)
    res = proven_scale(v, "t", None, 0, lambda s: s, upper=4.0, budget=60.0, query_limit=10.0, max_queries=2)
    assert v.calls == 2 and res.proven == 1.05  # 1.0, then 5% more
    assert proven_scale(v, "t", None, 0, lambda s: s, upper=4.0, budget=0.0, query_limit=1.0).queries == []


def test_scales_grow_in_doubling_steps_until_a_failure_then_bisect():
    res = proven_scale(ThresholdVerifier(1.37, 9.0), "t", None, 0, lambda s: s, upper=4.0, budget=60.0,
                       query_limit=10.0, max_queries=30)
    scales = [q.scale for q in res.queries]
    assert scales[:4] == [1.0, 1.05, 1.05 * 1.1, 1.05 * 1.1 * 1.2]  # 1.386 > 1.37 fails
    assert all(1.05 * 1.1 < s < 1.05 * 1.1 * 1.2 for s in scales[4:])


def test_geomean_ignores_zero_and_infinite():
    assert math.isclose(geomean([1.0, 4.0, 0.0, math.inf]), 2.0)
    assert geomean([0.0]) is None
