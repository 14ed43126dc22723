"""Branch and bound: the spec's certificate logic, sound sub-domain bounds, agreement with the exact MILP and
sampling on tiny nets, splitting that improves the bound, input bisection on small inputs, the cascade tier and
``--verifier bab`` for VNN-LIB."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from ir_factories import random_box, random_cnn, random_mlp, sample_box
from onnx_factories import export_legacy

import mlrobust.cli.vnnlib_cmd  # noqa: F401  (registers the command)
from mlrobust.bounds import crown
from mlrobust.cli import app
from mlrobust.errors import InputError
from mlrobust.ir.ops import Relu
from mlrobust.milp.disjunction import Clause
from mlrobust.verify.bab import BabOptions, BabVerifier, _open_rows, clause_spec, topk_spec
from mlrobust.verify.bab_bounds import AlphaEngine, Domain, SplitCrown
from mlrobust.verify.bound_check import BoundCheck
from mlrobust.verify.cascade import Cascade
from mlrobust.verify.margin import topk_margin
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust
from mlrobust.verify.vnnlib import ClauseProperty, check_vnnlib, parse_vnnlib

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _net(seed: int):
    return random_mlp(seed) if seed % 2 else random_cnn(seed)


def _query(seed: int, radius: float):
    net = _net(seed)
    lo, hi = random_box(net, seed, radius)
    box = Box(lo, hi)
    target = int(np.argmax(net.logits(box.center[None])[0]))
    return net, box, target


# --- the spec: certificates are exact at a point -----------------------------------------------------------------
@given(st.integers(3, 7), st.integers(1, 3), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_topk_spec_value_at_a_point_has_the_sign_of_the_topk_margin(n, k, seed):
    """With exact row values (a single point), the spec is proven exactly when the target is in the top-k."""
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(20, n))
    target = int(rng.integers(n))
    spec = topk_spec(n, target, k)
    g = y @ spec.rows.T + spec.consts
    value = spec.value(g)
    margin = topk_margin(y, target, k)
    assert np.array_equal(value < 0, margin < 0)


def test_pair_combination_proves_what_no_single_margin_does():
    """k = 2 with two candidate classes whose margins are never both >= 0: the combination certifies it."""
    spec = topk_spec(4, 0, 2, margin_upper=np.array([0.0, 1.0, 1.0, -1.0]))
    assert spec.rows.shape[0] == 2 + 3  # two candidate margins and three weights of their pair
    ub = np.array([1.0, 1.0, -0.5, -0.2, -0.5])  # singles unproven, 0.25/0.5/0.75 combinations proven
    assert spec.value(ub[None])[0] < -ROBUST_TOLERANCE
    assert topk_spec(4, 0, 2, margin_upper=np.array([0.0, 1.0, 1.0, -1.0]), pair_weights=()).value(ub[None,
                                                                                                      :2])[0] > 0


@given(st.integers(3, 7), st.integers(1, 3), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_mixed_topk_spec_is_sound_at_any_weights_and_exact_at_the_best(n, k, seed):
    """One row per candidate k-subset mixing its margins: at any weights a proof means the target is in the top-k;
    with all weight on each subset's smallest margin the spec is exact."""
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(20, n))
    target = int(rng.integers(n))
    spec = topk_spec(n, target, k, mixed=True)
    assert spec.mix is not None and spec.rows.shape[0] == spec.mix.groups.shape[0]
    margin = topk_margin(y, target, k)
    margins = y @ spec.mix.base.T  # (points, R)
    w = rng.dirichlet(np.ones(spec.mix.base.shape[0]), size=spec.rows.shape[0]) * spec.mix.groups
    w /= w.sum(axis=1, keepdims=True)
    proven = spec.value(margins @ w.T) < -ROBUST_TOLERANCE
    assert not np.any(proven & (margin >= 0))
    best = np.where(spec.mix.groups[None], margins[:, None, :], np.inf).min(axis=2)  # (points, S): subset minimum
    assert np.array_equal(spec.value(best) < 0, margin < 0)


@given(st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_clause_spec_value_at_a_point_matches_the_vnnlib_margin(seed):
    rng = np.random.default_rng(seed)
    n = 4
    sizes = rng.integers(1, 4, size=int(rng.integers(1, 4)))
    clauses = [Clause(rng.normal(size=(int(m), n)), rng.normal(size=int(m))) for m in sizes]
    prop = ClauseProperty(tuple(clauses))
    spec = clause_spec(clauses, prop)
    y = rng.normal(size=(30, n))
    value = spec.value(y @ spec.rows.T + spec.consts)
    assert np.array_equal(value < 0, prop.margin(y) < 0)


def test_options_are_checked():
    with pytest.raises(InputError):
        BabOptions(branching="nope")
    with pytest.raises(InputError):
        BabOptions(engine="nope")


# --- sound sub-domain bounds --------------------------------------------------------------------------------------
def _random_split_domain(net, engine, lo, hi, rng):
    """A root domain with a few random ReLU splits, and sampled inputs that satisfy them."""
    b = crown(net, lo, hi)
    dom = engine.root(lo, hi, b.lower, b.upper)
    for n in engine.relu_nodes:
        t = n.inputs[0]
        free = np.flatnonzero((dom.pre_lower[t] < 0).reshape(-1) & (dom.pre_upper[t] > 0).reshape(-1))
        for i in rng.choice(free, size=min(2, free.size), replace=False):
            dom = dom.child(n.name, t, int(i), int(rng.choice([-1, 1])))
    xs = sample_box(lo, hi, 400, int(rng.integers(1 << 30)))
    values = net.forward(xs, return_all=True)
    keep = np.ones(xs.shape[0], dtype=bool)
    for n in engine.relu_nodes:
        z = values[n.inputs[0]].reshape(xs.shape[0], -1)
        s = dom.splits[n.name].reshape(-1)
        keep &= np.all(np.where(s > 0, z >= 0, True) & np.where(s < 0, z <= 0, True), axis=1)
    return dom, xs[keep], {t: v[keep] for t, v in values.items()}


@pytest.mark.parametrize("engine_kind", ["crown", "alpha"])
@given(seed=st.integers(0, 400))
@FAST
def test_split_domain_bounds_contain_every_point_of_the_domain(engine_kind, seed):
    net, box, _ = _query(seed, 0.4)
    rng = np.random.default_rng(seed)
    engine = SplitCrown(net) if engine_kind == "crown" else AlphaEngine(net)
    dom, xs, values = _random_split_domain(net, engine, box.lower, box.upper, rng)
    coeffs = rng.normal(size=(3, net.num_classes))
    res = engine.bound([dom], coeffs)[0]
    if not res.feasible:
        assert xs.shape[0] == 0  # an empty domain: no sampled input satisfies its splits
        return
    if xs.shape[0] == 0:
        return
    out = values[net.output_name].reshape(xs.shape[0], -1)
    assert np.all(out @ coeffs.T >= res.lower[None] - 1e-9)
    for t in engine.pre_tensors:
        v = values[t].reshape(xs.shape[0], -1)
        assert np.all(v >= res.domain.pre_lower[t].reshape(-1)) and np.all(v <= res.domain.pre_upper[t].reshape(-1))


def test_split_constraints_are_enforced_in_the_bounds():
    """A split neuron's pre-activation bounds lie on its side; both children bound the parent's points."""
    net, box, _ = _query(12, 0.4)
    engine = SplitCrown(net)
    b = crown(net, box.lower, box.upper)
    root = engine.root(box.lower, box.upper, b.lower, b.upper)
    node = next(n for n in net.nodes if isinstance(n.op, Relu))
    t = node.inputs[0]
    i = int(np.flatnonzero((root.pre_lower[t] < 0).reshape(-1) & (root.pre_upper[t] > 0).reshape(-1))[0])
    on, off = engine.bound([root.child(node.name, t, i, +1), root.child(node.name, t, i, -1)], np.eye(net.num_classes))
    assert on.domain.pre_lower[t].reshape(-1)[i] >= 0 and off.domain.pre_upper[t].reshape(-1)[i] <= 0


@given(seed=st.integers(0, 400))
@FAST
def test_a_subset_of_rows_and_batched_split_scores_are_sound_and_keep_every_rows_warm_start(seed):
    """Bounding only some rows: those rows' bounds hold at every point of the domain, the others are -inf (the
    parent's stand), and the children's warm starts still hold every row. Split scores from the parent's α/β
    bound every point of each child."""
    net, box, _ = _query(seed, 0.4)
    rng = np.random.default_rng(seed)
    engine = AlphaEngine(net)
    dom, xs, values = _random_split_domain(net, engine, box.lower, box.upper, rng)
    coeffs = rng.normal(size=(4, net.num_classes))
    parent = engine.bound([dom], coeffs)[0]
    if not parent.feasible:
        return
    kid = parent.domain.child()
    res = engine.bound([kid], coeffs, rows=np.array([1, 3]))[0]
    assert np.all(np.isneginf(res.lower[[0, 2]])) and np.all(np.isfinite(res.lower[[1, 3]]))
    assert res.rows is not None and list(res.rows) == [1, 3]
    assert res.domain.warm is not None and res.domain.warm.rows == 4
    if xs.shape[0] == 0:
        return
    out = values[net.output_name].reshape(xs.shape[0], -1)
    assert np.all(out @ coeffs[[1, 3]].T >= res.lower[[1, 3]] - 1e-9)
    # batched FSB scores: each candidate's two children bound the points on their side of the split
    d = parent.domain
    d.binding = 0
    cands = []
    for n in engine.relu_nodes:
        t = n.inputs[0]
        free = np.flatnonzero((d.pre_lower[t] < 0).reshape(-1) & (d.pre_upper[t] > 0).reshape(-1)
                              & (d.splits[n.name].reshape(-1) == 0))
        cands += [(n.name, t, int(i)) for i in free[:2]]
    if not cands:
        return
    scores = engine.split_scores([d], coeffs[:1], [cands])[0]
    assert scores.shape == (len(cands), 2)
    for (node, t, i), (on, off) in zip(cands, scores):
        z = values[t].reshape(xs.shape[0], -1)[:, i]
        v = out @ coeffs[0]
        assert np.all(v[z >= 0] >= on - 1e-9) and np.all(v[z <= 0] >= off - 1e-9)


def test_open_rows_are_the_certificates_of_the_clauses_some_domain_has_not_refuted():
    spec = topk_spec(5, 0, 2, margin_upper=np.array([0.0, 1.0, 1.0, 1.0, -1.0]), mixed=True)  # pairs of 1, 2, 3
    assert spec.rows.shape[0] == 3
    d1, d2 = (Domain(np.zeros(2), np.ones(2), {}, {}, {}) for _ in range(2))
    d1.row_upper = np.array([-1.0, 0.5, -1.0])
    d2.row_upper = np.array([-1.0, -1.0, 0.2])
    assert list(_open_rows(spec, [d1, d2])) == [1, 2]
    d2.row_upper = np.array([0.3, -1.0, 0.2])
    assert _open_rows(spec, [d1, d2]) is None  # every row still open somewhere
    d1.row_upper = d2.row_upper = np.full(3, -1.0)
    assert _open_rows(spec, [d1, d2]).size == 0


# --- verdicts against the exact MILP and sampling ----------------------------------------------------------------
def _agrees_with_the_milp_and_sampling(seed: int, radius: float) -> None:
    net, box, target = _query(seed, radius)
    k = 2 if net.num_classes > 2 else 1
    # fixed pair combinations on odd seeds, optimised mixtures (the default) on even ones
    v = BabVerifier(root_attack=False, mixed_rows=seed % 2 == 0).verify(net, box, target, k, time_limit=4)
    xs = sample_box(box.lower, box.upper, 300, seed)
    sampled = topk_margin(net.logits(xs), target, k)
    if isinstance(v, Robust):
        assert v.bound < -ROBUST_TOLERANCE
        assert np.all(sampled <= v.bound)  # the reported bound holds at every sampled point
        assert np.all(sampled < 0)  # no proof is broken by sampling
        m = MilpVerifier("highs").verify(net, box, target, k, time_limit=20)
        assert not isinstance(m, NotRobust)  # nor by the exact MILP
    elif isinstance(v, NotRobust):
        assert box.contains(v.counterexample)
        assert topk_margin(net.logits(v.counterexample[None]), target, k)[0] >= 0  # re-run on the network
        m = MilpVerifier("highs").verify(net, box, target, k, time_limit=20)
        assert not isinstance(m, Robust)


@given(seed=st.integers(0, 300), radius=st.sampled_from([0.1, 0.3, 0.6]))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bab_agrees_with_the_milp_and_sampling(seed, radius):
    _agrees_with_the_milp_and_sampling(seed, radius)


@pytest.mark.slow
@given(seed=st.integers(0, 3000), radius=st.sampled_from([0.05, 0.1, 0.2, 0.3, 0.6, 1.0]))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bab_agrees_with_the_milp_and_sampling_many(seed, radius):
    _agrees_with_the_milp_and_sampling(seed, radius)


def test_splitting_improves_the_bound_until_proven():
    """A box the root bound cannot prove (CROWN and α) is proven after ReLU splits; the MILP agrees."""
    net, box, target = _query(12, 0.4)
    assert not BoundCheck().verify(net, box, target, 2).is_robust
    v = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=30)
    s = v.stats["bab"]
    assert isinstance(v, Robust) and s["mode"] == "relu" and s["engine"] == "alpha"
    assert s["root_bound"] > 0 > -ROBUST_TOLERANCE > s["final_bound"]
    assert s["domains"] > 1 and s["max_depth"] >= 1
    assert not isinstance(MilpVerifier("highs").verify(net, box, target, 2, time_limit=30), NotRobust)
    # plain CROWN under splits (no β) improves the worst bound too, if more slowly
    net, box, target = _query(38, 0.3)
    u = BabVerifier(root_attack=False, engine="crown", root_tier="crown", max_domains=300).verify(net, box, target, 2)
    assert u.stats["bab"]["final_bound"] < u.stats["bab"]["root_bound"] - 0.05


def test_the_compact_and_dense_parameter_layouts_prove_the_same_box():
    """The box the root cannot prove, with the α/β parameters compact over the root's unstable neurons (the
    default) and dense over every neuron: both proven, and an open domain costs the store less when compact."""
    net, box, target = _query(12, 0.4)
    compact = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=30)
    dense = BabVerifier(root_attack=False, compact_params=False).verify(net, box, target, 2, time_limit=30)
    assert isinstance(compact, Robust) and isinstance(dense, Robust)
    assert compact.stats["bab"]["domains"] > 1 and dense.stats["bab"]["domains"] > 1
    assert compact.stats["bab"]["store_bytes_per_domain"] < dense.stats["bab"]["store_bytes_per_domain"]


def test_low_dimensional_inputs_are_split_on_the_input():
    """ACAS-Xu-like: 7 inputs, a box CROWN cannot prove, proven by bisecting the input box."""
    net, box, target = _query(15, 0.4)
    assert int(np.prod(net.sample_shape)) <= 16
    assert not BoundCheck().verify(net, box, target, 2).is_robust
    v = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=30)
    assert isinstance(v, Robust) and v.stats["bab"]["mode"] == "input" and v.stats["bab"]["domains"] > 1
    xs = sample_box(box.lower, box.upper, 2000, 1)
    assert np.all(topk_margin(net.logits(xs), target, 2) < 0)


def test_counterexamples_are_confirmed_and_time_limits_give_unknown():
    net, box, target = _query(1, 3.0)  # a wide box: the attack breaks it
    v = BabVerifier().verify(net, box, target, 2, time_limit=10)
    assert isinstance(v, NotRobust) and v.tier == "bab"
    assert topk_margin(net.logits(v.counterexample[None]), target, 2)[0] >= 0
    net, box, target = _query(12, 0.4)
    u = BabVerifier(root_attack=False, engine="crown", max_domains=3).verify(net, box, target, 2)
    assert not u.is_robust and not u.is_not_robust and "domain limit" in u.reason
    assert u.stats["bab"]["final_bound"] > -ROBUST_TOLERANCE


def test_cascade_bab_tier_decides_before_the_milp():
    net, box, target = _query(12, 0.4)
    cascade = Cascade(use_bab=True)
    # no time limit: the branch and bound's stall test compares progress with elapsed time, so on a loaded machine
    # a time-limited call may hand over to the MILP
    v = cascade.verify(net, box, target, 2, time_limit=None)
    assert isinstance(v, Robust) and v.tier == "bab" and "bab" in v.seconds
    assert cascade.calls["bab"] == 1 and cascade.calls["milp"] == 0


# --- VNN-LIB ------------------------------------------------------------------------------------------------------
def _robustness_property(x0: np.ndarray, eps: float, target: int, num_classes: int) -> str:
    lines = [*(f"(declare-const X_{i} Real)" for i in range(x0.size)),
             *(f"(declare-const Y_{j} Real)" for j in range(num_classes))]
    for i, v in enumerate(x0.reshape(-1)):
        lines += [f"(assert (>= X_{i} {float(v - eps)!r}))", f"(assert (<= X_{i} {float(v + eps)!r}))"]
    others = " ".join(f"(and (>= Y_{c} Y_{target}))" for c in range(num_classes) if c != target)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"


def test_vnnlib_cli_with_bab(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3))
    path = tmp_path / "mlp.onnx"
    onnx.save(export_legacy(module, (4,)), str(path))
    from mlrobust import load_onnx

    net = load_onnx(path)
    x0 = np.array([0.2, -0.4, 0.7, 0.1])
    target = int(np.argmax(net.logits(x0[None])[0]))
    answers = {}
    for eps in (0.5, 3.0):  # 0.5: neither the attack nor the CROWN bounds decide it
        prop = tmp_path / f"p{eps}.vnnlib"
        prop.write_text(_robustness_property(x0, eps, target, 3))
        for verifier in ("bab", "cascade-bab", "cascade"):
            result = CliRunner().invoke(app, ["vnnlib", str(path), str(prop), "--verifier", verifier,
                                              "--timeout", "30"])
            assert result.exit_code == 0, result.output
            answers[eps, verifier] = result.output.splitlines()[0]
    assert {answers[0.5, v] for v in ("bab", "cascade-bab", "cascade")} == {"unsat"}
    direct = check_vnnlib(net, parse_vnnlib(_robustness_property(x0, 0.5, target, 3)), verifier="bab", timeout=30)
    assert direct.status == "unsat" and direct.tier == "bab" and direct.stats["bab"]["domains"] > 1
    assert {answers[3.0, v] for v in ("bab", "cascade-bab", "cascade")} == {"sat"}
    bad = CliRunner().invoke(app, ["vnnlib", str(path), str(prop), "--verifier", "nope"])
    assert isinstance(bad.exception, InputError)


def test_open_domains_are_handed_to_the_milp():
    """Plain-CROWN BaB stopped by its domain limit; the MILP on each open domain's own bounds finishes the proof."""
    net, box, target = _query(32, 0.1)
    alone = BabVerifier(engine="crown", max_domains=30, root_attack=False).verify(net, box, target, 2)
    assert not alone.is_robust
    v = BabVerifier(engine="crown", max_domains=30, milp_max_domains=64, root_attack=False,
                    milp=MilpVerifier("highs")).verify(net, box, target, 2, time_limit=60)
    assert isinstance(v, Robust) and v.stats["bab"]["milp_domains"] > 1 and v.bound < -ROBUST_TOLERANCE
    xs = sample_box(box.lower, box.upper, 2000, 3)
    assert np.all(topk_margin(net.logits(xs), target, 2) < 0)


def test_a_stalled_branch_and_bound_hands_over_and_an_improving_one_does_not():
    """stall_progress is the share of the root's gap the worst bound must close once stall_share of the time has
    passed: demanding all of it at once stalls at the first round, demanding none never does (the worst open bound
    never rises above the root's)."""
    net, box, target = _query(12, 0.4)
    stalled = BabVerifier(root_attack=False, stall_share=0.0, stall_progress=1.0).verify(net, box, target, 2,
                                                                                        time_limit=30)
    assert not stalled.is_robust and not stalled.is_not_robust
    assert stalled.reason.startswith("stalled") and stalled.stats["bab"]["stalled"]
    assert stalled.stats["bab"]["domains"] == 1  # only the root was bounded
    patient = BabVerifier(root_attack=False, stall_share=0.0, stall_progress=0.0).verify(net, box, target, 2,
                                                                                        time_limit=30)
    assert isinstance(patient, Robust)


# --- deadlines -----------------------------------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_a_slow_bound_step_does_not_carry_the_root_past_the_deadline(monkeypatch):
    """Every CROWN back-substitution of a domain refresh made to take 1 s: the root's refresh stops refining at the
    deadline (interval bounds and priors, still sound), so a 0.5 s call ends after at most one such step. Without
    the deadline the root refreshed every refined layer, twice."""
    from mlrobust.verify import bab_bounds

    net, box, target = _query(12, 0.4)
    calls = []
    real = bab_bounds._Recorder.neuron_bounds

    def slow(self, tensor, idx):
        calls.append(tensor)
        time.sleep(1.0)
        return real(self, tensor, idx)

    monkeypatch.setattr(bab_bounds._Recorder, "neuron_bounds", slow)
    limit = 0.5
    start = time.perf_counter()
    v = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=limit)
    elapsed = time.perf_counter() - start
    assert not v.is_robust and not v.is_not_robust and "time limit" in v.reason
    # at most the one step started before the deadline, none after (on a loaded machine the root's earlier work
    # may use up the 0.5 s before the first step)
    assert len(calls) <= 1
    assert elapsed < limit + 1.0 + 2.0  # the one slow step plus generous slack for a loaded machine


def test_a_tiny_budget_on_a_shipped_model_gives_unknown_within_the_budget():
    """mnist2_pgd, a whole-image box the root cannot prove: 0.25 s gives Unknown for the time limit (before the
    root's refresh and α runs took the deadline, the call took ~2.4 s). Where the call stops (at the root, or after
    a round when the root's α steps end early to leave their final evaluation time) and how far past its limit it
    ends depend on the machine's speed: measured in benchmarks/results/bab_deadline.md, counted in passes of work
    by tests/test_bab_deadline.py, not asserted here."""
    from PIL import Image

    from mlrobust.ir.onnx_import import load_onnx

    net = load_onnx(EXAMPLES / "models" / "mnist2_pgd.onnx")
    x = np.asarray(Image.open(EXAMPLES / "images" / "ex00.png"), dtype=np.float64)[None] / 255.0
    target = int(np.argmax(net.logits(x[None])[0]))
    box = Box(np.clip(x - 0.05, 0, 1), np.clip(x + 0.05, 0, 1))
    v = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=0.25)
    assert not v.is_robust and not v.is_not_robust and v.reason.startswith("time limit")
    assert v.stats["bab"]["final_bound"] > -ROBUST_TOLERANCE


def test_the_root_starts_from_the_bound_tier_named_in_the_options():
    """Without bounds from the caller the root starts from α-CROWN (the bound tier), which decides this query before
    any domain is bounded; from plain CROWN (k-th margin bound > 0 here) the root's own α/β bound is needed."""
    from mlrobust.bounds.tier import tighten

    net, box, target = _query(38, 0.3)
    crown_kth = -np.sort(-np.delete(tighten(net, box.lower, box.upper, "crown", target=target).margin_upper,
                                    target))[1]
    assert crown_kth > 0
    crown_root = BabVerifier(root_attack=False, root_tier="crown").verify(net, box, target, 2, time_limit=30)
    alpha_root = BabVerifier(root_attack=False).verify(net, box, target, 2, time_limit=30)
    assert isinstance(crown_root, Robust) and crown_root.stats["bab"]["domains"] >= 1
    assert isinstance(alpha_root, Robust) and alpha_root.stats["bab"]["domains"] == 0
    assert alpha_root.stats["bab"]["root_tier"] == "alpha" and alpha_root.bound < -ROBUST_TOLERANCE
    with pytest.raises(InputError, match="root tier"):
        BabVerifier(root_tier="lp")
