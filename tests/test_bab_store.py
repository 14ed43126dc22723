"""Branch and bound as batched arrays: the domain store's push/pop/prune invariants, multi-level splits that
partition their parent, each branching strategy against a brute-force reference, and verdict agreement of every
strategy and split depth with the exact MILP on tiny nets."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import random_box, random_cnn, random_mlp

from mlrobust.bounds import crown
from mlrobust.verify.bab import BabVerifier
from mlrobust.verify.bab.bounding import absorb, bound_domains, domains_from, layout_of, refresh_stale
from mlrobust.verify.bab.branching import (
    INPUT,
    BabsrBranching,
    FsbBranching,
    InputBisection,
    WidestBranching,
    top_choices,
    unstable,
)
from mlrobust.verify.bab.spec import objective_coeffs, topk_spec
from mlrobust.verify.bab.split import level_signs, split_inputs, split_relus
from mlrobust.verify.bab.store import DomainLayout, DomainStore, concat
from mlrobust.verify.bab_bounds import AlphaEngine, SplitCrown
from mlrobust.verify.margin import topk_margin
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY = DomainLayout(("relu",), ("z",), {"z": (5,)}, (3,), rows=2, classes=3)


# --- the store ----------------------------------------------------------------------------------------------------
def _batch(values: list[float], ids: list[int], warm: bool):
    """Domains whose every field is derived from an id (so a mix-up between domains shows), with given values."""
    d = TINY.empty(len(values))
    d.value = np.array(values, dtype=np.float64)
    d.depth = np.array(ids, dtype=np.int32)
    corner = np.array(ids, dtype=np.float64)[:, None] * np.ones((1, 3))
    d.set_boxes(corner, corner + 1.0)
    d.pre_lower["z"] = np.array(ids, dtype=np.float32)[:, None] * np.ones((1, 5), dtype=np.float32)
    if warm:
        d.warm = {"alpha.relu": torch.tensor(ids, dtype=torch.float32)[:, None, None].expand(-1, 2, 5).clone()}
    return d


def _check_rows(d) -> None:
    """Every field of each domain still belongs to the domain its id names."""
    ids = d.depth.astype(np.float64)
    assert np.array_equal(d.lower, ids[:, None] * np.ones((1, 3)))
    assert np.array_equal(d.upper, ids[:, None] * np.ones((1, 3)) + 1.0)
    assert np.array_equal(d.pre_lower["z"], ids.astype(np.float32)[:, None] * np.ones((1, 5), dtype=np.float32))
    if "alpha.relu" in d.warm:
        w = d.warm["alpha.relu"].numpy()
        had = ~np.isnan(w).all(axis=(1, 2))  # pushed with a warm start: it comes back; without: NaN
        assert np.array_equal(w[had], ids[had, None, None] * np.ones((1, 2, 5)))


@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "prune"]),
                          st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]), min_size=0, max_size=9),
                          st.integers(0, 6), st.booleans()),
                min_size=1, max_size=25))
@settings(max_examples=80, deadline=None)
def test_store_pops_the_worst_first_in_insertion_order_and_prunes_exactly_the_proven(ops):
    """Against a reference list: pop takes the n largest values (ties first in, first out), prune removes exactly
    the values below the threshold and returns them, and nothing is lost or mixed up while the buffers grow."""
    store = DomainStore(TINY, capacity=2)
    ref: list[tuple[float, int]] = []  # (value, id) in insertion order
    next_id = 0
    for op, values, n, warm in ops:
        if op == "push":
            ids = list(range(next_id, next_id + len(values)))
            next_id += len(values)
            store.push(_batch(values, ids, warm))
            ref += list(zip(values, ids))
        elif op == "pop":
            got = store.pop(n)
            want = sorted(ref, key=lambda e: -e[0])[:n]  # sorted() is stable: ties stay in insertion order
            assert list(got.depth) == [i for _, i in want]
            assert list(got.value) == [v for v, _ in want]
            _check_rows(got)
            ref = [e for e in ref if e not in want]
        else:
            gone = store.prune(0.0)
            assert sorted(gone) == sorted(v for v, _ in ref if v < 0.0)
            ref = [e for e in ref if e[0] >= 0.0]
        assert len(store) == len(ref)
        assert store.worst() == max((v for v, _ in ref), default=float("-inf"))
    rest = store.peek(len(ref))
    assert len(store) == len(ref)  # peek leaves the store as it is
    _check_rows(rest)
    assert sorted(rest.depth) == sorted(i for _, i in ref)


def test_store_shares_one_box_row_among_relu_split_children_and_sheds_the_boxes_of_closed_domains():
    """Children of one popped parent point at the store's own table, so pushing them back adds no row; boxes from
    elsewhere are copied in once per distinct box; when closed domains hold most rows the table is rebuilt from the
    open ones, and a batch popped before that keeps its boxes (the old table is left intact)."""
    store = DomainStore(TINY, capacity=2)
    store.push(_batch([5.0], [0], False))
    assert store.boxes.count == 1
    parent = store.pop(1)
    kids = split_relus(parent, TINY.relu_nodes, np.array([[0, 0]]), np.array([[1, 3]]))
    store.push(kids)
    assert len(store) == 4 and store.boxes.count == 1
    assert np.array_equal(store.peek(4).lower, np.zeros((4, 3)))
    store.pop(4)
    # 200 domains with boxes of their own, then most of them proven
    store.push(_batch([-1.0] * 190 + [2.0] * 10, list(range(1, 201)), False))
    assert store.boxes.count == 201
    in_flight = store.peek(3)
    assert list(in_flight.depth) == [191, 192, 193]
    assert store.prune(0.0).size == 190
    store.push(_batch([1.0], [300], False))  # 202 rows for 11 open domains: the table is rebuilt
    assert store.boxes.count == 11 and in_flight.boxes is not store.boxes
    _check_rows(in_flight)
    store.push(in_flight)  # copied in from the old table: 3 more rows
    assert store.boxes.count == 14
    rest = store.pop(len(store))
    assert sorted(rest.depth) == sorted([300, 191, 192, 193] + list(range(191, 201)))
    _check_rows(rest)


def test_the_alpha_engine_layout_keeps_no_input_coefficients():
    net = random_cnn(3)
    lo, hi = random_box(net, 3, 0.3)
    b = crown(net, lo, hi)
    alpha, plain = AlphaEngine(net, refresh=False), SplitCrown(net)
    a_doms = domains_from([alpha.root(lo, hi, b.lower, b.upper)], layout_of(alpha, 2))
    c_doms = domains_from([plain.root(lo, hi, b.lower, b.upper)], layout_of(plain, 2))
    assert a_doms.input_coeff is None and c_doms.input_coeff is not None
    assert c_doms.nbytes_per_domain() - a_doms.nbytes_per_domain() == lo.size * 4  # the float32 coefficients
    assert InputBisection().rank(a_doms, 1).available[0] == 1  # bisection falls back to the widest dimension


def test_store_keeps_domains_apart_and_reports_its_memory_per_domain():
    store = DomainStore(TINY, capacity=1)
    store.push(_batch([1.0, 2.0, 3.0], [0, 1, 2], True))
    store.push(_batch([4.0], [3], False))
    assert store.capacity >= 4 and len(store) == 4
    worst = store.pop(2)
    assert list(worst.depth) == [3, 2]
    assert torch.isnan(worst.warm["alpha.relu"][0]).all()  # pushed without a warm start
    assert (worst.warm["alpha.relu"][1] == 2).all()
    # bounds, splits, coefficients and the warm start: (3+3)*8 + 2*5*4 + 5 + ... bytes, the warm start 2*5*4
    per = store.bytes_per_domain()
    assert per >= 2 * 3 * 8 + 2 * 5 * 4 + 5 + 2 * 5 * 4
    both = concat([_batch([0.0], [7], True), _batch([0.0], [8], False)])
    assert both.size == 2 and torch.isnan(both.warm["alpha.relu"][1]).all()


# --- multi-level splits partition the parent --------------------------------------------------------------------
def _root(net, lo, hi, rows: int = 2):
    engine = SplitCrown(net)
    b = crown(net, lo, hi)
    layout = layout_of(engine, rows)
    return engine, layout, domains_from([engine.root(lo, hi, b.lower, b.upper)], layout)


@given(seed=st.integers(0, 400), levels=st.integers(1, 3))
@FAST
def test_multi_level_relu_split_children_partition_the_parent(seed, levels):
    """Every sampled point of the parent lies in exactly one child's split region (the signs of the split
    neurons' pre-activations), each child fixes exactly the chosen neurons, and the rest is the parent's."""
    net = random_mlp(seed) if seed % 2 else random_cnn(seed)
    lo, hi = random_box(net, seed, 0.5)
    engine, layout, root = _root(net, lo, hi)
    cands = [(r, i) for r in range(len(layout.relu_nodes)) for i in np.flatnonzero(unstable(root, layout, r)[2][0])]
    if len(cands) < levels:
        return
    rng = np.random.default_rng(seed)
    pick = [cands[j] for j in rng.choice(len(cands), size=levels, replace=False)]
    layer = np.array([[r for r, _ in pick]])
    index = np.array([[i for _, i in pick]])
    kids = split_relus(root, layout.relu_nodes, layer, index)
    assert kids.size == 2 ** levels and np.all(kids.depth == levels)
    for m in layout.relu_nodes:
        changed = (kids.splits[m] != root.splits[m]).reshape(kids.size, -1).sum(axis=1)
        assert np.all(changed == sum(layout.relu_nodes[r] == m for r, _ in pick))
    assert np.array_equal(kids.lower, np.repeat(root.lower, kids.size, axis=0))
    # the children share their parent's row of the box table: no box is copied
    assert kids.boxes is root.boxes and kids.boxes.count == 1 and np.all(kids.box == root.box[0])
    xs = rng.uniform(lo, hi, (300, *lo.shape))
    values = net.forward(xs, return_all=True)
    inside = np.ones((xs.shape[0], kids.size), dtype=bool)
    for r, i in pick:
        z = values[layout.relu_tensors[r]].reshape(xs.shape[0], -1)[:, i]
        side = kids.splits[layout.relu_nodes[r]].reshape(kids.size, -1)[:, i]
        inside &= np.where(side[None] > 0, z[:, None] >= 0, z[:, None] <= 0)
    assert np.all(inside.sum(axis=1) == 1)


@given(seed=st.integers(0, 400), levels=st.integers(1, 3))
@FAST
def test_multi_level_input_split_children_partition_the_parent(seed, levels):
    net = random_mlp(seed)
    lo, hi = random_box(net, seed, 0.5)
    _, layout, root = _root(net, lo, hi)
    parents = concat([root, root])
    ranked = InputBisection().rank(parents, levels)
    if not np.all(ranked.layer == INPUT):
        return  # fewer dimensions of positive width than levels
    levels = ranked.index.shape[1]  # at most the input's dimensions
    kids = split_inputs(parents, ranked.index)
    assert kids.size == 2 * 2 ** levels and kids.box_changed.all()
    # each child has a row of its own (its half; the two parents are one box, so their halves are stored once),
    # the parents keep theirs unchanged
    per = 2 ** levels
    assert np.unique(kids.box[:per]).size == per and not np.isin(kids.box, parents.box).any()
    assert np.array_equal(kids.box[:per], kids.box[per:])
    assert np.array_equal(parents.lower, np.stack([lo, lo])) and np.array_equal(parents.upper, np.stack([hi, hi]))
    xs = np.random.default_rng(seed).uniform(lo, hi, (300, *lo.shape))
    for p in range(2):
        mine = slice(p * 2 ** levels, (p + 1) * 2 ** levels)
        inside = np.all((xs[:, None] >= kids.lower[mine][None]) & (xs[:, None] <= kids.upper[mine][None]), axis=2)
        assert np.all(inside.sum(axis=1) == 1)
        # every child is its parent's box halved along each chosen dimension
        assert np.allclose((kids.upper[mine] - kids.lower[mine]).prod(axis=1), (hi - lo).prod() / 2 ** levels)


def test_level_signs_enumerate_every_side_pattern_once():
    for levels in (1, 2, 3):
        s = level_signs(levels)
        assert s.shape == (2 ** levels, levels) and len({tuple(r) for r in s}) == 2 ** levels
        assert set(np.unique(s)) == {-1, 1}


# --- branching strategies -----------------------------------------------------------------------------------------
def _crafted(seed: int, d: int = 4):
    """Domains with random pre-activation bounds, splits and coefficients on a two-node layout."""
    layout = DomainLayout(("r0", "r1"), ("a", "b"), {"a": (6,), "b": (2, 3)}, (4,), rows=3, classes=3)
    rng = np.random.default_rng(seed)
    doms = layout.empty(d)
    for t in ("a", "b"):
        lo = rng.normal(size=doms.pre_lower[t].shape).astype(np.float32)
        doms.pre_lower[t] = lo
        doms.pre_upper[t] = lo + rng.uniform(0, 2, lo.shape).astype(np.float32)
    for m in ("r0", "r1"):
        doms.splits[m] = np.where(rng.random(doms.splits[m].shape) < 0.2, 1, 0).astype(np.int8)
        doms.relu_coeff[m] = rng.normal(size=doms.relu_coeff[m].shape).astype(np.float32)
    doms.relu_coeff["r1"][0] = np.nan  # no coefficients on this node for domain 0: the width ranks it
    lower = rng.uniform(-1, 0, (d, 4))
    doms.set_boxes(lower, lower + rng.uniform(0, 1, (d, 4)) * (rng.random((d, 4)) < 0.8))
    doms.input_coeff = rng.normal(size=(d, 4)).astype(np.float32)
    doms.input_coeff[1] = np.nan
    return layout, doms


def _reference(layout, doms, score_of) -> list[list[tuple[float, int, int]]]:
    """Brute force: every free neuron of every domain with its score, best first (node order, then neuron)."""
    out = []
    for i in range(doms.size):
        cands = []
        for r, (m, t) in enumerate(zip(layout.relu_nodes, layout.relu_tensors)):
            lo, hi = doms.pre_lower[t][i].reshape(-1), doms.pre_upper[t][i].reshape(-1)
            for j in range(lo.size):
                if lo[j] < 0 < hi[j] and doms.splits[m][i].reshape(-1)[j] == 0:
                    lam = doms.relu_coeff[m][i].reshape(-1)
                    cands.append((score_of(float(lo[j]), float(hi[j]), lam[j], np.isnan(lam).any()), r, j))
        out.append(sorted(cands, key=lambda c: (-c[0], c[1], c[2])))
    return out


def _babsr(lo: float, hi: float, lam: float, unknown: bool) -> float:
    if unknown:
        return hi - lo
    icpt = -lo * hi / (hi - lo)
    return max(-lam, 0.0) * icpt + 0.25 * max(lam, 0.0) * min(hi, -lo) + 1e-9 * icpt


@pytest.mark.parametrize("strategy", ["widest", "babsr"])
@given(seed=st.integers(0, 10_000), count=st.integers(1, 5))
@settings(max_examples=40, deadline=None)
def test_heuristic_branching_ranks_like_brute_force(strategy, seed, count):
    layout, doms = _crafted(seed)
    branching = WidestBranching(layout) if strategy == "widest" else BabsrBranching(layout)
    got = branching.rank(doms, count)
    ref = _reference(layout, doms, (lambda lo, hi, lam, unknown: hi - lo) if strategy == "widest" else _babsr)
    for i in range(doms.size):
        want = ref[i][:count]
        n = len(want)
        assert got.available[i] == n
        assert np.allclose(got.score[i, :n], [c[0] for c in want], rtol=1e-6)
        # the same neurons up to ties in score
        assert {(c[1], c[2]) for c in want if c[0] > (want[-1][0] if n == count else -np.inf) + 1e-9} <= set(
            zip(got.layer[i, :n], got.index[i, :n]))
        assert np.all(got.layer[i, n:] == -1)


@given(st.lists(st.lists(st.floats(-5, 5), min_size=3, max_size=3), min_size=1, max_size=4), st.integers(1, 6))
@settings(max_examples=40, deadline=None)
def test_top_choices_are_the_best_scores_over_every_node(rows, count):
    a = np.array(rows)
    b = -np.array(rows)[:, ::-1]
    a[a < -4] = -np.inf  # not candidates
    got = top_choices([a, b], count)
    every = np.concatenate([a, b], axis=1)
    want = -np.sort(-every, axis=1)[:, :count]
    assert np.array_equal(np.where(np.isfinite(want), want, -np.inf), got.score)
    picked = np.where(got.layer == 0, np.take_along_axis(a, got.index, 1), np.take_along_axis(b, got.index, 1))
    assert np.array_equal(picked[got.layer >= 0], got.score[got.layer >= 0])


def test_input_bisection_ranks_by_coefficient_times_width_and_skips_flat_dimensions():
    _, doms = _crafted(3)
    ranked = InputBisection().rank(doms, 4)
    width = doms.upper - doms.lower
    for i in range(doms.size):
        score = width[i] if i == 1 else width[i] * (np.abs(doms.input_coeff[i].astype(np.float64)) + 1e-12)
        flat = width[i] > 0
        n = int(flat.sum())
        assert ranked.available[i] == n
        assert np.allclose(score[ranked.index[i, :n]], -np.sort(-score[flat]))
        assert np.all(ranked.layer[i, :n] == INPUT) and np.all(ranked.layer[i, n:] == -1)


def _alpha_root(seed: int):
    """The α/β engine on a small MLP (odd seeds) or CNN, a top-2 spec (single margins) and its bounded root domain."""
    net = random_mlp(seed) if seed % 2 else random_cnn(seed)
    lo, hi = random_box(net, seed, 0.4)
    target = int(np.argmax(net.logits(((lo + hi) / 2)[None])[0]))
    engine = AlphaEngine(net, refresh=False)
    spec = topk_spec(net.num_classes, target, min(2, net.num_classes - 1), pair_weights=())
    coeffs = objective_coeffs(spec)
    b = crown(net, lo, hi)
    layout = layout_of(engine, coeffs.shape[0])
    roots = domains_from([engine.root(lo, hi, b.lower, b.upper)], layout)
    doms, bounded = bound_domains(engine, roots, layout, coeffs)
    doms = absorb(doms, bounded, spec)
    return engine, layout, coeffs, spec, doms


@given(seed=st.integers(0, 400))
@FAST
def test_fsb_picks_the_candidate_whose_worse_child_bound_is_best(seed):
    """FSB on the α/β engine: each candidate's score is the worse of its two children's bounds, as the per-domain
    reference (AlphaEngine.split_scores) computes them, and the candidates come best first."""
    engine, layout, coeffs, spec, doms = _alpha_root(seed)
    fsb = FsbBranching(layout, engine, coeffs, candidates=4)
    got = fsb.rank(doms, 4)
    n = int(got.available[0])
    if n < 2:
        return
    assert np.all(np.diff(got.score[0, :n]) <= 1e-12)
    from mlrobust.verify.bab.bounding import domain_views

    view = domain_views(doms, layout)[0]
    view.binding = int(doms.binding[0])
    choices = [(layout.relu_nodes[r], layout.relu_tensors[r], int(i)) for r, i in zip(got.layer[0, :n],
                                                                                       got.index[0, :n])]
    ref = engine.split_scores([view], coeffs[doms.binding[:1]], [choices])[0]
    assert np.allclose(got.score[0, :n], ref.min(axis=1), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_fsb_scores_in_passes_of_at_most_max_children_are_the_same(seed, monkeypatch):
    """Scoring the candidates in several passes changes no score and no choice; each pass bounds at most
    ``max_children`` children (one domain's 2 x candidates where that alone is more)."""
    import mlrobust.verify.bab.branching as branching_module

    engine, layout, coeffs, spec, doms = _alpha_root(seed)
    first = FsbBranching(layout, engine, coeffs, candidates=4).rank(doms, 2)
    assert first.available[0] >= 2
    kids = split_relus(doms, layout.relu_nodes, first.layer[:, :2], first.index[:, :2])  # four distinct domains
    kids, bounded = bound_domains(engine, kids, layout, coeffs)
    kids = absorb(kids, bounded, spec)
    whole = FsbBranching(layout, engine, coeffs, candidates=4, max_children=10_000).rank(kids, 4)
    sizes: list[int] = []
    original = branching_module.bounds_at

    def counting(network, domains, *args, **kwargs):
        sizes.append(domains.size)
        return original(network, domains, *args, **kwargs)

    monkeypatch.setattr(branching_module, "bounds_at", counting)
    sliced = FsbBranching(layout, engine, coeffs, candidates=4, max_children=16).rank(kids, 4)
    assert len(sizes) >= 2 and all(n <= 16 for n in sizes)
    np.testing.assert_array_equal(sliced.layer, whole.layer)
    np.testing.assert_array_equal(sliced.index, whole.index)
    np.testing.assert_allclose(sliced.score, whole.score, rtol=1e-9, atol=1e-12)


# --- verdicts: every strategy and split depth agrees with the exact MILP ----------------------------------------
@pytest.mark.parametrize("branching,levels,refresh", [("babsr", 3, False), ("widest", 2, False), ("fsb", 1, False),
                                                       ("fsb", 3, True)])
@given(seed=st.integers(0, 300), radius=st.sampled_from([0.1, 0.3]))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_branching_and_split_depth_agrees_with_the_exact_milp(branching, levels, refresh, seed, radius):
    net = random_mlp(seed) if seed % 2 else random_cnn(seed)
    lo, hi = random_box(net, seed, radius)
    box = Box(lo, hi)
    target = int(np.argmax(net.logits(box.center[None])[0]))
    k = 2 if net.num_classes > 2 else 1
    v = BabVerifier(root_attack=False, branching=branching, max_split_levels=levels,
                    refresh_stale=refresh).verify(net, box, target, k, time_limit=4)
    if isinstance(v, Robust):
        assert v.bound < -ROBUST_TOLERANCE
        assert not isinstance(MilpVerifier("highs").verify(net, box, target, k, time_limit=20), NotRobust)
    elif isinstance(v, NotRobust):
        assert box.contains(v.counterexample)
        assert topk_margin(net.logits(v.counterexample[None]), target, k)[0] >= 0
        assert not isinstance(MilpVerifier("highs").verify(net, box, target, k, time_limit=20), Robust)


def test_multi_level_splits_fill_the_first_rounds():
    """One open domain and a batch of 32: the root is split on 3 neurons at once (8 children); with one level
    allowed, on one (2 children). Both prove the box."""
    from test_bab import _query

    net, box, target = _query(12, 0.4)
    deep = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=30)
    flat = BabVerifier(root_attack=False, max_split_levels=1).verify(net, box, target, 2, time_limit=30)
    assert isinstance(deep, Robust) and isinstance(flat, Robust)
    assert deep.stats["bab"]["max_split_levels"] == 3 and flat.stats["bab"]["max_split_levels"] == 1
    assert deep.stats["bab"]["store_bytes_per_domain"] > 0


# --- stale domains: intermediate bounds re-derived under their splits -------------------------------------------
def test_absorb_marks_a_child_stale_exactly_when_its_value_did_not_improve_on_its_parent():
    engine, layout, coeffs, spec, root = _alpha_root(3)
    assert not root.stale.any()  # a first bound has no parent to compare with
    r = int(np.flatnonzero([unstable(root, layout, k)[2][0].any() for k in range(len(layout.relu_nodes))])[0])
    i = int(np.flatnonzero(unstable(root, layout, r)[2][0])[0])
    kids = split_relus(root, layout.relu_nodes, np.array([[r]]), np.array([[i]]))
    parent_value = float(root.value[0])
    bounded = bound_domains(engine, kids, layout, coeffs)[1]
    nothing = bounded.lower.copy()
    nothing[:] = -np.inf  # no row bounded: the children keep the parent's row bounds, hence its value
    same = absorb(kids.take(np.arange(kids.size)), replace(bounded, lower=nothing), spec)
    assert np.all(same.value == parent_value) and same.stale.all()
    better = bounded.lower.copy()
    better[:] = 1e9  # every row proven: the value drops below the parent's
    done = absorb(kids.take(np.arange(kids.size)), replace(bounded, lower=better), spec)
    assert np.all(done.value < parent_value) and not done.stale.any()


def test_refresh_of_stale_domains_tightens_later_layers_soundly_and_leaves_the_others_alone():
    """A split in an earlier ReLU layer of a stale domain reaches the later layers' bounds (the α/β engine alone
    keeps the parent's): never looser, strictly tighter somewhere over these nets, and every sampled point on the
    domain's side of its splits lies within them; domains not stale keep their bounds."""
    gains = []
    for seed in range(1, 40, 2):
        net = random_mlp(seed)
        engine, layout, coeffs, spec, root = _alpha_root(seed)
        if len(layout.relu_nodes) < 2:
            continue
        cand = np.flatnonzero(unstable(root, layout, 0)[2][0])
        if cand.size == 0:
            continue
        kids = split_relus(root, layout.relu_nodes, np.array([[0]]), np.array([[int(cand[0])]]))
        kids.stale[:] = [True, False]
        before = kids.take(np.arange(kids.size))
        fresh, refreshed, empty = refresh_stale(engine, kids, layout)
        assert refreshed == 1 and empty in (0, 1) and fresh.size == 2 - empty and not fresh.stale.any()
        later = layout.relu_tensors[1:]
        for t in later:
            assert np.all(fresh.pre_lower[t] >= before.pre_lower[t][: fresh.size])
            assert np.all(fresh.pre_upper[t] <= before.pre_upper[t][: fresh.size])
            if fresh.size == 2:
                assert np.array_equal(fresh.pre_lower[t][1], before.pre_lower[t][1])  # not stale: untouched
        if empty:
            continue
        gains.append(max(float(np.max(fresh.pre_lower[t][0] - before.pre_lower[t][0])) for t in later))
        lo, hi = before.lower[0], before.upper[0]
        xs = np.random.default_rng(seed).uniform(lo, hi, (2000, *lo.shape))
        values = net.forward(xs, return_all=True)
        side = fresh.splits[layout.relu_nodes[0]][0].reshape(-1)
        z0 = values[layout.relu_tensors[0]].reshape(xs.shape[0], -1)
        ok = np.all(np.where(side > 0, z0 >= 0, True) & np.where(side < 0, z0 <= 0, True), axis=1)
        for t in later:
            v = values[t][ok].reshape(int(ok.sum()), -1)
            assert np.all(v >= fresh.pre_lower[t][0].reshape(-1) - 1e-6)
            assert np.all(v <= fresh.pre_upper[t][0].reshape(-1) + 1e-6)
    assert len(gains) >= 3 and max(gains) > 1e-3
