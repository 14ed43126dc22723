"""α/β parameters kept compact over the units whose relaxation depends on them (``support``): the same bounds as
the dense layout for the same parameters, warm starts carried between layouts unit by unit, and the branch and
bound's store holding only the support's columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_factories import random_box, random_cnn, random_network, sample_box

from mlrobust.bounds import crown
from mlrobust.bounds.alpha_crown import (
    AlphaOptions,
    AlphaState,
    DomainBatch,
    alpha_bounds,
    alpha_memory,
    bounds_at,
    initial_domain,
    parameter_support,
)
from mlrobust.bounds.alpha_params import relayout
from mlrobust.verify.bab.bounding import absorb, as_batch, bound_domains, domains_from, layout_of
from mlrobust.verify.bab.branching import WidestBranching
from mlrobust.verify.bab.spec import objective_coeffs, topk_spec
from mlrobust.verify.bab.split import split_relus
from mlrobust.verify.bab_bounds import AlphaEngine

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _split_domain(net, dom: DomainBatch, rng: np.random.Generator, splits: int) -> DomainBatch:
    """``dom`` with up to ``splits`` of its unstable ReLU neurons (any node) split to a random side."""
    out = {k: v.copy() for k, v in dom.splits.items()}
    for node in net.nodes:
        if node.kind != "Relu":
            continue
        t = node.inputs[0]
        unstable = np.flatnonzero((dom.pre_lower[t][0] < 0).reshape(-1) & (dom.pre_upper[t][0] > 0).reshape(-1))
        for n in rng.permutation(unstable)[:splits]:
            out[node.name].reshape(1, -1)[0, n] = rng.choice([-1, 1])
    return DomainBatch(dom.lower, dom.upper, dom.pre_lower, dom.pre_upper, out)


def _random_params(state: AlphaState, rng: np.random.Generator) -> AlphaState:
    """Parameters of ``state``'s shapes at random points of their ranges (slopes and thresholds in [0, 1],
    multipliers >= 0, pool weights positive: projected onto the simplex by the engine)."""
    out = AlphaState(support=dict(state.support))
    for name, key, v in state.items():
        r = torch.as_tensor(rng.uniform(0.0, 1.0, size=tuple(v.shape)))
        out.put(name, key, 2.0 * r if name == "beta" else r)
    return out


def _dense_of(compact: AlphaState, dense_like: AlphaState) -> AlphaState:
    """The dense state holding ``compact``'s values on its support and ``dense_like``'s (CROWN's) elsewhere."""
    out = AlphaState()
    for name, key, v in compact.items():
        like = dense_like.family(name).get(key)
        if like is None:
            out.put(name, key, v)
            continue
        w = relayout(v, compact.support.get(key), like, None)
        assert w is not None
        out.put(name, key, torch.where(torch.isnan(w), like, w))
    return out


@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31), splits=st.integers(0, 2))
@FAST
def test_compact_and_dense_layouts_give_the_same_bounds_for_the_same_parameters(kind, seed, splits):
    net = random_network(kind, seed)
    rng = np.random.default_rng(seed)
    lo, hi = random_box(net, seed + 1, 0.4)
    root = initial_domain(net, lo, hi)
    support = parameter_support(net, root)
    dom = _split_domain(net, root, rng, splits)
    coeffs = rng.normal(size=(3, net.num_classes))
    plain = AlphaOptions(iterations=0)
    compact_init = alpha_bounds(net, dom, coeffs, options=plain, support=support).state
    dense_init = alpha_bounds(net, dom, coeffs, options=plain).state
    for key, units in support.items():  # only the support's units are kept
        for name in compact_init.families:
            v = compact_init.family(name).get(key)
            if v is not None and name != "mix":
                assert v.shape[2] == units.numel()
    params = _random_params(compact_init, rng)
    got = bounds_at(net, dom, coeffs, params, support=support)
    want = bounds_at(net, dom, coeffs, _dense_of(params, dense_init))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # and they hold at every sampled point of the split domain
    x = sample_box(lo, hi, 1500, seed + 2)
    acts = net.forward(x, return_all=True)
    inside = np.ones(x.shape[0], dtype=bool)
    for node in net.nodes:
        if node.name in dom.splits:
            z = acts[node.inputs[0]].reshape(x.shape[0], -1)
            s = dom.splits[node.name][0].reshape(-1)
            inside &= np.all((s[None] == 0) | (s[None] * z >= 0), axis=1)
    if inside.any():
        vals = net.forward(x[inside]).reshape(int(inside.sum()), -1) @ coeffs.T
        assert np.all(vals >= got[0] - 1e-9)


@given(seed=st.integers(0, 2**31))
@settings(max_examples=12, deadline=None)
def test_optimised_compact_bounds_are_sound_and_never_below_crown(seed):
    net = random_network("cnn", seed)
    lo, hi = random_box(net, seed + 1, 0.4)
    dom = _split_domain(net, initial_domain(net, lo, hi), np.random.default_rng(seed), 1)
    coeffs = np.random.default_rng(seed + 3).normal(size=(2, net.num_classes))
    res = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=4), support=parameter_support(net, dom))
    assert np.all(res.lower >= res.crown_lower)
    assert set(res.state.support) == set(parameter_support(net, dom))
    # a warm start in the dense layout is taken over unit by unit: its values on the support, CROWN's elsewhere (a
    # dominated pool window's weights, which the dense optimisation may have moved off its winner)
    # (float64 steps: the state's fixed thresholds are then CROWN's exactly, as the call recomputes them)
    dense = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=4, loop_dtype="float64"))
    support = parameter_support(net, dom)
    again = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=0), warm=dense.state, support=support)
    compact_like = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=0), support=support).state
    taken = AlphaState(support=dict(support))
    for name, key, v in dense.state.items():
        like = compact_like.family(name).get(key)
        w = v if like is None else relayout(v, None, like, support.get(key))
        assert w is not None
        taken.put(name, key, w)
    kept = _dense_of(taken, alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=0)).state)
    np.testing.assert_allclose(again.lower, np.maximum(bounds_at(net, dom, coeffs, kept), again.crown_lower),
                               rtol=1e-9, atol=1e-9)


def test_relayout_moves_each_unit_and_marks_the_missing_ones():
    dense = torch.arange(2 * 3 * 8, dtype=torch.float64).reshape(2, 3, 2, 4)  # (D, S, *units) with 8 units
    mine, theirs = torch.tensor([1, 5, 6]), torch.tensor([0, 5, 7])
    compact = relayout(dense, None, torch.zeros(2, 3, 3), mine)
    assert compact is not None
    assert torch.equal(compact, dense.reshape(2, 3, 8)[:, :, [1, 5, 6]])
    back = relayout(compact, mine, dense, None)
    assert back is not None
    flat = back.reshape(2, 3, 8)
    assert torch.equal(flat[:, :, mine], compact) and torch.isnan(flat[:, :, [0, 2, 3, 4, 7]]).all()
    other = relayout(compact, mine, torch.zeros(2, 3, 3), theirs)  # unit 5 is in both, 0 and 7 only in theirs
    assert other is not None
    assert torch.equal(other[:, :, 1], compact[:, :, 1]) and torch.isnan(other[:, :, [0, 2]]).all()
    # a window's inputs (a trailing axis) stay as they are; a shape that does not fit gives None
    lam = torch.rand(1, 2, 6, 4)
    assert torch.equal(relayout(lam, None, torch.zeros(1, 2, 2, 4), torch.tensor([2, 3])), lam[:, :, [2, 3]])
    assert relayout(lam, None, torch.zeros(1, 2, 2, 5), torch.tensor([2, 3])) is None
    assert relayout(lam, None, torch.zeros(1, 2, 2, 4), torch.tensor([2, 6])) is None  # unit 6 of 6


def test_the_support_is_the_unstable_neurons_and_open_windows():
    for seed in range(40):
        net = random_cnn(seed)
        if any(n.kind == "MaxPool2d" for n in net.nodes):
            break
    lo, hi = random_box(net, seed, 0.3)
    root = initial_domain(net, lo, hi)
    support = parameter_support(net, root)
    for node in net.nodes:
        t = node.inputs[0] if node.inputs else None
        if node.kind == "Relu":
            want = np.flatnonzero((root.pre_lower[t][0] < 0).reshape(-1) & (root.pre_upper[t][0] > 0).reshape(-1))
            assert np.array_equal(support[node.name].numpy(), want)
        elif node.kind == "MaxPool2d":
            from mlrobust.ops.base import pool_index
            from mlrobust.ops.maxpool2d import window_bounds

            idx = pool_index(node.op, net.shape_of(t)).reshape(-1, node.op.kernel[0] * node.op.kernel[1])
            l_win, u_win = window_bounds(idx, root.pre_lower[t][0], root.pre_upper[t][0])
            k_up = u_win.argmax(-1)
            others = u_win.copy()
            others[np.arange(idx.shape[0]), k_up] = -np.inf
            exact = l_win[np.arange(idx.shape[0]), k_up] >= others.max(-1)
            assert np.array_equal(support[node.name].numpy(), np.flatnonzero(~exact))


def _round_of_children(seed: int, compact: bool):
    """A root bounded by an α/β engine (compact or dense layout), and its children split on three levels bounded
    from its parameters: the engine, the bounded children, the layout."""
    net = random_cnn(seed)
    lo, hi = random_box(net, seed, 0.5)
    target = int(np.argmax(net.logits(((lo + hi) / 2)[None])[0]))
    engine = AlphaEngine(net, AlphaOptions(iterations=3, loop_dtype="float64"), refresh=False, memory_budget=None)
    spec = topk_spec(net.num_classes, target, min(2, net.num_classes - 1))
    coeffs = objective_coeffs(spec)
    b = crown(net, lo, hi)
    root = engine.root(lo, hi, b.lower, b.upper)
    if compact:
        engine.fix_support(root)
    layout = layout_of(engine, coeffs.shape[0])
    doms, bounded = bound_domains(engine, domains_from([root], layout), layout, coeffs)
    doms = absorb(doms, bounded, spec)
    ranked = WidestBranching(layout).rank(doms, 3)
    depth = int(ranked.available.min())
    if depth == 0:
        return None
    layer, index = ranked.first(depth)
    kids = split_relus(doms, layout.relu_nodes, layer, index, engine.support)
    kids, bounded = bound_domains(engine, kids, layout, coeffs)
    return engine, absorb(kids, bounded, spec), bounded, coeffs


@pytest.mark.parametrize("seed", [3, 5, 11])
def test_the_store_keeps_only_the_supports_columns_and_the_children_bound_alike(seed):
    dense = _round_of_children(seed, compact=False)
    compact = _round_of_children(seed, compact=True)
    assert dense is not None and compact is not None
    engine, kids, bounded, coeffs = compact
    _, kids_dense, bounded_dense, _ = dense
    rows = coeffs.shape[0]
    support = engine.support
    assert support
    # every warm-start tensor has one column per unit of its node's support (the row mixture's aside)
    want = 0
    for key, v in kids.warm.items():
        family, node = key.split(".", 1)
        if family == "mix":
            continue
        width = support[node].numel()
        assert v.shape[:3] == (kids.size, rows, width)
        want += 4 * rows * width * int(np.prod(v.shape[3:]))
    dense_bytes = sum(4 * int(np.prod(v.shape[1:])) for k, v in kids_dense.warm.items() if not k.startswith("mix"))
    got = sum(v.element_size() * int(np.prod(v.shape[1:])) for k, v in kids.warm.items() if not k.startswith("mix"))
    assert got == want < dense_bytes
    assert kids.nbytes_per_domain() < kids_dense.nbytes_per_domain()
    # the children of the same splits, warm-started from the same root (float64 steps): the same bounds
    np.testing.assert_allclose(bounded.lower, bounded_dense.lower, rtol=1e-7, atol=1e-7)
    # and the memory plan counts the compact parameters: more children per chunk
    mem = alpha_memory(engine.network, as_batch(kids), engine.options, support=support)
    mem_dense = alpha_memory(engine.network, as_batch(kids), engine.options)
    assert mem.per_row < mem_dense.per_row


def test_split_children_mark_their_new_split_in_the_compact_column():
    from mlrobust.verify.bab.store import DomainLayout

    shape = (6,)
    layout = DomainLayout(("r",), ("z",), {"z": shape}, (2,), 2, 3)
    parents = layout.empty(1)
    support = {"r": torch.tensor([1, 2, 4])}
    parents.warm = {"beta.r": torch.zeros((1, 2, 3))}
    kids = split_relus(parents, ("r",), np.array([[0]]), np.array([[4]]), support)
    beta = kids.warm["beta.r"].numpy()
    assert np.isnan(beta[:, :, 2]).all() and not np.isnan(beta[:, :, :2]).any()
    assert list(kids.splits["r"][:, 4]) == [1, -1]
