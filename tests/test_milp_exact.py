"""The MILP's optimum is the true maximum of the k-th largest margin over the box.

Truth comes from brute force: on tiny ReLU networks every activation pattern is enumerated and, per pattern and per
choice of k classes, an LP maximises the smallest of their margins over the pattern's polytope; on networks with
max pooling, dense sampling gives a lower bound that the MILP's maximiser must meet and reproduce exactly.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box, random_cnn, sample_box  # noqa: E402

from mlrobust.bounds import margin_bounds, propagate  # noqa: E402
from mlrobust.bounds.tier import tighten  # noqa: E402
from mlrobust.ir.graph import Network  # noqa: E402
from mlrobust.milp.layers.affine import affine_matrix  # noqa: E402
from mlrobust.milp.topk import kth_largest  # noqa: E402
from mlrobust.verify.attack import PgdAttack  # noqa: E402
from mlrobust.verify.margin import topk_margin  # noqa: E402
from mlrobust.verify.milp_verifier import MilpVerifier  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import NotRobust, Robust  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tiny_relu_net(seed: int, residual: bool = False) -> Network:
    """2-3 inputs, two ReLU layers of 2-4 neurons (optionally a residual Add and a Scale), 3-5 classes."""
    rng = np.random.default_rng(seed)
    b = NetBuilder((int(rng.integers(2, 4)),), rng)
    if rng.random() < 0.3:
        b.scale(per_channel=False)
    w = int(rng.integers(2, 5))
    b.dense(w)
    b.relu()
    skip = b.cur
    b.dense(w)
    if residual:
        b.add(b.cur, skip, coeff=float(rng.choice([1.0, -0.5])))
    b.relu()
    b.dense(int(rng.integers(3, 6)))
    return b.build()


def brute_force_max(net: Network, lower: np.ndarray, upper: np.ndarray, target: int, k: int) -> float:
    """max over the box of the k-th largest margin, by enumerating ReLU patterns (only unstable ReLUs vary)."""
    bounds = propagate(net, lower, upper, "ibp")
    relus = [n for n in net.nodes if n.kind == "Relu"]
    status = {}
    free: list[tuple[str, int]] = []
    for node in relus:
        lo, hi = bounds.lower[node.inputs[0]].reshape(-1), bounds.upper[node.inputs[0]].reshape(-1)
        status[node.name] = (lo >= 0).astype(float)
        free += [(node.name, int(i)) for i in np.flatnonzero((lo < 0) & (hi > 0))]
    n_in = lower.size
    classes = [c for c in range(net.num_classes) if c != target]
    best = -np.inf
    for pattern in itertools.product([0.0, 1.0], repeat=len(free)):
        masks = {name: s.copy() for name, s in status.items()}
        for (name, i), bit in zip(free, pattern):
            masks[name][i] = bit
        # affine maps of every tensor under this pattern: value = M x + c; plus the pattern's sign constraints
        maps = {net.input_name: (np.eye(n_in), np.zeros(n_in))}
        A_ub, b_ub = [], []
        for node in net.nodes:
            if node.kind == "Relu":
                M, c = maps[node.inputs[0]]
                m = masks[node.name]
                sign = np.where(m > 0, -1.0, 1.0)  # active: -z <= 0, inactive: z <= 0
                A_ub.append(sign[:, None] * M)
                b_ub.append(-sign * c)
                maps[node.output] = (m[:, None] * M, m * c)
            elif node.kind == "Add":
                (Ma, ca), (Mb, cb) = maps[node.inputs[0]], maps[node.inputs[1]]
                maps[node.output] = (Ma + node.op.coeff * Mb, ca + node.op.coeff * cb)
            else:
                W, bias = affine_matrix(node, net.shape_of(node.inputs[0]))
                W = W.toarray() if sp.issparse(W) else W
                M, c = maps[node.inputs[0]]
                maps[node.output] = (W @ M, W @ c + bias)
        M_out, c_out = maps[net.output_name]
        for subset in itertools.combinations(classes, k):
            # maximise s subject to s <= d_c(x) for c in subset: variables (x, s)
            rows = [np.r_[-(M_out[c] - M_out[target]), 1.0] for c in subset]
            rhs = [c_out[c] - c_out[target] for c in subset]
            for A, b in zip(A_ub, b_ub):
                rows += [np.r_[r, 0.0] for r in A]
                rhs += list(b)
            res = scipy.optimize.linprog(np.r_[np.zeros(n_in), -1.0], A_ub=np.array(rows), b_ub=np.array(rhs),
                                         bounds=[(lo, u) for lo, u in zip(lower.reshape(-1), upper.reshape(-1))]
                                         + [(None, None)], method="highs")
            if res.status == 0:
                best = max(best, -res.fun)
    return best


def milp_optimum(net: Network, lower, upper, target: int, k: int, tightening: str = "crown",
                 time_limit: float | None = None):
    verifier = MilpVerifier("highs", tightening, pool=2)
    verdict = verifier.verify(net, Box(lower, upper), target, k, mode="optimize", time_limit=time_limit)
    return verdict, verifier.last_problem


@settings(max_examples=25, **SETTINGS)
@given(seed=st.integers(0, 10_000), residual=st.booleans(), radius=st.sampled_from([0.2, 0.6, 1.5]),
       data=st.data())
def test_milp_optimum_equals_brute_force(seed, residual, radius, data):
    net = tiny_relu_net(seed, residual)
    lower, upper = random_box(net, seed, radius)
    target = data.draw(st.integers(0, net.num_classes - 1), label="target")
    k = data.draw(st.integers(1, net.num_classes - 1), label="k")
    truth = brute_force_max(net, lower, upper, target, k)
    verdict, problem = milp_optimum(net, lower, upper, target, k)
    stats = verdict.stats
    if "objective" not in stats:  # decided by the bounds alone: they must then bound the truth
        assert stats["margin_bounds"][1] >= truth - 1e-9
        assert isinstance(verdict, Robust)
        return
    assert stats["status"] == "optimal"
    # HiGHS closes the gap to a relative 1e-4; the optimum itself is attained by the maximiser
    assert stats["objective"] == pytest.approx(truth, abs=1e-6 + 1e-4 * abs(truth))
    assert stats["bound"] >= truth - 1e-6
    # the maximiser, re-run on the network, reproduces the optimum
    # (up to the rounding of the point onto float32 numbers)
    assert verdict.weak_points[0].margin == pytest.approx(stats["objective"], abs=1e-5)
    assert isinstance(verdict, NotRobust) == (truth >= 0 and verdict.weak_points[0].margin >= 0)


@pytest.mark.parametrize("seed", range(6))
def test_milp_optimum_matches_dense_sampling_with_pooling(seed):
    """Networks with conv, max/avg pooling, padding, Scale and residual Adds: sampling can only find less."""
    net = random_cnn(seed)
    lower, upper = random_box(net, seed, 0.25)
    target, k = seed % net.num_classes, 1 + seed % (net.num_classes - 1)
    verdict, problem = milp_optimum(net, lower, upper, target, k)
    X = sample_box(lower, upper, 4000, seed)
    sampled = topk_margin(net.logits(X), target, k).max()
    stats = verdict.stats
    upper_bound = stats.get("bound", stats["margin_bounds"][1])
    assert upper_bound >= sampled - 1e-9
    if "objective" in stats:
        assert stats["status"] == "optimal"
        assert stats["objective"] >= sampled - 1e-4 * max(1.0, abs(sampled))
        # (up to the rounding of the point onto float32 numbers)
    assert verdict.weak_points[0].margin == pytest.approx(stats["objective"], abs=1e-5)


@settings(max_examples=12, **SETTINGS)
@given(seed=st.integers(0, 10_000), radius=st.sampled_from([0.1, 0.3]), data=st.data())
def test_milp_between_attack_and_crown(seed, radius, data):
    """attack margin <= MILP optimum <= CROWN bound on the k-th largest margin."""
    net = random_cnn(seed)
    lower, upper = random_box(net, seed, radius)
    target = data.draw(st.integers(0, net.num_classes - 1), label="target")
    k = data.draw(st.integers(1, net.num_classes - 1), label="k")
    box = Box(lower, upper)
    attack = PgdAttack(restarts=6, steps=30, seed=seed).run(net, box, target, k)
    lo, hi = margin_bounds(net, lower, upper, target, "crown")
    crown_bound = kth_largest(np.delete(hi, target), k)
    # a random CNN can make a hard MILP: the time limit keeps the test bounded, and the proven bound it leaves must
    # still sit between the attack and CROWN (the incumbent is compared only when it is proven optimal)
    verdict, _ = milp_optimum(net, lower, upper, target, k, time_limit=30.0)
    stats = verdict.stats
    optimum = stats.get("objective") if stats.get("status") == "optimal" else None
    bound = stats.get("bound", stats["margin_bounds"][1])
    assert attack.best.margin <= bound + 1e-9
    assert bound <= crown_bound + 1e-9
    if optimum is not None:
        assert attack.best.margin <= optimum + 1e-4 * max(1.0, abs(optimum))
        assert optimum <= crown_bound + 1e-9


@pytest.mark.parametrize("tightening", ["ibp", "crown", "alpha", "lp"])
def test_every_tightening_gives_the_same_optimum(tightening):
    net = tiny_relu_net(7, residual=True)
    lower, upper = random_box(net, 7, 1.0)
    truth = brute_force_max(net, lower, upper, 0, 2)
    verdict, problem = milp_optimum(net, lower, upper, 0, 2, tightening)
    assert verdict.stats["tightening"] == tightening
    assert verdict.stats["objective"] == pytest.approx(truth, abs=1e-6 + 1e-4 * abs(truth))


def test_decide_mode_agrees_with_the_sign_of_the_optimum():
    for seed in range(8):
        net = tiny_relu_net(seed)
        lower, upper = random_box(net, seed, 0.8)
        for k in (1, 2):
            truth = brute_force_max(net, lower, upper, 0, k)
            if abs(truth) < 1e-3:
                continue  # inside the tolerance band either answer may be Unknown
            verdict = MilpVerifier("highs").verify(net, Box(lower, upper), 0, k, mode="decide")
            assert isinstance(verdict, NotRobust if truth > 0 else Robust), (seed, k, truth, verdict)
            if truth > 0:
                assert Box(lower, upper).contains(verdict.counterexample)
                assert topk_margin(net.logits(verdict.counterexample[None]), 0, k)[0] >= 0
            else:
                assert verdict.bound < 0 and verdict.bound >= truth - 1e-6


def test_tightened_bounds_are_reused_not_recomputed():
    net = tiny_relu_net(3)
    lower, upper = random_box(net, 3, 0.5)
    t = tighten(net, lower, upper, "crown", target=1)
    verdict = MilpVerifier("highs").verify(net, Box(lower, upper), 1, 1, mode="optimize", tightened=t)
    assert verdict.stats["tighten_seconds"] < 0.05
