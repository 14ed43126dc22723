"""The search's cost model (mlrobust.search.costs) and the plans made from it: measured seconds per call by tier, the
choice of the tier that fits, the share of calls between tiers, the fall-back of a query whose tier cannot finish in
the time left, the bisection in log scale where plain halving is too expensive, the push's limits, and the summary's
"never tried" lines. Costs are injected (a fake clock, recorded figures): no assertion on real time."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search_oracles import ExactLpVerifier, tiny_case

from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.search.baselines import GEOMETRIC_REL, bisect_scale, geometric_plan
from mlrobust.search.costs import FIT_MARGIN, CostModel, bisection_steps
from mlrobust.search.problem import Budget, SearchProblem
from mlrobust.search.run import SearchOptions, never_tried
from mlrobust.search.tiers import PUSH_BAB_LIMIT, PUSH_BOUNDS_LIMIT, push_limits
from mlrobust.verify.verdict import Robust, Unknown


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class NamedVerifier:
    """A verifier with a name (its cost-model key) that answers a fixed verdict and counts its calls."""

    def __init__(self, name: str, robust: bool = True) -> None:
        self.name = name
        self.robust = robust
        self.calls = 0

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        self.calls += 1
        if self.robust:
            return Robust(tier=self.name, bound=-1.0)
        return Unknown(tier=self.name, reason="undecided")


def tiny_problem(verifier, time_limit: float | None = 100.0):
    net, image, target, mask = tiny_case(4, hidden=3, classes=3)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    pb = SearchProblem(net, nbhd, target, verifier, k=2, budget=Budget(time_limit=time_limit),
                       warm_attack=False)
    return pb


# --- the cost model ---------------------------------------------------------------------------------------------
def test_measure_records_first_call_and_running_mean_on_the_injected_clock():
    clock = FakeClock()
    costs = CostModel(clock=clock)
    for seconds in (2.0, 4.0, 6.0):
        with costs.measure("bounds"):
            clock.now += seconds
    assert costs.tiers["bounds"].calls == 3
    assert costs.tiers["bounds"].first == pytest.approx(2.0)
    assert costs.mean("bounds") == pytest.approx(5.0)  # the calls after the first (which carries set-up)
    assert costs.mean("milp") is None
    report = costs.to_dict()["tiers"]["bounds"]
    assert report == {"calls": 3, "seconds_per_call": 5.0, "first_call_s": 2.0, "skipped": 0}
    costs.record("alpha", 7.0)
    assert costs.mean("alpha") == pytest.approx(7.0)  # the first call alone


def test_a_tier_never_measured_fits_and_a_measured_one_fits_only_with_its_margin():
    costs = CostModel()
    assert costs.fits("milp", 0.5)  # its first call is the measurement
    assert not costs.fits("milp", 0.0)
    costs.record("milp", 10.0)
    assert costs.fits("milp", 10.0 * FIT_MARGIN)
    assert not costs.fits("milp", 10.0 * FIT_MARGIN - 0.01)
    assert costs.fits("milp", None)


def test_the_plan_picks_the_strongest_tier_that_fits_and_the_cheaper_one_when_time_is_short():
    costs = CostModel()
    costs.record("bounds", 1.0)
    costs.record("bab", 8.0)
    costs.record("milp", 30.0)
    tiers = ["bounds", "bab", "milp"]
    assert costs.choose(tiers, 100.0) == "milp"
    assert costs.choose(tiers, 20.0) == "bab"
    assert costs.choose(tiers, 5.0) == "bounds"
    assert costs.choose(tiers, 0.5) is None


@settings(max_examples=40, deadline=None)
@given(cheap=st.floats(0.01, 10.0), ratio=st.floats(1.5, 100.0), span=st.floats(1.0, 1000.0))
def test_sharing_time_gives_the_expensive_tier_fewer_calls_in_proportion(cheap, ratio, span):
    costs = CostModel()
    costs.record("cheap", cheap)
    costs.record("dear", cheap * ratio)
    calls = costs.share_calls(["cheap", "dear"], span)
    assert calls["dear"] < calls["cheap"]
    assert calls["cheap"] / calls["dear"] == pytest.approx(ratio)
    assert calls["cheap"] * cheap + calls["dear"] * cheap * ratio == pytest.approx(span)


def test_bisection_steps_count_the_top_end_and_every_halving():
    assert bisection_steps(1.0, 1e-4) == 1 + 14
    assert bisection_steps(0.5, 0.5) == 1
    assert bisection_steps(1.0, 0.25) == 3


# --- fall-back when a tier cannot finish in the time left ------------------------------------------------------
def test_a_query_whose_tier_cannot_finish_falls_back_to_a_cheaper_one():
    dear, cheap = NamedVerifier("dear"), NamedVerifier("cheap")
    pb = tiny_problem(dear, time_limit=100.0)
    pb.fallbacks = [cheap]
    pb.costs.record("dear", 500.0)  # a call costs more than the whole budget
    v = pb.query(np.full(pb.num_layers, 0.01))
    assert v.is_robust and v.tier == "cheap"
    assert dear.calls == 0 and cheap.calls == 1
    assert pb.costs.fallbacks == {"dear -> cheap": 1}
    assert pb.costs.tiers["dear"].skipped == 1 and pb.costs.tiers["cheap"].calls == 1


def test_a_query_no_tier_can_finish_answers_budget_without_calling_anything():
    dear, cheap = NamedVerifier("dear"), NamedVerifier("cheap")
    pb = tiny_problem(dear, time_limit=100.0)
    pb.fallbacks = [cheap]
    pb.costs.record("dear", 500.0)
    pb.costs.record("cheap", 400.0)
    v = pb.query(np.full(pb.num_layers, 0.01))
    assert not v.is_robust and v.tier == "budget" and "time left" in v.reason
    assert dear.calls == 0 and cheap.calls == 0 and pb.stats.verifier_calls == 0
    assert pb.costs.fallbacks == {"dear -> none": 1}


def test_a_tier_that_fits_is_asked_itself_and_timed():
    dear, cheap = NamedVerifier("dear"), NamedVerifier("cheap")
    pb = tiny_problem(dear, time_limit=100.0)
    pb.fallbacks = [cheap]
    pb.costs.record("dear", 1.0)
    assert pb.query(np.full(pb.num_layers, 0.01)).tier == "dear"
    assert dear.calls == 1 and cheap.calls == 0 and pb.costs.tiers["dear"].calls == 2


# --- bisection planned from the measured cost ------------------------------------------------------------------
def test_bisection_halves_in_log_scale_only_when_plain_steps_cost_too_much():
    pb = tiny_problem(ExactLpVerifier(), time_limit=100.0)
    assert not geometric_plan(pb, 0.0, 1.0, 1e-4)  # not measured yet
    pb.costs.record("exact-lp", 0.1)  # 15 steps x 0.1 s: well within a quarter of 100 s
    assert not geometric_plan(pb, 0.0, 1.0, 1e-4)
    pb.costs.record("exact-lp", 10.0)  # 10 s a call after the first: 150 s of plain steps
    assert geometric_plan(pb, 0.0, 1.0, 1e-4)


def _threshold_problem(threshold: float, cost: float | None):
    """A problem whose verifier proves exactly the uniform vectors below ``threshold`` (and counts its calls)."""

    class Threshold(NamedVerifier):
        def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
            self.calls += 1
            eps = float(np.max(box.upper - box.lower)) / 2
            if eps <= threshold:
                return Robust(tier=self.name, bound=-1.0)
            return Unknown(tier=self.name, reason="undecided")

    ver = Threshold("threshold")
    pb = tiny_problem(ver, time_limit=100.0)
    if cost is not None:
        pb.costs.record("threshold", cost)
        pb.costs.record("threshold", cost)
    return pb, ver


@pytest.mark.parametrize("threshold", [0.0011, 0.013, 0.07])
def test_log_scale_bisection_finds_the_radius_to_a_few_percent_in_fewer_calls(threshold):
    n_layers = tiny_problem(ExactLpVerifier()).num_layers

    def make(pb):
        return lambda v: pb.clip(np.full(n_layers, v))

    plain, plain_ver = _threshold_problem(threshold, cost=None)
    dear, dear_ver = _threshold_problem(threshold, cost=10.0)  # a measured 10 s per call, 100 s budget
    r_plain = bisect_scale(plain, make(plain), 0.0, 0.5, 1e-4, "uniform")
    r_dear = bisect_scale(dear, make(dear), 0.0, 0.5, 1e-4, "uniform")
    assert r_plain <= threshold and r_dear <= threshold  # both proven (the verifier's answers)
    assert r_plain >= threshold - 1e-4
    assert r_dear >= threshold / (1 + GEOMETRIC_REL) ** 2 - 1e-12
    assert dear_ver.calls < plain_ver.calls


# --- the push's limits -----------------------------------------------------------------------------------------
def test_push_limits_follow_the_measured_bound_cost():
    assert push_limits(None) == (PUSH_BOUNDS_LIMIT, PUSH_BAB_LIMIT)
    assert push_limits(0.01) == (PUSH_BOUNDS_LIMIT, PUSH_BAB_LIMIT)  # a quick bound keeps the 64x64 limits
    bounds, bab = push_limits(4.0)  # a 3x300x300 network: a bound computation takes seconds
    assert bounds >= 3 * 4.0 and bab >= 12 * 4.0 and bab > PUSH_BAB_LIMIT


# --- the summary says what was never tried ---------------------------------------------------------------------
def test_never_tried_names_tiers_whose_calls_could_not_finish():
    details = {"object": {}, "upper_bounds": {}, "push": {},
               "costs": {"tiers": {"cascade": {"calls": 1, "seconds_per_call": 12.0, "skipped": 3},
                                   "bounds": {"calls": 9, "seconds_per_call": 0.5, "skipped": 0}},
                         "fallbacks": {"cascade -> bounds": 3}}}
    lines = never_tried(SearchOptions(), details, [], grow=True)
    assert lines == ["3 calls of the cascade tier (about 12 s each): not started, they could not finish in the "
                     "time left"]
    details["costs"]["tiers"]["cascade"]["skipped"] = 1
    assert never_tried(SearchOptions(), details, [], grow=True)[0].startswith("1 call of the cascade tier")
    details["costs"]["tiers"]["cascade"]["skipped"] = 0
    assert never_tried(SearchOptions(), details, [], grow=True) == []


def test_a_search_records_each_tiers_cost_per_call_in_its_details():
    from mlrobust.search.run import run_search

    pb = tiny_problem(ExactLpVerifier(), time_limit=30.0)
    res = run_search(pb, SearchOptions(method="uniform"))
    costs = res.details["costs"]["tiers"]
    assert costs["exact-lp"]["calls"] == pb.stats.verifier_calls > 0
    assert costs["exact-lp"]["seconds_per_call"] > 0 and math.isfinite(costs["exact-lp"]["first_call_s"])


def test_never_tried_names_the_shaped_starts_it_could_not_afford():
    details = {"object": {}, "upper_bounds": {}, "push": {},
               "shaped_starts_skipped": {"seconds_per_query": 2.6, "seconds_left": 20.0}}
    assert never_tried(SearchOptions(), details, [], grow=True) == [
        "the shaped starts (about 2.6 s a query: they did not fit in the exploration's time left)"]


def test_a_query_costs_its_verifier_call_plus_the_warm_attack_before_it():
    from mlrobust.search.baselines import query_seconds

    pb = tiny_problem(ExactLpVerifier(), time_limit=100.0)
    assert query_seconds(pb) is None
    pb.costs.record("exact-lp", 1.0)
    pb.costs.record("warm-attack", 0.5)
    assert query_seconds(pb) == pytest.approx(1.0)  # this problem runs no warm attack
    pb.warm_attack = True
    assert query_seconds(pb) == pytest.approx(1.5)


@pytest.mark.parametrize("seconds_per_call,scaled", [(100.0, True), (1e-6, False)])
def test_the_whole_vector_is_scaled_on_the_bound_tier_only_where_the_per_layer_push_cannot_reach_every_layer(
        seconds_per_call, scaled):
    from mlrobust.search.boundary import Tier
    from mlrobust.search.run import _scale_on_bound_tier, _State

    ver = ExactLpVerifier()
    pb = tiny_problem(ver, time_limit=1e6)
    start = pb.clip(np.full(pb.num_layers, 0.002))
    assert pb.query(start).is_robust
    for _ in range(2):  # injected: the tiny net's real calls take microseconds
        pb.costs.record("exact-lp", seconds_per_call)
    st = _State(start.copy(), 1e-3)
    kept: list[np.ndarray] = []
    # open layers x 2 queries x ~50 s (the injected calls averaged with the real one) against 300 s left
    why = _scale_on_bound_tier(pb, st, Tier("bounds", ver, None), end=pb.elapsed() + 300.0, keep=kept.append)
    assert (why is not None) == scaled and ("bound_scale" in st.details) == scaled
    if scaled:
        assert st.details["bound_scale"]["scale"] > 1.0 and np.all(st.eps >= start)
        assert pb.known_robust(st.eps) is not None  # every scaled vector was proven by a query
        assert kept and np.array_equal(kept[-1], st.eps)
    else:
        assert np.array_equal(st.eps, start) and not kept


def test_the_warm_attack_runs_only_while_it_costs_less_than_the_verifier_call():
    ver = ExactLpVerifier()
    pb = tiny_problem(ver, time_limit=100.0)
    assert pb._warm_pays(ver)  # nothing measured
    pb.costs.record("exact-lp", 1.0)
    pb.costs.record("warm-attack", 0.5)
    assert pb._warm_pays(ver)
    pb.costs.record("warm-attack", 1.7)  # the attack now costs more than the call it would spare
    assert not pb._warm_pays(ver)
    pb.warm_attack = True
    calls = pb.costs.tiers["warm-attack"].calls
    assert pb.query(np.full(pb.num_layers, 0.003)).tier == "exact"
    assert pb.costs.tiers["warm-attack"].calls == calls and ver.calls == 1


def test_never_tried_says_when_the_object_floor_was_dropped():
    details = {"object": {"floor": 0.0, "floor_dropped": 0.00186}, "upper_bounds": {}, "push": {}}
    lines = never_tried(SearchOptions(), details, [], grow=True)
    assert len(lines) == 1 and lines[0].startswith("keeping the object's floor ε₀ ≥ 0.0019 (the floored starts gave")


def test_a_bisection_stops_at_the_first_query_no_tier_can_answer_in_the_time_left():
    pb, ver = _threshold_problem(0.013, cost=None)
    n_layers = pb.num_layers
    pb.costs.record("threshold", 500.0)
    pb.costs.record("threshold", 500.0)  # every call now costs more than the 100 s budget
    r = bisect_scale(pb, lambda v: pb.clip(np.full(n_layers, v)), 0.0, 0.5, 1e-4, "uniform")
    assert r == 0.0 and ver.calls == 0
    assert pb.costs.tiers["threshold"].skipped == 2  # the top end and one midpoint, then it stops
