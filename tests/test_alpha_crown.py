"""α-CROWN / β-CROWN bounds: sound for every parameter in range and every split, never looser than CROWN, batched
domains equal to one-by-one calls, and strictly tighter than CROWN on a shipped model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from ir_factories import NetBuilder, random_box, random_network, reference_network, sample_box

from mlrobust.bounds.alpha_crown import (
    AlphaOptions,
    AlphaState,
    DomainBatch,
    RowMix,
    _backward,
    _clamped,
    _context,
    _plan,
    _sound,
    alpha_bounds,
    alpha_margin_bounds,
    bounds_at,
    initial_domain,
)
from mlrobust.bounds.alpha_margin import AlphaCache, alpha_topk_bounds, pair_kth_upper, subset_kth_upper
from mlrobust.bounds.alpha_params import project
from mlrobust.bounds.crown import BackSubstitution, crown
from mlrobust.bounds.margin import margin_bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.ir.ops import Dense, MaxPool2d, Relu

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=8)
OPTS = AlphaOptions(iterations=8, lr_alpha=0.2, lr_beta=0.2)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _outputs(net: Network, xs: np.ndarray) -> np.ndarray:
    return net.forward(xs).reshape(xs.shape[0], -1)


def _random_coeffs(net: Network, seed: int, rows: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, net.num_classes))


def _random_params(net: Network, domains: DomainBatch, rows: int, seed: int, beta: bool) -> AlphaState:
    """Arbitrary in-range parameters (after projection) for every ReLU / MaxPool node."""
    gen = torch.Generator().manual_seed(seed)
    used, _ = _clamped(net, domains)
    ctx = _context(net, used)
    st_ = AlphaState()
    d = domains.size
    for node in net.nodes:
        if isinstance(node.op, Relu):
            st_.alpha[node.name] = torch.rand((d, rows, *node.out_shape), generator=gen, dtype=torch.float64)
            if beta and ctx.relax[node.name].sign is not None:
                st_.beta[node.name] = 3.0 * torch.rand((d, rows, *node.out_shape), generator=gen, dtype=torch.float64)
        elif isinstance(node.op, MaxPool2d):
            lam = ctx.relax[node.name].default_lam
            st_.pool[node.name] = torch.rand((d, rows, *lam.shape[2:]), generator=gen, dtype=torch.float64) * 2 - 0.5
            theta = ctx.relax[node.name].default_tau
            st_.tau[node.name] = torch.rand((d, rows, *theta.shape[2:]), generator=gen, dtype=torch.float64)
    project(st_, ctx)
    return st_


def _bound_with(net: Network, domains: DomainBatch, coeffs: np.ndarray, params: AlphaState) -> np.ndarray:
    """The (widened) bound for fixed parameters, without the optimiser's intersection with CROWN."""
    used, _ = _clamped(net, domains)
    ctx = _context(net, used)
    ctx.params = params
    out = net.output_name
    a0 = torch.as_tensor(coeffs)[None].reshape(1, coeffs.shape[0], *net.shape_of(out))
    with torch.no_grad():
        return _sound(*_backward(ctx, _plan(net, out), out, a0)).numpy()


def _random_splits(net: Network, domains: DomainBatch, seed: int, per_node: int = 2) -> DomainBatch:
    """Split a few unstable ReLUs of the single domain, each to the side a random point of the box is on (so the
    sub-domain is not empty)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(domains.lower[0], domains.upper[0])[None]
    values = net.forward(x, return_all=True)
    splits = {k: v.copy() for k, v in domains.splits.items()}
    for node in net.nodes:
        if not isinstance(node.op, Relu):
            continue
        t = node.inputs[0]
        lo, hi = domains.pre_lower[t][0].reshape(-1), domains.pre_upper[t][0].reshape(-1)
        cand = np.flatnonzero((lo < 0) & (hi > 0))
        if cand.size:
            pick = rng.choice(cand, size=min(per_node, cand.size), replace=False)
            flat = splits[node.name].reshape(1, -1)
            flat[0, pick] = np.where(values[t].reshape(-1)[pick] >= 0, 1, -1)
            splits[node.name] = flat.reshape(splits[node.name].shape)
    return DomainBatch(domains.lower, domains.upper, domains.pre_lower, domains.pre_upper, splits)


def _satisfies(net: Network, xs: np.ndarray, splits: dict[str, np.ndarray]) -> np.ndarray:
    """Which samples satisfy every split constraint of the (single) domain."""
    values = net.forward(xs, return_all=True)
    ok = np.ones(xs.shape[0], dtype=bool)
    for node in net.nodes:
        s = splits.get(node.name)
        if s is None or not s.any():
            continue
        z = values[node.inputs[0]].reshape(xs.shape[0], -1)
        sign = s[0].reshape(-1)
        ok &= np.all(np.where(sign > 0, z >= 0, True) & np.where(sign < 0, z <= 0, True), axis=1)
    return ok


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31), radius=st.sampled_from([0.05, 0.3]))
@example(kind="cnn", seed=1, radius=0.05)  # parameters picked in float32 off their range by rounding: 1.2e-8 unsound
def test_alpha_bounds_contain_samples_and_never_looser_than_crown(kind, seed, radius):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, radius)
    b = crown(net, lo, hi)
    dom = initial_domain(net, lo, hi, b)
    coeffs = _random_coeffs(net, seed)
    res = alpha_bounds(net, dom, coeffs, options=OPTS)
    assert res.lower.shape == res.crown_lower.shape == (1, coeffs.shape[0])
    vals = _outputs(net, sample_box(lo, hi, 1000, seed + 2)) @ coeffs.T
    assert np.all(vals >= res.lower[0]), np.max(res.lower[0] - vals.min(0))
    assert np.all(res.lower >= res.crown_lower)
    # plain CROWN of this module is CROWN's back-substitution on the same intermediate bounds (rounding aside)
    c_lo = BackSubstitution(net, dict(b.lower), dict(b.upper)).lower_bounds(net.output_name, coeffs)
    assert np.allclose(res.crown_lower[0], c_lo, rtol=1e-7, atol=1e-7)


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_any_slopes_and_pool_weights_in_range_are_sound(kind, seed):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    dom = initial_domain(net, lo, hi)
    coeffs = _random_coeffs(net, seed)
    bound = _bound_with(net, dom, coeffs, _random_params(net, dom, coeffs.shape[0], seed, beta=False))
    vals = _outputs(net, sample_box(lo, hi, 1000, seed + 2)) @ coeffs.T
    assert np.all(vals >= bound[0])


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
@example(kind="cnn", seed=31262226)  # the same rounding, on a split domain (3.3e-9 unsound)
def test_split_domains_with_any_beta_bound_the_points_that_satisfy_the_split(kind, seed):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    dom = _random_splits(net, initial_domain(net, lo, hi), seed)
    coeffs = _random_coeffs(net, seed)
    rng = np.random.default_rng(seed)
    x_split = rng.uniform(dom.lower[0], dom.upper[0])[None]  # the point _random_splits chose the sides by
    xs = np.concatenate([x_split, sample_box(lo, hi, 3000, seed + 2)])
    ok = _satisfies(net, xs, dom.splits)
    assert ok[0]
    vals = _outputs(net, xs[ok]) @ coeffs.T
    res = alpha_bounds(net, dom, coeffs, options=OPTS)
    assert res.infeasible is not None and not res.infeasible[0]
    assert np.all(vals >= res.lower[0])
    assert np.all(res.lower >= res.crown_lower)
    bound = _bound_with(net, dom, coeffs, _random_params(net, dom, coeffs.shape[0], seed, beta=True))
    assert np.all(vals >= bound[0])


def test_beta_tightens_a_split_bound():
    """y = relu(x) - relu(-x) ... a split on an unstable neuron plus β must beat the clamped relaxation alone."""
    net = random_network("mlp", 3)
    lo, hi = random_box(net, 4, 0.5)
    dom = initial_domain(net, lo, hi)
    coeffs = _random_coeffs(net, 5, rows=6)
    gains = []
    for seed in range(6):
        d = _random_splits(net, dom, seed, per_node=3)
        with_beta = alpha_bounds(net, d, coeffs, options=AlphaOptions(iterations=30, lr_beta=0.5))
        no_beta = alpha_bounds(net, d, coeffs, options=AlphaOptions(iterations=30, lr_beta=0.0))
        finite = np.isfinite(with_beta.lower)
        assert np.all(with_beta.lower[finite] >= no_beta.lower[finite] - 1e-6)
        gains.append(float(np.max(np.where(finite, with_beta.lower - no_beta.lower, 0.0), initial=0.0)))
    assert max(gains) > 1e-4


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_batched_domains_equal_one_by_one(kind, seed):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    base = initial_domain(net, lo, hi)
    doms = [_random_splits(net, base, seed + i) for i in range(3)]
    # narrow the input box of one domain (input splitting) with the parent's intermediate bounds kept
    mid = (lo + hi) / 2
    doms[1] = DomainBatch(doms[1].lower, np.minimum(doms[1].upper, mid[None]), doms[1].pre_lower, doms[1].pre_upper,
                          doms[1].splits)
    batch = DomainBatch(np.concatenate([d.lower for d in doms]), np.concatenate([d.upper for d in doms]),
                        {k: np.concatenate([d.pre_lower[k] for d in doms]) for k in base.pre_lower},
                        {k: np.concatenate([d.pre_upper[k] for d in doms]) for k in base.pre_upper},
                        {k: np.concatenate([d.splits[k] for d in doms]) for k in base.splits})
    coeffs = _random_coeffs(net, seed)
    # float64 steps: float32 reductions may round differently with the batch size and the trajectories drift apart
    exact = replace(OPTS, loop_dtype="float64")
    together = alpha_bounds(net, batch, coeffs, options=exact)
    for i, d in enumerate(doms):
        alone = alpha_bounds(net, d, coeffs, options=exact)
        both = np.isfinite(alone.lower[0])
        assert np.array_equal(both, np.isfinite(together.lower[i]))
        assert np.allclose(together.lower[i][both], alone.lower[0][both], rtol=1e-9, atol=1e-9)
        assert np.allclose(together.crown_lower[i][both], alone.crown_lower[0][both], rtol=1e-9, atol=1e-9)
    # the state selects per domain and warm-starts the children
    child = together.state.select([0, 0, 2])
    assert child.domains == 3 and child.rows == coeffs.shape[0]
    again = alpha_bounds(net, batch.select([0, 0, 2]), coeffs, options=AlphaOptions(iterations=0), warm=child)
    fin = np.isfinite(again.lower)
    assert np.all(again.lower[fin] >= together.lower[[0, 0, 2]][fin] - 1e-9)


@FEW
@given(seed=st.integers(0, 2**31))
def test_optimized_intermediate_bounds_are_sound_and_not_looser(seed):
    net = random_network("cnn", seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    dom = initial_domain(net, lo, hi)
    coeffs = _random_coeffs(net, seed)
    res = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=5, optimize_intermediate=True))
    assert res.domains is not None
    xs = sample_box(lo, hi, 1000, seed + 2)
    values = net.forward(xs, return_all=True)
    for t in dom.pre_lower:
        assert np.all(res.domains.pre_lower[t] >= dom.pre_lower[t])
        assert np.all(res.domains.pre_upper[t] <= dom.pre_upper[t])
        assert np.all(values[t] >= res.domains.pre_lower[t]) and np.all(values[t] <= res.domains.pre_upper[t])
    assert np.all(_outputs(net, xs) @ coeffs.T >= res.lower[0])


def test_margin_bounds_agree_in_shape_and_bad_input_is_rejected():
    net = random_network("mlp", 1)
    lo, hi = random_box(net, 2, 0.2)
    m_lo, m_hi, state = alpha_margin_bounds(net, lo, hi, 0, options=AlphaOptions(iterations=3))
    c_lo, c_hi = margin_bounds(net, lo, hi, 0)
    assert m_lo.shape == m_hi.shape == c_lo.shape
    assert m_lo[0] == m_hi[0] == 0.0
    assert np.all(m_lo >= c_lo - 1e-7) and np.all(m_hi <= c_hi + 1e-7)
    assert state.rows == 2 * (net.num_classes - 1)
    with pytest.raises(InputError):
        alpha_margin_bounds(net, lo, hi, net.num_classes)
    dom = initial_domain(net, lo, hi)
    with pytest.raises(InputError):
        alpha_bounds(net, dom, np.ones((2, net.num_classes + 1)))
    with pytest.raises(InputError):
        alpha_bounds(net, DomainBatch(dom.lower, dom.upper, {}, {}, {}), np.ones((1, net.num_classes)))


def test_alpha_is_strictly_tighter_than_crown_on_a_shipped_model():
    from PIL import Image

    from mlrobust.ir.onnx_import import load_onnx

    net = load_onnx(EXAMPLES / "models" / "mnist2_pgd.onnx")
    x = np.asarray(Image.open(EXAMPLES / "images" / "ex00.png"), dtype=np.float64)[None] / 255.0
    lo, hi = np.clip(x - 0.03, 0, 1), np.clip(x + 0.03, 0, 1)
    b = crown(net, lo, hi)
    c_lo, c_hi = margin_bounds(net, lo, hi, 1, bounds=b)
    a_lo, a_hi, _ = alpha_margin_bounds(net, lo, hi, 1, intermediate=b, options=AlphaOptions(iterations=10))
    assert np.all(a_hi <= c_hi + 1e-9) and np.all(a_lo >= c_lo - 1e-9)
    assert np.max(c_hi - a_hi) > 0.02  # measured ~0.07 on the largest margin


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31), radius=st.sampled_from([0.05, 0.2, 0.5]))
def test_alpha_tightening_bounds_the_kth_margin_and_beats_crown(kind, seed, radius):
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.margin import topk_margin

    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, radius)
    target = seed % net.num_classes
    k = 2 if net.num_classes > 2 else 1
    crown_t = tighten(net, lo, hi, "crown", target=target)
    cache = AlphaCache()
    for _ in range(2):  # the second call starts warm from the first one's parameters
        alpha_t = tighten(net, lo, hi, "alpha", target=target, k=k, alpha_cache=cache,
                          alpha_options=AlphaOptions(iterations=10))
        xs = sample_box(lo, hi, 1000, seed + 2)
        margins = _outputs(net, xs) - _outputs(net, xs)[:, [target]]
        assert np.all(margins <= alpha_t.margin_upper) and np.all(margins >= alpha_t.margin_lower)
        assert np.all(alpha_t.margin_upper <= crown_t.margin_upper + 1e-12)
        assert alpha_t.kth_upper is not None and alpha_t.k == k
        assert np.all(topk_margin(_outputs(net, xs), target, k) <= alpha_t.kth_upper)
        others = np.delete(np.arange(net.num_classes), target)
        assert alpha_t.kth_upper <= np.sort(crown_t.margin_upper[others])[-k] + 1e-12


def test_pair_bound_is_the_max_over_pairs_of_the_smallest_bound():
    upper = np.array([0.0, 2.0, 0.5, -1.0, 0.3])  # target 0
    assert pair_kth_upper(upper, 0, {}) == 0.5  # the second-largest per-class bound
    assert pair_kth_upper(upper, 0, {(1, 2): -0.2}) == 0.3  # pair {1, 2} closed: next is {1, 4}
    assert pair_kth_upper(upper, 0, {(1, 2): -0.2, (1, 4): -0.1, (2, 4): -0.3}) == -0.1


@given(upper=st.lists(st.floats(-2, 2), min_size=2, max_size=8), k=st.integers(1, 4), data=st.data())
def test_subset_bound_is_the_max_over_k_subsets_of_the_smallest_bound(upper, k, data):
    import itertools

    upper = np.array([0.0, *upper])  # target 0
    others = range(1, upper.size)
    subsets = list(itertools.combinations(others, k))
    chosen = data.draw(st.lists(st.sampled_from(subsets), max_size=6, unique=True)) if subsets else []
    bound = {s: data.draw(st.floats(-3, 3)) for s in chosen}
    brute = max((min(min(upper[c] for c in s), bound.get(s, np.inf)) for s in subsets), default=-np.inf)
    assert subset_kth_upper(upper, 0, k, bound) == brute


def test_subset_bound_for_triples_needs_every_binding_triple_closed():
    upper = np.array([0.0, 2.0, 0.5, -1.0, 0.3, 0.4])  # target 0; per class the third largest is 0.4
    assert subset_kth_upper(upper, 0, 3, {}) == 0.4
    assert subset_kth_upper(upper, 0, 3, {(1, 2, 5): -0.2}) == 0.3  # {1, 2, 5} closed: next are {1, 2, 4} ...
    closed = {(1, 2, 5): -0.2, (1, 2, 4): -0.1, (1, 4, 5): -0.3, (2, 4, 5): -0.4}
    assert subset_kth_upper(upper, 0, 3, closed) == -0.1  # every triple of the four open classes closed
    assert subset_kth_upper(upper, 0, 3, {(1, 2, 5): 5.0}) == 0.4  # a loose subset bound never loosens


def _three_margins_that_cannot_all_be_large() -> Network:
    """Two inputs in [-1, 1] through a stable ReLU layer (``h = x + 2``), four logits ``(0.5, x1, x2, -x1 - x2)``:
    with target 0 and k = 3 the third-largest margin is ``min(x1, x2, -x1 - x2) - 0.5 <= -0.5`` (the three sum to
    -1.5), while each margin alone reaches 0.5 or 1.5."""
    b = NetBuilder((2,), np.random.default_rng(0))
    b._add(Dense(np.eye(2), np.full(2, 2.0)), (b.cur,), (2,))
    b.relu()
    w = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    b._add(Dense(w, np.array([0.5, -2.0, -2.0, 4.0])), (b.cur,), (4,))
    return b.build()


def test_alpha_triples_prove_top3_where_per_class_bounds_cannot():
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bound_check import BoundCheck
    from mlrobust.verify.margin import topk_margin
    from mlrobust.verify.spec import Box
    from mlrobust.verify.verdict import Robust

    net = _three_margins_that_cannot_all_be_large()
    lo, hi = np.full(2, -1.0), np.full(2, 1.0)
    crown = tighten(net, lo, hi, "crown", target=0)
    assert np.allclose(crown.margin_upper[1:], [0.5, 0.5, 1.5], atol=1e-6)
    top = alpha_topk_bounds(net, crown.bounds, 0, 3, crown.margin_lower, crown.margin_upper,
                            options=AlphaOptions(iterations=30))
    assert top.stats["subset_rows"] == 1 and top.crown_kth_upper > 0.49
    assert top.kth_upper < -1e-4  # the triple's convex combination: exactly -0.5 at equal weights
    xs = sample_box(lo, hi, 500, 1)
    assert np.all(topk_margin(_outputs(net, xs), 0, 3) <= top.kth_upper + 1e-9)
    verdict = BoundCheck("alpha").verify(net, Box(lo, hi), 0, 3)
    assert isinstance(verdict, Robust)


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31), radius=st.sampled_from([0.05, 0.2, 0.5]))
def test_alpha_kth_bound_is_sound_for_top3(kind, seed, radius):
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.margin import topk_margin

    net = random_network(kind, seed)
    assume(net.num_classes >= 4)
    lo, hi = random_box(net, seed + 1, radius)
    target = seed % net.num_classes
    crown_t = tighten(net, lo, hi, "crown", target=target)
    alpha_t = tighten(net, lo, hi, "alpha", target=target, k=3, alpha_options=AlphaOptions(iterations=10))
    xs = sample_box(lo, hi, 1000, seed + 2)
    assert alpha_t.kth_upper is not None
    assert np.all(topk_margin(_outputs(net, xs), target, 3) <= alpha_t.kth_upper + 1e-9)
    others = np.delete(np.arange(net.num_classes), target)
    assert alpha_t.kth_upper <= np.sort(crown_t.margin_upper[others])[-3] + 1e-12


def test_alpha_cache_fills_missing_rows_with_crown_defaults():
    net = random_network("mlp", 7)
    lo, hi = random_box(net, 8, 0.3)
    dom = initial_domain(net, lo, hi)
    coeffs = _random_coeffs(net, 9, rows=2)
    res = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=5))
    cache = AlphaCache(families=1)
    cache.put("f", ["a", "b"], res.state)
    warm = cache.warm("f", ["b", "new"])
    assert warm is not None and warm.rows == 2
    for v in warm.alpha.values():
        assert torch.isnan(v[:, 1]).all() and not torch.isnan(v[:, 0]).any()
    again = alpha_bounds(net, dom, coeffs[[1, 0]], options=AlphaOptions(iterations=0), warm=warm)
    assert again.lower[0, 0] >= res.lower[0, 1] - 1e-9  # row "b" restarts where it ended
    cache.put("g", ["a"], res.state)  # one family kept: "f" is dropped
    assert cache.warm("f", ["a"]) is None


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_input_coeffs_give_a_linear_lower_bound_function(kind, seed):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    dom = initial_domain(net, lo, hi)
    coeffs = _random_coeffs(net, seed, rows=3)
    res = alpha_bounds(net, dom, coeffs, options=OPTS)
    a = res.input_coeffs
    assert a is not None and a.shape == (1, 3, *net.sample_shape)
    a2 = a[0].reshape(3, -1)
    lo_f, hi_f = lo.reshape(-1), hi.reshape(-1)
    # lower = min over the box of a·x + c, so c = lower - that minimum; f(x) >= a·x + c at every sample
    const = res.lower[0] - (np.minimum(a2 * lo_f, a2 * hi_f)).sum(1)
    xs = sample_box(lo, hi, 500, seed + 2)
    vals = _outputs(net, xs) @ coeffs.T
    lin = xs.reshape(xs.shape[0], -1) @ a2.T + const
    assert np.all(vals >= lin - 1e-7 * (1 + np.abs(vals)))


def test_alpha_bound_tier_proves_what_crown_cannot_and_warm_starts_the_next_query():
    from mlrobust.verify.bound_check import BoundCheck
    from mlrobust.verify.spec import Box
    from mlrobust.verify.verdict import Robust, Unknown

    net = random_network("mlp", 13)
    lo, hi = random_box(net, 13, 0.1)
    box = Box(lo, hi)
    assert isinstance(BoundCheck("crown").verify(net, box, 0, 2), Unknown)
    check = BoundCheck("alpha")
    verdict = check.verify(net, box, 0, 2)
    assert isinstance(verdict, Robust) and verdict.bound < -1e-4
    stats = verdict.stats["bounds"]
    assert stats["alpha_rows"] >= 2 and stats["crown_kth_upper"] > 0
    from mlrobust.verify.margin import topk_margin

    assert np.all(topk_margin(_outputs(net, sample_box(lo, hi, 2000, 1)), 0, 2) <= verdict.bound)
    assert check.alpha_cache is not None and check.alpha_cache.hits == 0
    shrunk = Box(lo + 0.01 * (hi - lo), hi - 0.01 * (hi - lo))
    assert isinstance(check.verify(net, shrunk, 0, 2), Robust)
    assert check.alpha_cache.hits >= 2  # the second query started from the first one's slopes


def test_a_split_against_a_neurons_bounds_makes_the_domain_empty():
    net = random_network("mlp", 2)
    lo, hi = random_box(net, 3, 0.05)
    dom = initial_domain(net, lo, hi)
    relu = next(n for n in net.nodes if isinstance(n.op, Relu))
    u = dom.pre_upper[relu.inputs[0]][0].reshape(-1)
    dead = np.flatnonzero(u < 0)
    assert dead.size  # a stably inactive neuron, split active: z >= 0 contradicts z <= u < 0
    splits = {k: v.copy() for k, v in dom.splits.items()}
    splits[relu.name].reshape(1, -1)[0, dead[0]] = 1
    both = DomainBatch(np.concatenate([dom.lower] * 2), np.concatenate([dom.upper] * 2),
                       {k: np.concatenate([v] * 2) for k, v in dom.pre_lower.items()},
                       {k: np.concatenate([v] * 2) for k, v in dom.pre_upper.items()},
                       {k: np.concatenate([dom.splits[k], v]) for k, v in splits.items()})
    res = alpha_bounds(net, both, _random_coeffs(net, 0), options=AlphaOptions(iterations=3))
    assert res.infeasible is not None and list(res.infeasible) == [False, True]
    assert np.all(np.isinf(res.lower[1])) and np.all(np.isfinite(res.lower[0]))


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31), radius=st.sampled_from([0.05, 0.3]))
@example(kind="mlp", seed=3, radius=0.3)  # a pair whose optimised weight leaves 1/2 for 1: 0.002 against -0.44
def test_row_mixture_weights_stay_in_their_simplex_and_bound_every_sample(kind, seed, radius):
    """Rows mixing margins with optimised weights: the returned weights sit in each row's simplex, the bound holds at
    every sample for those weights, and it is never below CROWN's at the starting weights (the plain rows)."""
    net = random_network(kind, seed)
    n = net.num_classes
    if n < 3:
        return
    lo, hi = random_box(net, seed + 1, radius)
    dom = initial_domain(net, lo, hi, crown(net, lo, hi))
    target = n - 1
    base = np.eye(n)[target] - np.eye(n)[:target]  # -(y_c - y_target): lower bounds = minus margin upper bounds
    pairs = [(a, b) for a in range(target) for b in range(a + 1, target)]
    groups = np.zeros((len(pairs), target), dtype=bool)
    for i, (a, b) in enumerate(pairs):
        groups[i, [a, b]] = True
    mix = RowMix(base, groups)
    res = alpha_bounds(net, dom, None, options=OPTS, mix=mix)
    w = res.state.mix["rows"][0].numpy()
    assert np.allclose(w.sum(axis=1), 1.0) and np.all(w >= 0) and np.all(w[~groups] == 0)
    vals = _outputs(net, sample_box(lo, hi, 1000, seed + 2)) @ mix.coefficients(w).T
    assert np.all(vals >= res.lower[0]), np.max(res.lower[0] - vals.min(0))
    fixed = alpha_bounds(net, dom, mix.coefficients(), options=replace(OPTS, iterations=0))
    assert np.all(res.lower[0] >= fixed.lower[0] - 1e-9)


def test_row_mixture_rejects_empty_groups_and_wrong_widths():
    with pytest.raises(InputError, match="at least one"):
        RowMix(np.eye(3), np.array([[True, False, False], [False, False, False]]))
    net = random_network("mlp", 0)
    lo, hi = random_box(net, 1, 0.1)
    with pytest.raises(InputError, match="columns"):
        alpha_bounds(net, initial_domain(net, lo, hi), None, mix=RowMix(np.eye(net.num_classes + 1), [[True] * (
            net.num_classes + 1)]))


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_bounds_at_given_parameters_are_the_optimised_bound_and_sound_for_any_parameters(kind, seed):
    """One pass at given parameters: at the optimised state it gives the optimiser's bound (when that beat
    CROWN's), at random in-range parameters a bound that holds at every sample."""
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    dom = initial_domain(net, lo, hi, crown(net, lo, hi))
    coeffs = _random_coeffs(net, seed)
    res = alpha_bounds(net, dom, coeffs, options=OPTS)
    at = bounds_at(net, dom, coeffs, res.state)
    better = res.lower > res.crown_lower + 1e-9
    assert np.allclose(at[better], res.lower[better], rtol=1e-9, atol=1e-9)
    assert np.all(at <= res.lower + 1e-9)
    vals = _outputs(net, sample_box(lo, hi, 500, seed + 2)) @ coeffs.T
    rand = bounds_at(net, dom, coeffs, _random_params(net, dom, coeffs.shape[0], seed, beta=False))
    assert np.all(vals >= rand[0])


def test_a_split_reaches_the_maxpool_its_relu_feeds():
    """An inactive split of a ReLU that feeds a MaxPool makes its output 0: the pool's relaxation must see that,
    exactly as if the ReLU output's bounds had been given as [0, 0] (the parent's [0, u] left the windows as loose
    as before the split)."""
    net = reference_network(seed=0, size=16)
    lo, hi = random_box(net, 1, 0.3)
    dom = initial_domain(net, lo, hi)
    relu = [n for n in net.nodes if isinstance(n.op, Relu)][-1]
    assert any(isinstance(n.op, MaxPool2d) and n.inputs[0] == relu.output for n in net.nodes)
    z = relu.inputs[0]
    unstable = np.flatnonzero((dom.pre_lower[z][0] < 0).reshape(-1) & (dom.pre_upper[z][0] > 0).reshape(-1))
    x0 = np.random.default_rng(4).uniform(lo, hi)[None]
    off = unstable[net.forward(x0, return_all=True)[z].reshape(-1)[unstable] <= 0]  # inactive at x0
    assert off.size >= 4
    split = {k: v.copy() for k, v in dom.splits.items()}
    split[relu.name].reshape(-1)[off] = -1
    stated_upper = dict(dom.pre_upper)
    stated_upper[relu.output] = dom.pre_upper[relu.output].copy()
    stated_upper[relu.output].reshape(-1)[off] = 0.0
    split_dom = DomainBatch(dom.lower, dom.upper, dom.pre_lower, dom.pre_upper, split)
    stated = DomainBatch(dom.lower, dom.upper, dom.pre_lower, stated_upper, split)
    coeffs = _random_coeffs(net, 2, rows=6)
    crown_only = AlphaOptions(iterations=0)
    got = alpha_bounds(net, split_dom, coeffs, options=crown_only).lower
    want = alpha_bounds(net, stated, coeffs, options=crown_only).lower
    unsplit = alpha_bounds(net, dom, coeffs, options=crown_only).lower
    assert np.allclose(got, want, rtol=0, atol=1e-9)
    assert np.max(want - unsplit) > 1e-3  # the pool's bounds matter here: the split tightens the bound
    # still sound: every sampled point on the split's side is bounded
    xs = np.concatenate([x0, sample_box(lo, hi, 3000, 3)])
    ok = _satisfies(net, xs, split)
    assert ok[0]
    assert np.all(_outputs(net, xs[ok]) @ coeffs.T >= got[0] - 1e-9)
