"""Window splits in the branch and bound: a MaxPool window restricted to a subset of its inputs, per domain."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, sample_box

from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_bounds
from mlrobust.bounds.crown import crown
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, Conv2d, Dense, MaxPool2d, Relu, Reshape
from mlrobust.ops.maxpool2d import alpha_pool_relax
from mlrobust.verify.bab import BabVerifier
from mlrobust.verify.bab.bounding import as_batch, domains_from, layout_of
from mlrobust.verify.bab.branching import BabsrBranching, FsbBranching, window_scores
from mlrobust.verify.bab.split import split_choices, window_entries
from mlrobust.verify.bab_bounds import AlphaEngine, SplitCrown
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import Robust, Unknown


def _pool_net(seed: int) -> Network:
    """conv 2x3x3 -> ReLU -> MaxPool 2x2 -> dense 3 on a 1x6x6 input."""
    b = NetBuilder((1, 6, 6), np.random.default_rng(seed))
    b.conv(2, (3, 3))
    b.relu()
    b.maxpool((2, 2), (2, 2))
    b.flatten()
    b.dense(3)
    return b.build()


def _root(net: Network, lo: np.ndarray, hi: np.ndarray):
    engine = AlphaEngine(net, refresh=False)
    b = crown(net, lo, hi)
    layout = layout_of(engine, 1, pool_splits=True)
    return engine, layout, domains_from([engine.root(lo, hi, b.lower, b.upper)], layout)


def _in_child(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Points ``(N, K)`` of one window whose maximum is attained at an entry of ``allowed`` ``(K,)``."""
    top = values.max(axis=1, keepdims=True)
    return ((values == top) & allowed[None]).any(axis=1)


@given(seed=st.integers(0, 500), radius=st.sampled_from([0.1, 0.3, 0.6]), second=st.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_window_split_children_bound_every_point_of_their_part_and_cover_the_parent(seed, radius, second):
    """Children of a window split (one level, or two levels on two windows) bound every sampled point whose window
    maximum is attained in their candidate sets; every point lies in some child, and the smallest child bound is
    at most the smallest sampled value (sound)."""
    net = _pool_net(seed)
    rng = np.random.default_rng(seed)
    center = rng.uniform(-1, 1, net.sample_shape)
    lo, hi = center - radius, center + radius
    engine, layout, root = _root(net, lo, hi)
    scores = window_scores(root, layout, 0)[0]
    open_windows = np.flatnonzero(np.isfinite(scores))
    assume(open_windows.size >= (2 if second else 1))
    chosen = open_windows[np.argsort(-scores[open_windows])][: 2 if second else 1]
    relus = len(layout.relu_nodes)
    kids = split_choices(root, layout, np.full((1, chosen.size), relus), chosen[None])
    assert kids.size == 2 ** chosen.size
    coeffs = rng.normal(size=(2, net.num_classes))
    res = alpha_bounds(net, as_batch(kids), coeffs, options=AlphaOptions(iterations=5))
    xs = sample_box(lo, hi, 400, seed)
    acts = net.forward(xs, return_all=True)
    values = acts[layout.pool_tensors[0]].reshape(xs.shape[0], -1)
    objective = net.logits(xs) @ coeffs.T  # (N, 2)
    windows = layout.pool_windows[0]
    covered = np.zeros(xs.shape[0], dtype=bool)
    for c in range(kids.size):
        inside = np.ones(xs.shape[0], dtype=bool)
        for w in chosen:
            entries = windows[w]
            real = entries >= 0
            vals = np.where(real[None], values[:, np.where(real, entries, 0)], -np.inf)
            inside &= _in_child(vals, real & ~kids.pool_excluded[layout.pool_nodes[0]][c, w])
        covered |= inside
        if inside.any():
            assert np.all(objective[inside] >= res.lower[c][None] - 1e-7), (c, res.lower[c])
    assert covered.all()
    assert np.all(res.lower.min(axis=0) <= objective.min(axis=0) + 1e-7)


def test_a_window_restricted_to_one_input_is_that_input():
    """With S = {j} the relaxation's upper line is exactly x_j (CROWN's default threshold at l_j, the others out)
    and the default lower line is x_j too; without the restriction the chord concedes the other input's bound."""
    idx = np.array([[[[0, 1]]]])  # one window over two inputs
    lo, hi = np.array([[[[0.0, 0.0]]]]), np.array([[[[1.0, 1.0]]]])
    free = alpha_pool_relax(idx, lo, hi)
    only_first = alpha_pool_relax(idx, lo, hi, np.array([[[False, True]]]))
    assert free.upper_valid is None
    assert only_first.upper_valid.tolist() == [[[[True, False]]]]
    theta = only_first.default_tau[0, 0, 0]
    tau = only_first.tau_lo + theta * (only_first.tau_hi - only_first.tau_lo)
    assert float(tau) == 0.0  # l_j: the line tau + (x_j - tau) = x_j
    assert only_first.default_lam[0, 0, 0].tolist() == [1.0, 0.0]
    assert float(free.tau_lo + free.default_tau * (free.tau_hi - free.tau_lo)) == 1.0  # chord of max(x_j, 1)


def _window_net(width: int = 20) -> Network:
    """``relu(x + 10)`` (every ReLU stably active) pooled in windows of two; class 1's logit less class 0's is
    ``max(x_a, x_b) - (x_a + x_b) / 2 - 0.7`` over the last window (at most ``-0.2`` on ``[0, 1]``): robust, but
    the upper line of an unrestricted window is the constant 1 (``+0.3``), and no ReLU is left to split."""
    half = width // 2
    wm = np.zeros((3, half))
    wm[1, -1] = 1.0
    wx = np.zeros((3, width))
    wx[1, -2:] = -0.5
    nodes = [
        Node("c", Conv2d(np.ones((1, 1, 1, 1)), np.array([10.0]), (1, 1), (0, 0, 0, 0), (1, 1), 1), ("x",), "z",
             (1, 1, width)),
        Node("r", Relu(), ("z",), "a", (1, 1, width)),
        Node("p", MaxPool2d((1, 2), (1, 2)), ("a",), "m", (1, 1, half)),
        Node("f", Reshape((half,)), ("m",), "mf", (half,)),
        Node("fx", Reshape((width,)), ("x",), "xf", (width,)),
        Node("dm", Dense(wm, np.array([0.0, -10.7, -100.0])), ("mf",), "ym", (3,)),
        Node("dx", Dense(wx, np.zeros(3)), ("xf",), "yx", (3,)),
        Node("s", Add(1.0), ("ym", "yx"), "y", (3,)),
    ]
    return Network("x", (1, 1, 1, width), nodes, "y")


def test_a_box_that_only_window_splits_prove_is_proven_with_them():
    """The window's inputs are stably active with overlapping bounds: ReLU branching has nothing to split and
    input bisection does not prove it in 64 domains; one window split makes both children exact."""
    net = _window_net()
    box = Box(np.zeros((1, 1, 20)), np.ones((1, 1, 20)))
    xs = sample_box(box.lower, box.upper, 2000, 0)
    ys = net.logits(xs)
    assert np.all(ys[:, 1] - ys[:, 0] <= -0.2 + 1e-12)
    with_windows = BabVerifier(max_domains=64).verify(net, box, 0, k=1, time_limit=60)
    without = BabVerifier(max_domains=64, pool_splits=False).verify(net, box, 0, k=1, time_limit=60)
    assert isinstance(with_windows, Robust)
    stats = with_windows.stats["bab"]
    assert stats["window_splits"] >= 1
    assert stats["root_bound"] == pytest.approx(0.3, abs=1e-6)
    assert with_windows.bound == pytest.approx(-0.2, abs=1e-6)  # exact: max - mean of two inputs <= 0.5
    assert isinstance(without, Unknown) and "domain limit" in without.reason
    assert "window_splits" not in without.stats["bab"]


def test_window_candidates_are_only_windows_a_split_can_change():
    """A window dominated by one input is no candidate; after a split of a two-input window each child has one
    input left that may attain the maximum, so neither is a candidate again."""
    net = _window_net(4)
    lo, hi = np.zeros((1, 1, 4)), np.ones((1, 1, 4))
    lo[0, 0, 0], hi[0, 0, 1] = 0.6, 0.5  # x_0 in [0.6, 1] dominates x_1 in [0, 0.5]: window 0 is decided
    _, layout, root = _root(net, lo, hi)
    scores = window_scores(root, layout, 0)
    assert np.isneginf(scores[0, 0]) and np.isfinite(scores[0, 1])
    kids = split_choices(root, layout, np.array([[1]]), np.array([[1]]))
    live = [window_entries(kids, layout, 0, np.array([c]), np.array([1]))[3] for c in range(2)]
    assert live[0].sum() == 1 and live[1].sum() == 1
    assert np.isneginf(window_scores(kids, layout, 0)[:, 1]).all()


def test_without_pool_splits_the_layout_and_branching_are_the_relu_ones():
    """pool_splits off (or plain CROWN, which does not read window restrictions): no window fields, no window
    candidates, and the α/β batch carries no restriction (the relaxation takes its unrestricted path)."""
    net = _pool_net(1)
    lo, hi = np.full((1, 6, 6), -0.3), np.full((1, 6, 6), 0.3)
    engine = AlphaEngine(net, refresh=False)
    off = layout_of(engine, 1)
    crown_layout = layout_of(SplitCrown(net), 1, pool_splits=True)
    assert off.pool_nodes == () and crown_layout.pool_nodes == ()
    b = crown(net, lo, hi)
    doms = domains_from([engine.root(lo, hi, b.lower, b.upper)], off)
    assert doms.pool_excluded == {} and as_batch(doms).pool_excluded == {}
    assert BabsrBranching(off).scores(doms).__len__() == 1
    fsb = FsbBranching(off, engine, np.ones((1, net.num_classes)))
    assert fsb.pool_candidates == 0
    on = layout_of(engine, 1, pool_splits=True)
    assert len(BabsrBranching(on).scores(domains_from([engine.root(lo, hi, b.lower, b.upper)], on))) == 2


def test_window_splits_reset_the_split_windows_pool_weights_only():
    """A child's warm start loses the pool weights of the window it split (NaN: CROWN's choice for the restricted
    window), and keeps every other window's."""
    net = _window_net(4)
    lo, hi = np.zeros((1, 1, 4)), np.ones((1, 1, 4))
    _, layout, root = _root(net, lo, hi)
    key = f"pool.{layout.pool_nodes[0]}"
    root.warm = {key: torch.full((1, 1, 2, 2), 0.5)}
    kids = split_choices(root, layout, np.array([[1]]), np.array([[1]]))
    w = kids.warm[key]
    assert torch.isnan(w[:, :, 1]).all() and (w[:, :, 0] == 0.5).all()
    assert kids.pool_excluded[layout.pool_nodes[0]][:, 1].tolist() == [[False, True], [True, False]]


#: (seed, radius) -> (domains, rounds, final bound) of the branch and bound before window splits existed, on
#: ``_pool_net(seed)`` and the box of that radius around a uniform centre in [-1, 1] (code 9f52cda, no time limit,
#: 300 domains at most, no root attack, top-1 of the centre's class)
BEFORE = {(0, 0.1): (329, 6, 0.10427536905929558), (2, 0.1): (345, 6, 0.03667807257181307),
          (10, 0.2): (361, 7, 0.21001853103647145)}


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_without_pool_splits_the_search_is_the_one_before_them(case):
    """pool_splits=False makes the same search as the code before window splits: the same domains, rounds and
    final bound (no deadline, so nothing depends on the clock); with them the same query makes window splits."""
    seed, radius = case
    net = _pool_net(seed)
    centre = np.random.default_rng(seed).uniform(-1, 1, net.sample_shape)
    box = Box(centre - radius, centre + radius)
    target = int(np.argmax(net.logits(centre[None])[0]))
    options = dict(time_limit=None, max_domains=300, root_attack=False)
    # the code before window splits kept its α/β parameters dense (compact_params moves a pool-weight bound by ~1 %)
    off = BabVerifier(pool_splits=False, compact_params=False, **options).verify(net, box, target, k=1, time_limit=None).stats["bab"]
    domains, rounds, bound = BEFORE[case]
    assert (off["domains"], off["rounds"]) == (domains, rounds)
    assert off["final_bound"] == pytest.approx(bound, rel=1e-9, abs=1e-12)
    on = BabVerifier(**options).verify(net, box, target, k=1, time_limit=None).stats["bab"]
    assert on["window_splits"] > 0


def test_a_window_restricted_to_an_unstable_relu_makes_it_active():
    """Window (relu(x_0), relu(x_1)) with x_0 in [-1, 2] (unstable) and x_1 in [0.5, 1]: the child whose maximum is
    at relu(x_0) has relu(x_0) >= 0.5, so x_0 >= 0.5 (active); its sibling keeps x_0's bounds."""
    nodes = [
        Node("c", Conv2d(np.ones((1, 1, 1, 1)), np.zeros(1), (1, 1), (0, 0, 0, 0), (1, 1), 1), ("x",), "z",
             (1, 1, 2)),
        Node("r", Relu(), ("z",), "a", (1, 1, 2)),
        Node("p", MaxPool2d((1, 2), (1, 2)), ("a",), "m", (1, 1, 1)),
        Node("f", Reshape((1,)), ("m",), "y", (1,)),
        Node("d", Dense(np.array([[1.0], [-1.0]]), np.zeros(2)), ("y",), "out", (2,)),
    ]
    net = Network("x", (1, 1, 1, 2), nodes, "out")
    lo, hi = np.array([[[-1.0, 0.5]]]), np.array([[[2.0, 1.0]]])
    _, layout, root = _root(net, lo, hi)
    kids = split_choices(root, layout, np.array([[1]]), np.array([[0]]))
    assert kids.pool_excluded["p"][:, 0].tolist() == [[False, True], [True, False]]
    res = alpha_bounds(net, as_batch(kids), np.array([[1.0, 0.0]]), options=AlphaOptions(iterations=0))
    # (the stored bounds are float32 rounded outward: 0.5 comes back a hair below)
    assert res.domains.pre_lower["z"][:, 0, 0, 0].tolist() == pytest.approx([0.5, -1.0], abs=1e-6)
    assert res.domains.pre_lower["a"][:, 0, 0, 0].tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    # y = max(relu(x_0), relu(x_1)) >= 0.5 everywhere. The second child's y is relu(x_1) >= 0.5; the first child's
    # is relu(x_0) = x_0 (active), but the back-substitution ends on the box, where x_0 >= -1: the raised bound
    # shapes relaxations, it is no constraint of the final bound (as a ReLU split's beta would be)
    assert res.lower[:, 0].tolist() == pytest.approx([-1.0, 0.5], abs=1e-6)
