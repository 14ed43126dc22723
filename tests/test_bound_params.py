"""α/β parameters owned by the op modules, the one interval-propagation pass and the bound tier in bounds/.

The reference numbers were recorded with the engines as they were before the parameter families moved into the op
modules (parameters and projections inside the α engine, six copies of interval propagation, the bound tier in
mlrobust/milp/tightening.py); the same bounds must come out now.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ir_factories import NetBuilder, random_box, random_mlp, random_network, sample_box

from mlrobust import load_onnx
from mlrobust.bounds.alpha_crown import (
    AlphaOptions,
    AlphaState,
    alpha_bounds,
    alpha_margin_bounds,
    initial_domain,
    tighten_intermediate,
)
from mlrobust.bounds.crown import crown
from mlrobust.bounds.ibp import ibp, intersect_intervals, propagate_intervals
from mlrobust.bounds.tier import tighten
from mlrobust.ir.graph import Network, Node
from mlrobust.ops import OP_CLASSES, Relu, Sigmoid, Tanh, register, unregister
from mlrobust.ops.base import ParamFamily
from mlrobust.verify import bab_bounds
from mlrobust.verify.bab_bounds import AlphaEngine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the three nets and their reference numbers -------------------------------------------------------------------
def _conv_pool() -> tuple[Network, np.ndarray, np.ndarray]:
    b = NetBuilder((1, 8, 8), np.random.default_rng(3))
    b.conv(3, (3, 3), padding=(1, 1, 1, 1))
    b.relu()
    b.maxpool((2, 2), (2, 2))
    b.conv(4, (3, 3))
    b.relu()
    b.flatten()
    b.dense(10)
    b.relu()
    b.dense(4)
    x = np.random.default_rng(4).uniform(0.2, 0.8, (1, 8, 8))
    return b.build(), np.clip(x - 0.08, 0, 1), np.clip(x + 0.08, 0, 1)


def _smooth() -> tuple[Network, np.ndarray, np.ndarray]:
    b = NetBuilder((6,), np.random.default_rng(5))
    b.dense(12)
    b._add(Sigmoid(), (b.cur,), b.shape)
    b.dense(10)
    b._add(Tanh(), (b.cur,), b.shape)
    b.dense(3)
    x = np.random.default_rng(6).uniform(-1, 1, 6)
    return b.build(), x - 0.3, x + 0.3


def _mnist2_pgd() -> tuple[Network, np.ndarray, np.ndarray]:
    net = load_onnx(str(EXAMPLES / "models" / "mnist2_pgd.onnx"))
    x = np.random.default_rng(7).uniform(0, 1, net.sample_shape)
    return net, np.clip(x - 0.004, 0, 1), np.clip(x + 0.004, 0, 1)


NETS = {"conv_pool": _conv_pool, "smooth": _smooth, "mnist2_pgd": _mnist2_pgd}

REFERENCE = {
    "conv_pool": {
        "crown_out": [-2.233766329090216, 7.889389384836747],
        "alpha_margins": [0.0, 1.2064771201687678, -0.5973435950958469, -1.2681468576885024, 0.0, 4.734792410143845,
                          3.017402054186638, 2.4642125283224634],
        "alpha_intermediate": [-7.1992417444805845, -3.202440301102394, 0.5779328599756599, -7.392004233649949,
                               -3.29742440763576, 0.5736219068087823],
        "tighten_intermediate": [94.193165896487, 391.51193725961116, 8.0],
        "tier_alpha": [0.0, 1.2064771203420437, -0.6116155827074435, -1.2746151947837276, 0.0, 4.734792409697136,
                       3.0154925278385583, 2.4651934294123694, 3.0154925278385583, 94.11657404583077,
                       391.7273314758229],
    },
    "smooth": {
        "crown_out": [-1.9281498150063485, -0.38522032080648083],
        "alpha_margins": [0.0, 0.7538857637264849, 0.6968860442608512, 0.0, 1.6102294347949777, 1.2178064933413162],
        "alpha_intermediate": [1.186340352369104, -0.4398515092729373, 0.5357659681382445, 1.1639461573272138,
                               -0.46414793534010906, 0.5167574710414731],
        "tighten_intermediate": [-10.95971142676725, 25.31826008455905, 4.0],
        "tier_alpha": [0.0, 0.7195314220660165, 0.6859283235768658, 0.0, 1.650760170233923, 1.2348501151275897,
                       1.2348501151275897, -10.972552216989374, 25.414886819638376],
    },
    "mnist2_pgd": {
        "crown_out": [-35.29816977824316, -19.85834821933271],
        "alpha_margins": [0.0, -23.281780336402687, -0.11264544401690604, -5.480843555714041, 6.369839987630633,
                          -7.07851515338031, 0.2464302717228636, -6.279505823469816, 14.982943399918009,
                          6.985378260359219, 0.0, -20.488774862402067, 2.1328751366697176, -2.5582883306973154,
                          8.70136218656601, -4.891951222621101, 2.610629618351026, -4.021008965165085,
                          17.621576515341836, 9.105752419663952],
        "alpha_intermediate": [43.061074705369165, -46.53729686189423, -25.803929672931517, 43.054362166475045,
                               -46.56133196113387, -25.840136156711097],
        "tighten_intermediate": [-3043.35757667761, -2000.5546509584851, 198.0],
        "tier_alpha": [0.0, -23.28392768840889, -0.11444477428874388, -5.49049756121682, 6.3690977853883215,
                       -7.093350539591693, 0.2414964142219238, -6.283500575923462, 14.982943401082007,
                       6.982155998266103, 0.0, -20.4852110973766, 2.1436179155152595, -2.5542073417242226,
                       8.709338454393636, -4.86976051398192, 2.6129724624318658, -4.019121826378984,
                       17.63661057556201, 9.112684508897484, 9.112684508897484, -3043.3628348204306,
                       -2000.531812103377],
    },
}


def _numbers(net: Network, lo: np.ndarray, hi: np.ndarray) -> dict[str, list[float]]:
    """CROWN, α margins (MaxPool thresholds optimised too), α with the last layer re-bounded (float64 steps),
    tighten_intermediate and the bound tier's "alpha" (joint intermediate bounds where cheap), as plain numbers."""
    out: dict[str, list[float]] = {}
    cb = crown(net, lo, hi)
    out["crown_out"] = [float(cb.output_lower.sum()), float(cb.output_upper.sum())]
    m_lo, m_hi, _ = alpha_margin_bounds(net, lo, hi, 0, options=AlphaOptions(iterations=6, lr_tau=0.05))
    out["alpha_margins"] = [float(v) for v in np.concatenate([m_lo, m_hi])]
    coeffs = np.random.default_rng(8).normal(size=(3, net.num_classes))
    res = alpha_bounds(net, initial_domain(net, lo, hi, cb), coeffs,
                       options=AlphaOptions(iterations=4, optimize_intermediate=True, loop_dtype="float64"))
    out["alpha_intermediate"] = [float(v) for v in np.concatenate([res.lower.reshape(-1), res.crown_lower.reshape(-1)])]
    tb, rows = tighten_intermediate(net, cb, AlphaOptions(iterations=3))
    out["tighten_intermediate"] = [float(sum(v.sum() for v in tb.lower.values())),
                                   float(sum(v.sum() for v in tb.upper.values())), float(rows)]
    t = tighten(net, lo, hi, "alpha", target=0, k=2)
    assert t.margin_lower is not None and t.margin_upper is not None and t.kth_upper is not None
    out["tier_alpha"] = [float(v) for v in np.concatenate([t.margin_lower, t.margin_upper])] + [
        float(t.kth_upper), float(sum(v.sum() for v in t.bounds.lower.values())),
        float(sum(v.sum() for v in t.bounds.upper.values()))]
    return out


@pytest.mark.parametrize("name", list(NETS))
def test_bounds_are_the_ones_recorded_before_the_parameters_moved_into_the_ops(name: str) -> None:
    got = _numbers(*NETS[name]())
    for key, want in REFERENCE[name].items():
        # the same arithmetic in the same order: equal up to the last bits BLAS may order differently
        np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=1e-9, err_msg=f"{name}: {key}")


# --- one interval-propagation pass --------------------------------------------------------------------------------
@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 10_000), radius=st.floats(0.0, 0.5))
def test_the_interval_pass_contains_the_outputs_and_only_tightens_its_priors(kind: str, seed: int,
                                                                            radius: float) -> None:
    net = random_network(kind, seed)
    lo, hi = random_box(net, seed, radius)
    xs = sample_box(lo, hi, 24, seed)
    lows, ups = ibp(net, lo, hi)
    prior = crown(net, lo, hi)
    t_lo, t_hi = intersect_intervals(net, prior.lower, prior.upper)
    for t in net.tensors:
        assert np.all(t_lo[t] >= prior.lower[t]) and np.all(t_hi[t] <= prior.upper[t]), t
        assert np.all(t_lo[t] <= t_hi[t]), t
    out = net.output_name
    y = net.forward(xs).reshape(len(xs), -1)
    for b_lo, b_hi in ((lows[out], ups[out]), (t_lo[out], t_hi[out])):
        assert np.all(y >= b_lo.reshape(-1)) and np.all(y <= b_hi.reshape(-1))


def test_the_interval_pass_hands_each_node_to_refine_after_its_inputs() -> None:
    net, lo, hi = _conv_pool()
    seen: list[str] = []
    lows = {net.input_name: lo}
    ups = {net.input_name: hi}

    def refine(node: Node, n_lo: np.ndarray, n_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert all(t in lows for t in node.inputs)  # every input filled before the node is refined
        seen.append(node.output)
        return n_lo, n_lo  # collapse to the lower bound: the next images must read what refine returned

    propagate_intervals(net, lows, ups, refine=refine)
    assert seen == [n.output for n in net.nodes]
    first = net.nodes[0].output
    np.testing.assert_array_equal(ups[first], lows[first])


# --- a new op's parameter family, through the protocol -----------------------------------------------------------
TOY_SLOPES = ParamFamily("toy_slope", "lr_pool")  # stepped with the pool weights' rate, to tell the rates apart
PROJECTED: list[str] = []


@dataclass(eq=False)
class ToyRelu(Relu):
    """A ReLU whose lower-line slopes are a family of their own (no split multipliers)."""

    kind = "ToyRelu"
    splittable = False
    alpha_families = (TOY_SLOPES,)

    def alpha_step(self, ctx, node, a):
        from mlrobust.ops.coeffs import AlphaStep, rows

        r = ctx.relax[node.name]
        slope = ctx.params.family(TOY_SLOPES.name).get(node.name, r.default_alpha)
        lower = torch.where(r.active, 1.0, torch.where(r.unstable, slope, 0.0))
        pos, neg = a.clamp(min=0.0), a.clamp(max=0.0)
        return AlphaStep([(node.inputs[0], pos * lower + neg * r.up_slope)], rows(neg * r.up_icpt),
                         rows(neg.abs() * r.up_icpt.abs()))

    def alpha_init(self, ctx, node, d, s):
        r = ctx.relax[node.name]
        return {TOY_SLOPES.name: r.default_alpha.expand(d, s, *r.default_alpha.shape[2:]).clone()}

    def alpha_project(self, ctx, node, family, value):
        PROJECTED.append(family)
        value.clamp_(0.0, 1.0)


@pytest.fixture
def toy_registered():
    register(ToyRelu)
    PROJECTED.clear()
    yield
    unregister(ToyRelu.kind)


def _with_toy_relus(net: Network) -> Network:
    nodes = [Node(n.name, ToyRelu() if isinstance(n.op, Relu) else n.op, n.inputs, n.output, n.out_shape)
             for n in net.nodes]
    return Network(net.input_name, net.input_shape, nodes, net.output_name)


def test_a_new_ops_parameter_family_is_initialised_projected_and_stepped_through_the_protocol(toy_registered):
    assert OP_CLASSES["ToyRelu"] is ToyRelu
    net = random_mlp(11)
    toy = _with_toy_relus(net)
    lo, hi = random_box(net, 11, 0.6)
    coeffs = np.random.default_rng(0).normal(size=(3, net.num_classes))
    base = AlphaOptions(iterations=6, loop_dtype="float64")
    plain = alpha_bounds(net, initial_domain(net, lo, hi), coeffs, options=replace(base, lr_alpha=0.2, lr_pool=0.0))
    mine = alpha_bounds(toy, initial_domain(toy, lo, hi), coeffs, options=replace(base, lr_alpha=0.0, lr_pool=0.2))
    # the toy family is stepped at the rate it names (lr_pool), exactly as the ReLU slopes at theirs
    np.testing.assert_array_equal(mine.lower, plain.lower)
    assert np.any(mine.lower > mine.crown_lower + 1e-9), "the optimisation should have moved the bound"
    slopes = mine.state.family(TOY_SLOPES.name)
    assert set(slopes) == {n.name for n in toy.nodes if isinstance(n.op, ToyRelu)}
    assert not mine.state.family("alpha")
    assert TOY_SLOPES.name in PROJECTED and all(bool(((v >= 0) & (v <= 1)).all()) for v in slopes.values())
    # a warm start carries the family into the next call
    again = alpha_bounds(toy, initial_domain(toy, lo, hi), coeffs, options=replace(base, iterations=0),
                         warm=mine.state)
    np.testing.assert_allclose(again.lower, mine.lower, rtol=1e-12, atol=1e-12)
    # at rate 0 the family is not optimised: CROWN's bound, even from that warm start
    fixed = alpha_bounds(toy, initial_domain(toy, lo, hi), coeffs, options=replace(base, lr_alpha=0.5, lr_pool=0.0),
                         warm=mine.state)
    np.testing.assert_array_equal(fixed.lower, fixed.crown_lower)


def test_an_op_that_gives_a_family_it_does_not_declare_is_an_error(toy_registered, monkeypatch):
    net = _with_toy_relus(random_mlp(3))
    lo, hi = random_box(net, 3, 0.3)
    monkeypatch.setattr(ToyRelu, "alpha_init", lambda self, ctx, node, d, s: {"undeclared": torch.zeros(d, s)})
    with pytest.raises(TypeError, match="does not declare"):
        alpha_bounds(net, initial_domain(net, lo, hi), np.ones((1, net.num_classes)))


# --- the state rebuild of branch and bound ------------------------------------------------------------------------
def _state(seed: int, families: tuple[str, ...] = ("alpha", "pool", "beta", "tau", "mix", "toy_slope")) -> AlphaState:
    gen = torch.Generator().manual_seed(seed)
    st_ = AlphaState()
    for i, name in enumerate(families):
        st_.put(name, f"n{i}", torch.rand((1, 2, 3, i + 1), generator=gen, dtype=torch.float32))
    return st_


def test_stacking_states_keeps_every_family_the_pool_thresholds_included() -> None:
    a, b = _state(0), _state(1)
    both = AlphaState.stack([a, b])
    assert both is not None
    assert {name for name, values in both.families.items() if values} == {"alpha", "pool", "beta", "tau", "mix",
                                                                          "toy_slope"}
    for name, key, value in both.items():
        assert value.dtype == torch.float64 and value.shape[0] == 2
        np.testing.assert_array_equal(value[0].numpy(), a.families[name][key][0].double().numpy())
        np.testing.assert_array_equal(value[1].numpy(), b.families[name][key][0].double().numpy())
    # a node one state lacks, or holds with other rows, is left out (it starts from CROWN's values)
    c = _state(2, ("alpha", "tau"))
    c.families["tau"]["n1"] = torch.zeros((1, 5, 3, 2))
    part = AlphaState.stack([a, c])
    assert part is not None and set(part.family("alpha")) == {"n0"} and not part.family("tau")
    assert AlphaState.stack([a, None]) is None and AlphaState.stack([]) is None


def test_branch_and_bound_hands_the_optimised_pool_thresholds_to_the_children(monkeypatch) -> None:
    net, lo, hi = _conv_pool()
    engine = AlphaEngine(net, AlphaOptions(iterations=3, lr_tau=0.1))
    root = engine.root(lo, hi)
    coeffs = np.random.default_rng(1).normal(size=(2, net.num_classes))
    (first,) = engine.bound([root], coeffs)
    parent = first.domain
    assert isinstance(parent.warm, AlphaState) and parent.warm.family("tau"), "optimised thresholds are kept"
    seen: list[AlphaState | None] = []
    real = bab_bounds.alpha_bounds

    def spy(*args, **kwargs):
        seen.append(kwargs.get("warm"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bab_bounds, "alpha_bounds", spy)
    relu = engine.relu_nodes[0]
    tensor = relu.inputs[0]
    index = int(np.flatnonzero((parent.pre_lower[tensor] < 0) & (parent.pre_upper[tensor] > 0))[0])
    kids = [parent.child(relu.name, tensor, index, sign) for sign in (1, -1)]
    engine.bound(kids, coeffs)
    (warm,) = seen
    assert warm is not None
    for key, value in parent.warm.family("tau").items():
        assert warm.family("tau")[key].shape[0] == 2
        np.testing.assert_allclose(warm.family("tau")[key][0].numpy(), value[0].double().numpy())
