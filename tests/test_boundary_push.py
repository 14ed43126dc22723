"""The push to the boundary (mlrobust.search.boundary): every vector it reports is proven (checked by the exact
oracle), every layer it certifies has a confirmed counterexample within delta of its epsilon (and the true
boundary lies within delta), cheap tiers hand layers over to stronger ones, and Ctrl-C during the push still
returns a proven vector."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search_boundary import (
    DELTA,
    InterruptAfter,
    assert_refutations_rerun,
    layer_boundary,
    problem,
    truth,
)

from mlrobust.search.boundary import Tier, push_to_boundary, rescaled_statuses, scale_to_boundary
from mlrobust.search.intervals import apply_upper_bounds, known_upper_bounds
from mlrobust.search.maximality import LayerMaximality
from mlrobust.search.run import OBJECT_FLOOR_CAP, SearchOptions, run_search
from mlrobust.search.tiers import push_tiers
from mlrobust.verify.cascade import Cascade
from mlrobust.verify.verdict import ROBUST_TOLERANCE, Unknown

#: (seed, hidden, classes) of tiny nets whose layers break inside the full range
CASES = [(4, 3, 3), (6, 3, 3)]
#: The boundary method with its search cut short (a few queries): the push does the work from a small vector.
SHORT = dict(method="boundary", delta=DELTA, explore_share=0.0005, refine_share=0.0005)


class Undecided:
    """A sound but useless tier: it never decides anything (counts its calls)."""

    name = "undecided"

    def __init__(self):
        self.calls = 0

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        self.calls += 1
        return Unknown(tier="undecided", reason="never decides")


def start(pb, scale=0.3):
    """A proven vector well inside the robust region: ``scale`` times the uniform radius (exact bisection)."""
    lo, hi = 0.0, float(np.max(pb.saturation))
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if truth(pb, np.full(pb.num_layers, mid)) < -ROBUST_TOLERANCE else (lo, mid)
    eps = pb.clip(np.full(pb.num_layers, scale * lo))
    assert pb.query(eps).is_robust
    return eps


@pytest.mark.parametrize("seed,hidden,classes", CASES)
def test_push_reaches_the_boundary_of_every_layer_with_an_exact_verifier(seed, hidden, classes):
    pb = problem(seed, hidden, classes)
    eps0 = start(pb)
    eps, statuses, report = push_to_boundary(pb, eps0, DELTA, [Tier("exact", None, None)])
    assert np.all(eps >= eps0) and truth(pb, eps) < -ROBUST_TOLERANCE  # grown, and proven
    assert pb.known_robust(eps) is not None  # by a query of the exact vector (or one above it)
    assert report.stop_reason == "every layer settled" and report.proven >= 1
    res = apply_upper_bounds(pb, eps, statuses, DELTA)
    for d, m in enumerate(res):
        lo, hi = layer_boundary(pb, eps, d)
        # the exact verifier decides every query: every layer ends saturated or within delta of a counterexample
        assert m.status in ("refuted", "saturated"), (d, m.status, m.reason)
        if m.status == "refuted":
            assert m.refuted_eps - eps[d] <= DELTA * (1 + 1e-9)
            assert lo - eps[d] <= DELTA + 1e-3  # the true boundary is within delta (bisection tolerance 1e-3)
            assert m.refuted_eps >= lo  # a refutation is never below a robust value


@settings(max_examples=6, deadline=None)
@given(scale=st.floats(0.0, 0.9), seed=st.sampled_from([4, 6]), order=st.permutations(range(4)))
def test_push_never_reports_an_unproven_vector(scale, seed, order):
    """Whatever the start and the order of the layers, the pushed vector is robust (exact oracle) and every upper
    bound stays above the true boundary."""
    pb = problem(seed, 3, 3)
    eps0 = start(pb, scale)
    layers = [d for d in order if d < pb.num_layers]
    eps, statuses, _ = push_to_boundary(pb, eps0, DELTA, [Tier("exact", None, None)], layers=layers)
    assert truth(pb, eps) < -ROBUST_TOLERANCE
    for d, up in enumerate(known_upper_bounds(pb, eps)):
        if up is not None:
            assert truth(pb, np.where(np.arange(pb.num_layers) == d, up.eps, eps)) >= 0


def test_a_tier_that_cannot_decide_hands_the_layers_to_the_next():
    pb = problem(4, 3, 3)
    eps0 = start(pb)
    useless = Undecided()
    eps, statuses, report = push_to_boundary(pb, eps0, DELTA, [Tier("undecided", useless, 1.0),
                                                               Tier("exact", None, None)])
    assert useless.calls >= 1 and report.escalations >= 1
    assert report.queries["undecided:unknown"] == useless.calls
    assert any(k.startswith("exact:") for k in report.queries)
    res = apply_upper_bounds(pb, eps, statuses, DELTA)
    assert all(m.status in ("refuted", "saturated") for m in res)
    assert truth(pb, eps) < -ROBUST_TOLERANCE


class LayerProbe:
    """An undecided tier that tells which layer a query grew (against ``base``) and reports a fixed margin bound per
    layer, as the cascade's bound tier does in ``stats["bounds"]["margin_upper"]``."""

    name = "probe"

    def __init__(self, pb, base, margins=None):
        self.pb, self.base, self.margins, self.layers = pb, base, margins, []

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        grown = self.pb.required_eps(np.maximum(box.upper, 0)[None])[0] > self.base + 1e-9
        d = int(np.flatnonzero(grown)[0])
        self.layers.append(d)
        stats = {} if self.margins is None else {"bounds": {"margin_upper": float(self.margins[d])}}
        return Unknown(tier="probe", stats=stats, reason="never decides")


def test_a_costlier_tier_takes_the_layers_with_the_smallest_margin_bound_first():
    pb = problem(4, 3, 3)
    pb.warm_attack = False  # nothing refutes: every layer reaches the second tier
    eps0 = start(pb)
    n = pb.num_layers
    margins = np.linspace(1.0, 0.1, n)  # the farthest layer is the closest to a proof
    cheap, costly = LayerProbe(pb, eps0, margins), LayerProbe(pb, eps0)
    push_to_boundary(pb, eps0, DELTA, [Tier("cheap", cheap, 1.0), Tier("costly", costly, 1.0)],
                     give_up_after=None)
    open_layers = sorted(set(cheap.layers))
    assert len(open_layers) >= 3
    first_visits = list(dict.fromkeys(costly.layers))
    # the object first (the question asked), then the others by the cheap tier's margin bound, smallest first
    expected = [0] + sorted((d for d in open_layers if d != 0), key=lambda d: margins[d])
    assert first_visits == expected


def test_only_undecided_tiers_leave_the_vector_and_say_unknown():
    pb = problem(4, 3, 3)
    eps0 = start(pb)
    # warm attack off: nothing refutes, nothing proves
    pb.warm_attack = False
    eps, statuses, report = push_to_boundary(pb, eps0, DELTA, [Tier("undecided", Undecided(), 1.0)])
    assert np.array_equal(eps, eps0) and report.proven == 0
    unknown = [m for m in statuses if m.status == "unknown"]
    assert unknown and all(m.tier == "undecided" for m in unknown)


@pytest.mark.parametrize("seed,hidden,classes", CASES)
def test_boundary_method_certifies_layers_with_confirmed_counterexamples(seed, hidden, classes):
    pb = problem(seed, hidden, classes)
    res = run_search(pb, SearchOptions(**SHORT))
    assert res.method == "boundary" and res.verified and truth(pb, res.epsilons) < -ROBUST_TOLERANCE
    assert "push" in res.details and res.details["push"]["tiers"] == ["exact-lp"]
    assert res.details["push"]["proven"] >= 1 and res.details["push"]["stop_reason"] == "every layer settled"
    assert res.stop_reason.endswith("push: every layer settled")  # the stop line says how the push ended
    assert assert_refutations_rerun(pb, res) >= 1  # every refuted eps re-runs, certified ones within delta
    eps = np.asarray(res.epsilons)
    certified = [m for m in res.maximality if m.certified]
    assert len(certified) == res.num_layers  # the exact verifier settles every layer of a tiny net
    for m in certified:
        if m.status == "refuted":
            lo, _ = layer_boundary(pb, eps, m.layer)
            assert lo - eps[m.layer] <= DELTA + 1e-3


@pytest.mark.parametrize("after", [3, 5])  # a normal push here sends ~17 boundary events
def test_ctrl_c_during_the_push_returns_a_proven_vector(after):
    """Ctrl-C once the push has started: the result is the best proven vector, flagged, its refutations re-run."""
    pb = problem(4, 3, 3)
    calls = {"n": 0}
    interrupt = InterruptAfter(after)

    def progress(event):
        if event.phase == "boundary":
            calls["n"] += 1
            interrupt(event)

    pb.progress = progress
    res = run_search(pb, SearchOptions(**SHORT))
    assert calls["n"] >= after  # it was the push that got interrupted
    assert res.interrupted and res.verified
    assert truth(pb, res.epsilons) < -ROBUST_TOLERANCE
    proven = [r.eps for r in pb.records if r.verdict.is_robust]
    assert res.size >= max(pb.size(e) for e in proven) - 1e-12
    assert_refutations_rerun(pb, res)


def test_push_tiers_of_a_cascade_go_from_bounds_to_bab_to_milp():
    tiers = push_tiers(Cascade(), query_time_limit=30.0)
    assert [t.name for t in tiers] == ["bounds", "bab", "milp"]
    assert tiers[0].time_limit <= 30.0 and tiers[1].time_limit <= tiers[0].time_limit
    assert tiers[2].time_limit == 30.0
    assert tiers[1].verifier.use_bab and not tiers[1].verifier.use_attack
    assert [t.name for t in push_tiers(Cascade(), None, milp=False)] == ["bounds", "bab"]
    assert len(push_tiers(Undecided(), 5.0)) == 1


@pytest.mark.parametrize("seed,hidden,classes", CASES)
def test_object_floor_is_half_of_the_refuted_radius_capped_at_the_proven_one(seed, hidden, classes):
    from test_search_boundary import object_radius

    pb = problem(seed, hidden, classes)
    res = run_search(pb, SearchOptions(method="boundary", delta=DELTA))
    obj = res.details["object"]
    r_true = object_radius(pb)
    proven, refuted = obj["radius_alone"], obj["refuted_alone"]
    assert proven <= r_true + 1e-3  # proven: not above the true radius
    if refuted is not None:
        assert refuted >= r_true - 1e-3  # refuted by a counterexample: not below it
        assert obj["floor"] == pytest.approx(min(0.5 * refuted, OBJECT_FLOOR_CAP * proven))
    assert obj["floor"] >= 0.5 * proven and res.eps0 >= obj["floor"] - 1e-12
    assert res.eps0 >= 0.5 * r_true - DELTA / 2
    assert res.to_json()["object"]["refuted_alone"] == refuted


def test_the_other_methods_keep_the_floor_of_the_proven_radius():
    pb = problem(4, 3, 3)
    res = run_search(pb, SearchOptions(method="optimize", delta=DELTA))
    obj = res.details["object"]
    assert obj["refuted_alone"] is not None and obj["refuted_alone"] > obj["radius_alone"]
    assert obj["floor"] == pytest.approx(0.5 * obj["radius_alone"])


@pytest.mark.parametrize("seed,hidden,classes", CASES)
def test_scale_step_grows_the_whole_vector_to_within_its_resolution_of_the_boundary(seed, hidden, classes):
    """With an exact verifier the common factor ends proven, and one doubled final step above it is not robust."""
    pb = problem(seed, hidden, classes)
    eps0 = start(pb, scale=0.5)
    eps, report = scale_to_boundary(pb, eps0, Tier("exact", None, None), first_step=0.05, min_step=0.01)
    assert report.scale > 1.0 and report.queries["robust"] >= 1
    assert np.allclose(eps, pb.clip(eps0 * report.scale))
    assert truth(pb, eps) < -ROBUST_TOLERANCE and pb.known_robust(eps) is not None
    above = pb.clip(eps0 * report.scale * 1.02)  # the last failed step was below twice the smallest step
    assert not np.array_equal(above, eps) and truth(pb, above) >= -ROBUST_TOLERANCE
    assert report.stop_reason.startswith("step below")


def test_scale_step_never_queries_past_a_known_refutation():
    pb = problem(4, 3, 3)
    eps0 = start(pb, scale=0.5)
    push_to_boundary(pb, eps0, DELTA, [Tier("exact", None, None)], layers=[0])  # refutes layer 0
    up = known_upper_bounds(pb, eps0)[0]
    assert up is not None and eps0[0] > 0
    cap = up.eps / eps0[0]
    tier = Undecided()
    eps, report = scale_to_boundary(pb, eps0, Tier("undecided", tier, None), first_step=4 * cap, min_step=0.01)
    # every query it made (undecided ones) stayed below the refutation's factor; none is accepted
    assert np.array_equal(eps, pb.clip(eps0)) and report.scale == 1.0
    assert tier.calls == report.queries["unknown"] >= 1 and report.queries["robust"] == 0
    scaled = [r for r in pb.records if r.purpose.startswith("scale")]
    # (the search's warm attack may refute some before the tier is asked)
    assert len(scaled) == sum(report.queries.values()) and all(r.eps[0] < up.eps for r in scaled)


def test_statuses_about_values_the_scale_step_passed_become_unchecked():
    before = [LayerMaximality(0, "unknown", 0.10, tried=0.11, tier="milp"),
              LayerMaximality(1, "unknown", 0.10, tried=0.20, tier="milp"),
              LayerMaximality(2, "refuted", 0.10, tried=0.11, tier="attack")]
    after = rescaled_statuses(before, np.array([0.12, 0.12, 0.12]))
    assert [m.status for m in after] == ["unchecked", "unknown", "refuted"]
    assert [m.eps for m in after] == [0.12, 0.12, 0.12] and after[1].tried == 0.20


def test_boundary_method_bounds_every_layer_again_at_the_final_vector():
    """The last share of the budget re-runs the attack's upper bounds from the final vector; every refuted eps it
    reports still re-runs on the network, and no layer's gap is negative."""
    pb = problem(4, 3, 3)
    res = run_search(pb, SearchOptions(**SHORT, final_upper_share=0.05))
    final = res.details["final_upper_bounds"]
    assert final["seconds"] >= 0 and final["found"] <= final["projected"] + final["attacks"]
    assert assert_refutations_rerun(pb, res) >= 1
    eps = np.asarray(res.epsilons)
    for m in res.maximality:
        if m.refuted_eps is not None:
            assert m.refuted_eps >= eps[m.layer] - 1e-12
    off = run_search(problem(4, 3, 3), SearchOptions(**SHORT, final_upper_share=0.0))
    assert "final_upper_bounds" not in off.details


def test_push_stops_before_a_tier_the_caller_keeps_for_the_whole_vector():
    """With ``stop_before``, the push ends once every open layer waits for that tier, without asking it."""
    pb = problem(4, 3, 3)
    eps0 = start(pb)
    cheap, strong = Undecided(), Undecided()
    eps, statuses, report = push_to_boundary(pb, eps0, DELTA, [Tier("cheap", cheap, None), Tier("strong", strong, None)],
                                             stop_before=1)
    assert report.stop_reason == "cheap tiers exhausted" and strong.calls == 0 and cheap.calls >= 1
    assert np.array_equal(eps, pb.clip(eps0)) and report.escalations >= 1
