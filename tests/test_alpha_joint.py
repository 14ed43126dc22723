"""Intermediate bounds optimised jointly with the output objective (:mod:`mlrobust.bounds.alpha_joint`): the pass is
sound for any slopes, the fast conv pass equals the generic one, the kept bounds and the output bounds contain
sampled values, and on fixed cases the joint bounds are never looser than the frozen ones (and tighter on one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_factories import NetBuilder, random_box, random_network, reference_network, sample_box

from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_bounds, initial_domain, margin_coeffs
from mlrobust.bounds.alpha_joint import joint_layer
from mlrobust.bounds.crown import crown
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def conv_pair_network(seed: int) -> Network:
    """conv -> ReLU -> conv -> ReLU -> MaxPool -> Dense with random channels, kernels, strides and asymmetric pads:
    the chain the fast pass handles, small enough to sample densely."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(6, 11))
    b = NetBuilder((int(rng.integers(1, 3)), size, size), rng)
    for _ in range(2):
        kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
        padding = tuple(int(rng.integers(0, kernel[i % 2])) for i in range(4))
        b.conv(int(rng.integers(2, 5)), kernel, tuple(int(s) for s in rng.integers(1, 3, 2)), padding)
        b.relu()
    if min(b.shape[1:]) >= 2:
        b.maxpool((2, 2), (2, 2))
    b.flatten()
    b.dense(int(rng.integers(3, 7)))
    return b.build()


def _domain(net: Network, seed: int, radius: float):
    lo, hi = random_box(net, seed + 1, radius)
    return lo, hi, initial_domain(net, lo, hi, crown(net, lo, hi))


def _pre_values(net: Network, lo: np.ndarray, hi: np.ndarray, tensor: str, seed: int) -> np.ndarray:
    xs = sample_box(lo, hi, 600, seed)
    return net.forward(xs, return_all=True)[tensor].reshape(xs.shape[0], -1)


@SETTINGS
@given(seed=st.integers(0, 2**31), radius=st.sampled_from([0.05, 0.3]), fast=st.booleans())
def test_the_intermediate_pass_is_sound_for_any_slopes(seed, radius, fast):
    net = conv_pair_network(seed)
    lo, hi, dom = _domain(net, seed, radius)
    joint = joint_layer(net, dom, fast_path=fast)
    if joint is None:  # no neuron of the bounded tensor has bounds that matter
        return
    assert (joint.fast is not None) == fast
    joint.bounds()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in joint.alpha.values():
            v.copy_(torch.rand(v.shape, generator=gen, dtype=v.dtype))
        b_lo, b_hi = joint.bounds()
    values = _pre_values(net, lo, hi, joint.tensor, seed + 2)
    assert np.all(values >= b_lo.numpy()) and np.all(values <= b_hi.numpy())
    assert np.all(joint.best_lo.numpy() >= dom.pre_lower[joint.tensor].reshape(-1))
    assert np.all(joint.best_hi.numpy() <= dom.pre_upper[joint.tensor].reshape(-1))


@SETTINGS
@given(seed=st.integers(0, 2**31), radius=st.sampled_from([0.05, 0.3]))
def test_the_fast_pass_equals_the_generic_one_at_crowns_slopes(seed, radius):
    net = conv_pair_network(seed)
    _, _, dom = _domain(net, seed, radius)
    fast, generic = joint_layer(net, dom), joint_layer(net, dom, fast_path=False)
    if fast is None or generic is None:
        return
    assert fast.fast is not None and generic.fast is None
    f_lo, f_hi = fast.bounds()
    g_lo, g_hi = generic.bounds()
    assert torch.allclose(f_lo, g_lo, rtol=1e-9, atol=1e-9) and torch.allclose(f_hi, g_hi, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(kind=st.sampled_from(["pair", "cnn", "mlp"]), seed=st.integers(0, 2**31),
       radius=st.sampled_from([0.05, 0.3]))
def test_joint_bounds_contain_samples_and_keep_sound_intermediate_bounds(kind, seed, radius):
    net = conv_pair_network(seed) if kind == "pair" else random_network(kind, seed)
    lo, hi, dom = _domain(net, seed, radius)
    coeffs = np.random.default_rng(seed).normal(size=(4, net.num_classes))
    res = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=8, joint_intermediate="on"))
    xs = sample_box(lo, hi, 800, seed + 2)
    values = net.forward(xs, return_all=True)
    assert np.all(values[net.output_name].reshape(xs.shape[0], -1) @ coeffs.T >= res.lower[0])
    assert np.all(res.lower >= res.crown_lower)
    assert res.domains is not None
    for t in dom.pre_lower:
        assert np.all(res.domains.pre_lower[t] >= dom.pre_lower[t])
        assert np.all(res.domains.pre_upper[t] <= dom.pre_upper[t])
        assert np.all(values[t] >= res.domains.pre_lower[t]) and np.all(values[t] <= res.domains.pre_upper[t])


def test_many_selected_neurons_share_slopes_per_channel_and_stay_sound():
    net = reference_network(3, size=32)
    lo, hi = random_box(net, 4, 0.2)
    dom = initial_domain(net, lo, hi)
    joint = joint_layer(net, dom)
    assert joint is not None and joint.fast is not None
    # per-neuron window slopes cost idx × C1·k² numbers (~800 × 72 here), one slope map per channel C2·C1·H1·W1
    # (16 · 8 · 16 · 16): shared
    assert joint.shared and joint.idx.size * joint.fast.window > joint.fast.c2 * joint.fast.c1 * joint.fast.h1 * (
        joint.fast.w1)
    narrow = joint_layer(net, initial_domain(net, *random_box(net, 4, 0.02)))
    assert narrow is not None and not narrow.shared
    rows, _ = margin_coeffs(net.num_classes, 0)
    res = alpha_bounds(net, dom, -rows, options=AlphaOptions(iterations=5, joint_intermediate="on"))
    assert res.stats["joint"] == "on" and res.stats["joint_rows"] == 2 * joint.idx.size
    xs = sample_box(lo, hi, 300, 5)
    assert np.all(net.forward(xs).reshape(xs.shape[0], -1) @ (-rows).T >= res.lower[0])


def test_auto_skips_the_joint_pass_beyond_its_work_cap(monkeypatch):
    import mlrobust.bounds.alpha_crown as ac

    net = conv_pair_network(7)
    _, _, dom = _domain(net, 7, 0.3)
    coeffs = np.eye(net.num_classes)[:2]
    on = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=3, joint_intermediate="auto"))
    monkeypatch.setattr(ac, "JOINT_MAX_WORK", 0)
    off = alpha_bounds(net, dom, coeffs, options=AlphaOptions(iterations=3, joint_intermediate="auto"))
    assert on.stats["joint"] == "on"
    assert off.stats["joint"].startswith("skipped")
    with pytest.raises(InputError, match="joint_intermediate"):
        alpha_bounds(net, dom, coeffs, options=AlphaOptions(joint_intermediate="yes"))


def _shipped_box(model: str, image: str, radius: float):
    from PIL import Image

    from mlrobust.ir.onnx_import import load_onnx

    net = load_onnx(EXAMPLES / "models" / f"{model}.onnx")
    x = np.asarray(Image.open(EXAMPLES / "images" / f"{image}.png"), dtype=np.float64)[None] / 255.0
    return net, np.clip(x - radius, 0, 1), np.clip(x + radius, 0, 1)


@pytest.mark.parametrize("model, image, radius, target", [
    ("mnist2_l0", "ex00", 0.004, 1), ("mnist2_nodefense", "ex00", 0.004, 1), ("mnist2_nodefense", "ex01", 0.003, 1),
])
def test_the_tier_with_joint_bounds_is_never_looser_than_with_frozen_ones(model, image, radius, target):
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bound_check import margin_range

    net, lo, hi = _shipped_box(model, image, radius)
    kth = {}
    for mode in ("off", "auto"):
        tight = tighten(net, lo, hi, "alpha", target=target, k=2, alpha_options=AlphaOptions(joint_intermediate=mode))
        kth[mode] = margin_range(tight, target, 2)[1]
    assert kth["auto"] <= kth["off"] + 1e-9


def test_joint_bounds_tighten_the_output_bound_on_a_shipped_model():
    net, lo, hi = _shipped_box("mnist2_l0", "ex00", 0.004)
    dom = initial_domain(net, lo, hi)
    rows, _ = margin_coeffs(net.num_classes, 1)
    frozen = alpha_bounds(net, dom, -rows, options=AlphaOptions(iterations=10))
    joint = alpha_bounds(net, dom, -rows, options=AlphaOptions(iterations=10, joint_intermediate="on"))
    assert np.all(joint.lower >= joint.crown_lower)
    assert np.max(joint.lower - frozen.lower) > 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_tier_hands_its_joint_intermediate_bounds_on_sound_and_within_crowns(seed):
    from mlrobust.bounds.tier import tighten

    net = reference_network(seed, size=16)
    x = np.random.default_rng(seed).uniform(0, 1, net.sample_shape)
    target = int(np.argsort(net.forward(x[None]).reshape(-1))[-2])
    lo, hi = np.clip(x - 0.05, 0, 1), np.clip(x + 0.05, 0, 1)
    crown_t = tighten(net, lo, hi, "crown", target=target)
    alpha_t = tighten(net, lo, hi, "alpha", target=target, k=2)
    xs = sample_box(lo, hi, 500, seed + 3)
    values = net.forward(xs, return_all=True)
    for t, v in values.items():
        assert np.all(alpha_t.bounds.lower[t] >= crown_t.bounds.lower[t] - 1e-12)
        assert np.all(alpha_t.bounds.upper[t] <= crown_t.bounds.upper[t] + 1e-12)
        assert np.all(v >= alpha_t.bounds.lower[t]) and np.all(v <= alpha_t.bounds.upper[t])
    assert alpha_t.num_unstable <= crown_t.num_unstable
    moved = [t for t in crown_t.bounds.upper if np.any(alpha_t.bounds.upper[t] < crown_t.bounds.upper[t] - 1e-6)]
    assert moved  # the conv2 bounds (and what follows from them) did tighten: 0.01-0.04 on these boxes
