"""``mlrobust report`` and ``mlrobust.report``: a report rendered from hand-made batch lines carries exactly the
numbers those lines imply — in summary.csv, in the page and through the API —, bad inputs are one ``error:`` line
(exit 2), and, where Debian's chromium is installed, every image of the page loads in a headless browser."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlrobust.cli import run
from mlrobust.report import load, write_report
from mlrobust.report.aggregate import bootstrap_mean_interval, rounded, signed_rank_p
from mlrobust.report.table import Table, cell_text


def line(image: str, target: int, label: int, eps: list[float], refuted: list[float | None],
         certified: list[bool], seconds: float, radius: float | None, model: str, source: dict | None = None) -> dict:
    """A batch line as ``mlrobust batch`` writes it (the fields the report reads)."""
    result = {
        "schema": "mlrobust.search/1", "method": "boundary", "target": target, "k": 2, "epsilons": eps,
        "weights": [1.0] * len(eps), "size": float(sum(eps)), "layer_counts": [4] * len(eps),
        "saturation": [1.0] * len(eps), "delta": 0.01, "verified": True,
        "object": {"source": "mask", "label": None, "eps": eps[0], "radius_alone": eps[0], "pixels": 4},
        "maximality": [{"layer": d, "status": "refuted" if c else "unknown", "certified": c, "eps": e,
                        "refuted_eps": r} for d, (e, r, c) in enumerate(zip(eps, refuted, certified))],
        "model": {"path": model, "sha256": "0" * 64},
    }
    if radius is not None:
        result["baseline"] = {"uniform_radius": radius}
    return {"schema": "mlrobust.batch/1", "id": image, "config": "abc", "target": target,
            "source": source or {"perturbed_label": label}, "status": "done", "result": result, "seconds": seconds}


def error_line(image: str) -> dict:
    return {"schema": "mlrobust.batch/1", "id": image, "config": "abc", "target": 5, "source": {},
            "status": "error", "error": {"type": "InputError", "message": "label 5 is not among the top-2 labels"},
            "seconds": 0.1}


N, T, F = None, True, False
#: model a: four images (targets 1 and 3, perturbed objects 2 and 4), three layers each, and one error line
A = [line("i1", 1, 2, [0.1, 0.05, 0.0], [0.2, N, 0.5], [T, F, F], 10.0, 0.02, "models/model_a.onnx"),
     line("i2", 1, 2, [0.3, 0.1, 0.1], [0.4, 0.3, N], [T, F, F], 20.0, 0.1, "models/model_a.onnx"),
     line("i3", 3, 4, [0.2, 0.0, 0.0], [N, N, N], [F, F, F], 30.0, 0.05, "models/model_a.onnx"),
     line("i4", 3, 4, [0.05, 0.0, 0.0], [0.1, N, 0.9], [T, F, T], 40.0, 0.01, "models/model_a.onnx"),
     error_line("e1")]
#: model b: the same images, each epsilon doubled but i4's (so a − b of w·ε is -0.15, -0.5, -0.2, 0)
B = [line(x["id"], x["target"], x["source"]["perturbed_label"],
          [e * (1 if x["id"] == "i4" else 2) for e in x["result"]["epsilons"]],
          [m["refuted_eps"] for m in x["result"]["maximality"]], [m["certified"] for m in x["result"]["maximality"]],
          x["seconds"], None, "models/model_b.onnx") if x["status"] == "done" else x for x in A]


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def value(rows: list[dict[str, str]], **keys: str) -> str:
    """The value text of the one row whose columns equal ``keys`` (other group columns empty)."""
    group = ("versus", "target", "object_label", "distance")
    hits = [r for r in rows if all(r[k] == v for k, v in keys.items())
            and all(r[g] == "" for g in group if g not in keys)]
    assert len(hits) == 1, (keys, hits)
    return hits[0]["value"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, Path]:
    where = tmp_path_factory.mktemp("report")
    a, b = write_lines(where / "a.jsonl", A), write_lines(where / "b.jsonl", B)
    code = run(["report", str(a), str(b), "--out", str(where / "out")])
    assert code == 0
    return a, b, where / "out"


def test_summary_csv_holds_the_numbers_of_the_lines(rendered):
    _, _, out = rendered
    rows = csv_rows(out / "summary.csv")
    a = {"section": "run", "run": "model_a"}
    assert value(rows, **a, metric="images", statistic="count") == "4"
    assert value(rows, **a, metric="errors", statistic="count") == "1"
    assert float(value(rows, **a, metric="size", statistic="median")) == pytest.approx(0.175)  # of .15 .5 .2 .05
    assert float(value(rows, **a, metric="eps0", statistic="median")) == pytest.approx(0.15)
    assert float(value(rows, **a, metric="uniform_size", statistic="median")) == pytest.approx(0.105)  # 3 r
    assert float(value(rows, **a, metric="seconds", statistic="median")) == pytest.approx(25.0)
    assert float(value(rows, **a, metric="seconds", statistic="sum")) == pytest.approx(100.0)
    # 7, 6 and 4 of the 12 layers: proven ε > 0, a refuted ε known, certified maximal
    assert value(rows, **a, metric="layers_proven", statistic="percent") == "58.33"
    assert value(rows, **a, metric="layers_refuted", statistic="percent") == "50"
    assert value(rows, **a, metric="layers_certified", statistic="percent") == "33.33"
    # no uniform baseline in model b's lines: no such rows
    assert not [r for r in rows if r["run"] == "model_b" and r["metric"] == "uniform_size"]
    # the profile: distance 0 proven .1 .3 .2 .05, refuted .2 .4 .1 (one unknown); distance 1 proven .05 .1 0 0
    p = {"section": "profile", "run": "model_a"}
    assert float(value(rows, **p, distance="0", metric="eps", statistic="median")) == pytest.approx(0.15)
    assert float(value(rows, **p, distance="0", metric="refuted_eps", statistic="median")) == pytest.approx(0.2)
    assert [r["n"] for r in rows if r["section"] == "profile" and r["run"] == "model_a" and r["distance"] == "0"
            and r["metric"] == "refuted_eps" and r["statistic"] == "median"] == ["3"]
    assert float(value(rows, **p, distance="1", metric="eps", statistic="median")) == pytest.approx(0.025)
    # labels: target 1 with object 2 (i1, i2), target 3 with object 4 (i3, i4)
    lab = {"section": "labels", "run": "model_a"}
    assert float(value(rows, **lab, target="1", object_label="2", metric="eps0", statistic="median")) == \
        pytest.approx(0.2)
    assert float(value(rows, **lab, target="3", object_label="4", metric="size", statistic="median")) == \
        pytest.approx(0.125)
    assert not [r for r in rows if r["section"] == "labels" and r["target"] == "1" and r["object_label"] == "4"]
    # the paired comparison a − b of w·ε: -0.15, -0.5, -0.2, 0
    c = {"section": "comparison", "run": "model_a", "versus": "model_b", "metric": "size"}
    assert float(value(rows, **c, statistic="mean_difference")) == pytest.approx(-0.2125)
    assert float(value(rows, **c, statistic="median_difference")) == pytest.approx(-0.175)
    assert (value(rows, **c, statistic="wins"), value(rows, **c, statistic="losses"),
            value(rows, **c, statistic="ties")) == ("0", "3", "1")
    low, high = float(value(rows, **c, statistic="ci_low")), float(value(rows, **c, statistic="ci_high"))
    assert -0.5 <= low <= -0.2125 <= high <= 0.0
    assert 0 < float(value(rows, **c, statistic="p_value")) <= 1
    by_t = {"section": "comparison_by_target", "run": "model_a", "versus": "model_b", "metric": "size",
            "statistic": "mean_difference"}
    assert float(value(rows, **by_t, target="1")) == pytest.approx(-0.325)
    assert float(value(rows, **by_t, target="3")) == pytest.approx(-0.1)


def test_the_page_and_the_api_show_the_csv_numbers(rendered):
    a, b, out = rendered
    page = (out / "index.html").read_text()
    rows = csv_rows(out / "summary.csv")
    for r in rows:
        if r["section"] == "run" and r["value"]:
            assert f"<td>{r['value']}</td>" in page, r  # the overview table: the CSV's own text
    assert "median w·ε 0.175" in page and "33.33% certified maximal" in page and "<script" not in page
    for src in re.findall(r'<img[^>]* src="([^"]+)"', page):
        assert (out / src).is_file(), src
    summary = load([a, b], table="summary")
    assert [[cell_text(v) for v in row.values()] for row in summary.rows()] == [list(r.values()) for r in rows]
    images = load([a, b])
    assert len(images) == 8 and list(images["run"][:4]) == ["model_a"] * 4
    np.testing.assert_allclose(images["size"][:4], [0.15, 0.5, 0.2, 0.05])
    np.testing.assert_allclose(images["uniform_size"][:4], [0.06, 0.3, 0.15, 0.03])
    assert np.isnan(images["uniform_size"][4:]).all()
    layers = load(a, table="layers")
    assert len(layers) == 12 and list(layers["status"][:3]) == ["refuted", "unknown", "unknown"]
    with open(out / "images.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 8


def test_thumbnails_from_the_data_set_the_lines_name(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    image = np.zeros((8, 8))
    image[2:6, 1] = 1.0
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :2] = True  # columns 0-1: seven layers (distances 0..6)
    np.save(folder / "img.npy", image)
    np.save(folder / "mask.npy", mask.astype(np.float64))
    (folder / "manifest.json").write_text(json.dumps({"images": [
        {"id": "p1", "file": "img.npy", "mask": "mask.npy", "target_label": 1}]}))
    source = {"manifest": str(folder / "manifest.json"), "target_side": "manifest", "perturbed_label": 7}
    lines = [line("p1", 1, 7, [0.1] + [0.01] * 6, [0.3] + [N] * 6, [T] + [F] * 6, 5.0, 0.02, "m.onnx", source),
             line("p2", 1, 7, [0.01] * 3, [N] * 3, [F] * 3, 5.0, None, "m.onnx", {"manifest": "/nowhere.json"})]
    files = write_report([write_lines(tmp_path / "r.jsonl", lines)], tmp_path / "out", thumbnails=1)
    assert (tmp_path / "out" / "thumb_1_most_1.png").is_file()  # p1 (w·ε 0.16) found, drawn
    assert files.missing_pictures == 1  # p2: no such data set
    assert "1 thumbnail(s) left out" in files.index.read_text()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "is empty"),
    ("not json\n", "line 1 is not JSON"),
    ('{"id": "x", "status": "done"}\n', "is not a line of 'mlrobust batch'"),
    (json.dumps(error_line("e1")) + "\n", "holds no finished search"),
])
def test_bad_results_files_are_one_error_line(tmp_path, capsys, content, message):
    path = tmp_path / "r.jsonl"
    if content is not None:
        path.write_text(content)
    assert run(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_runs_of_other_images_are_refused(tmp_path, capsys):
    a = write_lines(tmp_path / "a.jsonl", A)
    b = write_lines(tmp_path / "b.jsonl", B[:2])
    assert run(["report", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    assert "mismatched images across models" in capsys.readouterr().err
    other_target = [dict(x, target=9) if x["id"] == "i1" else x for x in B]
    c = write_lines(tmp_path / "c.jsonl", other_target)
    assert run(["report", str(a), str(c), "--out", str(tmp_path / "out")]) == 2
    assert "'i1' has another target" in capsys.readouterr().err


def test_an_unfinished_last_line_is_left_out(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(A[0]) + "\n" + json.dumps(A[1])[:40])
    images = load(path)
    assert list(images["image"]) == ["i1"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=30))
def test_bootstrap_interval_brackets_the_mean(diff):
    d = np.array(diff)
    low, high = bootstrap_mean_interval(d, resamples=500)
    assert d.min() - 1e-12 <= low <= d.mean() + 1e-9 and d.mean() - 1e-9 <= high <= d.max() + 1e-12
    p = signed_rank_p(d)
    assert 0 <= p <= 1


@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_rounded_values_print_as_they_are_stored(x):
    text = cell_text(rounded(x))
    assert float(text) == rounded(x) and len(text.replace("-", "").replace(".", "").lstrip("0")) <= 10


def test_table_columns_keep_their_kinds():
    t = Table.from_rows([{"a": 1, "b": 0.5, "c": "x"}, {"a": None, "b": None, "c": "y"}], ["a", "b", "c"])
    assert list(t["a"]) == [1, None] and np.isnan(t["b"][1]) and t.to_csv() == "a,b,c\n1,0.5,x\n,,y\n"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Debian's chromium (apt-get install chromium) to check that every "
                "image of the report loads")


def test_every_image_of_the_page_loads_in_a_browser(rendered, tmp_path):
    browser = _chromium()
    _, _, out = rendered
    page = tmp_path / "page"
    shutil.copytree(out, page)
    # the page as it is, plus a script (only in this copy) that writes each image's natural width into the page
    probe = ("<script>window.addEventListener('load', () => { document.body.setAttribute('data-images', "
             "JSON.stringify([...document.images].map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : "
             "-1]))); });</script></body>")
    (page / "check.html").write_text((page / "index.html").read_text().replace("</body>", probe))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", (page / "check.html").as_uri()], capture_output=True, text=True,
                          timeout=120)
    found = re.search(r'data-images="([^"]*)"', proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(images) >= 6
    assert not [src for src, width in images if width <= 0], images


def test_the_results_page_quotes_the_report_as_its_csv_writes_it(rendered):
    from benchmarks.report_page import report_section

    _, _, out = rendered
    section = report_section(out / "summary.csv", "report/index.html")
    assert "[The report](report/index.html)" in section
    assert "| model_a | 4 | 0.175 | 0.105 | 0.15 | 25 | 58.33 | 50 | 33.33 |" in section
    assert "| model_a | model_b | 4 | -0.2125 | [" in section and "| 0 / 3 |" in section
    assert report_section(out / "no_such.csv", "x") == ""


def test_the_committed_report_is_what_the_committed_lines_give():
    """docs/report (the results page) was written from benchmarks/results/report/*.jsonl: its summary.csv is what
    the API computes from those lines now, and the page shows the CSV's own text."""
    root = Path(__file__).resolve().parent.parent
    runs = [root / "benchmarks" / "results" / "report" / f"{m}.jsonl" for m in ("mnist2_nodefense", "mnist2_l0",
                                                                                  "mnist2_pgd")]
    summary = load(runs, table="summary")
    assert summary.to_csv() == (root / "docs" / "report" / "summary.csv").read_text()
    page = (root / "docs" / "report" / "index.html").read_text()
    for r in csv_rows(root / "docs" / "report" / "summary.csv"):
        if r["section"] == "run" and r["value"]:
            assert f"<td>{r['value']}</td>" in page, r
    assert min(int(v) for r, v in zip(summary["metric"], summary["value"]) if r == "images") >= 20
    for src in re.findall(r'<img[^>]* src="([^"]+)"', page):
        assert (root / "docs" / "report" / src).is_file(), src
