"""Defects found in review, each pinned by a test: the network hash sees every op attribute, bound tightening does
not hide real errors behind a retry, runtime checks are not ``assert`` statements, and ``verify`` and ``vnnlib`` share
one decision pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, Conv2d, Dense, Relu, Reshape
from mlrobust.search.result import network_hash


def _residual(coeff: float) -> Network:
    w = np.array([[1.0, -1.0], [0.5, 2.0]])
    nodes = [Node("fc", Dense(w, np.zeros(2)), ("x",), "h", (2,)), Node("relu", Relu(), ("h",), "r", (2,)),
             Node("sum", Add(coeff), ("r", "x"), "y", (2,))]
    return Network("x", (1, 2), nodes, "y")


def _conv(stride: int, padding: int) -> Network:
    w = np.ones((1, 1, 2, 2))
    out = (4 + 2 * padding - 2) // stride + 1
    nodes = [Node("conv", Conv2d(w, np.zeros(1), (stride, stride), (padding,) * 4), ("x",), "c", (1, out, out)),
             Node("flat", Reshape((out * out,)), ("c",), "y", (out * out,))]
    return Network("x", (1, 1, 4, 4), nodes, "y")


def test_network_hash_sees_every_op_attribute():
    """Two networks that differ only in an Add coefficient (or a stride, a padding) compute different functions
    and must not share the provenance hash."""
    a, b = _residual(1.0), _residual(-1.0)
    x = np.array([[0.3, 0.7]])
    assert not np.allclose(a.logits(x), b.logits(x))
    assert network_hash(a) != network_hash(b)
    assert network_hash(a) == network_hash(_residual(1.0))
    assert len({network_hash(_conv(1, 0)), network_hash(_conv(2, 0)), network_hash(_conv(1, 1))}) == 3


def test_network_hash_sees_the_wiring():
    w = np.eye(2)
    one = [Node("a", Dense(w, np.zeros(2)), ("x",), "h", (2,)), Node("b", Add(1.0), ("h", "x"), "y", (2,))]
    two = [Node("a", Dense(w, np.zeros(2)), ("x",), "h", (2,)), Node("b", Add(1.0), ("h", "h"), "y", (2,))]
    assert network_hash(Network("x", (1, 2), one, "y")) != network_hash(Network("x", (1, 2), two, "y"))


def test_tightening_does_not_retry_a_failing_margin_bound(monkeypatch):
    """A TypeError inside the CROWN margin bounds is a bug to report, not a signal to run CROWN again."""
    import mlrobust.bounds.tier as tightening

    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs)
        raise TypeError("a real error inside the bound computation")

    monkeypatch.setattr(tightening, "margin_bounds", broken)
    net = _residual(1.0)
    with pytest.raises(TypeError, match="a real error"):
        tightening.tighten(net, np.zeros(2), np.ones(2), "crown", target=0)
    assert len(calls) == 1


def test_margin_range_without_margin_bounds_is_an_error_even_under_python_O():
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bound_check import margin_range

    tight = tighten(_residual(1.0), np.zeros(2), np.ones(2), "ibp")  # no target: no margin bounds
    with pytest.raises(ValueError, match="tightened for a target"):
        margin_range(tight, 0, 1)


def test_vnnlib_attacks_with_the_settings_of_the_cascade(monkeypatch):
    """The two faces share one pipeline: the VNN-LIB attack runs with the cascade's PGD settings (its first
    ``QUICK_ATTACK_STEPS`` steps before the bounds, all of them only when the bounds leave the region open)."""
    import mlrobust.verify.decision as decision
    from mlrobust.verify.cascade import Cascade
    from mlrobust.verify.vnnlib import QUICK_ATTACK_STEPS, decide_region, parse_vnnlib

    seen = []
    real = decision.pgd

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("restarts", "steps", "seed")})
        return real(*args, **kwargs)

    monkeypatch.setattr(decision, "pgd", spy)
    prop = parse_vnnlib("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                        "(declare-const Y_1 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n"
                        "(assert (<= X_1 1))\n(assert (>= Y_1 100))\n")
    res = decide_region(_residual(1.0), prop.regions[0], time_limit=30)
    attack = Cascade().attack
    assert seen == [{"restarts": attack.restarts, "steps": min(attack.steps, QUICK_ATTACK_STEPS),
                     "seed": attack.seed}]
    assert res.status == "unsat"  # y_1 <= 3 on the unit box: the bounds prove it, so the rest of the attack never ran
    # (the whole attack after open bounds: tests/test_vnnlib.py)
