"""The VNN-COMP-like instances and their harness: the shipped files parse and load, the models agree with
onnxruntime, the harness runs end to end, and its soundness checks really flag wrong answers."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_vnncomp import (
    INSTANCES,
    Instance,
    OrtChecker,
    float32_in_box,
    read_instances,
    run,
    select,
    soundness,
    topk_form,
)
from benchmarks.vnncomp_models import topk_vnnlib
from mlrobust import load_onnx
from mlrobust.verify.vnnlib import parse_vnnlib

pytest.importorskip("onnxruntime")


def _image_from_box(lower: np.ndarray, upper: np.ndarray, eps: float) -> np.ndarray:
    """The MNIST image (pixels k/255) whose L-inf ball of radius eps, clipped to [0, 1], is the box."""
    x = np.where(upper < 1, upper - eps, lower + eps)
    return np.round(x * 255) / 255


def _instances() -> list[Instance]:
    return read_instances(INSTANCES)


def test_instance_list_covers_the_models_and_families():
    insts = _instances()
    with (INSTANCES / "instances.csv").open() as fh:
        assert len(list(csv.reader(fh))) == len(insts)
    counts: dict[tuple[str, str], int] = {}
    for inst in insts:
        counts[(inst.model_name, inst.family)] = counts.get((inst.model_name, inst.family), 0) + 1
        assert (INSTANCES / inst.model).is_file() and (INSTANCES / inst.prop).is_file(), inst
        assert inst.timeout > 0
    for model in ("mnist_fc_256x2", "mnist_fc_256x4"):
        for eps in ("0.02", "0.03", "0.05"):
            assert counts[(model, f"eps{eps}")] == 15
        assert counts[("mnist_conv_small", f"eps{eps}")] >= 10  # the images the conv net classifies correctly
    assert counts[("acas_like", "acas")] >= 6
    size = sum(p.stat().st_size for p in INSTANCES.rglob("*") if p.is_file())
    assert size < 8_000_000, f"the shipped instances take {size / 1e6:.1f} MB"


def test_every_property_parses_as_a_topk_property_of_its_model():
    """Every shipped VNN-LIB file is read by mlrobust's parser as one box and a top-k counterexample region; MNIST
    boxes are L-inf balls of the named eps clipped to [0, 1] around an image of pixels k/255."""
    networks: dict[str, object] = {}
    for inst in _instances():
        net = networks.setdefault(inst.model, load_onnx(INSTANCES / inst.model))
        prop = parse_vnnlib(INSTANCES / inst.prop)
        assert prop.num_inputs == int(np.prod(net.sample_shape)) and prop.num_outputs == net.num_classes
        assert len(prop.regions) == 1
        form = topk_form(prop)
        assert form is not None, inst
        target, k = form
        region = prop.regions[0]
        if inst.family.startswith("eps"):
            eps = float(inst.family[3:])
            assert k == 1
            x = _image_from_box(region.lower, region.upper, eps)
            np.testing.assert_array_equal(region.lower, np.clip(x - eps, 0, 1))
            np.testing.assert_array_equal(region.upper, np.clip(x + eps, 0, 1))
        else:
            assert (k, target) == (4, 0) or k == 1


def test_models_match_onnxruntime_and_satisfy_the_property_at_the_centres():
    """mlrobust's IR and onnxruntime agree on every property's box centre, and there the property holds (the clean
    image is classified correctly; the ACAS-like centre is not a counterexample)."""
    checker = OrtChecker()
    networks: dict[str, object] = {}
    for inst in _instances()[::3]:
        net = networks.setdefault(inst.model, load_onnx(INSTANCES / inst.model))
        prop = parse_vnnlib(INSTANCES / inst.prop)
        region = prop.regions[0]
        centre = (region.lower + region.upper) / 2
        if inst.family.startswith("eps"):  # the image itself (the box centre shifts where the box is clipped)
            centre = _image_from_box(region.lower, region.upper, float(inst.family[3:]))
        ours = net.logits(centre.reshape(1, *net.sample_shape))[0]
        ort = checker.outputs(INSTANCES / inst.model, centre)
        np.testing.assert_allclose(ours, ort, atol=1e-4, rtol=1e-4)
        target, k = topk_form(prop)
        others = np.delete(ours - ours[target], target)
        assert np.sort(others)[::-1][k - 1] < 0, inst


def test_topk_form_recognises_the_written_forms_and_rejects_others():
    lo, hi = np.zeros(3), np.ones(3)
    for target, k in ((2, 1), (0, 2), (0, 4), (3, 4)):
        assert topk_form(parse_vnnlib(topk_vnnlib(lo, hi, 5, target, k, "t"))) == (target, k)
    text = topk_vnnlib(lo, hi, 5, 1, 1, "t").replace("(>= Y_0 Y_1)", "(>= Y_0 Y_2)")
    assert topk_form(parse_vnnlib(text)) is None  # a clause about another label
    partial = "\n".join(line for line in topk_vnnlib(lo, hi, 5, 1, 1, "t").splitlines() if "(>= Y_4 Y_1)" not in line)
    assert topk_form(parse_vnnlib(partial)) is None  # one competitor missing: not "the label stays the argmax"
    shifted = topk_vnnlib(lo, hi, 5, 1, 1, "t").replace("(>= Y_0 Y_1)", "(>= Y_0 (+ Y_1 0.5))")
    assert topk_form(parse_vnnlib(shifted)) is None  # a margin other than 0


def _rows(status_a: str, status_b: str, verdict_b: str = "confirmed") -> list[dict]:
    base = {"instance": "m/p", "model": "m", "family": "eps0.03", "seconds": 1.0}
    return [dict(base, method="a", status=status_a),
            dict(base, method="b", status=status_b, ort={"verdict": verdict_b, "ort_margin": 0.1, "in_box": True})]


def test_soundness_flags_conflicts_and_wrong_counterexamples():
    assert soundness(_rows("unsat", "sat")) and "unsat by a" in soundness(_rows("unsat", "sat"))[0]
    assert soundness(_rows("timeout", "sat", "wrong"))  # a counterexample onnxruntime rejects
    assert soundness(_rows("unsat", "unsat")) == []
    assert soundness(_rows("timeout", "sat")) == []
    assert soundness(_rows("unsat", "sat", "borderline")) == []  # not confirmed: no proof is contradicted


def test_onnxruntime_check_rejects_points_outside_the_box_or_the_region():
    inst = next(i for i in _instances() if i.family == "acas")
    prop = parse_vnnlib(INSTANCES / inst.prop)
    region = prop.regions[0]
    checker = OrtChecker()
    centre = (region.lower + region.upper) / 2
    assert checker.check(INSTANCES, inst, centre.tolist())["verdict"] == "wrong"  # the property holds there
    outside = region.upper + 0.5
    res = checker.check(INSTANCES, inst, outside.tolist())
    assert not res["in_box"] and res["verdict"] == "wrong"


def test_harness_end_to_end_on_two_instances(tmp_path):
    """Two quick instances (one sat by the attack, one unsat by the bounds) through fresh worker processes."""
    insts = select(_instances(), ["mnist_fc_256x2", "acas_like"], ["eps0.05", "acas"], 1)
    assert len(insts) == 2
    args = argparse.Namespace(methods="crown_milp,not_a_method", timeout=10.0, grace=30.0, instances=INSTANCES,
                              models="mnist_fc_256x2,acas_like", families="eps0.05,acas", limit=1, workers=1,
                              out=tmp_path / "v.md", work=tmp_path / "raw.jsonl", fresh=True, notes="", argv=[],
                              cached_only=False)
    res = run(args, lambda msg: None)
    assert res["availability"]["not_a_method"].startswith("unknown method")
    rows = {r["instance"]: r for r in res["rows"]}
    assert set(rows) == {inst.key for inst in insts}
    acas = rows["acas_like/acas_like_prop_00_not_min0"]
    mnist = rows["mnist_fc_256x2/mnist_img0_eps0.05"]
    assert acas["status"] == "unsat" and acas["seconds"] <= 10.0
    assert mnist["status"] == "sat" and mnist["ort"]["verdict"] == "confirmed"
    assert res["violations"] == []
    total = next(s for s in res["summary"] if s["model"] == "all")
    assert (total["solved"], total["instances"]) == (2, 2)
    assert len((tmp_path / "raw.jsonl").read_text().splitlines()) == 2


def test_harness_counts_an_overrun_as_timeout(tmp_path):
    """A worker that cannot answer within the hard limit is killed and reads as a timeout."""
    from benchmarks.bench_vnncomp import run_one

    inst = next(i for i in _instances() if i.family == "acas")
    row = run_one(INSTANCES, inst, "crown_milp", 0.5, 0.0)  # killed at 0.5 s: before the imports finish
    assert row["status"] == "timeout" and "killed" in row["reason"]


def test_shipped_models_are_the_described_shapes():
    shapes = {Path(i.model).stem: load_onnx(INSTANCES / i.model) for i in _instances()}
    dense = {name: [n.op.weight.shape for n in net.nodes if hasattr(n.op, "weight")] for name, net in shapes.items()}
    assert [w[0] for w in dense["mnist_fc_256x2"]] == [256, 256, 10]
    assert [w[0] for w in dense["mnist_fc_256x4"]] == [256, 256, 256, 256, 10]
    assert [w[0] for w in dense["acas_like"]] == [50] * 6 + [5]
    assert dense["acas_like"][0][1] == 5 and dense["mnist_fc_256x2"][0][1] == 784


def test_a_point_of_a_box_narrower_than_float32_spacing_reaches_onnxruntime_inside_it():
    """A layered box's outer ring at ε 1e-14 around pixel values k/255 holds no float32 value; its points reach the
    network as a bound's rounding, which the check accepts, and nothing farther."""
    centre = np.arange(1, 200, dtype=np.float64) / 255.0
    lower, upper = centre - 1e-14, centre + 1e-14
    x32 = centre.astype(np.float32).astype(np.float64)
    assert not np.all((x32 >= lower) & (x32 <= upper))  # the strict test would call a sound answer wrong
    assert float32_in_box(x32, lower, upper)
    off = x32.copy()
    off[7] = np.nextafter(np.float32(off[7]), np.float32(2.0))  # one float32 step beyond the rounding of the box
    assert not float32_in_box(off, lower, upper)
    wide_lo, wide_hi = centre - 0.01, centre + 0.01
    assert float32_in_box(x32, wide_lo, wide_hi) and not float32_in_box(x32 + 0.02, wide_lo, wide_hi)
