"""PGD attack: its loss is the top-k margin, it finds counterexamples that exist, and never claims robustness."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box, random_network  # noqa: E402

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
