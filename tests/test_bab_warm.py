"""Warm starts of split children: the multipliers of a new split seeded from the coefficients (a child starts from
its parent's line for the split neuron), sound, never a worse start, and the branch and bound's verdicts unchanged."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_factories import NetBuilder, random_box, random_network, sample_box

from mlrobust.bounds.alpha_crown import AlphaOptions, DomainBatch, alpha_bounds, initial_domain
from mlrobust.ir.graph import Network
from mlrobust.ir.ops import Dense
from mlrobust.ops.relu import seed_split_multipliers
from mlrobust.verify.bab.split import split_relus
from mlrobust.verify.bab.store import DomainLayout

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_a_seeded_multiplier_gives_the_split_neuron_its_parents_lower_line(seed):
    rng = np.random.default_rng(seed)
    shape = (3, 4, 5)
    alpha = torch.as_tensor(rng.uniform(0, 1, shape))
    pos = torch.as_tensor(np.maximum(rng.normal(size=shape), 0.0))
    sign = torch.as_tensor(rng.choice([-1.0, 0.0, 1.0], shape))
    old = np.where(rng.random(shape) < 0.5, 0.0, rng.uniform(0, 2, shape))
    fresh = rng.random(shape) < 0.5  # splits made since the warm start (the others keep their multipliers)
    beta = torch.as_tensor(old.copy())
    seed_split_multipliers(beta, alpha, pos, sign, torch.as_tensor(fresh))
    b, s, a, p = beta.numpy(), sign.numpy(), alpha.numpy(), pos.numpy()
    assert np.all(b >= 0)
    new = (s != 0) & fresh
    assert np.array_equal(b[~new], old[~new])  # older splits' multipliers (0 too) and unsplit neurons are kept
    # the child's lower-bounding term: active z (slope 1), inactive 0, minus β s z; the parent's: α z
    child_slope = np.where(s > 0, 1.0, 0.0) * p - b * s
    assert np.allclose(child_slope[new], (p * a)[new], rtol=1e-12, atol=1e-12)


def _one_hidden_layer(seed: int, hidden: int = 12, inputs: int = 4) -> Network:
    """x -> Dense -> ReLU -> Dense, the last layer's weights >= 0, so that every coefficient reaching the hidden
    ReLUs from the first output is >= 0 (the parent's lower lines are what bounds it)."""
    rng = np.random.default_rng(seed)
    b = NetBuilder((inputs,), rng)
    b.dense(hidden)
    b.relu()
    b.dense(3)
    dense = b.nodes[-1].op
    b.nodes[-1] = replace(b.nodes[-1], op=Dense(np.abs(dense.weight), dense.bias))
    return b.build()


def _split(dom: DomainBatch, node: str, index: int, sign: int) -> DomainBatch:
    splits = {k: v.copy() for k, v in dom.splits.items()}
    splits[node].reshape(-1)[index] = sign
    return DomainBatch(dom.lower, dom.upper, dom.pre_lower, dom.pre_upper, splits)


@pytest.mark.parametrize("seed", range(4))
def test_a_child_warm_started_from_its_parent_starts_no_worse_than_the_parent(seed):
    net = _one_hidden_layer(seed)
    lo, hi = random_box(net, seed + 1, 0.6)
    root = initial_domain(net, lo, hi)
    relu = next(n for n in net.nodes if n.kind == "Relu")
    z_lo, z_hi = root.pre_lower[relu.inputs[0]][0], root.pre_upper[relu.inputs[0]][0]
    # CROWN's slope 0 (u < -l): the active child loses the slope's saving unless its multiplier restores it
    candidates = np.flatnonzero((z_lo < 0) & (z_hi > 0) & (z_hi < -z_lo))
    assert candidates.size, "the box leaves no unstable neuron with CROWN's slope 0"
    coeffs = np.eye(3)[:1]  # the first output: coefficients >= 0 on every hidden ReLU
    parent = alpha_bounds(net, root, coeffs, options=AlphaOptions(iterations=0))
    n = int(candidates[0])
    for sign in (1, -1):
        child = _split(root, relu.name, n, sign)
        start = AlphaOptions(iterations=0)
        seeded = alpha_bounds(net, child, coeffs, options=start, warm=parent.state)
        plain = alpha_bounds(net, child, coeffs, options=replace(start, seed_split_beta=False), warm=parent.state)
        assert seeded.lower[0, 0] >= parent.lower[0, 0] - 1e-9
        assert seeded.lower[0, 0] >= plain.lower[0, 0] - 1e-12
        if sign > 0:  # without the multiplier the active child's bound drops below its parent's
            assert plain.lower[0, 0] < parent.lower[0, 0] - 1e-6


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_seeded_warm_starts_bound_every_point_of_the_split_domain(kind, seed):
    """Children of a split on each unstable neuron of the first ReLU node, warm-started (and seeded) from their
    parent: their bounds hold at every sampled point on their side of the split."""
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, 0.3)
    root = initial_domain(net, lo, hi)
    coeffs = np.random.default_rng(seed).normal(size=(3, net.num_classes))
    parent = alpha_bounds(net, root, coeffs, options=AlphaOptions(iterations=4))
    node = next(n for n in net.nodes if n.kind == "Relu")
    x = sample_box(lo, hi, 2000, seed + 2)
    z = net.forward(x, return_all=True)[node.inputs[0]].reshape(x.shape[0], -1)
    z_lo = root.pre_lower[node.inputs[0]][0].reshape(-1)
    z_hi = root.pre_upper[node.inputs[0]][0].reshape(-1)
    for n in np.flatnonzero((z_lo < 0) & (z_hi > 0))[:3]:
        for sign in (1, -1):
            child = _split(root, node.name, int(n), sign)
            res = alpha_bounds(net, child, coeffs, options=AlphaOptions(iterations=4), warm=parent.state)
            inside = (z[:, n] >= 0) if sign > 0 else (z[:, n] <= 0)
            if not inside.any():
                continue
            vals = net.forward(x[inside]).reshape(int(inside.sum()), -1) @ coeffs.T
            assert np.all(vals >= res.lower[0] - 1e-9)


def test_split_children_mark_only_their_new_splits_for_seeding():
    """A child's warm multipliers: its new split's unknown (NaN: seeded next time), every other one its parent's."""
    shape = (6,)
    layout = DomainLayout(("r",), ("z",), {"z": shape}, (2,), 2, 3)
    parents = layout.empty(2)
    parents.splits["r"][0, 1] = 1  # an older split, whose multiplier the parent's optimisation drove to 0
    beta = torch.zeros((2, 2, *shape))
    beta[:, :, 3] = 0.7
    parents.warm = {"beta.r": beta, "alpha.r": torch.full((2, 2, *shape), 0.5)}
    kids = split_relus(parents, ("r",), np.array([[0], [0]]), np.array([[4], [2]]))
    assert kids.size == 4
    got = kids.warm["beta.r"].numpy()
    for child, neuron in ((0, 4), (1, 4), (2, 2), (3, 2)):
        assert np.isnan(got[child, :, neuron]).all()
        rest = np.delete(got[child], neuron, axis=-1)
        assert np.array_equal(rest, np.delete(beta[child // 2].numpy(), neuron, axis=-1))
    assert np.array_equal(kids.warm["alpha.r"].numpy(), np.full((4, 2, *shape), 0.5, dtype=np.float32))
    assert np.array_equal(parents.warm["beta.r"].numpy(), beta.numpy())  # the parents' own state is untouched
