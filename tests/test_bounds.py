"""IBP, the ``propagate`` API and margin / linear-objective bounds on random IR networks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_factories import random_box, random_network, reference_network, sample_box

from mlrobust.bounds import FP_REL, linear_bounds, margin_bounds, propagate
from mlrobust.bounds.ibp import ibp
from mlrobust.errors import InputError

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=10)
KINDS = st.sampled_from(["mlp", "cnn"])


@SETTINGS
@given(kind=KINDS, seed=st.integers(0, 2**31), radius=st.sampled_from([0.0, 0.05, 0.5]))
def test_ibp_contains_sampled_activations(kind, seed, radius):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed, radius)
    b = propagate(net, lo, hi, "ibp")
    assert b.method == "ibp"
    values = net.forward(sample_box(lo, hi, 2000, seed), return_all=True)
    for t, v in values.items():
        assert not (np.isnan(b.lower[t]).any() or np.isnan(b.upper[t]).any())
        assert np.all(b.lower[t] <= b.upper[t])
        assert np.all(v >= b.lower[t]) and np.all(v <= b.upper[t]), t
    status = b.relu_status()
    assert sum(sum(s.values()) for s in status.values()) == net.num_relus


def test_ibp_widening_is_tiny_and_outward():
    net = random_network("cnn", 5)
    x = np.random.default_rng(0).uniform(-1, 1, net.sample_shape)
    lows, ups = ibp(net, x, x)
    for t, v in net.forward(x[None], return_all=True).items():
        width = ups[t] - lows[t]
        assert np.all(width >= 0)
        assert np.all(width <= 1e3 * FP_REL * (1 + np.abs(v[0])))


def _margins(net, xs, target):
    y = net.logits(xs)
    return y - y[:, [target]]


@SETTINGS
@given(kind=KINDS, seed=st.integers(0, 2**31), radius=st.sampled_from([0.02, 0.2, 1.0]), data=st.data())
def test_margin_bounds_contain_sampled_margins_and_beat_interval_differences(kind, seed, radius, data):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed, radius)
    target = data.draw(st.integers(0, net.num_classes - 1))
    m_lo, m_hi = margin_bounds(net, lo, hi, target)
    i_lo, i_hi = margin_bounds(net, lo, hi, target, method="ibp")
    assert m_lo.shape == m_hi.shape == (net.num_classes,)
    assert m_lo[target] == m_hi[target] == 0.0 and i_lo[target] == i_hi[target] == 0.0
    assert not (np.isnan(m_lo).any() or np.isnan(m_hi).any())
    margins = _margins(net, sample_box(lo, hi, 2000, seed + 1), target)
    assert np.all(margins >= m_lo) and np.all(margins <= m_hi)
    assert np.all(m_lo >= i_lo) and np.all(m_hi <= i_hi)
    # ... and at least as tight as differencing CROWN's own output intervals (up to the rounding widening)
    b = propagate(net, lo, hi, "crown")
    d_lo = b.output_lower - b.output_upper[target]
    d_hi = b.output_upper - b.output_lower[target]
    tol = 1e-7 * (1 + np.abs(d_lo) + np.abs(d_hi))
    assert np.all(m_lo >= d_lo - tol) and np.all(m_hi <= d_hi + tol)


def test_margin_bounds_are_strictly_tighter_than_differences_on_the_reference_net():
    net = reference_network(1)
    x = np.zeros(net.sample_shape)
    x[0, 8:40, 20:28] = 0.9
    lo, hi = np.clip(x - 0.01, 0, 1), np.clip(x + 0.01, 0, 1)
    b = propagate(net, lo, hi, "crown")
    m_lo, m_hi = margin_bounds(net, lo, hi, 3, bounds=b)
    d_hi = b.output_upper - b.output_lower[3]
    d_lo = b.output_lower - b.output_upper[3]
    others = np.arange(10) != 3
    assert np.mean((m_hi - m_lo)[others]) < 0.8 * np.mean((d_hi - d_lo)[others])
    margins = _margins(net, sample_box(lo, hi, 100, 0), 3)
    assert np.all(margins >= m_lo) and np.all(margins <= m_hi)


def test_margin_bounds_reuse_given_bounds_and_sub_boxes():
    net = random_network("cnn", 11)
    lo, hi = random_box(net, 11, 0.3)
    b = propagate(net, lo, hi, "crown")
    fresh = margin_bounds(net, lo, hi, 1)
    reused = margin_bounds(net, lo, hi, 1, bounds=b)
    np.testing.assert_allclose(fresh[0], reused[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fresh[1], reused[1], rtol=1e-12, atol=1e-12)
    # bounds of a larger box are valid intermediate bounds for a box inside it
    mid = (lo + hi) / 2
    s_lo, s_hi = (lo + mid) / 2, (hi + mid) / 2
    sub = margin_bounds(net, s_lo, s_hi, 1, bounds=b)
    margins = _margins(net, sample_box(s_lo, s_hi, 1000, 2), 1)
    assert np.all(margins >= sub[0]) and np.all(margins <= sub[1])
    assert np.all(sub[0] >= reused[0] - 1e-9) and np.all(sub[1] <= reused[1] + 1e-9)
    # ... but not the other way round
    with pytest.raises(InputError, match="does not contain"):
        margin_bounds(net, lo - 0.1, hi, 1, bounds=b)
    # IBP intermediate bounds work too (CROWN back-substitution over IBP pre-activations)
    b_ibp = propagate(net, lo, hi, "ibp")
    w_lo, w_hi = margin_bounds(net, lo, hi, 1, bounds=b_ibp)
    margins = _margins(net, sample_box(lo, hi, 1000, 3), 1)
    assert np.all(margins >= w_lo) and np.all(margins <= w_hi)


@FEW
@given(kind=KINDS, seed=st.integers(0, 2**31))
def test_linear_bounds_contain_sampled_objectives(kind, seed):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed, 0.3)
    coeffs = np.random.default_rng(seed).normal(size=(4, net.num_classes))
    c_lo, c_hi = linear_bounds(net, lo, hi, coeffs)
    values = net.logits(sample_box(lo, hi, 1000, seed)) @ coeffs.T
    assert np.all(values >= c_lo) and np.all(values <= c_hi)


def test_margin_bounds_on_a_point_are_exact():
    net = random_network("mlp", 4)
    x = np.random.default_rng(4).uniform(-1, 1, net.sample_shape)
    m_lo, m_hi = margin_bounds(net, x, x, 0)
    exact = _margins(net, x[None], 0)[0]
    np.testing.assert_allclose(m_lo, exact, atol=1e-8)
    np.testing.assert_allclose(m_hi, exact, atol=1e-8)


def test_bad_arguments_raise_input_errors():
    net = random_network("mlp", 2)
    lo, hi = random_box(net, 2, 0.1)
    with pytest.raises(InputError, match="method"):
        propagate(net, lo, hi, "deeppoly")
    with pytest.raises(InputError, match="target"):
        margin_bounds(net, lo, hi, net.num_classes)
    with pytest.raises(InputError, match="target"):
        margin_bounds(net, lo, hi, -1)
    with pytest.raises(InputError, match="method"):
        margin_bounds(net, lo, hi, 0, method="lp")
    with pytest.raises(InputError, match="columns"):
        linear_bounds(net, lo, hi, np.ones((2, net.num_classes + 1)))
    with pytest.raises(InputError, match="shape"):
        propagate(net, np.zeros(3 + net.sample_shape[0]), np.zeros(3 + net.sample_shape[0]))
