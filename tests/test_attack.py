"""PGD attack: its loss is the top-k margin, it finds counterexamples that exist, and never claims robustness."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box, random_network  # noqa: E402

import mlrobust.verify.attack as attack_module  # noqa: E402
from mlrobust.ir.graph import Network  # noqa: E402
from mlrobust.ir.ops import Dense  # noqa: E402
from mlrobust.verify.attack import PgdAttack, pgd  # noqa: E402
from mlrobust.verify.counterexample import TopKProperty  # noqa: E402
from mlrobust.verify.margin import topk_margin  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import NotRobust, Unknown  # noqa: E402


@pytest.mark.parametrize("k", [1, 2, 3])
def test_torch_margin_equals_numpy_margin(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(50, 6))
    logits[:5, 1] = logits[:5, 0]  # ties count against the target
    for target in range(6):
        prop = TopKProperty(target, k)
        got = prop.margin_torch(torch.as_tensor(logits)).numpy()
        assert np.allclose(got, topk_margin(logits, target, k))


def test_attack_finds_the_counterexample_of_a_linear_model():
    """y = W x: the worst case of a linear margin is a box corner, which signed-gradient steps reach."""
    rng = np.random.default_rng(0)
    b = NetBuilder((10,), rng)
    b.dense(4)
    net = b.build()
    x0 = rng.uniform(0, 1, 10)
    W = net.nodes[0].op.weight
    for target in range(4):
        for eps in (0.01, 0.3):
            box = Box(x0 - eps, x0 + eps)
            # exact worst case of y_c - y_t for k = 1: best corner per class
            d = W - W[target]
            worst = max((d[c] @ x0 + np.abs(d[c]).sum() * eps + net.nodes[0].op.bias[c] - net.nodes[0].op.bias[target])
                        for c in range(4) if c != target)
            v = PgdAttack(restarts=4, steps=20).verify(net, box, target, 1)
            if worst > 1e-6:
                assert isinstance(v, NotRobust)
                assert box.contains(v.counterexample) and v.margin >= 0
            else:
                assert isinstance(v, Unknown)
                assert v.weak_points[0].margin == pytest.approx(worst, abs=1e-5)


def test_attack_is_never_robust_and_reports_weak_points():
    net = random_network("cnn", 3)
    lower, upper = random_box(net, 3, 0.05)
    v = PgdAttack().verify(net, Box(lower, upper), 0, 1, mode="optimize")
    assert not v.is_robust
    assert v.weak_points
    margins = [w.margin for w in v.weak_points]
    assert margins == sorted(margins, reverse=True)
    for w in v.weak_points:
        assert Box(lower, upper).contains(w.x)
        assert topk_margin(net.logits(w.x[None]), 0, 1)[0] == pytest.approx(w.margin)


def test_attack_improves_on_its_start_and_is_reproducible():
    net = random_network("mlp", 5)
    lower, upper = random_box(net, 5, 0.5)
    box = Box(lower, upper)
    prop = TopKProperty(1, 1)
    start_margin = topk_margin(net.logits(box.center[None]), 1, 1)[0]
    a = pgd(net, box, prop, restarts=4, steps=30, seed=3, stop_on_violation=False)
    b = pgd(net, box, prop, restarts=4, steps=30, seed=3, stop_on_violation=False)
    assert a.best.margin >= start_margin - 1e-6
    assert a.best.margin == b.best.margin
    assert np.array_equal(a.best.x, b.best.x)


def test_given_start_points_are_used():
    net = random_network("mlp", 6)
    lower, upper = random_box(net, 6, 0.5)
    box = Box(lower, upper)
    a = pgd(net, box, TopKProperty(0, 1), restarts=3, steps=0, starts=[box.upper])
    assert a.stats["restarts"] == 3
    assert any(np.allclose(p.x, box.upper, atol=1e-6) for p in a.points)


# --- the diversified attack -----------------------------------------------------------------------------------------
N_IN = 20


def _trap_network(spike: bool) -> Network:
    """20 inputs in [0, 1], s = sum(x); three logits, target 0 (y0 = 0), k = 1.

    y1 = -0.2 - 0.01 |s - 10| is never a counterexample, leads on all but a corner of the box and pulls every
    gradient step towards s = 10. y2 only wins at the upper corner (s >= ~18.5 of 20): ``spike=False`` makes it a
    ramp -10 + 0.525 s (its own gradient leads to the corner: found by a restart aimed at it), ``spike=True`` a
    step -1 + 20 relu(s - 19.5) (no gradient below the step: found by output-diversified starts, which jump along
    the logits' own directions). Uniform random starts have s = 10 ± 1.3, far from both."""
    ones = np.ones((1, N_IN))
    w1 = np.vstack([ones, -ones, ones])
    b1 = np.array([-10.0, 10.0, -19.5 if spike else 0.0])
    w2 = np.array([[0.0, 0.0, 0.0], [-0.01, -0.01, 0.0], [0.0, 0.0, 20.0 if spike else 0.525]])
    b2 = np.array([0.0, -0.2, -1.0 if spike else -10.0])
    b = NetBuilder((N_IN,), np.random.default_rng(0))
    b._add(Dense(w1, b1), (b.cur,), (3,))
    b.relu()
    b._add(Dense(w2, b2), (b.cur,), (3,))
    return b.build()


@pytest.mark.parametrize("spike", [False, True])
def test_diversified_attack_finds_the_counterexample_the_plain_one_misses(spike, monkeypatch):
    net = _trap_network(spike)
    box = Box(np.zeros(N_IN), np.ones(N_IN))
    prop = TopKProperty(0, 1)
    assert topk_margin(net.logits(box.upper[None]), 0, 1)[0] >= 0  # the counterexample exists
    plain = pgd(net, box, prop, restarts=8, steps=40, diversify=False)
    assert plain.counterexample is None and plain.best.margin < 0
    if not spike:  # aiming restarts at single clauses alone finds the ramp's corner
        monkeypatch.setattr(attack_module, "ODI_STEPS", 0)
    found = pgd(net, box, prop, restarts=8, steps=40, diversify=True)
    cex = found.counterexample
    assert cex is not None
    assert box.contains(cex.x)
    assert topk_margin(net.logits(cex.x[None]), 0, 1)[0] == pytest.approx(cex.margin) and cex.margin >= 0
    assert PgdAttack().verify(net, box, 0, 1).is_robust is False


def test_stuck_restarts_start_again():
    """Top-2 of 3 labels on the trap: the target leaves the top-2 only if both others beat it, never here (y1 < 0):
    every restart reaches its local maximum early, stalls and starts again elsewhere."""
    net = _trap_network(False)
    box = Box(np.zeros(N_IN), np.ones(N_IN))
    res = pgd(net, box, TopKProperty(0, 2), restarts=4, steps=40, diversify=True)
    assert res.stats["clauses"] == 1
    assert res.counterexample is None and res.best.margin < 0
    assert res.stats["stuck_restarts"] >= 3


def test_diversified_points_are_checked_on_the_network():
    net = random_network("cnn", 4)
    lower, upper = random_box(net, 4, 0.05)
    box = Box(lower, upper)
    res = pgd(net, box, TopKProperty(0, 2), restarts=6, steps=30, diversify=True, stop_on_violation=False)
    assert len(res.points) == 6
    for p in res.points:
        assert box.contains(p.x)
        assert topk_margin(net.logits(p.x[None]), 0, 2)[0] == pytest.approx(p.margin)
        assert p.confirmed == (p.margin >= 0 and p.margin_torch >= 0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_clause_margins_of_a_topk_property_have_its_margin_as_maximum(k):
    logits = torch.as_tensor(np.random.default_rng(k).normal(size=(40, 7)))
    for target in (0, 3, 6):
        prop = TopKProperty(target, k)
        clauses = prop.clause_margins_torch(logits)
        assert clauses.shape == (40, math.comb(6, k))
        assert torch.allclose(clauses.max(dim=1).values, prop.margin_torch(logits))


def test_a_topk_property_with_too_many_subsets_is_one_clause():
    logits = torch.as_tensor(np.random.default_rng(0).normal(size=(5, 30)))
    prop = TopKProperty(0, 5)  # C(29, 5) subsets
    assert torch.equal(prop.clause_margins_torch(logits)[:, 0], prop.margin_torch(logits))
