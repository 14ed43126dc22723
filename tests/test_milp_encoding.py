"""The MILP encoding itself: every input of the box is a feasible point whose objective is its real margin, and
only what the bounds leave open gets columns."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import NetBuilder, random_box, random_network, reference_network, sample_box  # noqa: E402

from mlrobust.bounds import propagate  # noqa: E402
from mlrobust.bounds.tier import tighten  # noqa: E402
from mlrobust.ir.graph import Network, Node  # noqa: E402
from mlrobust.ir.ops import MaxPool2d  # noqa: E402
from mlrobust.milp.builder import MilpBuilder, topk_model  # noqa: E402
from mlrobust.milp.encoding import AffineForm, Encoding  # noqa: E402
from mlrobust.milp.layers.affine import affine_matrix  # noqa: E402
from mlrobust.milp.layers.maxpool import encode_maxpool  # noqa: E402
from mlrobust.verify.margin import topk_margin  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 100_000), radius=st.sampled_from([0.05, 0.3, 1.0]),
       method=st.sampled_from(["ibp", "crown"]), data=st.data())
def test_every_input_of_the_box_is_feasible_with_its_real_margin(kind, seed, radius, method, data):
    net = random_network(kind, seed)
    lower, upper = random_box(net, seed, radius)
    target = data.draw(st.integers(0, net.num_classes - 1), label="target")
    k = data.draw(st.integers(1, net.num_classes - 1), label="k")
    t = tighten(net, lower, upper, method, target=target)
    builder, problem = topk_model(net, t.bounds, target, k, t.margin_lower, t.margin_upper)
    X = sample_box(lower, upper, 64, seed)
    margins = topk_margin(net.logits(X), target, k)
    for x, m in zip(X, margins):
        v = builder.assignment(x)
        assert problem.max_violation(v) <= 1e-9 * (1 + np.abs(v).max())
        assert problem.objective_value(v) == pytest.approx(m, abs=1e-9)
        assert np.array_equal(problem.input_from(v), x)
    assert np.all(np.isfinite(problem.col_lower)) and np.all(np.isfinite(problem.col_upper))


@pytest.mark.parametrize("kind,seed", [("mlp", 1), ("cnn", 2), ("cnn", 5)])
def test_affine_matrices_match_the_forward_pass(kind, seed):
    net = random_network(kind, seed)
    rng = np.random.default_rng(seed)
    values = net.forward(rng.normal(size=(3, *net.sample_shape)), return_all=True)
    for node in net.nodes:
        if node.kind in ("Relu", "MaxPool2d", "Add"):
            continue
        M, b = affine_matrix(node, net.shape_of(node.inputs[0]))
        got = values[node.inputs[0]].reshape(3, -1) @ M.T + b
        assert np.allclose(got, values[node.output].reshape(3, -1), atol=1e-12)


def test_fixed_inputs_and_stable_relus_get_no_columns():
    net = reference_network(0, size=16)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, net.sample_shape)
    mask = np.zeros(net.sample_shape, dtype=bool)
    mask[0, 4:8, 4:8] = True  # 16 perturbed pixels
    lower, upper = np.where(mask, x - 0.05, x), np.where(mask, x + 0.05, x)
    bounds = propagate(net, lower, upper, "crown")
    builder, problem = topk_model(net, bounds, 0, 2)
    kinds = problem.col_kind
    assert np.count_nonzero(kinds == "input") == 16
    assert np.array_equal(np.flatnonzero(problem.input_cols >= 0), np.flatnonzero(mask.reshape(-1)))
    relus = {name: s for name, s in builder.layer_stats.items() if s["kind"] == "Relu"}
    encoded = sum(s["unstable"] for s in relus.values() if not s.get("fused_into_maxpool"))
    relaxed = sum(s.get("relaxed", 0) for s in relus.values())
    assert np.count_nonzero(kinds == "relu") == encoded == np.count_nonzero(kinds == "relu_binary") + relaxed
    # the second ReLU only feeds the max pool: encoded inside it, no ReLU columns of its own
    assert [s.get("fused_into_maxpool", False) for s in relus.values()] == [False, True]
    status = bounds.relu_status()
    assert sum(s["unstable"] for s in relus.values()) <= sum(s["unstable"] for s in status.values())
    # a point box: nothing but constants and the objective
    bounds0 = propagate(net, x, x, "ibp")
    _, p0 = topk_model(net, bounds0, 0, 2)
    assert p0.num_binaries == 0 and set(p0.col_kind) <= {"objective"}


def test_maxpool_prunes_dominated_window_inputs():
    """Window inputs whose upper bound is below another's lower bound get no binary; one survivor = no column."""
    op = MaxPool2d((2, 2), (2, 2))
    enc = Encoding()
    cols = enc.add_columns(np.zeros(8), np.ones(8), False, "input")
    x = AffineForm(__import__("scipy.sparse", fromlist=["identity"]).identity(8, format="csr"), np.zeros(8))
    # window 0 (inputs 0,1,4,5): input 0 dominates the other three; window 1 (2,3,6,7): l* = 3 (input 3),
    # input 6 (upper 2) is dominated, inputs 2 and 7 may still exceed 3
    lower = np.array([5, 0, 1, 3, 0, 0, 0, 2.5], dtype=float)
    upper = np.array([6, 1, 4, 4, 2, 1, 2, 3.5], dtype=float)
    out, stats, pc = encode_maxpool(enc, x, lower, upper, op, (1, 2, 4))
    assert stats["multi"] == 1 and stats["binaries"] == 3 and stats["pruned"] == 4
    assert out.A[0].nnz == 1 and out.A[0, cols[0]] == 1.0  # window 0 is input 0 itself
    assert sorted(pc.cand_input.tolist()) == [2, 3, 7]
    del cols


def test_builder_form_interval_tightens_given_bounds():
    """Loose given bounds are intersected with the interval of the affine form before big-M constants are made."""
    rng = np.random.default_rng(3)
    b = NetBuilder((3,), rng)
    b.dense(5)
    b.relu()
    b.dense(2)
    net = b.build()
    lower, upper = -np.ones(3), np.ones(3)
    bounds = propagate(net, lower, upper, "ibp")
    loose = propagate(net, lower, upper, "ibp")
    t = net.nodes[0].output
    loose.lower[t] = bounds.lower[t] - 10
    loose.upper[t] = bounds.upper[t] + 10
    builder = MilpBuilder(net, loose).run()
    assert np.allclose(builder.lower[t], bounds.lower[t]) and np.allclose(builder.upper[t], bounds.upper[t])


def test_pyomo_model_is_the_same_problem():
    pyo = pytest.importorskip("pyomo.environ")
    from mlrobust.backends import get_backend
    from mlrobust.milp.pyomo_model import to_pyomo

    net = random_network("mlp", 11)
    lower, upper = random_box(net, 11, 0.5)
    t = tighten(net, lower, upper, "crown", target=0)
    _, problem = topk_model(net, t.bounds, 0, 1, t.margin_lower, t.margin_upper)
    model = to_pyomo(problem)
    assert len(model.v) == problem.num_cols and len(model.rows) == problem.num_rows
    assert sum(1 for v in model.v.values() if v.is_binary()) == problem.num_binaries
    direct = get_backend("highs").solve(problem)
    via = get_backend("pyomo:appsi_highs").solve(problem)
    assert via.objective == pytest.approx(direct.objective, abs=1e-6)
    del pyo


def test_network_without_free_inputs_is_a_constant():
    net = Network("x", (1, 2), [Node("d", __import__("mlrobust.ir.ops", fromlist=["Dense"]).Dense(
        np.array([[1.0, 2.0], [0.5, -1.0], [0.0, 1.0]]), np.zeros(3)), ("x",), "y", (3,))], "y")
    x = np.array([0.3, 0.2])
    _, problem = topk_model(net, propagate(net, x, x, "ibp"), 2, 1)
    assert problem.stats["margin_lower_bound"] == pytest.approx(problem.stats["margin_upper_bound"])
    assert problem.stats["margin_upper_bound"] == pytest.approx(topk_margin(net.logits(x[None]), 2, 1)[0])


def test_hairline_unstable_relus_are_relaxed_not_binary():
    """Neurons unstable by less than RELAX_BELOW get the triangle relaxation: no binary, still feasible for every
    real input, and the relaxation can only raise the optimum (so proofs stay proofs)."""
    from mlrobust.milp.layers.relu import RELAX_BELOW, encode_relu

    enc = Encoding()
    cols = enc.add_columns(-np.ones(4), np.ones(4), False, "input")
    x = AffineForm(__import__("scipy.sparse", fromlist=["identity"]).identity(4, format="csr"), np.zeros(4))
    lower = np.array([-1.0, -RELAX_BELOW / 10, -1.0, -0.5])
    upper = np.array([1.0, 1.0, RELAX_BELOW / 10, -0.1])
    out, stats, rc = encode_relu(enc, x, lower, upper)
    assert stats == {"inactive": 1, "active": 0, "unstable": 3, "relaxed": 2}
    assert np.count_nonzero(enc.col_kinds() == "relu_binary") == 1
    col_lower, col_upper, integer, A, row_lower, row_upper = enc.arrays()
    for pre in np.random.default_rng(0).uniform(lower, upper, (200, 4)):
        v = np.zeros(enc.ncols)
        v[cols] = pre
        rc.assign(v, pre)
        act = A @ v
        assert np.all(act >= row_lower - 1e-12) and np.all(act <= row_upper + 1e-12)


def test_pyomo_route_returns_a_point_when_a_column_is_in_no_row():
    """An input pixel read only by stably inactive ReLUs occurs in no row; Pyomo solvers leave it without a value."""
    pytest.importorskip("pyomo.environ")
    from mlrobust.backends import get_backend
    from mlrobust.ir.ops import Dense, Relu

    net = Network("x", (1, 3), [
        Node("d1", Dense(np.array([[1.0, 0, 0.5], [0, 1.0, 0], [-1.0, 0, 1.0]]), np.array([0.0, -10.0, 0.2])),
             ("x",), "h", (3,)),
        Node("r", Relu(), ("h",), "a", (3,)),
        Node("d2", Dense(np.array([[1.0, 2.0, -1.0], [-1.0, 0.5, 1.0], [0.3, 0.0, 0.2]]), np.zeros(3)), ("a",), "y",
             (3,))], "y")
    lower, upper = np.array([-1.0, 0.0, -1.0]), np.array([1.0, 1.0, 1.0])
    _, problem = topk_model(net, propagate(net, lower, upper, "ibp"), 2, 1)
    unused = np.diff(problem.A.tocsc().indptr) == 0
    assert unused[problem.input_cols[1]]
    res = get_backend("pyomo:appsi_highs").solve(problem)
    ref = get_backend("highs").solve(problem)
    assert res.x is not None and res.objective == pytest.approx(ref.objective, abs=1e-6)
