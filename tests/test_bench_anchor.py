"""The α,β-CROWN comparison benchmark's own parts, without α,β-CROWN: the instances it writes, how it reads
run_one.sh's answers and counterexamples, and how it counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_anchor as anchor
from benchmarks.devset_instances import linf_box, manifest_entry
from mlrobust.verify.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parent.parent


def test_parse_abc_result_reads_the_last_result_line():
    assert anchor.parse_abc_result("noise\nRESULT unsat 12.50\n") == ("unsat", 12.5)
    assert anchor.parse_abc_result("RESULT timeout 90.1\nRESULT sat 3.25\n") == ("sat", 3.25)
    assert anchor.parse_abc_result("Traceback ...\n") == ("error", None)
    assert anchor.parse_abc_result("RESULT maybe 2.0\n") == ("error", 2.0)


def test_parse_cex_needs_every_input_once():
    text = "sat\n((X_0  0.25)\n (X_2  1e-3)\n (X_1  -0.5)\n (Y_0  3.0)\n (Y_1 -1.0))\n"
    np.testing.assert_array_equal(anchor.parse_cex(text, 3), [0.25, -0.5, 1e-3])
    assert anchor.parse_cex(text, 4) is None  # X_3 missing
    assert anchor.parse_cex("(X_0 1.0)\n(X_0 2.0)\n(X_1 0.0)", 2) is None  # X_0 twice
    assert anchor.parse_cex("(X_0 nan-ish)", 1) is None


def test_config_follows_the_model_kind(tmp_path):
    configs = tmp_path / "abc" / "configs"
    configs.mkdir(parents=True)
    (configs / "mnistfc_cpu.yaml").write_text("general:\n  device: cpu\nmodel:\n  input_shape: [-1, 1, 28, 28]\n"
                                              "attack:\n  pgd_restarts: 100\n")
    assert anchor.model_kind(ROOT / "examples" / "models" / "mnist2_pgd.onnx") == "conv64"
    assert anchor.model_kind(ROOT / "benchmarks" / "vnncomp" / "models" / "mnist_fc_256x2.onnx") == "mnist_fc"
    assert anchor.model_kind(ROOT / "benchmarks" / "vnncomp" / "models" / "acas_like.onnx") == "acas"
    assert anchor.abc_config(tmp_path / "abc", "conv64", tmp_path).name == "conv64_cpu.yaml"
    assert anchor.abc_config(tmp_path / "abc", "acas", tmp_path).name == "acasxu_cpu.yaml"
    flat = anchor.abc_config(tmp_path / "abc", "mnist_fc", tmp_path / "work").read_text()
    assert "input_shape" not in flat and "model:" not in flat and "pgd_restarts: 100" in flat


def test_layered_instances_are_the_search_boxes_with_a_top2_property(tmp_path, monkeypatch):
    monkeypatch.setattr(anchor, "OURS_IMAGES", ("ex00",))
    monkeypatch.setattr(anchor, "OURS_SCALES", (1.0, 1.2))
    insts = anchor.ours_instances(tmp_path, ROOT / "examples", ROOT / "benchmarks" / "results" /
                                  "scale_neighborhoods.json", 60.0)
    assert len(insts) == len(anchor.OURS_IMAGES) * len(anchor.OURS_SCALES)
    assert len({i.key for i in insts}) == len(insts)
    by_scale = {}
    for inst in insts:
        prop = parse_vnnlib(inst.prop)
        (region,) = prop.regions
        assert prop.num_inputs == 64 * 64 and len(region.clauses) == 36  # every pair of the 9 other labels
        by_scale[inst.prop.stem] = region
    x = linf_box(ROOT / "examples", manifest_entry(ROOT / "examples", "ex00"), 0.0)[0]
    one, wider = by_scale["layered_ex00_x1"], by_scale["layered_ex00_x1.2"]
    assert np.all(one.lower <= x) and np.all(x <= one.upper)
    assert np.all(wider.lower <= one.lower) and np.all(one.upper <= wider.upper)
    assert np.any(wider.upper - wider.lower > one.upper - one.lower)
    eps = json.loads((ROOT / "benchmarks/results/scale_neighborhoods.json").read_text())["mnist2_pgd/ex00"]["epsilons"]
    half = (one.upper - one.lower) / 2
    assert float(half.max()) <= max(eps) + 1e-12  # never wider than the largest layer's epsilon


def test_run_abc_reads_a_fake_run_one(tmp_path):
    abc = tmp_path / "abc"
    (abc / "configs").mkdir(parents=True)
    (abc / "configs" / "conv64_cpu.yaml").write_text("general:\n  device: cpu\n")
    prop_text = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                 "(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (<= X_1 1.0))\n(assert (>= X_1 0.0))\n"
                 "(assert (>= Y_0 0.0))\n")
    prop = tmp_path / "prop.vnnlib"
    prop.write_text(prop_text)
    inst = anchor.AnchorInstance("ours", ROOT / "examples" / "models" / "mnist2_pgd.onnx", prop, 60.0)
    logs = abc / "logs"

    def fake(result: str, verdict: str, own_time: float, cex: bool = False) -> None:
        """A run_one.sh that leaves α,β-CROWN's files (log with its Time:, verdict file, counterexample)."""
        lines = [f'mkdir -p "{logs}"', f'echo "Time: {own_time}" > "{logs}/abc_$4.log"',
                 f'printf "{verdict}\\n" > "{logs}/abc_$4.out"']
        if cex:
            lines.append(f'printf "(X_0 0.5)\\n(X_1 0.25)\\n(Y_0 1.0)\\n" > "{logs}/abc_$4.cex"')
        (abc / "run_one.sh").write_text("\n".join(lines + [f'echo "RESULT {result}"']) + "\n")

    fake("sat 9.5", "sat", 4.5, cex=True)
    row = anchor.run_abc(abc, inst, tmp_path / "work", grace=5)
    assert row["status"] == "sat" and row["seconds"] == 4.5 and row["config"] == "conv64_cpu.yaml"
    assert row["x"] == [0.5, 0.25]
    assert (logs / f"abc_{anchor._tag(inst)}.cex").is_file()
    fake("unsat 90.0", "unsat", 75.0)  # over the 60 s timeout by its own clock: not an answer
    assert anchor.run_abc(abc, inst, tmp_path / "work", grace=5)["status"] == "timeout"
    fake("timeout 90.0", "unsat", 20.0)  # verdict written in time, then the process hung until killed
    row = anchor.run_abc(abc, inst, tmp_path / "work", grace=5)
    assert row["status"] == "unsat" and row["seconds"] == 20.0 and "hung" in row["reason"]
    fake("timeout 90.0", "timeout", 60.0)
    assert anchor.run_abc(abc, inst, tmp_path / "work", grace=5)["status"] == "timeout"


def _row(inst, tool, status, seconds, group="devset", ort=None):
    r = {"instance": inst, "tool": tool, "status": status, "seconds": seconds, "group": group}
    if ort:
        r["ort"] = {"verdict": ort}
    return r


def test_summary_counts_decisions_times_and_wrong_verdicts():
    rows = [
        _row("a", "abcrown", "unsat", 10.0), _row("a", "mlrobust", "unsat", 4.0),
        _row("b", "abcrown", "sat", 6.0, ort="confirmed"), _row("b", "mlrobust", "timeout", 60.0),
        _row("c", "abcrown", "timeout", 60.0), _row("c", "mlrobust", "unsat", 30.0),
        _row("d", "abcrown", "unsat", 5.0, group="vnncomp"), _row("d", "mlrobust", "unsat", 9.0, group="vnncomp"),
        _row("e", "abcrown", "sat", 7.0, group="vnncomp", ort="confirmed"),
        _row("e", "mlrobust", "unsat", 2.0, group="vnncomp"),
        _row("f", "abcrown", "unsat", 1.0),  # mlrobust never ran it: not compared
    ]
    summary = {s["group"]: s for s in anchor.summarise(rows)}
    dev, vnn, every = summary["devset"], summary["vnncomp"], summary["all"]
    assert dev["instances"] == 3 and dev["abc_decided"] == 2 and dev["ours_also"] == 1 and dev["ours_no_slower"] == 1
    assert dev["ours_only"] == 1 and dev["abcrown"]["median_s"] == 8.0 and dev["mlrobust"]["decided"] == 2
    assert vnn["ours_also"] == 2 and vnn["ours_no_slower"] == 1
    assert every["instances"] == 5 and every["abcrown"]["sat"] == 2
    violations = anchor.soundness(rows)
    assert len(violations) == 1 and violations[0].startswith("e:")
    assert anchor.wrong_rows(rows, violations) == {"mlrobust": 1, "abcrown": 0}
    wrong_cex = [_row("g", "abcrown", "sat", 3.0, ort="wrong"), _row("g", "mlrobust", "timeout", 60.0)]
    assert anchor.wrong_rows(wrong_cex, anchor.soundness(wrong_cex)) == {"mlrobust": 0, "abcrown": 1}
    text = anchor.markdown({"command": "python -m benchmarks anchor", "machine": {"cpus": 2, "processor": "x"},
                            "git": "abc", "abcrown": "here", "method": "vnnlib", "jobs": 2, "timeout_note": "60 s",
                            "budget": None, "stopped_early": False, "seconds": 60.0, "rows": rows,
                            "summary": anchor.summarise(rows), "violations": violations,
                            "wrong": anchor.wrong_rows(rows, violations)})
    assert "| devset | 3 | 2 (1/1), 8.0 s |" in text and "VIOLATION" in text


def test_missing_abcrown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="run_one.sh not found"):
        anchor.main(["--abcrown", str(tmp_path), "--groups", "ours"])


def test_the_shipped_development_set_is_complete():
    folder = ROOT / "benchmarks" / "devset"
    manifest = json.loads((folder / "models" / "manifest.json").read_text())
    assert len(manifest["models"]) >= 4
    assert len({m["defense"] for m in manifest["models"].values()}) >= 3
    for name, entry in manifest["models"].items():
        assert (folder / "models" / entry["file"]).is_file(), name
        assert entry["seed"] not in (0, 1, 2)  # the shipped models' seeds
        assert entry["ir_vs_onnxruntime_max_abs_diff"] < 1e-4
    rows = anchor.csv_instances("devset", folder, None)
    assert rows and all(r.model.is_file() and r.prop.is_file() for r in rows)
    assert {r.model.stem for r in rows} == set(manifest["models"])
    assert {"linf", "layered"} <= {r.prop.stem.split("_")[0] for r in rows}


def test_a_counterexample_a_rounding_error_outside_its_box_is_checked_clipped(tmp_path):
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (<= X_0 0.5))\n(assert (>= X_0 0.0))\n(assert (<= X_1 1.0))\n(assert (>= X_1 0.0))\n"
                    "(assert (>= Y_0 0.0))\n")
    inst = anchor.AnchorInstance("vnncomp", ROOT / "benchmarks" / "vnncomp" / "models" / "acas_like.onnx", prop, 60.0)

    class Checker:  # Y_0 = X_1 - 0.1: the property is violated where X_1 >= 0.1; points outside the box are wrong
        def outputs(self, model, x):
            return np.array([x[1] - 0.1])

        def check(self, folder, inst, x):
            inside = 0.0 <= x[0] <= 0.5 and 0.0 <= x[1] <= 1.0
            margin = float(self.outputs(None, x)[0])
            return {"verdict": "confirmed" if inside and margin >= 0 else "wrong", "in_box": inside,
                    "ort_margin": margin}

    row = {"status": "sat", "x": [0.5 + 2e-8, 0.25]}  # float32 rounding of the bound 0.5
    anchor.check_sat(Checker(), inst, row)
    assert row["ort"]["verdict"] == "confirmed" and row["ort"]["outside_by"] == pytest.approx(2e-8)
    row = {"status": "sat", "x": [0.5 + 2e-8, 0.05]}  # just outside, and not in the output region
    anchor.check_sat(Checker(), inst, row)
    assert row["ort"]["verdict"] == "wrong"
    row = {"status": "sat", "x": [0.5 + 1e-3, 0.25]}
    anchor.check_sat(Checker(), inst, row)
    assert row["ort"]["verdict"] == "wrong"
    row = {"status": "sat"}
    anchor.check_sat(Checker(), inst, row)
    assert row["ort"]["verdict"] == "wrong"


# --- anchor-radius: the grid search ----------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from benchmarks import bench_anchor_radius as radius  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(1, 40), data=st.data())
def test_probe_order_brackets_a_monotone_answer_with_few_distinct_probes(steps, data):
    """Whatever the start, the search finds the largest proven index of a monotone answer, probing no index twice
    and at most about 2·log2(steps) + 2 of them."""
    truth = data.draw(st.integers(-1, steps - 1))
    start = data.draw(st.integers(0, steps - 1))
    seen: list[int] = []

    def proven(i: int) -> bool:
        assert 0 <= i < steps
        seen.append(i)
        return i <= truth

    assert radius.probe_order(start, steps, proven) == (truth, truth + 1)
    assert len(seen) == len(set(seen))
    assert len(seen) <= 2 * int(np.ceil(np.log2(steps + 1))) + 2


def test_radius_grid_is_geometric_and_rounded():
    grid = radius.radius_grid(0.002, 1.25, 4)
    assert grid == [0.002, 0.0025, 0.003125, 0.00390625]


def test_radius_summary_and_soundness_compare_the_tools_per_model():
    def p(r, status, verdict=None):
        row = {"radius": r, "status": status, "seconds": 1.0, "tier": "bounds"}
        if verdict:
            row["ort"] = {"verdict": verdict}
        return row

    searches = [
        {"model": "m", "image": "ex00", "tool": "abcrown", "complete": True,
         "probes": [p(0.004, "unsat"), p(0.008, "timeout"), p(0.006, "unsat")]},
        {"model": "m", "image": "ex00", "tool": "cascade", "complete": True,
         "probes": [p(0.004, "unsat"), p(0.008, "sat", "confirmed"), p(0.006, "unsat"), p(0.007, "sat", "wrong")]},
    ]
    [row] = radius.summarise(searches, [0.004, 0.006, 0.008])
    assert row["tools"]["abcrown"]["proven"] == 0.006 and row["tools"]["abcrown"]["refuted"] is None
    assert row["tools"]["cascade"]["proven"] == 0.006 and row["tools"]["cascade"]["refuted"] == 0.008
    assert row["ours_at_least_abc"] == {"cascade": True}
    assert radius.soundness(searches) == ["m/ex00 r=0.007: cascade answered sat with a counterexample that fails on "
                                          "onnxruntime"]
    searches[0]["probes"].append(p(0.01, "unsat"))
    assert any("abcrown proved r=0.01 but cascade refuted r=0.008" in v for v in radius.soundness(searches))
    [row] = radius.summarise(searches, [0.004, 0.006, 0.008])
    assert row["ours_at_least_abc"] == {"cascade": False}


# --- the α,β-CROWN set-up both comparisons share ---------------------------------------------------------------------
@pytest.mark.parametrize("module", [anchor, radius])
def test_both_comparisons_check_the_checkout_and_jobs_the_same_way(tmp_path, module):
    with pytest.raises(SystemExit, match="run_one.sh not found"):
        module.main(["--abcrown", str(tmp_path)])
    (tmp_path / "run_one.sh").write_text("exit 0\n")
    with pytest.raises(SystemExit, match="--jobs must be 1 or 2"):
        module.main(["--abcrown", str(tmp_path), "--jobs", "3"])
    args = anchor.parse_anchor_args(module.parser(), ["--abcrown", str(tmp_path), "--work", "w", "--budget", "5"])
    assert args.abcrown == tmp_path.resolve() and args.work.is_absolute() and args.budget == 5.0


def test_raw_lines_are_recorded_and_read_back_by_key(tmp_path):
    import argparse
    import threading

    args = argparse.Namespace(work=tmp_path, fresh=False)
    inst = anchor.AnchorInstance("g", tmp_path / "m.onnx", tmp_path / "p.vnnlib", 60.0)
    lock = threading.Lock()
    for status in ("unsat", "timeout"):  # no sat: nothing for onnxruntime to re-check
        anchor.record(args, None, inst, {"instance": inst.key, "tool": status, "status": status}, lock)
    cache = anchor.read_raw(args, lambda r: (r["instance"], r["tool"]))
    assert cache == {(inst.key, "unsat"): {"instance": inst.key, "tool": "unsat", "status": "unsat"},
                     (inst.key, "timeout"): {"instance": inst.key, "tool": "timeout", "status": "timeout"}}
    assert anchor.read_raw(argparse.Namespace(work=tmp_path, fresh=True), lambda r: r["tool"]) == {}


def test_ladder_instances_are_a_results_boxes_with_its_own_top_k(tmp_path):
    """A Triple-MNIST result (top-3): one VNN-LIB file per scale, around the result's image and mask, with every
    3-subset of the other labels as a clause."""
    from mlrobust.api import prepare
    from mlrobust.neighborhood.image_io import read_image

    examples = ROOT / "examples"
    entry = next(e for e in json.loads((examples / "ladder.json").read_text())["images"] if e["id"] == "triple00")
    model, image, mask = examples / "models" / "triple_mnist.onnx", examples / entry["file"], examples / entry["mask"]
    prep = prepare(model, image, int(entry["target_label"]), k=3, object_mask=mask)
    eps = np.linspace(0.05, 0.01, prep.nbhd.num_layers)
    np.savez_compressed(tmp_path / "r.npz", object_mask=prep.nbhd.mask.astype(np.uint8))
    (tmp_path / "r.json").write_text(json.dumps({
        "model": {"path": str(model)}, "image": {"path": str(image)}, "target": int(entry["target_label"]), "k": 3,
        "epsilons": eps.tolist(), "object": {"mask": {"array": "object_mask"}}, "arrays": {"file": "r.npz"}}))
    insts = anchor.ladder_instances(tmp_path / "work", [tmp_path / "r.json"], (1.0, 1.5), 90.0)
    assert [i.prop.name for i in insts] == ["r_x1.vnnlib", "r_x1.5.vnnlib"]
    assert all(i.group == "ladder" and i.model == model and i.timeout == 90.0 for i in insts)
    x = read_image(image).astype(np.float64).reshape(-1)
    regions = [parse_vnnlib(i.prop).regions[0] for i in insts]
    for scale, region in zip((1.0, 1.5), regions):
        assert len(region.clauses) == 84  # every 3-subset of the 9 other labels
        box = prep.nbhd.box(np.minimum(scale * eps, 1.0))
        np.testing.assert_allclose(region.lower, box.lower.reshape(-1), atol=1e-12)
        np.testing.assert_allclose(region.upper, box.upper.reshape(-1), atol=1e-12)
        assert np.all(region.lower <= x) and np.all(x <= region.upper)
    object_pixels = prep.nbhd.mask.reshape(-1)
    half = (regions[1].upper - regions[1].lower) / 2
    inside = (x[object_pixels] > 0.075) & (x[object_pixels] < 0.925)  # not clipped at 1.5 x 0.05
    np.testing.assert_allclose(half[object_pixels][inside], 0.075, atol=1e-12)


def test_mlrobust_runs_as_mlrobust_vnnlib_does_by_default():
    """Unless told otherwise, the comparison runs the route ``mlrobust vnnlib`` runs by default."""
    import inspect

    from benchmarks.bench_vnncomp import VNNLIB_METHODS
    from mlrobust.cli import vnnlib_cmd

    cli_default = inspect.signature(vnnlib_cmd.vnnlib).parameters["verifier"].default.default
    assert VNNLIB_METHODS[anchor.parser().get_default("method")] == cli_default == "cascade-bab"
