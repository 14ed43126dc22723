"""CROWN: soundness on random networks, exactness where it must be exact, and agreement of its code paths."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_factories import NetBuilder, random_box, random_network, reference_network, sample_box

from mlrobust.bounds import propagate
from mlrobust.bounds.crown import BackSubstitution, _Patch, _patch_to_dense, crown
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, Dense, MaxPool2d, Relu
from mlrobust.ops.coeffs import masked

# the module itself (``mlrobust.bounds.crown`` as an attribute is the function of that name)
crown_module = importlib.import_module("mlrobust.bounds.crown")

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=10)


def assert_contains(net: Network, bounds, xs: np.ndarray) -> None:
    """Every tensor's value at every sample lies in its bounds, with no tolerance (the bounds widen for rounding)."""
    values = net.forward(xs, return_all=True)
    for t, v in values.items():
        lo, hi = bounds.lower[t], bounds.upper[t]
        assert lo.shape == hi.shape == net.shape_of(t)
        assert not (np.isnan(lo).any() or np.isnan(hi).any()), t
        assert np.all(v >= lo), f"{t}: below lower bound by {np.max(lo - v)}"
        assert np.all(v <= hi), f"{t}: above upper bound by {np.max(v - hi)}"


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31), radius=st.sampled_from([0.01, 0.1, 0.5]))
def test_crown_contains_sampled_activations_and_is_within_ibp(kind, seed, radius):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed + 1, radius)
    b_crown = propagate(net, lo, hi, "crown")
    b_ibp = propagate(net, lo, hi, "ibp")
    xs = sample_box(lo, hi, 2000, seed + 2)
    assert_contains(net, b_crown, xs)
    for t in net.tensors:  # never looser than IBP, on every tensor
        assert np.all(b_crown.lower[t] >= b_ibp.lower[t])
        assert np.all(b_crown.upper[t] <= b_ibp.upper[t])
    assert b_crown.num_unstable <= b_ibp.num_unstable


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_refine_all_is_sound_and_does_more_work(kind, seed):
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed, 0.2)
    b_all = crown(net, lo, hi, refine="all")
    b_some = crown(net, lo, hi, refine="unstable")
    assert_contains(net, b_all, sample_box(lo, hi, 500, seed))
    assert b_all.info["rows"] >= b_some.info["rows"]
    # Tighter bounds on stable neurons can still change later intervals (e.g. through a residual Add) and so the
    # adaptive slopes: the two modes need not agree exactly, but both are sound and both refine every unstable ReLU.
    for b in (b_all, b_some):
        for t, n in b.info["refined"].items():
            assert n > 0 and t in net.tensors


@FEW
@given(seed=st.integers(0, 2**31))
def test_patch_and_dense_back_substitution_agree(seed):
    net = random_network("cnn", seed)
    lo, hi = random_box(net, seed, 0.2)
    b = crown(net, lo, hi, refine="all")
    engine = BackSubstitution(net, dict(b.lower), dict(b.upper))
    for t in net.tensors[1:]:
        if len(net.shape_of(t)) != 3:
            continue
        idx = np.arange(int(np.prod(net.shape_of(t))))
        p_lo, p_hi = engine.neuron_bounds(t, idx, patches=True)
        d_lo, d_hi = engine.neuron_bounds(t, idx, patches=False)
        scale = 1.0 + np.abs(d_lo) + np.abs(d_hi)
        assert np.all(np.abs(p_lo - d_lo) <= 1e-9 * scale), t
        assert np.all(np.abs(p_hi - d_hi) <= 1e-9 * scale), t


@FEW
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 2**31))
def test_zero_width_box_is_near_exact(kind, seed):
    net = random_network(kind, seed)
    x = np.random.default_rng(seed).uniform(-1, 1, net.sample_shape)
    b = crown(net, x, x)
    for t, v in net.forward(x[None], return_all=True).items():
        v = v[0]
        assert np.all(b.lower[t] <= v) and np.all(v <= b.upper[t])
        # intermediate intervals carry the rounding widening amplified by later layers; the output is CROWN's
        tol = 1e-8 if t == net.output_name else 1e-6
        assert np.all(b.upper[t] - b.lower[t] <= tol * (1.0 + np.abs(v))), t


def test_chunked_rows_give_the_same_bounds():
    net = random_network("cnn", 7)
    lo, hi = random_box(net, 7, 0.3)
    ref = crown(net, lo, hi)
    tiny = crown(net, lo, hi, chunk_elements=50)
    for t in net.tensors:
        np.testing.assert_allclose(tiny.lower[t], ref.lower[t], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tiny.upper[t], ref.upper[t], rtol=1e-12, atol=1e-12)


def _dense_concretisation(p: _Patch, lo: torch.Tensor, hi: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The lower bound and term magnitude of each row of ``p`` over ``[lo, hi]``, from its dense coefficients."""
    a = _patch_to_dense(p, tuple(lo.shape)).reshape(p.a.shape[0], lo.numel()).numpy()
    lo_, hi_ = lo.reshape(-1).numpy(), hi.reshape(-1).numpy()
    return (np.where(a >= 0, a * lo_, a * hi_).sum(1), (np.abs(a) * np.maximum(np.abs(lo_), np.abs(hi_))).sum(1))


@SETTINGS
@given(seed=st.integers(0, 2**31), rows=st.integers(0, 9), c=st.integers(1, 3), ph=st.integers(1, 5),
       pw=st.integers(1, 5), budget=st.integers(1, 400))
def test_concretise_patch_in_row_slices_changes_no_number_and_keeps_its_budget(seed, rows, c, ph, pw, budget):
    rng = np.random.default_rng(seed)
    h, w = 6, 7
    lo = torch.as_tensor(rng.uniform(-1.0, 1.0, (c, h, w)))
    hi = lo + torch.as_tensor(rng.uniform(0.0, 1.0, (c, h, w)))
    a = torch.as_tensor(rng.normal(size=(rows, c, ph, pw)))
    oy = torch.as_tensor(rng.integers(-ph + 1, h, rows))
    ox = torch.as_tensor(rng.integers(-pw + 1, w, rows))
    p = masked(_Patch(a, oy, ox), h, w)  # entries outside the tensor are zero, as in every patch
    sizes: list[int] = []
    original = crown_module._gather

    def counting_gather(full, patch):
        out = original(full, patch)
        sizes.append(out.numel())
        return out

    crown_module._gather = counting_gather
    try:
        sliced = crown_module.concretise_patch(p, lo, hi, budget)
    finally:
        crown_module._gather = original
    whole = crown_module.concretise_patch(p, lo, hi, 1 << 30)
    per_row = int(np.prod(p.a.shape[1:]))
    # every slice's windows of the box hold at most the budget (one row where a row alone is larger)
    assert all(n <= max(budget, per_row) for n in sizes)
    assert len(sizes) == 2 * -(-rows // max(1, budget // per_row))
    for x, y in zip(sliced, whole):
        assert torch.equal(x, y)
    ref_bias, ref_mag = _dense_concretisation(p, lo, hi)
    np.testing.assert_allclose(whole[0].numpy(), ref_bias, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole[1].numpy(), ref_mag, rtol=1e-12, atol=1e-12)


def _affine_matrix(net: Network) -> tuple[np.ndarray, np.ndarray]:
    """``y = M x + c`` of a network without ReLU/MaxPool, read off its forward pass."""
    n = int(np.prod(net.sample_shape))
    c = net.logits(np.zeros((1, *net.sample_shape)))[0]
    basis = np.eye(n).reshape(n, *net.sample_shape)
    return (net.logits(basis) - c).T, c


def test_purely_affine_network_is_exact():
    rng = np.random.default_rng(3)
    b = NetBuilder((2, 7, 6), rng)
    b.scale()
    b.conv(4, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), groups=2)
    b.avgpool((2, 2), (1, 2), (1, 1, 0, 1))
    skip = b.cur
    b.conv(4, (3, 3), padding=(1, 1, 1, 1))
    b.add(b.cur, skip, -0.5)
    b.dense(5)
    net = b.build()
    lo, hi = rng.uniform(-1, 0, net.sample_shape), rng.uniform(0, 1, net.sample_shape)
    m, c = _affine_matrix(net)
    exact_lo = c + np.clip(m, 0, None) @ lo.reshape(-1) + np.clip(m, None, 0) @ hi.reshape(-1)
    exact_hi = c + np.clip(m, 0, None) @ hi.reshape(-1) + np.clip(m, None, 0) @ lo.reshape(-1)
    bc, bi = propagate(net, lo, hi, "crown"), propagate(net, lo, hi, "ibp")
    np.testing.assert_allclose(bc.output_lower, exact_lo, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bc.output_upper, exact_hi, rtol=1e-9, atol=1e-9)
    assert np.all(bi.output_upper - bi.output_lower > bc.output_upper - bc.output_lower + 1e-3)


def _tiny(nodes: list[Node], shape: tuple[int, ...], out: str) -> Network:
    return Network("x", (1, *shape), nodes, out)


def test_relu_relaxation_by_hand():
    # y = relu(x) - x on [-1, 1]: CROWN gives [0, 1] (exact); IBP gives [-1, 2].
    net = _tiny([Node("r", Relu(), ("x",), "h", (1,)), Node("s", Add(-1.0), ("h", "x"), "y", (1,))], (1,), "y")
    bc, bi = crown(net, [-1.0], [1.0]), propagate(net, [-1.0], [1.0], "ibp")
    np.testing.assert_allclose([bc.output_lower[0], bc.output_upper[0]], [0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose([bi.output_lower[0], bi.output_upper[0]], [-1.0, 2.0], atol=1e-9)
    # u < -l: the adaptive lower slope is 0, so y >= -x; on [-2, 1] that gives lower bound -1 (true min 0).
    bc = crown(net, [-2.0], [1.0])
    np.testing.assert_allclose([bc.output_lower[0], bc.output_upper[0]], [-1.0, 2.0], atol=1e-9)


def _pool_minus_first(w_first: float) -> Network:
    """y = maxpool(x1, x2) + w_first * x1 for x of shape (1, 1, 2)."""
    return _tiny([
        Node("p", MaxPool2d((1, 2), (1, 2)), ("x",), "m", (1, 1, 1)),
        Node("d1", Dense(np.array([[1.0]]), np.zeros(1)), ("m",), "a", (1,)),
        Node("d2", Dense(np.array([[w_first, 0.0]]), np.zeros(1)), ("x",), "b", (1,)),
        Node("s", Add(1.0), ("a", "b"), "y", (1,)),
    ], (1, 1, 2), "y")


def test_maxpool_dominated_window_is_exact():
    net = _pool_minus_first(-1.0)  # max(x1, x2) - x1 with x1 >= x2 everywhere: identically 0
    lo, hi = np.array([[[2.0, 0.0]]]), np.array([[[3.0, 1.0]]])
    bc, bi = crown(net, lo, hi), propagate(net, lo, hi, "ibp")
    np.testing.assert_allclose([bc.output_lower[0], bc.output_upper[0]], [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose([bi.output_lower[0], bi.output_upper[0]], [-1.0, 1.0], atol=1e-9)


def test_maxpool_chord_upper_bound():
    # max(x1, x2) - x1/2, x1 in [0, 2], x2 in [1, 1.5]: chord max <= 1.5 + x1/4 gives upper 1.5 (the true max);
    # the constant bound max(u) = 2 would give 2. Lower: max >= x2 (largest lower bound) gives 0.
    net = _pool_minus_first(-0.5)
    lo, hi = np.array([[[0.0, 1.0]]]), np.array([[[2.0, 1.5]]])
    bc = crown(net, lo, hi)
    np.testing.assert_allclose([bc.output_lower[0], bc.output_upper[0]], [0.0, 1.5], atol=1e-9)
    xs = sample_box(lo, hi, 4000, 0)
    ys = net.logits(xs)[:, 0]
    assert ys.max() <= 1.5 + 1e-12 and ys.max() > 1.49


@pytest.mark.parametrize("seed", range(6))
def test_transposed_ops_are_adjoints(seed):
    """``<A, f(x) - f(0)> == <A_in, x>`` for each linear op's backward step, dense and patch."""
    rng = np.random.default_rng(seed)
    b = NetBuilder((int(rng.integers(1, 4)) * 2, int(rng.integers(5, 9)), int(rng.integers(5, 9))), rng)
    c_in = b.shape[0]
    groups = int(rng.choice([1, 2]))
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    b.conv(groups * 2, k, (int(rng.integers(1, 3)), int(rng.integers(1, 3))),
           tuple(int(rng.integers(0, k[i % 2])) for i in range(4)), (int(rng.integers(1, 3)), int(rng.integers(1, 3))),
           groups=groups if c_in % groups == 0 else 1)
    b.avgpool((2, 2), (1, 2), (1, 0, 1, 1), count_include_pad=bool(seed % 2))
    net = b.build()
    engine = BackSubstitution(net, {}, {})
    x = rng.normal(size=(1, *net.sample_shape))
    vals = net.forward(x, return_all=True)
    zero = net.forward(np.zeros_like(x), return_all=True)
    for node in net.nodes:
        out_shape = net.shape_of(node.output)
        a = torch.as_tensor(rng.normal(size=(3, *out_shape)))
        lhs = (a.numpy() * (vals[node.output] - zero[node.output])).reshape(3, -1).sum(1)
        terms, _, _ = engine._step(node, a)
        rhs = (terms[0][1].numpy() * (vals[node.inputs[0]] - zero[node.inputs[0]])).reshape(3, -1).sum(1)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)
        # the same coefficients as a whole-tensor patch, through the patch step
        patch = _Patch(a, torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
        p_terms, _, _ = engine._step_patch(node, patch)
        got = p_terms[0][1]
        got = got if isinstance(got, torch.Tensor) else _patch_to_dense(got, net.shape_of(node.inputs[0]))
        np.testing.assert_allclose(got.numpy(), terms[0][1].numpy(), rtol=1e-12, atol=1e-12)


def test_reference_architecture_crown_is_tighter_than_ibp():
    net = reference_network(0)
    x = np.zeros(net.sample_shape)
    x[0, 10:30, 12:20] = 1.0
    lo, hi = np.clip(x - 0.01, 0, 1), np.clip(x + 0.01, 0, 1)
    bc, bi = crown(net, lo, hi), propagate(net, lo, hi, "ibp")
    assert bc.num_unstable < bi.num_unstable
    assert np.mean(bc.output_upper - bc.output_lower) < 0.8 * np.mean(bi.output_upper - bi.output_lower)
    assert bc.info["refined"] and bc.info["ibp_unstable"] == bi.num_unstable
    assert_contains(net, bc, sample_box(lo, hi, 100, 1))


def test_bad_arguments_raise_input_errors():
    net = random_network("mlp", 1)
    lo, hi = random_box(net, 1, 0.1)
    with pytest.raises(InputError, match="refine"):
        crown(net, lo, hi, refine="some")
    with pytest.raises(InputError, match="shape"):
        crown(net, lo[:-1], hi[:-1])
    with pytest.raises(InputError, match="empty"):
        crown(net, hi + 1, hi)
    with pytest.raises(InputError, match="finite"):
        crown(net, lo * np.nan, hi)
    b = crown(net, lo[None], hi[None])  # a batch axis of 1 is accepted
    assert b.input_lower.shape == net.sample_shape


@pytest.mark.parametrize("kind,seed", [("mlp", 3), ("cnn", 4)])
def test_relu_on_the_logits_keeps_crown_tight_output_bounds(kind, seed):
    # Some exported models put a ReLU on the logits; its pre-activation is refined in full, not only where unstable.
    net = random_network(kind, seed)
    relu_net = Network(net.input_name, net.input_shape,
                       net.nodes + [Node("final_relu", Relu(), (net.output_name,), "y_relu", net.output_shape)],
                       "y_relu")
    lo, hi = random_box(net, seed, 0.3)
    plain, with_relu = crown(net, lo, hi), crown(relu_net, lo, hi)
    np.testing.assert_allclose(with_relu.output_lower, np.maximum(plain.output_lower, 0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(with_relu.output_upper, np.maximum(plain.output_upper, 0), rtol=1e-9, atol=1e-9)


def test_pool_winners_behind_a_relu_are_refined_on_a_shipped_model():
    """The stably active neurons that can win an undecided MaxPool window get CROWN bounds too: on mnist2_pgd ex00
    the whole-image box of radius 0.03 is then proven by the margin bounds alone (k-th margin bound 0.213 before)."""
    from pathlib import Path

    from mlrobust.bounds.margin import margin_bounds
    from mlrobust.ir.onnx_import import load_onnx
    from mlrobust.milp.topk import kth_largest
    from mlrobust.neighborhood.image_io import read_image

    root = Path(__file__).resolve().parent.parent / "examples"
    net = load_onnx(root / "models" / "mnist2_pgd.onnx")
    x = read_image(root / "images" / "ex00.png").reshape(net.sample_shape)
    lo, hi = np.clip(x - 0.03, 0, 1), np.clip(x + 0.03, 0, 1)
    b = crown(net, lo, hi)
    relu = next(n for n in net.nodes if n.kind == "Relu" and any(c.kind == "MaxPool2d" for c in net.nodes
                                                                   if n.output in c.inputs))
    pre = relu.inputs[0]
    assert b.info["refined"][pre] > int(np.sum((b.lower[pre] < 0) & (b.upper[pre] > 0)))  # more than the unstable
    _, upper = margin_bounds(net, lo, hi, 1, bounds=b)
    assert kth_largest(np.delete(upper, 1), 2) < -0.05
    samples = sample_box(lo, hi, 200, 0)
    assert np.all(net.forward(samples, return_all=True)[pre] <= b.upper[pre][None] + 1e-9)
