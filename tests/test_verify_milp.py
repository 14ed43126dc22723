"""Verdicts from the MILP verifier are sound whatever the solver says: points are re-checked, bounds must clear the
tolerance, time-outs and failures are Unknown."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box, reference_network  # noqa: E402

from mlrobust.backends import SolveResult  # noqa: E402
from mlrobust.errors import InputError  # noqa: E402
from mlrobust.verify.counterexample import TopKProperty, check_points, confirm, snap_into_box  # noqa: E402
from mlrobust.verify.margin import topk_margin  # noqa: E402
from mlrobust.verify.milp_verifier import MilpVerifier  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust, Unknown  # noqa: E402


def net_and_box(seed: int = 0, radius: float = 0.6):
    rng = np.random.default_rng(seed)
    b = NetBuilder((4,), rng)
    b.dense(8)
    b.relu()
    b.dense(4)
    net = b.build()
    lower, upper = random_box(net, seed, radius)
    return net, Box(lower, upper)


class ScriptedBackend:
    """Returns a fixed answer: used to check that the verifier does not take a solver's word for anything."""

    name = "scripted"

    def __init__(self, status: str, objective=None, bound=float("inf"), x=None):
        self.result = dict(status=status, objective=objective, bound=bound)
        self.x = x

    def available(self):
        return True

    def solve(self, problem, *, time_limit=None, stop=None, pool=0):
        x = None
        if self.x is not None:  # a point at the given input, other columns zero
            x = np.zeros(problem.num_cols)
            free = problem.input_cols >= 0
            x[problem.input_cols[free]] = np.asarray(self.x).reshape(-1)[free]
        return SolveResult(x=x, solver=self.name, seconds=0.0, **self.result)


@functools.lru_cache(maxsize=1)
def a_query_needing_the_solver():
    """A (net, box, target, k) whose margin bounds straddle 0, so the verifier calls the backend."""
    for seed in range(50):
        net, box = net_and_box(seed)
        for target in range(4):
            v = MilpVerifier("highs", warm_start=False).verify(net, box, target, 1, mode="optimize")
            if "objective" in v.stats and v.stats["objective"] < -0.05:
                return net, box, target, v
    raise AssertionError("no suitable query found")


def test_a_claimed_counterexample_that_the_network_refutes_is_not_reported():
    net, box, target, truth = a_query_needing_the_solver()  # robust: margin <= about -0.05 everywhere
    liar = ScriptedBackend("optimal", objective=0.5, bound=0.5, x=box.center)
    v = MilpVerifier(liar, polish_steps=5).verify(net, box, target, 1)
    assert isinstance(v, Unknown)
    assert v.stats.get("polished")


def test_robust_needs_a_bound_beyond_the_tolerance():
    net, box, target, _ = a_query_needing_the_solver()
    inside = ScriptedBackend("optimal", objective=-ROBUST_TOLERANCE / 2, bound=-ROBUST_TOLERANCE / 2)
    assert isinstance(MilpVerifier(inside).verify(net, box, target, 1), Unknown)
    beyond = ScriptedBackend("optimal", objective=-0.01, bound=-0.01)
    v = MilpVerifier(beyond).verify(net, box, target, 1)
    assert isinstance(v, Robust) and v.bound == -0.01


def test_time_limit_and_failures_are_unknown():
    net, box, target, _ = a_query_needing_the_solver()
    for backend in (ScriptedBackend("time_limit", bound=0.3), ScriptedBackend("error"),
                    ScriptedBackend("infeasible", bound=float("-inf"))):
        v = MilpVerifier(backend).verify(net, box, target, 1)
        assert isinstance(v, Unknown), backend.result
        assert v.reason


def test_time_limit_with_a_proven_bound_is_still_robust():
    net, box, target, _ = a_query_needing_the_solver()
    v = MilpVerifier(ScriptedBackend("time_limit", bound=-0.2)).verify(net, box, target, 1)
    assert isinstance(v, Robust)


def test_counterexamples_are_confirmed_on_both_executors():
    for seed in range(30):
        net, box = net_and_box(seed, 1.0)
        v = MilpVerifier("highs").verify(net, box, 0, 1)
        if isinstance(v, NotRobust):
            break
    else:
        pytest.fail("no non-robust query")
    x = v.counterexample
    assert box.contains(x)
    # float32 numbers (the same point for every executor) wherever the box allows one
    on_f32 = x.astype(np.float32).astype(np.float64) == x
    assert np.all(on_f32 | (box.upper - box.lower < 1e-6))
    point = confirm(net, box, x, 0, 1)
    assert point.confirmed and point.margin == pytest.approx(v.margin)
    assert topk_margin(net.logits(x[None]), 0, 1)[0] >= 0
    assert v.tier == "milp" and "milp" in v.seconds


def test_snap_into_box_stays_inside_and_on_float32():
    rng = np.random.default_rng(0)
    lower = rng.uniform(-1, 1, 200)
    upper = lower + rng.uniform(0, 1e-3, 200) * (rng.random(200) < 0.8)
    box = Box(lower, upper)
    x = rng.uniform(-2, 2, 200)
    y = snap_into_box(box, x)
    assert box.contains(y)
    width = upper - lower
    f32 = y.astype(np.float32).astype(np.float64) == y
    # every coordinate whose interval holds a float32 number is on float32
    assert np.all(f32 | (width < 1e-7))


def test_optimize_mode_returns_weak_points_with_real_margins():
    net, box, target, v = a_query_needing_the_solver()
    assert v.weak_points
    margins = [w.margin for w in v.weak_points]
    assert margins == sorted(margins, reverse=True)
    for w in v.weak_points:
        assert box.contains(w.x)
        assert topk_margin(net.logits(w.x[None]), target, 1)[0] == pytest.approx(w.margin)
    # the maximiser reproduces the optimum (up to float32 rounding of the point)
    assert margins[0] == pytest.approx(v.stats["objective"], abs=1e-5)


def test_stats_record_the_encoding():
    net, box, target, v = a_query_needing_the_solver()
    for key in ("build_seconds", "solve_seconds", "binaries", "variables", "constraints", "unstable_relus",
                "tightening", "status", "bound"):
        assert key in v.stats
    assert v.stats["binaries"] >= v.stats["unstable_relus"]


def test_bad_queries_raise_input_errors():
    net, box = net_and_box()
    verifier = MilpVerifier("highs")
    with pytest.raises(InputError, match="target"):
        verifier.verify(net, box, 7, 1)
    with pytest.raises(InputError, match="k must be"):
        verifier.verify(net, box, 0, 4)
    with pytest.raises(InputError, match="shape"):
        verifier.verify(net, Box(np.zeros(5), np.ones(5)), 0, 1)
    with pytest.raises(InputError, match="mode"):
        verifier.verify(net, box, 0, 1, mode="fast")
    with pytest.raises(InputError, match="tightening"):
        MilpVerifier("highs", tightening="magic")


@pytest.mark.slow
def test_highs_time_limit_is_enforced_by_the_callback():
    """A hard query on the reference architecture stops near its limit (HiGHS alone overshoots)."""
    net = reference_network(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, net.sample_shape)
    box = Box.around(x, 0.05)
    start = time.perf_counter()
    v = MilpVerifier("highs", "ibp").verify(net, box, 0, 2, mode="optimize", time_limit=3.0)
    elapsed = time.perf_counter() - start
    if not isinstance(v, Unknown):
        pytest.skip("query was decided within the limit")
    assert "time limit" in v.reason
    assert elapsed < 3.0 + 2.5


def test_check_points_batches_both_executors():
    net, box = net_and_box(3)
    xs = [box.lower, box.upper, box.center]
    points = check_points(net, box, xs, TopKProperty(1, 1))
    assert len(points) == 3
    for p in points:
        assert abs(p.margin - p.margin_torch) < 1e-4


def test_warm_start_hands_the_solver_a_feasible_point():
    net, box, target, _ = a_query_needing_the_solver()
    verifier = MilpVerifier("highs")
    v = verifier.verify(net, box, target, 1, mode="optimize", hints=[box.center, box.lower])
    problem = verifier.last_problem
    assert v.stats["warm_start"] and problem.start is not None
    assert problem.max_violation(problem.start) <= 1e-9
    assert problem.objective_value(problem.start) <= v.stats["objective"] + 1e-9
