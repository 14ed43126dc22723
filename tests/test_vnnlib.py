"""VNN-LIB: parsing (boxes, disjunctions, errors), deciding with the MILP machinery, and ``mlrobust vnnlib``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from onnx_factories import export_legacy  # noqa: E402

import mlrobust.cli.vnnlib_cmd  # noqa: E402,F401  (registers the command)
from mlrobust import load_onnx  # noqa: E402
from mlrobust.cli import app, main, run  # noqa: E402
from mlrobust.errors import InputError  # noqa: E402
from mlrobust.verify.milp_verifier import MilpVerifier  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import NotRobust, Robust  # noqa: E402
from mlrobust.verify.vnnlib import VnnlibResult, check_vnnlib, parse_vnnlib  # noqa: E402


def robustness_property(x0: np.ndarray, eps: float, target: int, num_classes: int) -> str:
    """VNN-COMP style local robustness: the unsafe region is "some other class scores at least the target"."""
    lines = ["; local robustness around a point", *(f"(declare-const X_{i} Real)" for i in range(x0.size)),
             *(f"(declare-const Y_{j} Real)" for j in range(num_classes))]
    for i, v in enumerate(x0.reshape(-1)):
        lines += [f"(assert (>= X_{i} {float(v - eps)!r}))", f"(assert (<= X_{i} {float(v + eps)!r}))"]
    others = " ".join(f"(and (>= Y_{c} Y_{target}))" for c in range(num_classes) if c != target)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3))
    path = tmp_path_factory.mktemp("vnn") / "mlp.onnx"
    onnx.save(export_legacy(module, (4,)), str(path))
    return path


# --- parsing ------------------------------------------------------------------------------------------------------
def test_parse_box_and_disjunction():
    prop = parse_vnnlib("""
        (declare-const X_0 Real) (declare-const X_1 Real)
        (declare-const Y_0 Real) (declare-const Y_1 Real) (declare-const Y_2 Real)
        (assert (<= X_0 0.5)) (assert (>= X_0 -0.5))   ; a comment
        (assert (<= X_1 1e-1)) (assert (>= X_1 (- 0.1)))
        (assert (or (and (<= Y_0 Y_1) (>= (+ Y_2 (* 2 Y_0)) 3)) (and (<= Y_0 (- Y_2 1.5)))))
    """)
    assert prop.num_inputs == 2 and prop.num_outputs == 3 and len(prop.regions) == 1
    region = prop.regions[0]
    assert np.allclose(region.lower, [-0.5, -0.1]) and np.allclose(region.upper, [0.5, 0.1])
    c1, c2 = region.clauses
    # clause 1: Y0 - Y1 <= 0 and -(Y2 + 2 Y0) <= -3 ; clause 2: Y0 - Y2 <= -1.5
    assert np.allclose(c1.G, [[1, -1, 0], [-2, 0, -1]]) and np.allclose(c1.h, [0, -3])
    assert np.allclose(c2.G, [[1, 0, -1]]) and np.allclose(c2.h, [-1.5])


def test_parse_disjunction_of_input_boxes():
    prop = parse_vnnlib("""
        (declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
        (assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1))
                    (and (>= X_0 2) (<= X_0 3) (<= Y_0 Y_1))
                    (and (>= X_0 0) (<= X_0 1) (>= Y_0 5))))
    """)
    assert len(prop.regions) == 2
    first = next(r for r in prop.regions if r.lower[0] == 0)
    assert len(first.clauses) == 2


@pytest.mark.parametrize("text,match", [
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= (+ X_0 Y_0) 1)) (assert (>= X_0 0))",
     "mixes inputs"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= (* X_0 X_0) 1))", "linear"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1)) (assert (<= Y_0 0))", "lack"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= Z_3 1))", "declared"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1)", "unbalanced"),
    ("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (=> X_0 1))", "unsupported formula"),
    ("(declare-const X_0 Real) (declare-const X_2 Real) (declare-const Y_0 Real)", "without gaps"),
    ("(declare-const A Real)", "named X_i"),
])
def test_parse_errors_are_clear(text, match):
    with pytest.raises(InputError, match=match):
        parse_vnnlib(text)


# --- deciding -----------------------------------------------------------------------------------------------------
def test_vnnlib_decisions_match_the_top1_verifier(model_path):
    """The disjunctive VNN-LIB encoding and the top-k encoding (k = 1) must agree on robustness properties."""
    net = load_onnx(model_path)
    rng = np.random.default_rng(1)
    seen, tiers = set(), set()
    for trial in range(12):
        x0 = rng.uniform(-1, 1, 4)
        target = int(np.argmax(net.logits(x0[None])[0]))
        eps = float(rng.choice([0.01, 0.1, 0.3, 0.6]))
        res = check_vnnlib(net, robustness_property(x0, eps, target, 3), timeout=60)
        # "some other class >= target" is the complement of strict top-1 membership, as the top-k margin says
        ref = MilpVerifier("highs").verify(net, Box(x0 - eps, x0 + eps), target, 1)
        if isinstance(ref, Robust):
            assert res.status == "unsat"
        elif isinstance(ref, NotRobust):
            assert res.status == "sat"
        seen.add(res.status)
        tiers.add(res.tier)
        if res.status == "sat":
            assert np.all(res.x >= x0 - eps) and np.all(res.x <= x0 + eps)
            y32 = net.logits(res.x[None].astype(np.float32).astype(np.float64))[0]
            assert np.allclose(res.y, y32, atol=1e-5)
            assert max(res.y[c] - res.y[target] for c in range(3) if c != target) >= 0
    assert seen == {"sat", "unsat"}
    assert "milp" in tiers  # some properties needed the disjunctive MILP


def test_vnncomp_output_format():
    res = VnnlibResult("sat", x=np.array([0.5, -0.25]), y=np.array([1.0, 2.0, 3.5]))
    assert res.to_vnncomp() == "sat\n((X_0 0.5)\n (X_1 -0.25)\n (Y_0 1.0)\n (Y_1 2.0)\n (Y_2 3.5))\n"
    assert VnnlibResult("unsat").to_vnncomp() == "unsat\n"
    assert VnnlibResult("timeout").to_vnncomp() == "timeout\n"


def _counterexample(output: str) -> dict[str, float]:
    return {name: float(v) for name, v in re.findall(r"\((X_\d+|Y_\d+) ([^()\s]+)\)", output)}


def test_cli_prints_sat_with_a_counterexample_and_unsat(model_path, tmp_path):
    net = load_onnx(model_path)
    x0 = np.array([0.2, -0.4, 0.7, 0.1])
    target = int(np.argmax(net.logits(x0[None])[0]))
    wide = tmp_path / "wide.vnnlib"
    wide.write_text(robustness_property(x0, 3.0, target, 3))
    out_file = tmp_path / "result.txt"
    result = CliRunner().invoke(app, ["vnnlib", str(model_path), str(wide), "--timeout", "60",
                                      "--out", str(out_file)])
    assert result.exit_code == 0, result.output
    assert run(["vnnlib", str(model_path), str(wide), "--timeout", "60"]) == 10  # sat: a counterexample
    lines = result.output.splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    values = _counterexample(result.output)
    x = np.array([values[f"X_{i}"] for i in range(4)])
    y = np.array([values[f"Y_{j}"] for j in range(3)])
    assert np.all(np.abs(x - x0) <= 3.0)
    assert np.allclose(net.logits(x[None])[0], y, atol=1e-5)
    assert out_file.read_text() == result.output
    tight = tmp_path / "tight.vnnlib"
    tight.write_text(robustness_property(x0, 1e-4, target, 3))
    result = CliRunner().invoke(app, ["vnnlib", str(model_path), str(tight), "--solver", "highs"])
    assert result.exit_code == 0 and result.output == "unsat\n"
    assert run(["vnnlib", str(model_path), str(tight)]) == 0  # unsat: the property holds


def test_cli_timeout(model_path, tmp_path):
    """With no time at all, a property neither the attack nor the bounds settle ends as timeout."""
    net = load_onnx(model_path)
    rng = np.random.default_rng(4)
    for _ in range(40):
        x0 = rng.uniform(-1, 1, 4)
        target = int(np.argmax(net.logits(x0[None])[0]))
        eps = 0.4
        ref = MilpVerifier("highs").verify(net, Box(x0 - eps, x0 + eps), target, 1, mode="optimize")
        if isinstance(ref, Robust) and ref.stats.get("objective") is not None:
            break
    else:
        pytest.skip("no property that needs the MILP")
    path = tmp_path / "p.vnnlib"
    path.write_text(robustness_property(x0, eps, target, 3))
    result = CliRunner().invoke(app, ["vnnlib", str(model_path), str(path), "--timeout", "1e-9"])
    assert result.exit_code == 0 and result.output == "timeout\n"
    assert run(["vnnlib", str(model_path), str(path), "--timeout", "1e-9"]) == 20  # timeout


def test_cli_errors_exit_2(model_path, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (<= X_0 1))")
    monkeypatch.setattr(sys, "argv", ["mlrobust", "vnnlib", str(model_path), str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "error:" in err and "Traceback" not in err
    assert "inputs" in err  # 1 input declared, the model has 4 ... or a missing bound: both name the inputs


# --- the order of the tiers and the batched clause bounds ---------------------------------------------------------
def test_crown_clause_bounds_in_one_pass_equal_one_pass_per_clause(model_path):
    """Every clause's rows bounded in one backward pass give the bounds of one linear_bounds call per clause."""
    from mlrobust.bounds import linear_bounds
    from mlrobust.bounds.tier import base_bounds
    from mlrobust.verify.vnnlib import _crown_clause_bounds

    net = load_onnx(model_path)
    x0 = np.array([0.2, -0.4, 0.1, 0.5])
    text = robustness_property(x0, 0.2, 0, 3).replace(
        "(assert (or", "(assert (or (and (>= Y_1 Y_0) (>= Y_2 Y_0))")  # a two-row clause as well
    region = parse_vnnlib(text).regions[0]
    box = Box(region.lower, region.upper)
    bounds, _ = base_bounds(net, box.lower, box.upper, "crown")
    lows, highs = _crown_clause_bounds(net, box, list(region.clauses), bounds)
    assert [lo.size for lo in lows] == [cl.h.size for cl in region.clauses] == [2, 1, 1]
    for cl, lo, hi in zip(region.clauses, lows, highs):
        c_lo, c_hi = linear_bounds(net, box.lower, box.upper, -np.asarray(cl.G), bounds=bounds)
        np.testing.assert_allclose(lo, c_lo + cl.h, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(hi, c_hi + cl.h, rtol=1e-9, atol=1e-9)
        assert np.all(lo <= hi)


def test_a_short_attack_runs_before_the_bounds_and_the_rest_only_when_they_leave_the_region_open(model_path,
                                                                                                   monkeypatch):
    """Proven by bounds: only the short attack ran; decided later (MILP): the whole attack ran after the bounds."""
    import mlrobust.verify.vnnlib as vnnlib

    net = load_onnx(model_path)
    steps_run: list[int] = []
    real = vnnlib.run_attack

    def recording(network, box, prop, attack=None, time_limit=None):
        steps_run.append(attack.steps)
        return real(network, box, prop, attack, time_limit=time_limit)

    monkeypatch.setattr(vnnlib, "run_attack", recording)
    rng = np.random.default_rng(1)
    by_tier: dict[str, list[list[int]]] = {}
    for _ in range(12):
        x0 = rng.uniform(-1, 1, 4)
        target = int(np.argmax(net.logits(x0[None])[0]))
        steps_run.clear()
        res = check_vnnlib(net, robustness_property(x0, float(rng.choice([0.01, 0.1, 0.3, 0.6])), target, 3),
                           timeout=60)
        by_tier.setdefault(res.tier, []).append(list(steps_run))
    full = vnnlib.PgdAttack().steps
    assert by_tier["bounds"] and all(s == [vnnlib.QUICK_ATTACK_STEPS] for s in by_tier["bounds"])
    assert by_tier["milp"] and all(s == [vnnlib.QUICK_ATTACK_STEPS, full] for s in by_tier["milp"])


def test_topk_regions_are_decided_with_the_topk_bound_tier_and_branch_and_bound(model_path):
    """A region that says "the label is not in the top-k" is recognised (region_topk) and, where CROWN leaves it
    open, gets verify's α-CROWN top-k tier and the top-k branch and bound; the verdicts agree with the top-k MILP.
    Any other region keeps the clause route."""
    from benchmarks.vnncomp_models import topk_vnnlib
    from mlrobust.verify.vnnlib_parse import region_topk

    net = load_onnx(model_path)
    rng = np.random.default_rng(3)
    routed = 0
    for trial in range(30):
        x0 = rng.uniform(-1, 1, 4)
        eps = float(rng.choice([0.1, 0.3, 0.6, 1.0, 1.5]))
        order = np.argsort(-net.logits(x0[None])[0])
        for target, k in ((int(order[0]), 1), (int(order[1]), 2)):
            prop = parse_vnnlib(topk_vnnlib(x0 - eps, x0 + eps, 3, target, k, "t"))
            assert region_topk(prop.regions[0], 3) == (target, k)
            res = check_vnnlib(net, prop, timeout=60, verifier="cascade-bab")
            ref = MilpVerifier("highs").verify(net, Box(x0 - eps, x0 + eps), target, k)
            if isinstance(ref, Robust):
                assert res.status == "unsat"
            elif isinstance(ref, NotRobust):
                assert res.status == "sat"
            if "topk_tier" in res.stats:
                routed += 1
                assert res.stats["topk_tier"]["target"] == target and res.stats["topk_tier"]["k"] == k
                assert res.tier != "bab" or "rows" in res.stats["bab"]
    assert routed >= 1
    other = parse_vnnlib(robustness_property(np.zeros(4), 0.5, 0, 3).replace("(and (>= Y_1 Y_0))",
                                                                             "(and (>= Y_1 (+ Y_0 0.5)))"))
    assert region_topk(other.regions[0], 3) is None
    assert "topk_tier" not in check_vnnlib(net, other, timeout=60, verifier="cascade-bab").stats
