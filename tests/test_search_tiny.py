"""The search on tiny networks where the truth is computable (the exact LP oracle): the result satisfies
(1) robustness and (2) maximality to delta, per layer; the baselines do what they say; the optimizer is at least
as large as the uniform baseline."""

from __future__ import annotations

import numpy as np
import pytest
from test_search_oracles import ExactLpVerifier, exact_worst_margin, tiny_case

from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.search.problem import Budget, SearchProblem
from mlrobust.search.run import SearchOptions, run_search
from mlrobust.verify.verdict import ROBUST_TOLERANCE

DELTA = 0.01


def run(seed, method="optimize", cutting="fixed", hidden=3, classes=3, **kw):
    net, image, target, mask = tiny_case(seed, hidden=hidden, classes=classes)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    ver = ExactLpVerifier()
    pb = SearchProblem(net, nbhd, target, ver, k=2, budget=Budget(time_limit=120))
    events = []
    pb.progress = events.append
    res = run_search(pb, SearchOptions(method=method, cutting=cutting, delta=DELTA, **kw))
    return res, pb, ver, events


def truth(pb, eps):
    return exact_worst_margin(pb.network, pb.box(pb.clip(eps)), pb.target, pb.k)[0]


def assert_robust_and_maximal(res, pb):
    eps = np.asarray(res.epsilons)
    assert res.verified
    assert truth(pb, eps) < -ROBUST_TOLERANCE  # (1)
    for d in range(pb.num_layers):  # (2), to delta, per layer
        m = res.maximality[d]
        if eps[d] >= pb.saturation[d]:
            assert m.status == "saturated"
            continue
        grown = eps.copy()
        grown[d] += DELTA
        assert truth(pb, grown) >= -ROBUST_TOLERANCE, f"layer {d} could still grow"
        assert m.status in ("refuted", "unknown")
        if m.status == "refuted":
            assert m.margin >= 0
            assert pb.box(np.minimum(grown, pb.saturation)).contains(m.counterexample)


@pytest.mark.parametrize("cutting", ["fixed", "sensitivity"])
@pytest.mark.parametrize("seed", [4, 6])
def test_optimizer_result_is_robust_and_maximal(seed, cutting):
    res, pb, ver, events = run(seed, cutting=cutting)
    assert_robust_and_maximal(res, pb)
    assert res.size == pytest.approx(float(pb.weights @ res.epsilons))
    # the search really searched: several verifier calls, some answered by the caches
    assert ver.calls == res.stats.verifier_calls >= 3
    assert res.stats.total > res.stats.verifier_calls
    assert events and events[-1].phase == "done" and events[-1].best_size == pytest.approx(res.size)
    # the trace of improvements is increasing and ends at the result
    sizes = [s for _, s in res.trace]
    assert all(b > a for a, b in zip(sizes, sizes[1:])) and sizes[-1] == pytest.approx(res.size)


def test_optimizer_on_a_larger_tiny_network():
    res, pb, _, _ = run(2, hidden=4, classes=4)
    assert_robust_and_maximal(res, pb)


@pytest.mark.parametrize("seed", [4, 6])
def test_optimizer_beats_the_uniform_baseline(seed):
    opt, _, _, _ = run(seed)
    uni, pb, _, _ = run(seed, method="uniform")
    assert opt.size >= uni.size - 1e-9
    eps = np.asarray(uni.epsilons)
    # uniform: one epsilon everywhere (up to saturation), robust, and one delta more is not
    u = eps.max()
    np.testing.assert_allclose(eps, np.minimum(u, pb.saturation))
    assert truth(pb, eps) < -ROBUST_TOLERANCE
    assert truth(pb, np.full(pb.num_layers, u + DELTA)) >= -ROBUST_TOLERANCE
    # the baseline is reported as it is: layers that could grow are flagged, not grown
    statuses = {m.status for m in uni.maximality}
    assert statuses <= {"refuted", "not_maximal", "saturated", "unknown"}
    for d, m in enumerate(uni.maximality):
        if m.status == "not_maximal":
            grown = eps.copy()
            grown[d] += DELTA
            assert truth(pb, grown) < -ROBUST_TOLERANCE


def test_layer_search_fixes_layers_outwards():
    res, pb, _, _ = run(4, method="layer-search")
    eps = np.asarray(res.epsilons)
    assert truth(pb, eps) < -ROBUST_TOLERANCE
    # layer d was searched with layers > d at zero: one delta more in layer d was not robust then
    for d in range(pb.num_layers):
        if eps[d] >= pb.saturation[d]:
            continue
        prefix = np.where(np.arange(pb.num_layers) < d, eps, 0.0)
        prefix[d] = eps[d] + DELTA
        assert truth(pb, prefix) >= -ROBUST_TOLERANCE


def test_full_range_is_found_in_one_probe_when_robust():
    res, pb, ver, _ = run(1)
    np.testing.assert_allclose(res.epsilons, pb.saturation)
    assert all(m.status == "saturated" for m in res.maximality)
    assert ver.calls == 2  # the clean image and the full range


def test_query_budget_stops_with_a_proven_result():
    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    pb = SearchProblem(net, nbhd, target, ExactLpVerifier(), k=2, budget=Budget(time_limit=60, max_queries=6))
    res = run_search(pb, SearchOptions(delta=DELTA))
    assert res.stats.verifier_calls <= 6
    assert res.verified and truth(pb, res.epsilons) < -ROBUST_TOLERANCE
    assert "query limit" in res.stop_reason or any(m.status == "unchecked" for m in res.maximality)


@pytest.mark.parametrize("weights,k", [("count", 2), ("uniform", 1)])
def test_other_weights_and_k(weights, k):
    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    pb = SearchProblem(net, nbhd, target, ExactLpVerifier(), k=k, weights=weights, budget=Budget(time_limit=60))
    res = run_search(pb, SearchOptions(delta=DELTA))
    w = nbhd.counts.astype(float) if weights == "count" else np.ones(nbhd.num_layers)
    np.testing.assert_allclose(res.weights, w)
    assert res.size == pytest.approx(float(w @ res.epsilons)) and res.k == k
    assert_robust_and_maximal(res, pb)
