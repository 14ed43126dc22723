"""Results people can read and trust: outputs proven writable by writing (as root too), honest exit codes, a
compact table that never cuts a number and counts as the JSON does, and the small things a new user trips over.

The command-line tests run in-process on the tiny model of test_verify_cli.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_errors import base, cli, one_error_line
from test_verify_cli import files  # noqa: F401  (the module-scoped fixture: a tiny model, image and mask)

from mlrobust.cli.files import atomic_write_text, output_file, probe_output
from mlrobust.cli.summary_table import plain_stop_reason, render_json_lines, render_text, table_rows
from mlrobust.errors import InputError
from mlrobust.search.maximality import LayerMaximality
from mlrobust.search.problem import QueryStats
from mlrobust.search.result import SearchResult
from mlrobust.search.run import layer_ranges, never_tried

ROOT = Path(__file__).resolve().parent.parent
#: A folder where creating a file fails even for root (CI runs as root: os.access says yes to everything there).
UNWRITABLE = Path("/proc")


@pytest.fixture
def no_work(monkeypatch):
    """The search and the check must not start."""
    from mlrobust import api

    def refuse(*args, **kwargs):
        raise AssertionError("the work started before the outputs were checked")

    monkeypatch.setattr(api, "maximize", refuse)
    monkeypatch.setattr(api, "check", refuse)


# --- 1. outputs checked by writing them, before the work ------------------------------------------------------------
@pytest.mark.parametrize("option,name", [("--json", "r.json"), ("--heatmap", "h.png")])
def test_an_unwritable_output_is_refused_before_the_work_even_as_root(capsys, files, no_work, option, name):  # noqa: F811
    code, out, err = cli(capsys, *base(files, option, UNWRITABLE / name))
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert f"{option} '{UNWRITABLE / name}' cannot be written" in line
    assert ".part" not in line and ".probe" not in line  # the user's path, never a temporary one


def test_probe_leaves_nothing_behind_and_removes_the_folders_it_made(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "r.json"
    created = probe_output(target, "--json")
    assert created == [tmp_path / "a", tmp_path / "a" / "b"]
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    with pytest.raises(InputError, match="cannot create the folder '/proc/new'"):
        output_file(UNWRITABLE / "new" / "r.json", "--out")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    import mlrobust.cli.files as files_module

    monkeypatch.setattr(files_module.tempfile, "mkstemp", refused)
    with pytest.raises(InputError, match=r"--out '.*/c/d/r.json' cannot be written \(permission denied\)"):
        output_file(tmp_path / "c" / "d" / "r.json", "--out")
    assert not (tmp_path / "c").exists()  # the folders made for it are removed again


def test_a_failed_write_names_the_users_path(tmp_path):
    with pytest.raises(OSError) as info:
        atomic_write_text(UNWRITABLE / "r.json", "x")
    assert info.value.filename == str(UNWRITABLE / "r.json")


def test_an_input_error_found_later_leaves_no_folder(capsys, files, tmp_path):  # noqa: F811
    out_json = tmp_path / "made" / "r.json"
    code, _, err = cli(capsys, *base(files, "--json", out_json)[:4], "42", "--json", out_json)
    assert code == 2 and "--target 42 is not a label of the model" in one_error_line(err)
    assert not out_json.parent.exists()
    # an error the search itself finds (here: a mask of the wrong size) removes the folder made for the outputs
    from mlrobust.neighborhood.image_io import write_mask

    write_mask(tmp_path / "small.png", np.ones((3, 3), bool))
    code, _, err = cli(capsys, "verify", files["model"], files["image"], "--target", files["target"],
                       "--object-mask", tmp_path / "small.png", "--eps", "0.01", "--json", out_json)
    assert code == 2 and "mask" in one_error_line(err)
    assert not out_json.parent.exists()


def test_a_write_that_fails_after_the_work_keeps_the_answer(capsys, files, tmp_path, monkeypatch):  # noqa: F811
    from mlrobust.cli import verify_cmd

    out_json = tmp_path / "r.json"
    real = verify_cmd.write_json

    def disk_full(data, path):
        if Path(path) == out_json:
            raise OSError(28, "No space left on device", str(path))
        real(data, path)

    monkeypatch.setattr(verify_cmd, "write_json", disk_full)
    code, out, err = cli(capsys, *base(files, "--method", "uniform", "--no-certify", "--json", out_json))
    assert code == 2
    assert "Robust layered neighborhood" in out and "proven robust" in out  # the answer is printed all the same
    line = one_error_line(err)
    assert f"--json '{out_json}' could not be written (no space left on device)" in line
    fallback = Path(line.split("written to '")[1].split("'")[0])
    assert json.loads(fallback.read_text())["target"] == files["target"]
    fallback.unlink()


# --- 2. honest answers ----------------------------------------------------------------------------------------------
def test_a_search_that_proves_nothing_exits_unknown(capsys, files, tmp_path):  # noqa: F811
    # the attack alone never proves anything: not even the clean image is "proven robust"
    out_json = tmp_path / "r.json"
    code, out, err = cli(capsys, *base(files, "--verifier", "attack", "--method", "uniform", "--json", out_json))
    assert code == 20, err
    assert "unknown: nothing proven within the time limit" in out and "proven robust" not in out
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["nothing_proven"] is True and summary["never_tried"] == [
        "the search (the clean image itself was not proven)"]
    code, out, _ = cli(capsys, *base(files, "--verifier", "attack", "--method", "uniform", "--quiet"))
    assert code == 20 and out.strip().endswith("answer=unknown")


def test_a_search_cut_short_says_what_it_never_tried():
    from mlrobust.search.run import SearchOptions

    unchecked = [LayerMaximality(d, "unchecked", 0.0) for d in (0, 1, 2, 5)] + [LayerMaximality(3, "refuted", 0.1)]
    said = never_tried(SearchOptions(), {"object": {}}, unchecked, grow=True)
    assert said == ["the attack's upper bounds per layer", "pushing each layer to its boundary",
                    "layers 0–2, 5 never checked"]
    assert never_tried(SearchOptions(), {"object": {}, "upper_bounds": {}, "push": {}},
                       [LayerMaximality(0, "refuted", 0.1)], grow=True) == []
    assert layer_ranges([7, 1, 2, 3, 9, 10]) == "1–3, 7, 9–10"


def test_a_real_search_out_of_time_is_unknown(files):  # noqa: F811
    import mlrobust

    result = mlrobust.maximize(files["model"], files["image"], files["target"], object_mask=files["mask"],
                               time_limit=1e-6)
    assert result.nothing_proven and result.summary()["nothing_proven"]
    assert result.never_tried  # it says what the limit cut off


# --- 3. the table ---------------------------------------------------------------------------------------------------
def make_result(statuses: list[str], eps: list[float], refuted: list[float | None], tiers: list[str],
                stop_reason: str = "explore: converged (step below delta = 0.00382); push: the push's deadline"
                ) -> SearchResult:
    n = len(statuses)
    maximality = [LayerMaximality(d, s, eps[d], tried=None if s == "unchecked" else eps[d] + 0.0038,
                                  tier=tiers[d], open_by=None if s == "unchecked" else 0.0123456 + d, margin=9.0,
                                  refuted_eps=refuted[d]) for d, s in enumerate(statuses)]
    stats = QueryStats()
    stats.calls.update({"bounds": 5})
    return SearchResult(
        method="boundary", cutting="fixed", target=1, k=2, epsilons=np.asarray(eps, float), weights=np.ones(n),
        layer_counts=np.arange(1, n + 1) * 10, saturation=np.ones(n), mask=np.ones((3, 3), bool),
        image=np.zeros((1, 3, 3)), verified=True, proof_tier="bounds", maximality=maximality, stats=stats,
        timings={"total": 120.0, "search": 30.0, "maximality": 90.0}, stop_reason=stop_reason, delta=0.0038,
        clean_margin=-1.0, clean_topk=[1, 6], object_source="mask", object_radius=0.1111,
        details={"object": {"refuted_alone": 0.13}})


STATUSES = ("refuted", "saturated", "unknown", "unchecked")


@st.composite
def results(draw):
    n = draw(st.integers(1, 40))
    statuses = draw(st.lists(st.sampled_from(STATUSES), min_size=n, max_size=n))
    tiers = draw(st.lists(st.sampled_from(("bounds", "bab", "milp")), min_size=n, max_size=n))
    eps = [1.0 if s == "saturated" else draw(st.floats(0, 0.9)) for s in statuses]
    refuted = [None if s == "saturated" or draw(st.booleans()) else e + 0.01 for s, e in zip(statuses, eps)]
    return make_result(statuses, eps, refuted, tiers)


@settings(max_examples=60, deadline=None)
@given(results(), st.booleans())
def test_rows_cover_every_layer_once_and_group_only_alike_layers(result, full):
    rows = table_rows(result, full)
    covered = [d for r in rows for d in range(r.first, r.last + 1)]
    assert covered == list(range(result.num_layers))
    assert sum(r.pixels for r in rows) == int(result.layer_counts.sum())
    for r in rows:
        layers = result.maximality[r.first:r.last + 1]
        assert {m.status for m in layers} == {r.status}
        assert r.eps == (min(result.epsilons[r.first:r.last + 1]), max(result.epsilons[r.first:r.last + 1]))
    if full:
        assert len(rows) == result.num_layers
    else:  # neighbours in different rows differ in status or tier: the rows are as few as the rule allows
        for a, b in zip(rows, rows[1:]):
            assert (a.status, a.tier) != (b.status, b.tier)


def test_the_text_table_is_compact_and_cuts_no_number():
    n = 43
    statuses = ["unknown"] * n
    tiers = ["bab"] + ["bounds"] * 18 + ["bab"] * 4 + ["bounds"] * 20
    result = make_result(statuses, [0.0007912345 * d for d in range(n)], [0.2 + 0.001 * d for d in range(n)], tiers)
    text = render_text(result)
    table = text.split("\nstatus:")[0].splitlines()
    assert len(table) == 3 + 4  # title, header, rule and four rows for 43 layers
    assert "…" not in text and "1–18" in table[4] and "0.0008–0.0142" in table[4]
    assert "open by 0.0123" in table[3]  # the margin says what it means
    full = render_text(result, full=True)
    assert len(full.split("\nstatus:")[0].splitlines()) == 3 + n


def test_the_summary_counts_as_the_json_does_in_plain_words():
    statuses = ["refuted", "saturated", "unknown", "unknown", "unchecked"]
    result = make_result(statuses, [0.1, 1.0, 0.1, 0.2, 0.3], [0.11, None, 0.5, None, 0.6], ["milp"] * 5)
    data = result.to_json()
    with_cex = sum(m["refuted_eps"] is not None for m in data["maximality"])
    assert data["summary"]["refuted_layers"] == with_cex == 3
    text = render_text(result)
    assert f"{with_cex}/5 layers have a counterexample above their ε" in text
    assert "1 maximal, 1 full range, 2 open, 1 not checked" in text
    # the object alone is a lower bound, said so: not a contradiction beside a larger ε₀
    assert "proven robust to at least 0.1111 and refuted at 0.1300" in text
    for jargon in ("push's deadline", "explore:", "step below delta"):
        assert jargon not in text
    lines = [json.loads(line) for line in render_json_lines(result).splitlines()]
    assert lines[-1]["summary"]["refuted_layers"] == 3 and [r["row"]["layers"] for r in lines[:-1]] == [
        [0, 0], [1, 1], [2, 3], [4, 4]]


def test_a_bound_within_the_tolerance_of_a_proof_reads_open_by_zero():
    from mlrobust.cli.summary_table import open_by

    assert open_by((-4.73e-05, 0.0339)) == "open by 0–0.0339" and open_by((0.02, 0.02)) == "open by 0.02"
    assert open_by(None) == ""


def test_stop_reasons_in_plain_words():
    assert plain_stop_reason("explore: converged (step below delta = 0.00382233); push: the push's deadline") == (
        "growth on the bounds: converged (no step of δ or more was proven); pushing each layer to its boundary: "
        "its share of the time limit ran out")
    assert plain_stop_reason("time limit") == "time limit"


@pytest.mark.parametrize("saturated", [False, True])
def test_table_footnote_only_when_a_row_has_its_star(saturated):
    result = make_result(["refuted", "saturated" if saturated else "refuted"], [0.1, 1.0 if saturated else 0.1],
                         [0.2, None if saturated else 0.2], ["attack", "attack"])
    text = render_text(result)
    assert ("the layer spans the whole pixel range" in text) is saturated
    assert ("1.0000*" in text) is saturated


def test_piped_output_is_never_cut(capsys, files, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COLUMNS", "40")
    code, out, err = cli(capsys, *base(files, "--method", "uniform", "--no-certify", "--full-table"))
    assert code == 0, err
    assert "…" not in out and "layers  pixels" in out
    rows = [line for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == 4  # --full-table: one row per layer of the tiny image
    code, out, err = cli(capsys, *base(files, "--method", "uniform", "--no-certify", "--format", "json"))
    assert code == 0 and "summary" in json.loads(out.splitlines()[-1])


# --- 7. the small things --------------------------------------------------------------------------------------------
def test_vnnlib_takes_time_limit_and_keeps_timeout(capsys, tmp_path):
    for option in ("--time-limit", "--timeout"):
        code, _, err = cli(capsys, "vnnlib", ROOT / "examples" / "models" / "mnist2_pgd.onnx",
                           ROOT / "README.md", option, "-1")
        assert code == 2 and "--time-limit must be a positive number of seconds" in one_error_line(err)


def test_a_check_without_a_mask_says_which_object_it_picked(capsys):
    code, out, err = cli(capsys, "verify", ROOT / "examples" / "models" / "mnist2_pgd.onnx",
                         ROOT / "examples" / "images" / "ex00.png", "--target", "1", "--eps", "0.01",
                         "--time-limit", "60")
    assert code == 0, err
    assert "object: 157 pixels (auto, label 6)" in out


def test_a_pyomo_hint_reads_as_a_sentence():
    from mlrobust.backends.registry import get_backend
    from mlrobust.errors import SolverNotAvailableError

    try:
        get_backend("pyomo:glpk")
        pytest.skip("GLPK is installed here")
    except SolverNotAvailableError as exc:
        info = exc
    assert "install it with: see" not in str(info) and "; see https://" in str(info)


def test_inspect_lines_are_not_wrapped_in_a_file():
    proc = subprocess.run([sys.executable, "-m", "mlrobust", "inspect",
                           str(ROOT / "examples" / "models" / "mnist2_pgd.onnx")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**__import__("os").environ, "COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr  # python -m mlrobust runs the command line
    conv = [line for line in proc.stdout.splitlines() if "/conv1/Conv" in line]
    assert len(conv) == 1 and conv[0].rstrip().endswith("pad 1,1,1,1")


# --- 6. the checks earn their time -------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(a=st.floats(0.0, 0.5), width=st.floats(0.01, 0.5), curve=st.floats(0.0, 20.0), offset=st.floats(0.05, 2.0),
       frac=st.floats(0.05, 0.95))
def test_the_secant_of_a_convex_bound_never_overshoots_its_crossing(a, width, curve, offset, frac):
    from mlrobust.search.boundary import secant_reach

    # a convex margin bound f(e) = -offset + slope (e - a) + curve (e - a)^2 crossing 0 at `root` inside (a, u)
    u = a + width
    root = a + frac * width
    slope = (offset - curve * (root - a) ** 2) / (root - a)
    f = lambda e: -offset + slope * (e - a) + curve * (e - a) ** 2  # noqa: E731
    reach = secant_reach(a, u, f(u), f(a))
    assert reach is not None and a < reach <= root + 1e-9
    assert secant_reach(a, None, 1.0, -1.0) is None and secant_reach(a, u, -0.1, -1.0) is None


def test_a_costly_tier_that_proves_nothing_is_given_up_after_three_layers():
    from test_boundary_push import LayerProbe, Undecided, start
    from test_search_boundary import DELTA, problem, truth

    from mlrobust.search.boundary import GIVE_UP_AFTER, Tier, push_to_boundary
    from mlrobust.search.intervals import apply_upper_bounds
    from mlrobust.verify.verdict import ROBUST_TOLERANCE

    pb = problem(4, 3, 3)
    pb.warm_attack = False  # nothing refutes: every layer reaches the costly tiers
    eps0 = start(pb)
    cheap, useless = LayerProbe(pb, eps0), Undecided()
    eps, statuses, report = push_to_boundary(pb, eps0, DELTA, [Tier("cheap", cheap, 1.0),
                                                               Tier("useless", useless, 1.0),
                                                               Tier("exact", None, None)])
    assert pb.num_layers > GIVE_UP_AFTER
    assert report.skipped_tiers == ["useless"] and report.skipped_layers == pb.num_layers - GIVE_UP_AFTER
    assert useless.calls == report.queries["useless:unknown"] <= 3 * GIVE_UP_AFTER  # no question to the others
    assert any(k.startswith("exact:robust") for k in report.queries)  # the time went to the tier that decides
    assert truth(pb, eps) < -ROBUST_TOLERANCE
    assert all(m.status in ("refuted", "saturated") for m in apply_upper_bounds(pb, eps, statuses, DELTA))


def test_the_bound_tier_is_not_asked_a_step_its_own_trend_puts_out_of_reach():
    from test_boundary_push import LayerProbe, start
    from test_search_boundary import DELTA, problem

    from mlrobust.search.boundary import Tier, push_to_boundary

    pb = problem(4, 3, 3)
    pb.warm_attack = False
    eps0 = start(pb)
    assert pb.proven_bound(eps0) is not None and pb.proven_bound(eps0) < 0
    # the bound tier's margin bound at every undecided value is huge: a delta step is predicted far out of reach
    cheap = LayerProbe(pb, eps0, margins=np.full(pb.num_layers, 1e6))
    _, _, report = push_to_boundary(pb, eps0, DELTA, [Tier("bounds", cheap, 1.0), Tier("exact", None, None)])
    assert report.predicted_out_of_reach == len(set(cheap.layers)) >= 1
    assert len(cheap.layers) == len(set(cheap.layers))  # one question per layer, not a bisection of undecided ones


def test_the_maximality_check_stops_asking_after_undecided_layers_in_a_row():
    from test_boundary_push import Undecided
    from test_search_boundary import DELTA, problem

    from mlrobust.search.maximality import certify

    pb = problem(4, 3, 3, warm_attack=False)
    pb.verifier = Undecided()
    _, statuses = certify(pb, np.zeros(pb.num_layers), DELTA, give_up_after=2)
    assert [m.status for m in statuses[:2]] == ["unknown", "unknown"]
    assert all(m.status == "unchecked" and "left layers 0, 1 undecided" in m.reason for m in statuses[2:])
    assert pb.verifier.calls == 2


# --- 5. the object's floor is a visible choice -------------------------------------------------------------------
def test_the_summary_says_what_the_objects_floor_costs():
    result = make_result(["unknown"] * 3, [0.07, 0.0, 0.01], [0.1, 0.2, 0.3], ["bounds"] * 3)
    result.details.update({"object": {"floor": 0.066, "refuted_alone": 0.13},
                           "delta_auto": {"uniform_radius": 0.031}})
    summary = result.summary()
    assert summary["uniform_size"] == pytest.approx(0.093) and summary["object_floor"] == 0.066
    text = render_text(result)
    assert "one ε for every layer (0.0310) was proven up to w·ε = 0.0930, larger, but below the object's floor" in text
    assert "--object-share 0" in text


def test_an_interrupted_search_reports_a_vector_that_keeps_the_floor():
    from test_search_boundary import problem

    pb = problem(4, 3, 3)
    n = pb.num_layers
    uniform, object_first = pb.clip(np.full(n, 0.02)), pb.clip(np.r_[0.03, np.zeros(n - 1)])
    pb.robust_eps += [uniform, object_first]
    assert pb.size(uniform) > pb.size(object_first) and object_first[0] > uniform[0]
    assert np.array_equal(pb.best_proven(), uniform)  # no floor: the larger one
    pb.floor = np.r_[object_first[0], np.zeros(n - 1)]
    assert np.array_equal(pb.best_proven(), object_first)  # the floor kept, as a finished search keeps it
