"""The op registry: every op kind carries every rule and consistent traits, and a new op is one class plus its
registration (a toy op defined here runs through IBP, CROWN, α-CROWN, the torch executor and the MILP builder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from ir_factories import NetBuilder, random_box, random_network, sample_box

from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_margin_bounds
from mlrobust.bounds.crown import crown
from mlrobust.bounds.ibp import ibp
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import AFFINE_KINDS
from mlrobust.ir.torch_exec import to_torch
from mlrobust.milp.builder import MilpBuilder
from mlrobust.ops import OP_CLASSES, OpRules, Scale, register, unregister
from mlrobust.ops.coeffs import AlphaStep

RULES = ("forward", "forward_torch", "interval", "crown_step", "crown_step_patch", "alpha_step", "encode_milp")


STRUCTURAL = {"Pad", "Slice", "Transpose", "Concat", "ReduceSum", "ConvTranspose2d"}


def test_the_shipped_kinds_are_registered() -> None:
    assert set(OP_CLASSES) == {"Dense", "Conv2d", "Relu", "MaxPool2d", "AvgPool2d", "Reshape", "Scale",
                               "Add", "Sigmoid", "Tanh"} | STRUCTURAL
    assert AFFINE_KINDS == {"Dense", "Conv2d", "AvgPool2d", "Reshape", "Scale", "Add"} | STRUCTURAL


@pytest.mark.parametrize("kind", sorted(OP_CLASSES))
def test_every_kind_has_every_rule(kind: str) -> None:
    cls = OP_CLASSES[kind]
    assert cls.kind == kind
    for rule in RULES:
        assert getattr(cls, rule) is not getattr(OpRules, rule) or rule == "crown_step_patch", (kind, rule)
    if cls.activation:  # relaxed by CROWN: it needs its relaxation and the neurons whose bounds matter
        assert cls.crown_relax is not OpRules.crown_relax
        assert cls.refine_index is not OpRules.refine_index
    if cls.affine and cls.arity == 1:
        assert cls.milp_matrix is not OpRules.milp_matrix
    if cls.weight_rows:
        assert cls.output_rows is not OpRules.output_rows


@pytest.mark.parametrize("kind", sorted(OP_CLASSES))
def test_traits_are_consistent(kind: str) -> None:
    cls = OP_CLASSES[kind]
    if cls.mixing:
        assert cls.affine and not cls.elementwise
    if cls.activation:
        assert not cls.affine
    if cls.absorbs_relu:
        assert cls.activation and cls.pooling
    if cls.weight_rows:
        assert cls.mixing
    if cls.arity > 1:
        assert not cls.elementwise and not cls.mixing
    # exactly the kinds the engines used to list by hand
    assert cls.mixing == (kind in {"Dense", "Conv2d", "AvgPool2d", "ReduceSum", "ConvTranspose2d"})
    # coordinate selections (Pad, Slice, Transpose) map a box onto a box, as Reshape does
    assert cls.elementwise == (kind in {"Scale", "Reshape", "Relu", "Pad", "Slice", "Transpose", "Sigmoid", "Tanh"})
    assert cls.activation == (kind in {"Relu", "MaxPool2d", "Sigmoid", "Tanh"})


def test_unknown_rule_is_a_clear_error() -> None:
    @dataclass(eq=False)
    class Bare(OpRules):
        kind = "Bare"

    node = Node("n", Bare(), ("x",), "y", (2,))
    with pytest.raises(TypeError, match="op Bare has no interval rule"):
        node.op.interval(node, [np.zeros(2)], [np.zeros(2)])
    with pytest.raises(ValueError, match="already registered"):
        register(type("Dense", (OpRules,), {"kind": "Dense"}))


# --- a toy op: y = -x, in one class -----------------------------------------------------------------------------
@dataclass(eq=False)
class Negate(OpRules):
    """``y = -x``: elementwise, affine, exact in floating point."""

    kind = "Negate"
    affine = True
    elementwise = True
    num_params = 0

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:  # type: ignore[override]
        return -x

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        return -args[0]

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return -ups[0], -lows[0]

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> Any:
        return [(node.inputs[0], -a)], None, None

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        return AlphaStep([(node.inputs[0], -a)])

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.encoding import AffineForm

        return AffineForm(-inputs[0].widen(builder.enc.ncols), -inputs[0].c)


@pytest.fixture
def negate() -> Any:
    register(Negate)
    yield Negate
    unregister("Negate")


def _with(op_factory: Any) -> Network:
    """Dense -> ReLU -> <op> -> Dense -> ReLU -> Dense on a 5-dim input."""
    b = NetBuilder((5,), np.random.default_rng(3))
    b.dense(8)
    b.relu()
    b._add(op_factory(), (b.cur,), b.shape)
    b.dense(6)
    b.relu()
    b.dense(3)
    return b.build()


def test_toy_op_runs_through_every_engine(negate: Any) -> None:
    net = _with(Negate)
    ref = _with(lambda: Scale(np.array(-1.0), np.array(0.0)))  # the same function from a shipped op
    lo, hi = random_box(net, 0, 0.5)
    xs = sample_box(lo, hi, 64, 1)
    out = net.forward(xs)
    np.testing.assert_array_equal(out, ref.forward(xs))
    with torch.no_grad():
        t_out = to_torch(net, torch.float64)(torch.as_tensor(xs)).numpy()
    np.testing.assert_allclose(t_out, out, rtol=1e-12, atol=1e-12)

    i_lo, i_hi = ibp(net, lo, hi)
    r_lo, r_hi = ibp(ref, lo, hi)
    np.testing.assert_allclose(i_lo[net.output_name], r_lo[ref.output_name], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(i_hi[net.output_name], r_hi[ref.output_name], rtol=1e-8, atol=1e-8)

    b = crown(net, lo, hi)
    rb = crown(ref, lo, hi)
    y_lo, y_hi = b.lower[net.output_name], b.upper[net.output_name]
    assert np.all(out >= y_lo - 1e-9) and np.all(out <= y_hi + 1e-9)
    np.testing.assert_allclose(y_lo, rb.lower[ref.output_name], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(y_hi, rb.upper[ref.output_name], rtol=1e-7, atol=1e-7)
    assert np.all(y_hi - y_lo <= i_hi[net.output_name] - i_lo[net.output_name] + 1e-9)

    a_lo, a_hi, _ = alpha_margin_bounds(net, lo, hi, 0, options=AlphaOptions(iterations=3))
    margins = out - out[:, :1]
    assert np.all(margins >= a_lo - 1e-9) and np.all(margins <= a_hi + 1e-9)

    builder = MilpBuilder(net, b).run()
    form = builder.output_form
    for x, y in zip(xs[:8], out[:8]):
        v = builder.assignment(x)
        np.testing.assert_allclose(form.A @ v + form.c, y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind,seed", [("mlp", 0), ("cnn", 1)])
def test_shipped_kinds_agree_between_numpy_and_torch(kind: str, seed: int) -> None:
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed, 0.2)
    xs = sample_box(lo, hi, 8, seed)
    with torch.no_grad():
        t_out = to_torch(net, torch.float64)(torch.as_tensor(xs)).numpy()
    np.testing.assert_allclose(t_out, net.forward(xs), rtol=1e-10, atol=1e-10)
