"""The ONNX-pattern benchmark: every pattern module is found and builds models that import and agree with
onnxruntime on its properties' boxes, and the harness flags wrong answers."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_onnx_ops import markdown, run, wrong
from benchmarks.onnx_patterns import patterns
from benchmarks.onnx_patterns._common import ort_outputs
from mlrobust import load_onnx
from mlrobust.verify.vnnlib import parse_vnnlib

pytest.importorskip("onnxruntime")

#: The patterns of issue 22's first part; other modules of the package may add more.
PATTERNS = {"nhwc_cnn", "pad_avgpool", "set_encoder", "unet", "rank1_mlp"}


def test_pattern_modules_are_discovered():
    found = patterns()
    assert PATTERNS <= set(found)
    for name, module in found.items():
        assert module.NAME == name and callable(module.build)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_each_pattern_builds_models_that_match_onnxruntime_on_their_boxes(name, tmp_path):
    pairs = patterns()[name].build(tmp_path)
    assert len(pairs) >= 3
    kinds = set()
    for model, prop in pairs:
        net = load_onnx(model)
        kinds |= {n.kind for n in net.nodes}
        spec = parse_vnnlib(prop)
        (region,) = spec.regions
        for x in (region.lower, (region.lower + region.upper) / 2, region.upper):
            x32 = x.astype(np.float32)
            ours = net.forward(x32.astype(np.float64).reshape(1, *net.sample_shape)).reshape(-1)
            np.testing.assert_allclose(ours, ort_outputs(model, x32), rtol=0, atol=1e-5)
    expected = {"nhwc_cnn": {"Transpose"}, "pad_avgpool": {"Pad", "AvgPool2d"},
                "set_encoder": {"Slice", "Concat", "ReduceSum"}, "unet": {"Pad", "ConvTranspose2d", "Concat"},
                "rank1_mlp": {"Dense"}}[name]
    assert expected <= kinds


def test_wrong_answers_are_flagged():
    row = {"pattern": "p", "property": "q", "ops": ["Dense"], "neurons": 3, "relus": 1, "answer": "sat",
           "tier": "attack", "solve_seconds": 0.1, "seconds": 1.0, "error": "", "ort_margin": -0.5,
           "verdict": "wrong"}
    ok = dict(row, answer="unsat", verdict="—")
    del ok["ort_margin"]
    results = {"timeout": 5.0, "git": "abc", "python": "3", "load": (1.0, 1.0, 1.0), "rows": [row, ok]}
    assert wrong(results) == [row]
    text = markdown(results)
    assert "wrong (margin -0.5)" in text and "wrong or failed: 1" in text


@pytest.mark.slow
def test_harness_runs_end_to_end(tmp_path):
    results = run(["rank1_mlp"], 30.0, tmp_path, lambda msg: None)
    assert len(results["rows"]) >= 3 and not wrong(results)
    assert {r["answer"] for r in results["rows"]} <= {"sat", "unsat", "timeout", "unknown"}
