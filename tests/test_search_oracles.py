"""Exact reference oracles for the search tests, and tests of the oracles themselves.

``ExactLpVerifier`` decides top-k robustness of a tiny one-hidden-layer ReLU network exactly: the k-th largest
margin is the maximum over k-subsets S of ``min_{c in S} (y_c - y_t)``, and inside one ReLU activation pattern the
network is affine, so the worst case over a box is the maximum of one LP per (pattern, subset). With a handful of
hidden neurons that is a few dozen small LPs: the truth, independent of mlrobust's bounds and MILP.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from scipy.optimize import linprog

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Dense, Relu
from mlrobust.verify.margin import topk_margin
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust, Unknown, WeakPoint


def tiny_network(seed: int, shape: tuple[int, ...] = (1, 5, 5), hidden: int = 4, classes: int = 4) -> Network:
    """x (shape) -> Dense(hidden) -> ReLU -> Dense(classes)."""
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(shape))
    w1 = rng.normal(0, np.sqrt(2.0 / n_in), (hidden, n_in))
    b1 = rng.normal(0, 0.2, hidden)
    w2 = rng.normal(0, np.sqrt(2.0 / hidden), (classes, hidden))
    b2 = rng.normal(0, 0.2, classes)
    nodes = [Node("fc1", Dense(w1, b1), ("x",), "h", (hidden,)),
             Node("relu", Relu(), ("h",), "a", (hidden,)),
             Node("fc2", Dense(w2, b2), ("a",), "y", (classes,))]
    return Network("x", (1, *shape), nodes, "y")


def exact_worst_margin(network: Network, box: Box, target: int, k: int) -> tuple[float, np.ndarray]:
    """max over the box of the k-th largest ``y_c - y_t`` and a maximiser (per-sample shape)."""
    fc1, fc2 = (node.op for node in network.nodes if isinstance(node.op, Dense))  # (a Flatten may precede)
    w1, b1, w2, b2 = fc1.weight, fc1.bias, fc2.weight, fc2.bias
    hidden, n_in = w1.shape
    lo, hi = box.lower.ravel(), box.upper.ravel()
    others = [c for c in range(w2.shape[0]) if c != target]
    best, best_x = -np.inf, None
    bounds = list(zip(lo, hi)) + [(None, None)]
    for pattern in itertools.product((0.0, 1.0), repeat=hidden):
        act = np.asarray(pattern)
        # y = w2 @ (act * (w1 x + b1)) + b2, affine in x on this pattern's region
        A = w2 @ (act[:, None] * w1)
        c0 = w2 @ (act * b1) + b2
        # region: w1 x + b1 >= 0 where active, <= 0 where inactive  ->  sign * (w1 x) <= sign * (-b1)
        sign = np.where(act > 0, -1.0, 1.0)
        region_A = np.hstack([sign[:, None] * w1, np.zeros((hidden, 1))])
        region_b = -sign * b1
        for subset in itertools.combinations(others, k):
            # maximise s subject to s <= (A_c - A_t) x + (c0_c - c0_t) for c in S
            rows = np.array([np.append(-(A[c] - A[target]), 1.0) for c in subset])
            rhs = np.array([c0[c] - c0[target] for c in subset])
            res = linprog(np.append(np.zeros(n_in), -1.0), A_ub=np.vstack([rows, region_A]),
                          b_ub=np.concatenate([rhs, region_b]), bounds=bounds, method="highs")
            if res.status == 0 and -res.fun > best:
                best, best_x = -res.fun, res.x[:n_in]
    x = np.clip(best_x, lo, hi).reshape(box.shape)
    # the LP's value, re-evaluated exactly at its (clipped) maximiser
    return float(topk_margin(network.logits(x[None]), target, k)[0]), x


class ExactLpVerifier:
    """The exact oracle as a Verifier (counts its calls)."""

    name = "exact-lp"

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        self.calls += 1
        start = time.perf_counter()
        m, x = exact_worst_margin(network, box, target, k)
        secs = {"exact": time.perf_counter() - start}
        wps = [WeakPoint(x, m)]
        if m < -ROBUST_TOLERANCE:
            return Robust(tier="exact", seconds=secs, weak_points=wps, bound=m)
        if m >= 0:
            return NotRobust(tier="exact", seconds=secs, weak_points=wps, counterexample=x, margin=m)
        return Unknown(tier="exact", seconds=secs, weak_points=wps, reason="margin within the robustness tolerance")


def tiny_case(seed: int, hidden: int = 4, classes: int = 4):
    """A tiny network, a 5x5 image on which label ``target`` is top-1, and an object mask (a 2x2 corner block)."""
    net = tiny_network(seed, hidden=hidden, classes=classes)
    rng = np.random.default_rng(1000 + seed)
    image = rng.uniform(0.0, 1.0, (1, 5, 5))
    target = int(np.argmax(net.logits(image[None])[0]))
    mask = np.zeros((5, 5), dtype=bool)
    mask[:2, :2] = True
    return net, image, target, mask


@pytest.mark.parametrize("seed", range(4))
def test_exact_oracle_dominates_sampling_and_is_attained(seed):
    net, image, target, _ = tiny_case(seed)
    box = Box.around(image, 0.15)
    m, x = exact_worst_margin(net, box, target, 2)
    assert box.contains(x)
    # the maximiser attains the value ...
    assert topk_margin(net.logits(x[None]), target, 2)[0] == pytest.approx(m, abs=1e-9)
    # ... and no sampled point (corners included) beats it
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(4000, *image.shape))
    u[:2000] = np.round(u[:2000])
    pts = box.lower + u * (box.upper - box.lower)
    sampled = topk_margin(net.logits(pts), target, 2)
    assert sampled.max() <= m + 1e-9


def test_exact_verifier_verdicts():
    net, image, target, _ = tiny_case(0)
    ver = ExactLpVerifier()
    assert ver.verify(net, Box(image, image), target, 2).is_robust
    wide = ver.verify(net, Box(np.zeros_like(image), np.ones_like(image)), target, 2)
    m, _ = exact_worst_margin(net, Box(np.zeros_like(image), np.ones_like(image)), target, 2)
    assert wide.is_robust == (m < -ROBUST_TOLERANCE)
