"""Bound tightening: LP tightening is sound (weak duality, never a primal value), never looser than CROWN, and
respects its time budget."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import random_box, random_network, sample_box  # noqa: E402

from mlrobust.errors import InputError  # noqa: E402
from mlrobust.milp.tightening import dual_lower_bound, tighten  # noqa: E402


@pytest.mark.parametrize("kind,seed", [("mlp", 0), ("mlp", 3), ("cnn", 1), ("cnn", 4), ("mlp", 8)])
def test_lp_bounds_contain_every_sample_and_are_not_looser_than_crown(kind, seed):
    net = random_network(kind, seed)
    lower, upper = random_box(net, seed, 0.4)
    target = seed % net.num_classes
    crown = tighten(net, lower, upper, "crown", target=target)
    lp = tighten(net, lower, upper, "lp", target=target, time_budget=30)
    X = sample_box(lower, upper, 400, seed)
    values = net.forward(X, return_all=True)
    for tensor, v in values.items():
        v = v.reshape(len(X), -1)
        lo, hi = lp.bounds.lower[tensor].reshape(-1), lp.bounds.upper[tensor].reshape(-1)
        assert np.all(v >= lo - 1e-9) and np.all(v <= hi + 1e-9), tensor
        assert np.all(lo >= crown.bounds.lower[tensor].reshape(-1) - 1e-12)
        assert np.all(hi <= crown.bounds.upper[tensor].reshape(-1) + 1e-12)
    logits = net.logits(X)
    d = logits - logits[:, [target]]
    assert np.all(d >= lp.margin_lower - 1e-9) and np.all(d <= lp.margin_upper + 1e-9)
    assert np.all(lp.margin_upper <= crown.margin_upper + 1e-12)
    assert lp.num_unstable <= crown.num_unstable
    assert lp.stats["unstable_lp"] == lp.num_unstable


def test_lp_tightening_actually_tightens_somewhere():
    gains = []
    for seed in range(6):
        net = random_network("mlp", seed)
        lower, upper = random_box(net, seed, 0.5)
        crown = tighten(net, lower, upper, "crown", target=0)
        lp = tighten(net, lower, upper, "lp", target=0)
        gains.append(float(np.sum(crown.margin_upper - lp.margin_upper)))
    assert max(gains) > 1e-3


def test_zero_time_budget_keeps_crown_bounds():
    net = random_network("mlp", 2)
    lower, upper = random_box(net, 2, 0.5)
    crown = tighten(net, lower, upper, "crown", target=1)
    lp = tighten(net, lower, upper, "lp", target=1, time_budget=0.0)
    assert lp.stats["lp_solves"] == 0
    assert np.allclose(lp.margin_upper, np.minimum(crown.margin_upper, lp.margin_upper))
    for t in crown.bounds.lower:
        assert np.all(lp.bounds.lower[t] >= crown.bounds.lower[t] - 1e-12)


def test_dual_lower_bound_is_valid_for_any_multipliers():
    """Weak duality with arbitrary (even wrong-signed or garbage) multipliers never exceeds the LP minimum."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, m = 6, 5
        A = sp.csr_matrix(rng.normal(size=(m, n)))
        row_lower = np.where(rng.random(m) < 0.5, -np.inf, rng.normal(size=m) - 2)
        row_upper = np.where(rng.random(m) < 0.3, np.inf, rng.normal(size=m) + 2)
        eq = rng.random(m) < 0.2
        row_lower[eq] = row_upper[eq] = 0.0
        col_lower, col_upper = -rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
        cost = rng.normal(size=n)
        A_ub = np.vstack([A.toarray()[np.isfinite(row_upper)], -A.toarray()[np.isfinite(row_lower)]])
        b_ub = np.r_[row_upper[np.isfinite(row_upper)], -row_lower[np.isfinite(row_lower)]]
        res = scipy.optimize.linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(col_lower, col_upper)),
                                     method="highs")
        if res.status != 0:
            continue
        for lam in (rng.normal(size=m) * 3, np.zeros(m)):
            assert dual_lower_bound(A, row_lower, row_upper, col_lower, col_upper, cost, 0.5, lam) <= res.fun + 0.5
        # the optimal multipliers give the optimum (up to the rounding slack)
        duals = np.zeros(m)
        rows_ub = np.flatnonzero(np.isfinite(row_upper))
        rows_lb = np.flatnonzero(np.isfinite(row_lower))
        duals[rows_ub] += res.ineqlin.marginals[: rows_ub.size]
        duals[rows_lb] -= res.ineqlin.marginals[rows_ub.size:]
        best = dual_lower_bound(A, row_lower, row_upper, col_lower, col_upper, cost, 0.0, duals)
        assert best <= res.fun + 1e-9
        assert best == pytest.approx(res.fun, abs=1e-6)


def test_unknown_method_is_an_input_error():
    net = random_network("mlp", 0)
    lower, upper = random_box(net, 0, 0.1)
    with pytest.raises(InputError, match="ibp, crown, alpha, lp"):
        tighten(net, lower, upper, "zonotope")


def test_lp_tightening_works_after_highs_ran_with_other_thread_counts():
    """HiGHS refuses models whose thread option disagrees with its process-wide scheduler; neither the backend nor
    the LP tightening may trip over an earlier solve."""
    from mlrobust.backends.highs import HighsBackend
    from mlrobust.milp.builder import build_topk_milp

    net = random_network("mlp", 5)
    lower, upper = random_box(net, 5, 0.5)
    crown = tighten(net, lower, upper, "crown", target=0)
    problem = build_topk_milp(net, crown.bounds, 0, 1, crown.margin_lower, crown.margin_upper)
    for threads in (None, 1, 2, None):
        assert HighsBackend(threads=threads).solve(problem).status == "optimal"
    lp = tighten(net, lower, upper, "lp", target=0)
    assert np.sum(crown.margin_upper - lp.margin_upper) > 1e-3
