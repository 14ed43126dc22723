"""The cascade: attack first, then bounds, then the MILP; the verdict names the deciding tier and times each."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box  # noqa: E402

from mlrobust.verify.cascade import Cascade  # noqa: E402
from mlrobust.verify.milp_verifier import MilpVerifier  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import NotRobust, Robust, Unknown  # noqa: E402


def small_net(seed):
    rng = np.random.default_rng(seed)
    b = NetBuilder((5,), rng)
    b.dense(10)
    b.relu()
    b.dense(8)
    b.relu()
    b.dense(5)
    return b.build()


def queries():
    """Targets in the top-k at the box centre, radii from clearly robust to clearly not."""
    for seed in range(6):
        net = small_net(seed)
        for radius in (0.02, 0.1, 0.2, 0.4):
            lower, upper = random_box(net, seed, radius)
            box = Box(lower, upper)
            order = np.argsort(-net.logits(box.center[None])[0])
            for k in (1, 2):
                yield net, box, int(order[k - 1]), k


def test_cascade_agrees_with_the_milp_and_uses_every_tier():
    cascade = Cascade()
    tiers = set()
    for net, box, target, k in queries():
        v = cascade.verify(net, box, target, k)
        ref = MilpVerifier("highs").verify(net, box, target, k)
        if not isinstance(ref, Unknown) and not isinstance(v, Unknown):
            assert type(v) is type(ref)
        tiers.add(v.tier)
        assert "attack" in v.seconds
        if v.tier in ("bounds", "milp"):
            assert "bounds" in v.seconds
        if v.tier == "milp":
            assert "milp" in v.seconds and "milp" in v.stats
        if isinstance(v, NotRobust):
            assert box.contains(v.counterexample) and v.margin >= 0
        if isinstance(v, Robust):
            assert v.bound < 0
    assert tiers == {"attack", "bounds", "milp"}
    assert cascade.calls["attack"] >= cascade.calls["bounds"] >= cascade.calls["milp"] > 0


def test_optimize_mode_merges_weak_points():
    cascade = Cascade()
    for net, box, target, k in queries():
        v = cascade.verify(net, box, target, k, mode="optimize")
        if v.tier == "milp":
            margins = [w.margin for w in v.weak_points]
            assert margins == sorted(margins, reverse=True)
            if "objective" in v.stats["milp"]:
                assert margins[0] == pytest.approx(v.stats["milp"]["objective"], abs=1e-5)
            return
    pytest.fail("no query reached the MILP")


def test_tiers_can_be_switched_off():
    net, box, target, k = next(q for q in queries() if q[1].upper[0] - q[1].lower[0] > 0.5)
    v = Cascade(use_attack=False, use_bounds=False).verify(net, box, target, k)
    assert v.tier == "milp" and "attack" not in v.seconds and "bounds" not in v.seconds
