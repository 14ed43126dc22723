"""The API examples in examples/: the SciPy MILP backend and the IBP + sampling verifier are correct, plug into
``mlrobust.check`` / ``mlrobust.maximize`` and run as scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from test_batch import tiny_data, tiny_model

import mlrobust
from benchmarks.suite_verifier import tiny_queries
from mlrobust.backends.registry import _REGISTERED, get_backend
from mlrobust.neighborhood.image_io import write_image, write_mask
from mlrobust.verify.counterexample import TopKProperty, check_points
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.verdict import ROBUST_TOLERANCE

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


backend_mod = load_example("custom_backend")
verifier_mod = load_example("custom_verifier")


@pytest.fixture(scope="module")
def queries():
    return tiny_queries(2, seed=10, factors=(1.3, 2.0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model, one image whose top-2 labels are its digits, and the perturbed digit's mask."""
    root = tmp_path_factory.mktemp("ex")
    model = tiny_model(root / "tiny.onnx", seed=1)
    data = tiny_data(model, n=1, seed=2)
    write_image(root / "img.png", data.images[0])
    write_mask(root / "mask.png", data.masks[0, 1])
    return model, root / "img.png", root / "mask.png", int(data.digits[0, 0])


def test_scipy_backend_matches_highs(queries):
    backend = backend_mod.ScipyMilpBackend()
    assert get_backend(backend) is backend
    for q in queries:
        mine = MilpVerifier(backend).verify(q.network, q.box, q.target, 2, "optimize", 60)
        ref = MilpVerifier("highs").verify(q.network, q.box, q.target, 2, "optimize", 60)
        assert type(mine) is type(ref), q.name
        if "objective" in ref.stats and "objective" in mine.stats:
            assert mine.stats["objective"] == pytest.approx(ref.stats["objective"], abs=1e-4)
            assert mine.stats["bound"] >= mine.stats["objective"] - 1e-6  # a proven bound is never below the optimum
    assert {type(MilpVerifier(backend).verify(q.network, q.box, q.target, 2)).__name__ for q in queries} == {
        "Robust", "NotRobust"}


def test_scipy_backend_reports_time_limits_and_registers_by_name(queries, monkeypatch):
    from mlrobust.backends.base import OPTIMAL, TIME_LIMIT
    from mlrobust.bounds.tier import tighten
    from mlrobust.milp.builder import build_topk_milp

    q = queries[1]
    tight = tighten(q.network, q.box.lower, q.box.upper, "ibp", target=q.target)
    problem = build_topk_milp(q.network, tight.bounds, q.target, 2, tight.margin_lower, tight.margin_upper)
    res = backend_mod.ScipyMilpBackend().solve(problem, time_limit=30)
    assert res.status == OPTIMAL and problem.max_violation(res.x) < 1e-6
    assert res.objective == pytest.approx(res.bound, abs=1e-3 * (1 + abs(res.objective)))
    quick = backend_mod.ScipyMilpBackend().solve(problem, time_limit=1e-6)
    assert quick.status in (TIME_LIMIT, OPTIMAL)
    monkeypatch.setitem(_REGISTERED, "scipy", backend_mod.ScipyMilpBackend)
    assert get_backend("scipy").name == "scipy"


def test_interval_sampling_verifier_is_sound(queries):
    from mlrobust.verify.spec import Box

    ver = verifier_mod.IntervalSamplingVerifier(samples=128)
    seen = set()
    boxes = [(q, Box.around(q.box.center, q.info["eps"] * f)) for q in queries for f in (0.05, 1.0, 4.0)]
    for q, box in boxes:
        q = type(q)(q.name, q.kind, q.network, box, q.target, q.k)
        v = ver.verify(q.network, q.box, q.target, 2)
        seen.add(type(v).__name__)
        if v.is_robust:  # the exact verifier agrees
            assert MilpVerifier("highs").verify(q.network, q.box, q.target, 2, "decide", 60).is_robust
            assert v.bound < -ROBUST_TOLERANCE
        if v.is_not_robust:  # a real counterexample inside the box
            p = check_points(q.network, q.box, [v.counterexample], TopKProperty(q.target, 2))[0]
            assert p.confirmed and q.box.contains(v.counterexample)
    assert seen == {"Robust", "NotRobust", "Unknown"}


def test_custom_verifier_drives_maximize_and_check(files):
    model, image, mask, target = files
    ver = verifier_mod.IntervalSamplingVerifier()
    res = mlrobust.maximize(model, image, target, object_mask=mask, verifier=ver, time_limit=30, delta=0.05)
    assert res.verifier == "ibp+sampling" and res.verified and ver.calls == res.stats.verifier_calls > 0
    check = mlrobust.check(model, image, target, res.epsilons, object_mask=mask, verifier="milp", time_limit=60)
    assert check.status == "robust"  # what the custom verifier proved, the exact verifier confirms


def test_example_scripts_run(files, capsys):
    model, image, mask, target = files
    args = [str(model), str(image), "--target", str(target), "--object-mask", str(mask)]
    assert backend_mod.main(args + ["--object-eps", "0.2", "--time-limit", "30"]) == 0
    out = capsys.readouterr().out.splitlines()
    verdicts = {line.split()[0]: line.split()[1] for line in out}
    assert set(verdicts) == {"scipy", "highs"} and verdicts["scipy"] == verdicts["highs"] != "unknown"
    assert verifier_mod.main(args + ["--time-limit", "20", "--delta", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "verifier ibp+sampling" in out and "re-checked by the cascade: robust" in out
    np.testing.assert_equal(True, "proven: True" in out)


def test_custom_property_matches_check(files, tmp_path, capsys):
    """The VNN-LIB property written by examples/custom_property.py asks the same question as ``mlrobust.check``."""
    from mlrobust import load_onnx
    from mlrobust.neighborhood.image_io import read_mask
    from mlrobust.neighborhood.layers import layer_index
    from mlrobust.verify.vnnlib import check_vnnlib, parse_vnnlib

    prop_mod = load_example("custom_property")
    model, image, mask, target = files
    layers = int(layer_index(read_mask(mask)).max()) + 1
    answers = set()
    for eps in (0.02, 1.0):
        out = tmp_path / f"p{eps}.vnnlib"
        assert prop_mod.main([str(image), "--object-mask", str(mask), "--target", str(target), "--object-eps",
                              str(eps), "--eps", str(eps), "--out", str(out)]) == 0
        prop = parse_vnnlib(out)
        assert prop.num_inputs == 64 and prop.num_outputs == 10 and len(prop.regions[0].clauses) == 36
        res = check_vnnlib(load_onnx(model), prop, timeout=60)
        check = mlrobust.check(model, image, target, [eps] * layers, object_mask=mask, verifier="milp",
                               time_limit=60)
        assert {"robust": "unsat", "not_robust": "sat"}[check.status] == res.status
        answers.add(res.status)
    assert answers == {"sat", "unsat"}
    assert "36 disjuncts" in capsys.readouterr().out
