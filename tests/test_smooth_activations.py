"""Sigmoid and Tanh inside the network: import (IR = onnxruntime), sound relaxation lines, bounds that contain
sampled outputs, α-CROWN's tangent points, the MILP's outer approximation and verdicts against brute force."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_factories import NetBuilder, sample_box
from onnx import helper
from onnx_factories import assert_equivalent, export_legacy, f32, make_model

from mlrobust import load_onnx
from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_bounds, alpha_margin_bounds, initial_domain
from mlrobust.bounds.crown import crown
from mlrobust.bounds.ibp import ibp
from mlrobust.bounds.margin import margin_bounds
from mlrobust.errors import UnsupportedOpError
from mlrobust.ir.graph import Network, Node
from mlrobust.milp.builder import MilpBuilder
from mlrobust.ops import Dense, Sigmoid, Tanh
from mlrobust.ops.smooth import SIGMOID, TANH, alpha_smooth_relax, milp_lines, smooth_lines
from mlrobust.verify.bab import BabVerifier
from mlrobust.verify.bound_check import BoundCheck
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import NotRobust, Robust, Unknown

FUNCTIONS = {"Sigmoid": SIGMOID, "Tanh": TANH}
ACTS = {"Sigmoid": Sigmoid, "Tanh": Tanh}

# intervals of every kind: convex (u <= 0), concave (l >= 0), crossing, narrow, wide and saturated
_ends = st.floats(-60.0, 60.0, allow_nan=False) | st.floats(-3.0, 3.0, allow_nan=False)
intervals = st.tuples(_ends, _ends).map(lambda p: (min(p), max(p)))


def _dense_check(fn, lo: float, hi: float, slope: np.ndarray, icpt: np.ndarray, side: str) -> float:
    """Largest violation of lines ``slope x + icpt`` (one per row) on 4001 points of ``[lo, hi]`` and its ends."""
    x = np.concatenate([np.linspace(lo, hi, 4001), [lo, hi]])
    y = fn.f(x)
    lines = slope.reshape(-1, 1) * x + icpt.reshape(-1, 1)
    gap = lines - y if side == "lower" else y - lines
    return float(gap.max())


# --- relaxation lines ------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FUNCTIONS)), bounds=intervals)
def test_crown_lines_are_sound_on_the_whole_interval(name: str, bounds: tuple[float, float]) -> None:
    fn = FUNCTIONS[name]
    lo, hi = bounds
    r = smooth_lines(fn, np.array([lo]), np.array([hi]))
    assert _dense_check(fn, lo, hi, r.lo_slope, r.lo_icpt, "lower") <= 0.0
    assert _dense_check(fn, lo, hi, r.up_slope, r.up_icpt, "upper") <= 0.0
    # the MILP's lines too (none where the output range is a point: the column bounds hold it)
    (lo_n, lo_s, lo_c), (up_n, up_s, up_c) = milp_lines(fn, np.array([lo]), np.array([hi]))
    if lo_n.size:
        assert _dense_check(fn, lo, hi, lo_s, lo_c, "lower") <= 0.0
        assert _dense_check(fn, lo, hi, up_s, up_c, "upper") <= 0.0
    else:
        assert fn.f(hi) - fn.f(lo) <= 1e-9 and up_n.size == 0


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(FUNCTIONS)), bounds=intervals, t=st.lists(st.floats(0.0, 1.0), min_size=2,
                                                                               max_size=2))
def test_every_alpha_tangent_point_gives_sound_lines(name: str, bounds: tuple[float, float], t: list[float]) -> None:
    fn = FUNCTIONS[name]
    lo, hi = bounds
    r = alpha_smooth_relax(fn, np.array([[lo]]), np.array([[hi]]))
    params = torch.tensor(t, dtype=torch.float64).reshape(1, 1, 2, 1)
    lo_s, lo_c, up_s, up_c = (v.reshape(1).numpy() for v in r.lines(params))
    assert _dense_check(fn, lo, hi, lo_s, lo_c, "lower") <= 0.0
    assert _dense_check(fn, lo, hi, up_s, up_c, "upper") <= 0.0
    # CROWN's own parameters give CROWN's lines
    crown_lines = [v.reshape(1).numpy() for v in r.lines(r.default)]
    fixed = smooth_lines(fn, np.array([lo]), np.array([hi]))
    np.testing.assert_allclose(crown_lines, [fixed.lo_slope, fixed.lo_icpt, fixed.up_slope, fixed.up_icpt],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_crossing_tangents_touch_the_curve_and_pass_through_the_far_end(name: str) -> None:
    """A crossing interval's tangent lines are tight: CROWN's upper tangent passes through ``(l, f(l))`` and touches
    the curve at its tangent point, so the lines are not just sound but the ones the construction names."""
    fn = FUNCTIONS[name]
    lo, hi = np.array([-3.0]), np.array([2.5])
    r = smooth_lines(fn, lo, hi)
    assert r.lo_tangent[0] and r.up_tangent[0]
    assert r.up_slope[0] * lo[0] + r.up_icpt[0] == pytest.approx(fn.f(lo[0]), abs=1e-8)
    assert r.lo_slope[0] * hi[0] + r.lo_icpt[0] == pytest.approx(fn.f(hi[0]), abs=1e-8)
    d_up = r.up_d0[0]  # CROWN's upper tangent point
    assert 0.0 < d_up < hi[0] and r.up_slope[0] == pytest.approx(fn.df(d_up), rel=1e-9)
    # the chord is used on the side where it is sound: above for an interval reaching further left, below for one
    # reaching further right
    k = (fn.f(0.05) - fn.f(-0.2)) / 0.25
    left = smooth_lines(fn, np.array([-0.2]), np.array([0.05]))
    assert left.lo_tangent[0] and not left.up_tangent[0] and left.up_slope[0] == pytest.approx(k)
    (lo_n, _, _), (up_n, _, _) = milp_lines(fn, np.array([-3.0, -0.2]), np.array([2.5, 0.05]))
    assert lo_n.tolist() == [0, 1, 0, 1, 0, 1] and up_n.tolist() == [1, 0, 0, 0]  # 3 tangents or the one chord
    right = smooth_lines(fn, np.array([-0.05]), np.array([0.2]))
    assert not right.lo_tangent[0] and right.up_tangent[0] and right.lo_slope[0] == pytest.approx(k)


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(sorted(FUNCTIONS)), bounds=intervals)
def test_interval_image_contains_the_values(name: str, bounds: tuple[float, float]) -> None:
    op = ACTS[name]()
    lo, hi = bounds
    node = Node("s", op, ("x",), "y", (1,))
    i_lo, i_hi = op.interval(node, [np.array([lo])], [np.array([hi])])
    y = op.forward(np.linspace(lo, hi, 1001))
    assert i_lo[0] <= y.min() and y.max() <= i_hi[0]
    assert i_hi[0] - i_lo[0] <= y.max() - y.min() + 1e-11


# --- import ----------------------------------------------------------------------------------------------------------
class _SmoothMlp(torch.nn.Module):
    def __init__(self, n_in: int, widths: list[int], acts: list[str], classes: int, head: str | None):
        super().__init__()
        layers: list[torch.nn.Module] = []
        prev = n_in
        for w, a in zip(widths, acts):
            layers += [torch.nn.Linear(prev, w), {"sigmoid": torch.nn.Sigmoid(), "tanh": torch.nn.Tanh(),
                                                   "relu": torch.nn.ReLU()}[a]]
            prev = w
        layers.append(torch.nn.Linear(prev, classes))
        if head == "sigmoid":
            layers.append(torch.nn.Sigmoid())
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 3), head=st.sampled_from([None, "sigmoid"]))
def test_exported_smooth_mlp_equals_onnxruntime(seed: int, depth: int, head: str | None) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_in = int(rng.integers(2, 7))
    widths = [int(rng.integers(2, 9)) for _ in range(depth)]
    acts = [str(rng.choice(["sigmoid", "tanh", "relu"])) for _ in range(depth)]
    model = export_legacy(_SmoothMlp(n_in, widths, acts, 3, head), (n_in,))
    net = load_onnx(model)
    kinds = [n.kind for n in net.nodes]
    assert kinds.count("Sigmoid") == acts.count("sigmoid") and kinds.count("Tanh") == acts.count("tanh")
    x = rng.normal(scale=3.0, size=(64, n_in))
    assert_equivalent(model, net, x, head=head or "none")


def _gemm_chain(ops: list[str], rng: np.random.Generator) -> onnx.ModelProto:
    """x -> Gemm -> ops[0] -> Gemm -> ops[1] ... (a hand-written graph)."""
    nodes, inits, cur = [], {}, "x"
    for i, op in enumerate(ops):
        inits[f"W{i}"] = f32(rng.normal(size=(4, 4)))
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}"], [f"g{i}"], name=f"gemm{i}"))
        nodes.append(helper.make_node(op, [f"g{i}"], [f"a{i}"], name=f"act{i}"))
        cur = f"a{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"], name="identity"))
    return make_model(nodes, [1, 4], [1, 4], inits)


def test_hidden_smooth_ops_import_and_a_trailing_one_is_stripped() -> None:
    rng = np.random.default_rng(3)
    model = _gemm_chain(["Sigmoid", "Tanh", "Relu", "Tanh"], rng)
    net = load_onnx(model)
    assert [n.kind for n in net.nodes] == ["Dense", "Sigmoid", "Dense", "Tanh", "Dense", "Relu", "Dense"]
    assert "stripped trailing Tanh 'act3' (monotone, so the top-k labels are unchanged)" in net.notes
    x = rng.normal(scale=2.0, size=(32, 4))
    out = net.forward(x)
    from onnx_factories import ort_run

    ref = ort_run(model, x)["y"]
    np.testing.assert_allclose(np.tanh(out), ref, atol=1e-5, rtol=0)


def test_trailing_sigmoid_then_softmax_strips_both() -> None:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], name="gemm"),
             helper.make_node("Sigmoid", ["g"], ["s"], name="sig"),
             helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=1)]
    net = load_onnx(make_model(nodes, [1, 4], [1, 3], {"W": f32(rng.normal(size=(4, 3)))}))
    assert [n.kind for n in net.nodes] == ["Dense"]


def test_smooth_op_after_a_stripped_softmax_is_refused() -> None:
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="softmax", axis=1),
             helper.make_node("Sigmoid", ["s"], ["h"], name="sig"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    with pytest.raises(UnsupportedOpError, match="'Softmax' at node 'softmax' .*only supported as the last op"):
        load_onnx(make_model(nodes, [1, 4], None, {}))


# --- bounds on small random networks ---------------------------------------------------------------------------------
def smooth_mlp(seed: int, n_in: int | None = None) -> Network:
    rng = np.random.default_rng(seed)
    b = NetBuilder((n_in or int(rng.integers(2, 6)),), rng)
    for i in range(int(rng.integers(1, 4))):
        b.dense(int(rng.integers(3, 9)))
        kind = str(rng.choice(["Sigmoid", "Tanh"] if i == 0 else ["Sigmoid", "Tanh", "Relu"]))
        if kind == "Relu":
            b.relu()
        else:
            b._add(ACTS[kind](), (b.cur,), b.shape)
    b.dense(int(rng.integers(2, 5)))
    return b.build()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), radius=st.sampled_from([0.05, 0.5, 2.0]))
def test_sampled_values_lie_inside_ibp_crown_and_alpha_bounds(seed: int, radius: float) -> None:
    net = smooth_mlp(seed)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, net.sample_shape)
    lo, hi = centre - radius, centre + radius
    xs = sample_box(lo, hi, 300, seed)
    values = net.forward(xs, return_all=True)
    i_lo, i_hi = ibp(net, lo, hi)
    bounds = crown(net, lo, hi, refine="all")
    for t in net.tensors:
        v = values[t].reshape(len(xs), *net.shape_of(t))
        assert (v >= i_lo[t]).all() and (v <= i_hi[t]).all(), t
        assert (v >= bounds.lower[t]).all() and (v <= bounds.upper[t]).all(), t
    logits = values[net.output_name].reshape(len(xs), -1)
    target = int(rng.integers(0, net.num_classes))
    margins = logits - logits[:, [target]]
    m_lo, m_hi = margin_bounds(net, lo, hi, target)
    a_lo, a_hi, _ = alpha_margin_bounds(net, lo, hi, target, options=AlphaOptions(iterations=10))
    assert (margins <= a_hi).all() and (margins >= a_lo).all()
    assert (a_hi <= m_hi + 1e-9).all() and (a_lo >= m_lo - 1e-9).all()  # never looser than CROWN


def test_crown_beats_ibp_and_alpha_beats_crown_on_a_sigmoid_mlp() -> None:
    """Real values on a fixed network: the relaxations are not only sound but useful."""
    rng = np.random.default_rng(7)
    b = NetBuilder((6,), rng)
    for _ in range(3):
        b.dense(16)
        b._add(Sigmoid(), (b.cur,), b.shape)
    b.dense(4)
    net = b.build()
    lo, hi = -np.ones(6) * 0.5, np.ones(6) * 0.5
    i_lo, i_hi = ibp(net, lo, hi)
    c = crown(net, lo, hi)
    out = net.output_name
    assert ((c.upper[out] - c.lower[out]) < 0.8 * (i_hi[out] - i_lo[out])).all()
    m_lo, m_hi = margin_bounds(net, lo, hi, 0)
    a_lo, a_hi, state = alpha_margin_bounds(net, lo, hi, 0, options=AlphaOptions(iterations=30))
    assert (a_hi[1:] < m_hi[1:] - 1e-4).any()
    assert any(k.startswith("n") and v.shape[2] == 2 for k, v in state.alpha.items())  # (D, S, lower/upper, ...)


def test_split_at_zero_makes_a_smooth_domain_tighter() -> None:
    """Branch and bound splits a Sigmoid/Tanh pre-activation at 0: each side's interval is convex or concave, its
    constraint enters with a β multiplier, and the bound of either child is far tighter than the parent's."""
    net = _bump_network(Tanh, offset=0.01)
    parent = initial_domain(net, np.array([-3.0]), np.array([3.0]))
    assert "act" in parent.splits  # Sigmoid/Tanh nodes are splittable
    children = parent.select([0, 0])
    children.splits["act"][:, 0], children.splits["act"][:, 1] = [1, -1], [-1, 1]  # x >= 0 and x <= 0
    row = np.array([[-1.0, 1.0]])  # lower bound of y1 - y0 = 0.01 everywhere
    p = alpha_bounds(net, parent, row, options=AlphaOptions(iterations=30)).lower[0, 0]
    c = alpha_bounds(net, children, row, options=AlphaOptions(iterations=30)).lower[:, 0]
    assert p < -0.5 and (c > p + 0.15).all(), (p, c)
    assert (c <= 0.01).all()


# --- MILP and verdicts against brute force ---------------------------------------------------------------------------
def _bump_network(act: type, n_in: int = 1, offset: float = 0.01) -> Network:
    """Logits ``[f(x0) + f(-x0) - c - offset, 0]`` with ``c = f(x) + f(-x)``, a constant (1 for Sigmoid, 0 for
    Tanh): class 0 is ``offset`` below class 1 everywhere, which single-neuron relaxations cannot see."""
    w = np.zeros((2, n_in))
    w[0, 0], w[1, 0] = 1.0, -1.0
    const = 1.0 if act is Sigmoid else 0.0  # sigmoid(x) + sigmoid(-x) = 1, tanh(x) + tanh(-x) = 0
    nodes = [Node("d1", Dense(w, np.zeros(2)), ("x",), "h", (2,)),
             Node("act", act(), ("h",), "a", (2,)),
             Node("d2", Dense(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([-const - offset, 0.0])), ("a",), "y", (2,))]
    return Network("x", (1, n_in), nodes, "y")


@pytest.mark.parametrize("act", [Sigmoid, Tanh])
def test_outer_approximation_point_is_rerun_and_not_reported(act: type) -> None:
    """Class 0 is 0.01 below class 1 everywhere, but the MILP's outer approximation lets it reach above: the MILP's
    point fails on the network, so the verdict is Unknown, never NotRobust; branch and bound proves it."""
    net = _bump_network(act, offset=0.01)
    box = Box(np.array([-4.0]), np.array([4.0]))
    milp = MilpVerifier(warm_start=False)
    v = milp.verify(net, box, 1, 1, "decide", 20)
    assert isinstance(v, Unknown)
    assert milp.last_problem is not None and milp.last_problem.stats["layers"]["act"]["kind"] == act.kind
    assert "not confirmed" in v.reason
    assert isinstance(BoundCheck("alpha").verify(net, box, 1, 1, "decide", 20), Unknown)
    assert isinstance(BabVerifier().verify(net, box, 1, 1, "decide", 20), Robust)


def _brute_force_margin(net: Network, box: Box, target: int, n: int = 201 ** 2) -> float:
    grid = np.stack(np.meshgrid(*[np.linspace(a, b, int(round(n ** (1 / box.lower.size))))
                                  for a, b in zip(box.lower, box.upper)], indexing="ij"), -1).reshape(-1, box.lower.size)
    logits = net.forward(grid).reshape(len(grid), -1)
    return float(np.delete(logits - logits[:, [target]], target, axis=1).max())


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 100_000), radius=st.sampled_from([0.1, 0.4, 1.0]))
def test_verdicts_agree_with_brute_force_on_tiny_nets(seed: int, radius: float) -> None:
    net = smooth_mlp(seed, n_in=2)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, 2)
    box = Box(centre - radius, centre + radius)
    target = int(np.argmax(net.forward(centre[None]).reshape(-1)))
    worst = _brute_force_margin(net, box, target)
    for verifier in (MilpVerifier(), BoundCheck("alpha"), BabVerifier()):
        v = verifier.verify(net, box, target, 1, "decide", 20)
        if isinstance(v, Robust):
            assert worst < 0, (type(verifier).__name__, worst)
        elif isinstance(v, NotRobust):
            assert v.counterexample is not None
            logits = net.forward(np.asarray(v.counterexample)[None]).reshape(-1)
            assert np.delete(logits - logits[target], target).max() >= 0
        # complete on a 2-D input within the limit; the grid's spacing (<= 0.01) keeps its maximum within a few
        # hundredths of the true one on these small networks
        if isinstance(verifier, BabVerifier) and abs(worst) > 0.05:
            assert isinstance(v, Robust if worst < 0 else NotRobust), worst


def test_milp_encoding_admits_every_real_point() -> None:
    """The outer approximation is a relaxation: the assignment of each real input (its Sigmoid/Tanh columns hold the
    network's values) satisfies every row."""
    net = smooth_mlp(11, n_in=3)
    lo, hi = -np.ones(3), np.ones(3)
    builder = MilpBuilder(net, crown(net, lo, hi)).run()
    col_lo, col_hi, _, A, r_lo, r_hi = builder.enc.arrays()
    for x in sample_box(lo, hi, 50, 0):
        v = builder.assignment(x)
        assert (v >= col_lo - 1e-9).all() and (v <= col_hi + 1e-9).all()
        row = A @ v
        assert (row >= r_lo - 1e-7).all() and (row <= r_hi + 1e-7).all()
    assert any(s["kind"] in ("Sigmoid", "Tanh") for s in builder.layer_stats.values())


@pytest.mark.parametrize("act", [Sigmoid, Tanh])
def test_conv_network_patches_match_dense_coefficients(act: type) -> None:
    """A Sigmoid/Tanh between convolutions: CROWN's patch rule gives the dense rule's bounds, and both contain the
    sampled values."""
    rng = np.random.default_rng(5)
    b = NetBuilder((2, 6, 6), rng)
    b.conv(3, padding=(1, 1, 1, 1))
    b._add(act(), (b.cur,), b.shape)
    b.conv(3)
    b._add(act(), (b.cur,), b.shape)
    b.flatten()
    b.dense(4)
    net = b.build()
    centre = rng.uniform(0, 1, net.sample_shape)
    lo, hi = centre - 0.1, centre + 0.1
    with_patches, dense = crown(net, lo, hi, refine="all"), crown(net, lo, hi, refine="all", patches=False)
    xs = sample_box(lo, hi, 100, 0)
    values = net.forward(xs, return_all=True)
    for t in net.tensors:
        np.testing.assert_allclose(with_patches.lower[t], dense.lower[t], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(with_patches.upper[t], dense.upper[t], rtol=1e-9, atol=1e-9)
        v = values[t].reshape(len(xs), *net.shape_of(t))
        assert (v >= with_patches.lower[t]).all() and (v <= with_patches.upper[t]).all(), t
    out = net.output_name
    i_lo, i_hi = ibp(net, lo, hi)
    assert (with_patches.upper[out] - with_patches.lower[out] < i_hi[out] - i_lo[out]).all()
