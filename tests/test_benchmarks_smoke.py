"""The benchmark suite: the smoke suite passes on the shipped models (CI fails here on a soundness violation),
and the suite really fails when a verifier claims a robust neighborhood an attack breaks or backends disagree."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_batch import tiny_data, tiny_model

from benchmarks.suite import SUITES, run_suite
from benchmarks.suite_verifier import agreement, pairwise, tiny_queries, topk_vs_pairwise
from mlrobust.backends.base import OPTIMAL, SolveResult
from mlrobust.backends.registry import _REGISTERED
from mlrobust.verify.verdict import Robust

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_smoke_suite_on_the_shipped_models(tmp_path):
    """``python -m benchmarks run --suite smoke`` as CI runs it: exit 0, every proven neighborhood survives the
    attack, backends and encodings agree."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--suite", "smoke", "--out", str(tmp_path),
                           "--work", str(tmp_path / "work"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "smoke.json").read_text())
    assert res["violations"] == []
    models = json.loads((EXAMPLES / "manifest.json").read_text())["models"]
    rows = res["reference"]["rows"]
    assert sorted(r["model"] for r in rows) == sorted(models)
    for r in rows:
        assert r["status"] == "done" and r["verified"], r
        assert r["attack"]["margin"] < 0 and not r["attack"]["broken"]
        assert r["size"] == pytest.approx(sum(r["epsilons"]))  # uniform weights
    answer = res["reference"]["answers"][0]
    assert answer["ranking"] and set(answer["ranking"]) == set(models)
    assert max(answer["means"].values()) == pytest.approx(answer["means"][answer["ranking"][0]])
    topk = res["topk"]["rows"]
    assert topk and all(not r["conflict"] for r in topk)
    assert {"robust", "not_robust"} <= {r["one_milp"]["status"] for r in topk}  # both verdicts exercised
    backends = res["backends"]
    assert {"highs", "scip"} <= set(backends["solvers"])
    assert all(not a["conflict"] for a in backends["agreement"])
    md = (tmp_path / "smoke.md").read_text()
    assert "Which model yields the largest robust neighborhoods?" in md and "No violation" in md
    winner = res["reference"]["aggregate"]
    assert any(a["model_label"] in md.split("Which model")[1].split("###")[0] for a in winner)
    assert "Queries by the tier that answered them" in md and "verifier.md" in md  # no verifier step in smoke
    # the report subcommand rewrites the same Markdown from the JSON alone
    (tmp_path / "smoke.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "report", str(tmp_path / "smoke.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "smoke.md").read_text() == md


def _row(model, method, image, size, by_tier, verified=True):
    return {"model": model, "method": method, "image": image, "status": "done", "verified": verified, "size": size,
            "by_tier": by_tier, "queries": sum(by_tier.values())}


def test_report_tables_of_tiers_and_the_uniform_comparison():
    from benchmarks.suite_report import tier_table, versus_uniform

    rows = [_row("a", "uniform", "x", 1.0, {"bounds": 4, "milp": 2}),
            _row("a", "uniform", "y", 2.0, {"bounds": 6}),
            _row("a", "optimize-fixed", "x", 1.5, {"cache": 3, "milp": 1}),
            _row("a", "optimize-fixed", "y", 1.0, {"cache": 1, "attack": 2}),
            _row("a", "layer-search", "x", 0.5, {"bounds": 1}, verified=False)]
    vs = versus_uniform(rows)
    assert vs["optimize-fixed"] == (2, 1, pytest.approx((1.5 / 1.0 + 1.0 / 2.0) / 2))
    assert "layer-search" not in vs  # its only result is not proven
    table = tier_table(rows, {"a": "A"}).splitlines()
    assert table[0] == "| model | method | cache | attack | bounds | milp | all queries |"
    assert table[2] == "| A | uniform | 0.0 | 0.0 | 5.0 | 1.0 | 6.0 |"
    assert table[3] == "| A | optimize-fixed | 2.0 | 1.0 | 0.0 | 0.5 | 3.5 |"


# --- the suite must be able to fail --------------------------------------------------------------------------------
@pytest.fixture()
def tiny_examples(tmp_path):
    """An examples folder (manifest, images, masks, models/) with one tiny 8x8 model."""
    from mlrobust import load_onnx
    from mlrobust.training.examples import write_examples

    ex = tmp_path / "ex"
    (ex / "models").mkdir(parents=True)
    model = tiny_model(ex / "models" / "tiny.onnx", seed=2)
    data = tiny_data(model, n=3, seed=4)
    logits = load_onnx(model).logits(data.float_images().astype(np.float64))
    write_examples(ex, data, [0, 1], {"tiny": logits})
    return ex


CFG = replace(SUITES["smoke"], steps=("reference",), images=2, time_limit=10.0, delta=0.05, attack_restarts=8,
              attack_steps=30)


class AlwaysRobust:
    """An unsound verifier: proves everything."""

    name = "always-robust"

    def verify(self, network, box, target, k=2, mode="decide", time_limit=None):
        return Robust(tier="fake", bound=-1.0)


def test_a_broken_robustness_claim_is_a_violation(tiny_examples, tmp_path, monkeypatch):
    ok = run_suite(CFG, tmp_path / "ok", tmp_path / "work-ok", tiny_examples, log=lambda m: None)
    assert ok["violations"] == [] and len(ok["reference"]["rows"]) == 2
    import mlrobust.api

    monkeypatch.setattr(mlrobust.api, "make_verifier", lambda verifier=None, solver="highs", device="cpu": AlwaysRobust())
    bad = run_suite(CFG, tmp_path / "bad", tmp_path / "work-bad", tiny_examples, log=lambda m: None)
    kinds = {v["kind"] for v in bad["violations"]}
    assert kinds == {"attack broke a proven neighborhood"}
    assert all(r["verified"] and r["attack"]["broken"] for r in bad["reference"]["rows"])
    assert "soundness violation" in (tmp_path / "bad" / "smoke.md").read_text()


class LyingBackend:
    """A solver backend that reports every MILP's optimum as proven below zero."""

    name = "liar"

    def available(self) -> bool:
        return True

    def solve(self, problem, *, time_limit=None, stop=None, pool=0) -> SolveResult:
        return SolveResult(status=OPTIMAL, objective=None, bound=-1.0, solver=self.name)


def test_disagreeing_backends_are_a_violation(tmp_path, monkeypatch):
    monkeypatch.setitem(_REGISTERED, "liar", LyingBackend)
    cfg = replace(SUITES["smoke"], steps=("backends",), tiny_queries=3, tiny_factors=(2.0,),
                  solvers=("highs", "liar"))
    res = run_suite(cfg, tmp_path, tmp_path / "w", tmp_path / "no-examples", log=lambda m: None)
    assert res["violations"] and all(v["kind"] == "verdicts disagree" for v in res["violations"])
    assert all(v["verdicts"]["highs"] == "not_robust" and v["verdicts"]["liar"] == "robust"
               for v in res["violations"])


def test_main_exits_nonzero_on_a_violation(tmp_path, monkeypatch):
    import benchmarks.__main__ as entry

    monkeypatch.setitem(_REGISTERED, "liar", LyingBackend)
    monkeypatch.setitem(entry.SUITES, "smoke", replace(SUITES["smoke"], steps=("backends",), tiny_queries=3,
                                                        tiny_factors=(2.0,), solvers=("highs", "liar")))
    code = entry.main(["run", "--suite", "smoke", "--out", str(tmp_path), "--quiet",
                       "--examples", str(tmp_path / "none")])
    assert code == 1


# --- the pairwise baseline is the same question ---------------------------------------------------------------------
def test_pairwise_scheme_matches_the_one_milp():
    statuses = set()
    for q in tiny_queries(2, seed=10, factors=(1.3, 2.0)):
        r = topk_vs_pairwise(q, "highs", "optimize", time_limit=60)
        assert r["one_milp"]["status"] == r["pairwise"]["status"] != "unknown"
        assert r["pairwise"]["value"] == pytest.approx(r["one_milp"]["objective"], abs=1e-4)
        # a brute-force lower bound: no sampled point beats the common optimum
        rng = np.random.default_rng(0)
        pts = q.box.lower + rng.random((2000, *q.box.shape)) * (q.box.upper - q.box.lower)
        from mlrobust.verify.margin import topk_margin

        assert topk_margin(q.network.logits(pts), q.target, 2).max() <= r["one_milp"]["objective"] + 1e-6
        d = pairwise(q, "highs", mode="decide", time_limit=60)
        assert d["status"] == r["one_milp"]["status"] and d["subsets"] <= 36
        statuses.add(d["status"])
    assert statuses == {"robust", "not_robust"}


def test_agreement_flags_only_conflicts():
    rows = [{"query": "a", "solver": "highs", "status": "robust"}, {"query": "a", "solver": "cbc", "status": "unknown"},
            {"query": "b", "solver": "highs", "status": "robust"},
            {"query": "b", "solver": "scip", "status": "not_robust"}]
    got = {a["query"]: a["conflict"] for a in agreement(rows)}
    assert got == {"a": False, "b": True}


def test_cli_entry_point_rejects_unknown_steps(tmp_path):
    import benchmarks.__main__ as entry

    with pytest.raises(SystemExit):
        entry.main(["run", "--suite", "smoke", "--steps", "nonsense", "--out", str(tmp_path)])
