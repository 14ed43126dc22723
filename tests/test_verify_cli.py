"""``mlrobust verify``: the search and the check from the command line, the JSON and heatmap it writes, and
clear errors with a non-zero exit code on bad input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_api import tiny_onnx
from test_search_oracles import exact_worst_margin, tiny_case

import mlrobust
from mlrobust.cli import main
from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.neighborhood.image_io import read_image, write_image, write_mask
from mlrobust.search.result import sha256_file
from mlrobust.verify.verdict import ROBUST_TOLERANCE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify_cli")
    net, image, target, mask = tiny_case(6, hidden=3, classes=3)
    write_image(d / "img.png", image)
    write_mask(d / "mask.png", mask)
    tiny_onnx(net, d / "tiny.onnx")
    return {"dir": d, "model": d / "tiny.onnx", "image": d / "img.png", "mask": d / "mask.png", "target": target,
            "net": net, "mask_array": mask}


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mlrobust", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join(captured.out.split()), " ".join(captured.err.split())


def base(files, *extra, time_limit="60"):
    return ("verify", files["model"], files["image"], "--target", files["target"], "--object-mask", files["mask"],
            "--time-limit", time_limit, *extra)


def test_search_writes_table_json_and_heatmap(monkeypatch, capsys, files):
    out_json, out_png = files["dir"] / "r.json", files["dir"] / "h.png"
    code, out, err = run_cli(monkeypatch, capsys, *base(files, "--json", out_json, "--heatmap", out_png,
                                                         time_limit="8"))
    assert code == 0, err
    assert "Robust layered neighborhood of label" in out and "size w·ε" in out and "MILP" in out
    assert "certified maximal within δ" in out and "Traceback" not in out + err
    data = json.loads(out_json.read_text())
    assert data["target"] == files["target"] and data["k"] == 2 and data["verified"] is True
    assert len(data["epsilons"]) == len(data["weights"]) == len(data["maximality"]) == 4
    assert data["model"]["sha256"] == sha256_file(files["model"])
    assert data["image"]["sha256"] == sha256_file(files["image"])
    assert {"by_tier", "milp_calls", "verifier_calls"} <= set(data["statistics"])
    assert out_png.stat().st_size > 5000
    # the JSON is enough to re-check the result independently: rebuild the box and solve it exactly
    image = read_image(files["image"])
    # the arrays (the object mask, the counterexamples) sit in the side file the JSON names
    assert (files["dir"] / data["arrays"]["file"]).is_file()
    mask = np.asarray(mlrobust.load_result(out_json)["object"]["mask"], dtype=bool)
    assert np.array_equal(mask, files["mask_array"])
    nbhd = LayeredNeighborhood.build(image, mask, files["net"].sample_shape)
    m, _ = exact_worst_margin(files["net"], nbhd.box(data["epsilons"]), data["target"], 2)
    assert m < -ROBUST_TOLERANCE
    for entry in data["maximality"]:
        if entry["status"] == "refuted":
            cex = np.asarray(entry["counterexample"])
            assert entry["margin"] >= 0 and cex.shape == image.shape


def test_quiet_prints_one_line(monkeypatch, capsys, files):
    code, out, err = run_cli(monkeypatch, capsys, *base(files, "--quiet", "--method", "uniform", "--no-certify"))
    assert code == 0, err
    assert out.startswith("size=") and "verified=True" in out and "\n" not in out.strip()


@pytest.mark.parametrize("eps,expected,exit_code", [("0.01", "robust", 0), ("0.9", "not robust", 10)])
def test_check_one_neighborhood(monkeypatch, capsys, files, eps, expected, exit_code):
    """The exit code is the verdict: 0 robust, 10 not robust (a counterexample)."""
    code, out, err = run_cli(monkeypatch, capsys, *base(files, "--eps", eps))
    assert code == exit_code, err
    assert out.startswith(expected)


def test_check_per_layer_epsilons_and_json(monkeypatch, capsys, files):
    path = files["dir"] / "c.json"
    code, out, err = run_cli(monkeypatch, capsys, *base(files, "--eps-layers", "0.05,0.02,0.01,0", "--json", path))
    assert code == 0, err
    data = json.loads(path.read_text())
    assert data["epsilons"] == [0.05, 0.02, 0.01, 0.0] and data["status"] == "robust"


@pytest.mark.parametrize("extra,message", [
    (("--eps-layers", "0.1,0.2"), "expected 4 epsilons"),
    (("--eps-layers", "a,b"), "must be numbers"),
    (("--eps", "0.1", "--eps-layers", "0.1"), "either --eps or --eps-layers"),
    (("--method", "bogus"), "--method must be one of boundary, optimize, certificate, layer-search, uniform"),
    (("--cutting", "bogus"), "--cutting must be one of fixed, sensitivity"),
    (("--solver", "nosuchsolver"), "nosuchsolver"),
])
def test_bad_options(monkeypatch, capsys, files, extra, message):
    code, out, err = run_cli(monkeypatch, capsys, *base(files, *extra))
    assert code == 2 and message in err and "Traceback" not in err


def test_target_not_in_top_k_says_what_the_network_predicts(monkeypatch, capsys, files):
    logits = files["net"].logits(read_image(files["image"])[None])[0]
    worst = int(np.argmin(logits))
    args = list(base(files))
    args[4] = worst
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and f"label {worst} is not among the top-2" in err and "the network predicts [" in err


def test_bad_files(monkeypatch, capsys, files, tmp_path):
    write_image(tmp_path / "big.png", np.zeros((8, 8)))
    code, _, err = run_cli(monkeypatch, capsys, "verify", files["model"], tmp_path / "big.png", "--target", "0",
                           "--object-mask", files["mask"])
    assert code == 2 and "8x8 pixels" in err and "expects 5x5" in err
    (tmp_path / "junk.png").write_bytes(b"garbage")
    code, _, err = run_cli(monkeypatch, capsys, "verify", files["model"], tmp_path / "junk.png", "--target", "0")
    assert code == 2 and "cannot read" in err
    code, _, err = run_cli(monkeypatch, capsys, "verify", tmp_path / "none.onnx", files["image"], "--target", "0")
    assert code == 2 and "does not exist" in err
    (tmp_path / "junk.onnx").write_bytes(b"garbage")
    code, _, err = run_cli(monkeypatch, capsys, "verify", tmp_path / "junk.onnx", files["image"], "--target", "0")
    assert code == 2 and "error:" in err and "Traceback" not in err
    write_mask(tmp_path / "empty.png", np.zeros((5, 5), dtype=bool))
    code, _, err = run_cli(monkeypatch, capsys, *base(files)[:5], "--object-mask", tmp_path / "empty.png")
    assert code == 2 and "empty" in err


def test_ctrl_c_during_a_search_exits_130_with_a_message():
    """Ctrl-C while a search runs: exit code 130 and one line saying so, no traceback."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-c", "from mlrobust.cli import main; main()", "verify",
            "examples/models/mnist2_pgd.onnx", "examples/images/ex00.png", "--target", "1", "--object-mask",
            "examples/images/ex00_perturbed.png", "--time-limit", "300", "--quiet"]
    from test_batch import default_sigint

    proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    time.sleep(12)  # imports and the start of the search
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


def test_the_time_kept_for_writing_results_grows_with_the_image(tmp_path):
    from PIL import Image

    from mlrobust.cli import verify_cmd

    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    assert verify_cmd._image_values(big) == 270_000
    assert verify_cmd._image_values(tmp_path / "missing.png") == 0
    plain, writing = verify_cmd.time_left(1000.0), verify_cmd.time_left(1000.0, 270_000)
    assert plain - writing == pytest.approx(270_000 * verify_cmd.OUTPUT_SECONDS_PER_VALUE, abs=0.05)
