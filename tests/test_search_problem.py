"""The search's building blocks: query caches, counterexample confirmation, budgets, cutting weights, and the
per-layer margin gradient (against an analytic worst case)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search_oracles import ExactLpVerifier, exact_worst_margin, tiny_case

from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Dense
from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.search.cegis import cegis, fixed_cutting_weights, sensitivity_cutting_weights
from mlrobust.search.gradients import eps_gradient, layer_saliency, margin_gradients, worst_case_gradient
from mlrobust.search.problem import Budget, SearchProblem, layer_saturation
from mlrobust.verify.margin import topk_margin
from mlrobust.verify.verdict import NotRobust, Unknown, WeakPoint


def tiny_problem(seed=4, verifier=None, **kw):
    net, image, target, mask = tiny_case(seed, hidden=3, classes=3)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    ver = verifier or ExactLpVerifier()
    return SearchProblem(net, nbhd, target, ver, k=2, **kw), ver


# --- caches ---------------------------------------------------------------------------------------------------
def test_robust_cache_answers_dominated_vectors_without_the_verifier():
    pb, ver = tiny_problem()
    eps = np.array([0.1, 0.05, 0.05, 0.02])
    assert pb.query(eps).is_robust and ver.calls == 1
    smaller = pb.query(eps * np.array([1.0, 0.5, 0.0, 1.0]))
    assert smaller.is_robust and smaller.tier == "cache" and ver.calls == 1
    # a vector not below the stored one goes to the verifier
    pb.query(eps + np.array([0, 0, 0, 0.01]))
    assert ver.calls == 2
    assert pb.stats.calls["cache"] == 1 and pb.stats.verifier_calls == 2


def test_counterexample_inside_a_later_box_refutes_it_without_the_verifier():
    pb, ver = tiny_problem()
    big = np.full(pb.num_layers, 0.6)
    v = pb.query(big)
    assert v.is_not_robust and ver.calls == 1
    x = v.counterexample
    # any larger box contains the counterexample: answered from the cache, same point
    v2 = pb.query(np.minimum(big + 0.1, pb.saturation))
    assert v2.is_not_robust and v2.tier == "cache" and ver.calls == 1
    assert np.array_equal(v2.counterexample, x)
    assert topk_margin(pb.network.logits(v2.counterexample[None]), pb.target, 2)[0] >= 0


def test_projected_counterexample_refutes_a_slightly_smaller_box():
    pb, ver = tiny_problem()
    big = np.full(pb.num_layers, 0.6)
    v = pb.query(big)
    m = float(v.margin)
    assert m > 0
    # shrink a little: the clipped counterexample still violates the property
    v2 = pb.query(big * 0.99)
    assert v2.is_not_robust and v2.tier in ("cache", "projection") and ver.calls == 1
    assert pb.box(big * 0.99).contains(v2.counterexample)


def test_epsilons_beyond_saturation_are_clipped_and_hit_the_cache():
    pb, ver = tiny_problem()
    sat = pb.saturation
    np.testing.assert_allclose(sat, layer_saturation(pb.nbhd))
    assert np.all(sat >= 0.5) and np.all(sat <= 1.0)
    pb.query(np.ones(pb.num_layers) * 5.0)
    assert np.allclose(pb.records[-1].eps, sat)
    pb.query(np.ones(pb.num_layers) * 7.0)
    assert ver.calls == 1


class LyingVerifier:
    """Claims NotRobust with the clean image as 'counterexample' (where the target is in fact in the top-k)."""

    name = "liar"

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        return NotRobust(tier="liar", counterexample=box.center, margin=1.0)


def test_unconfirmed_counterexamples_become_unknown():
    pb, _ = tiny_problem(verifier=LyingVerifier())
    v = pb.query(np.zeros(pb.num_layers))
    assert isinstance(v, Unknown) and "not confirmed" in v.reason
    assert not pb.counterexamples


def test_budget_answers_unknown_and_stops_the_verifier():
    pb, ver = tiny_problem(budget=Budget(time_limit=60, max_queries=2))
    pb.query(np.full(pb.num_layers, 0.01))
    pb.query(np.full(pb.num_layers, 0.02))
    v = pb.query(np.full(pb.num_layers, 0.03))
    assert isinstance(v, Unknown) and v.tier == "budget" and ver.calls == 2
    assert pb.exhausted() == "query limit"


def test_budget_rejects_nonsense():
    with pytest.raises(InputError):
        Budget(time_limit=-1)
    with pytest.raises(InputError):
        Budget(max_queries=0)


# --- cutting weights and CEGIS --------------------------------------------------------------------------------
def test_fixed_cutting_weights_follow_the_formula():
    np.testing.assert_allclose(fixed_cutting_weights(4), [(3 / 4) ** 5, (2 / 4) ** 5, (1 / 4) ** 5, 0.0])
    cw = fixed_cutting_weights(61)
    assert cw[0] == pytest.approx((60 / 61) ** 5) and cw[-1] == 0.0 and np.all(np.diff(cw) < 0)


@given(st.lists(st.floats(0, 10), min_size=2, max_size=40))
@settings(max_examples=50, deadline=None)
def test_sensitivity_cutting_weights_are_monotone_in_saliency(sal):
    s = np.asarray(sal)
    cw = sensitivity_cutting_weights(s)
    cap = ((s.size - 1) / s.size) ** 5
    assert np.all(cw >= 0) and np.all(cw <= cap + 1e-12)
    if s.max() > 0:
        order = np.argsort(s, kind="stable")
        assert np.all(np.diff(cw[order]) >= -1e-12)  # more sensitive -> shrinks less
        assert cw[np.argmax(s)] == pytest.approx(cap)
    else:
        np.testing.assert_allclose(cw, fixed_cutting_weights(s.size))


def test_cegis_cuts_until_robust_and_the_result_is_robust():
    pb, ver = tiny_problem()
    star = np.zeros(pb.num_layers)
    cand = np.full(pb.num_layers, 0.5)
    assert pb.query(cand).is_not_robust
    out = cegis(pb, cand, star, np.full(pb.num_layers, 0.5), delta=0.01, max_cuts=8)
    assert out.eps is not None and out.statuses[-1] == "robust"
    m, _ = exact_worst_margin(pb.network, pb.box(out.eps), pb.target, 2)
    assert m < 0
    # each cut halves the distance to eps* = 0
    np.testing.assert_allclose(out.eps, np.minimum(cand, pb.saturation) * 0.5 ** out.cuts)


# --- gradients ------------------------------------------------------------------------------------------------
def linear_case(seed: int):
    """A linear two-class network, k = 1: the worst case over a box is attained at ``clip(x0 + eps * sign(a))``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, 16))
    net = Network("x", (1, 1, 4, 4), [Node("fc", Dense(w, np.array([2.0, 0.0])), ("x",), "y", (2,))], "y")
    image = rng.uniform(0, 1, (1, 4, 4))
    image[0, 0, :2] = [0.0, 1.0]  # pixels on the range's edge: one side never moves
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    return net, LayeredNeighborhood.build(image, mask, net.sample_shape), w[1] - w[0]


@pytest.mark.parametrize("seed", range(5))
def test_eps_gradient_matches_the_analytic_worst_case(seed):
    net, nbhd, a = linear_case(seed)
    eps = np.array([0.05, 0.1, 0.02, 0.07])
    target = 0

    def worst(e):
        lo, hi = nbhd.bounds_chw(e)
        x = np.where(a.reshape(lo.shape) > 0, hi, lo)
        return topk_margin(net.logits(x[None]), target, 1)[0], x

    m, xstar = worst(eps)
    _, grads = margin_gradients(net, xstar[None], target, 1)
    g = eps_gradient(nbhd, nbhd.box(eps), grads)[0]
    h = 1e-4
    for d in range(4):
        e2 = eps.copy()
        e2[d] += h
        fd = (worst(e2)[0] - m) / h
        assert g[d] == pytest.approx(fd, rel=1e-3, abs=1e-3)
    assert np.all(g >= 0)


def test_worst_case_gradient_combines_near_active_points_by_max():
    net, nbhd, a = linear_case(0)
    eps = np.full(4, 0.05)
    box = nbhd.box(eps)
    pts = [WeakPoint(box.upper, 0.0), WeakPoint(box.lower, 0.0), WeakPoint(box.center, 0.0)]
    m, G = worst_case_gradient(net, nbhd, box, pts, 0, 1)
    margins, grads = margin_gradients(net, np.stack([p.x for p in pts]), 0, 1)
    per = eps_gradient(nbhd, box, grads)
    near = margins >= margins.max() - max(0.1 * abs(margins.max()), 1e-3)
    assert m == pytest.approx(margins.max())
    np.testing.assert_allclose(G, per[near].max(axis=0))


def test_layer_saliency_is_the_mean_abs_gradient_per_layer():
    net, nbhd, a = linear_case(1)
    s = layer_saliency(net, nbhd, 0, 1)
    absa = np.abs(a).reshape(4, 4)
    expected = [absa[nbhd.layers == d].mean() for d in range(nbhd.num_layers)]
    np.testing.assert_allclose(s, expected, rtol=1e-5)
