"""What the search keeps in memory: one copy of each counterexample, shared by the query log and the layers'
answers, and the containment test of the counterexample cache on their per-layer required epsilons (exact, against
the point-by-point test it replaces)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search_oracles import ExactLpVerifier, tiny_case

from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.search.intervals import apply_upper_bounds, known_upper_bounds
from mlrobust.search.maximality import LayerMaximality
from mlrobust.search.problem import SearchProblem, evict_weak_points
from mlrobust.verify.counterexample import TopKProperty, check_points, snap_into_box
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import WeakPoint


def tiny_problem(seed: int = 4) -> SearchProblem:
    net, image, target, mask = tiny_case(seed, hidden=3, classes=3)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    return SearchProblem(net, nbhd, target, ExactLpVerifier(), k=2)


def held_bytes(arrays: list[np.ndarray]) -> int:
    """Bytes of the distinct buffers behind ``arrays`` (a view counts its whole base once)."""
    bases: dict[int, int] = {}
    for a in arrays:
        base = a if a.base is None else a.base
        bases[id(base)] = base.nbytes
    return sum(bases.values())


def test_checked_points_own_their_values_not_the_batch():
    net, image, target, _ = tiny_case(0)
    box = Box.around(image, 0.2)
    xs = [box.lower, box.upper, image]
    points = check_points(net, box, xs, TopKProperty(target, 2))
    # a row view would keep the whole batch alive as long as one point is kept (8 restarts' worth of images)
    assert all(p.x.base is None and p.x.nbytes == image.nbytes for p in points)
    np.testing.assert_array_equal(points[2].x, snap_into_box(box, image))


def test_each_counterexample_is_held_once_by_the_store_the_log_and_the_layers():
    pb = tiny_problem()
    v = pb.query(np.full(pb.num_layers, 0.6))
    assert v.is_not_robust
    pb.query(np.full(pb.num_layers, 0.7))  # answered by the cache: the same point
    pb.add_counterexample(v.counterexample, float(v.margin), np.full(pb.num_layers, 0.6), "test")  # a duplicate
    assert len(pb.counterexamples) == 1
    stored = pb.counterexamples[0].x
    assert not stored.flags.writeable and stored.base is None
    logged = [r.verdict.counterexample for r in pb.records if r.verdict.is_not_robust]
    assert len(logged) == 2 and all(np.shares_memory(x, stored) for x in logged)
    assert all(r.verdict.weak_points == [] for r in pb.records)
    assert held_bytes([stored, *logged]) == pb.x0.nbytes
    # the caller's verdict keeps its points; only the log drops them
    assert v.weak_points
    eps = pb.counterexample_required_eps[0].copy()
    eps[1] /= 2  # the stored point refutes growing layer 1 alone
    layers = apply_upper_bounds(pb, eps, [LayerMaximality(d, "unknown", float(eps[d])) for d in range(pb.num_layers)],
                                1e-3)
    shared = [m.counterexample for m in layers if m.counterexample is not None]
    assert shared and all(np.shares_memory(x, stored) for x in shared)
    assert held_bytes([stored, *shared]) == pb.x0.nbytes


def test_required_epsilons_are_kept_per_stored_counterexample():
    pb = tiny_problem()
    rng = np.random.default_rng(0)
    points = rng.uniform(0.0, 1.0, (5, *pb.x0.shape))
    for i, x in enumerate(points):
        pb.add_counterexample(x, 0.1 * i, np.zeros(pb.num_layers), "test")
    np.testing.assert_array_equal(pb.counterexample_required_eps, pb.required_eps(points))
    # the upper bounds read them: per layer d, the least deviation in d among the points inside eps elsewhere
    req = pb.required_eps(points)
    eps = req[0].copy()
    eps[2] /= 2
    for d, up in enumerate(known_upper_bounds(pb, eps)):
        others = np.delete(np.arange(pb.num_layers), d)
        ok = np.flatnonzero(np.all(req[:, others] <= eps[others], axis=1))
        if ok.size == 0:
            assert up is None
        else:
            assert up is not None and up.eps == max(req[ok, d].min(), eps[d]) and up.index in ok
    assert known_upper_bounds(pb, eps)[2] is not None  # point 0 at least


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), scale=st.floats(0.0, 0.6))
def test_cached_containment_equals_the_point_by_point_test(seed, n, scale):
    """Points on the box's faces (the rounding edge), just outside it, inside and anywhere: the cache finds a point
    exactly when the box contains one, and then the one with the largest margin."""
    pb = tiny_problem(seed % 3)
    rng = np.random.default_rng(seed)
    eps = pb.clip(rng.uniform(0.0, scale, pb.num_layers))
    box = pb.box(eps)
    lo, hi = box.lower, box.upper
    points = []
    for kind in rng.integers(0, 4, n):
        if kind == 0:  # a corner: every pixel on a face
            x = np.where(rng.uniform(size=lo.shape) < 0.5, lo, hi)
        elif kind == 1:  # a corner pushed one ulp out in one pixel
            x = np.where(rng.uniform(size=lo.shape) < 0.5, lo, hi).ravel()
            j = int(rng.integers(x.size))
            x[j] = np.nextafter(x[j], -np.inf if x[j] == lo.ravel()[j] else np.inf)
            x = x.reshape(lo.shape)
        elif kind == 2:
            x = lo + rng.uniform(size=lo.shape) * (hi - lo)
        else:
            x = rng.uniform(0.0, 1.0, lo.shape)
        points.append(x)
    margins = rng.uniform(0.0, 1.0, n)
    for x, m in zip(points, margins):
        pb.add_counterexample(x, float(m), eps, "test")
    stored = pb.counterexamples
    inside = [c for c in stored if box.contains(c.x)]
    found = pb.contained_counterexample(box)
    if not inside:
        assert found is None
    else:
        assert found is not None and box.contains(found.x)
        assert found.margin == max(c.margin for c in inside)


def _weak(margin: float, size: int = 100) -> WeakPoint:
    return WeakPoint(np.full(size, margin), margin)


@given(margins=st.lists(st.lists(st.floats(-5, 5), min_size=1, max_size=4), min_size=1, max_size=30),
       budget_points=st.integers(0, 40), recent=st.integers(0, 10))
@settings(max_examples=60, deadline=None)
def test_weak_points_stay_within_their_budget_keeping_recent_and_strongest(margins, budget_points, recent):
    entries = [(np.full(2, float(i)), [_weak(m) for m in ms]) for i, ms in enumerate(margins)]
    per_point = _weak(0.0).x.nbytes
    kept = evict_weak_points(list(entries), budget_points * per_point, recent)
    new = entries[-recent:] if recent else []
    tail = kept[len(kept) - len(new):]
    assert len(tail) == len(new) and all(a is b for a, b in zip(tail, new))  # the recent queries untouched
    old_kept = [wp for _, wps in kept[:len(kept) - len(new)] for wp in wps]
    held = sum(wp.x.nbytes for _, wps in kept for wp in wps)
    old_all = [wp for _, wps in entries[:len(entries) - len(new)] for wp in wps]
    assert held <= max(budget_points * per_point, sum(wp.x.nbytes for _, wps in new for wp in wps))
    if old_kept and len(old_kept) < len(old_all):
        # every evicted older point is no stronger than every kept one
        evicted = [wp for wp in old_all if not any(wp is k for k in old_kept)]
        assert max(w.margin for w in evicted) <= min(w.margin for w in old_kept)
    assert all(wps for _, wps in kept)  # no empty entries


def test_a_long_search_holds_a_bounded_store_of_weak_points(monkeypatch):
    import mlrobust.search.problem as problem_module

    pb = tiny_problem()
    per_point = pb.x0.nbytes
    monkeypatch.setattr(problem_module, "WEAK_POINT_BUDGET_BYTES", 30 * per_point)
    for i in range(200):
        pb.add_weak_points(np.full(pb.num_layers, 0.01), [WeakPoint(pb.x0.copy(), float(i % 17)) for _ in range(3)])
    held = sum(wp.x.nbytes for _, wps in pb._weak for wp in wps)
    assert held == 30 * per_point  # the last eight queries' 24 points and the 6 strongest older ones
    older = [wp.margin for _, wps in pb._weak[:-problem_module.WEAK_RECENT] for wp in wps]
    assert older == [16.0] * 6
    recent = [wp.margin for _, wps in pb._weak[-problem_module.WEAK_RECENT:] for wp in wps]
    assert recent == [float(i % 17) for i in range(192, 200) for _ in range(3)]
    assert pb.warm_starts(pb.box(np.full(pb.num_layers, 0.01)))  # the warm starts still find their seeds
