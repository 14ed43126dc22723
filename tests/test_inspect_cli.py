"""``mlrobust inspect``: the summary it prints (table and JSON) and its error handling (exit code 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_factories import f32, make_model, single_node_model
from typer.testing import CliRunner

import mlrobust.cli.inspect_cmd  # noqa: F401  (registers the command on the app)
from mlrobust import load_onnx
from mlrobust.cli import app, main
from mlrobust.ir.summary import summarize


@pytest.fixture
def cnn_path(tmp_path):
    """Normalisation, Conv (+ BatchNormalization to fold), Relu, MaxPool, Flatten, Gemm, Softmax."""
    rng = np.random.default_rng(5)
    inits = {"mean": f32([[[0.5]]]), "Wc": f32(rng.normal(size=(2, 1, 3, 3))), "bc": f32(rng.normal(size=2)),
             "s": f32([1.0, 2.0]), "b": f32([0.0, 0.1]), "m": f32([0.2, 0.0]), "v": f32([1.0, 4.0]),
             "Wg": f32(rng.normal(size=(3, 18)))}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["n"], name="normalise"),
             helper.make_node("Conv", ["n", "Wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "Wg"], ["g"], name="fc", transB=1),
             helper.make_node("Softmax", ["g"], ["y"], name="softmax", axis=1)]
    path = tmp_path / "cnn.onnx"
    onnx.save(make_model(nodes, ["batch", 1, 8, 8], ["batch", 3], inits), str(path))
    return path


def test_summary_counts(cnn_path):
    s = summarize(load_onnx(cnn_path))
    assert [n.op for n in s.nodes] == ["Scale", "Conv2d", "Relu", "MaxPool2d", "Reshape", "Dense"]
    assert s.input_shape == [1, 1, 8, 8] and s.output_shape == [3] and s.num_classes == 3
    # Scale 64 + conv 32 + relu 32 + pool 18 + dense 3 (the reshape only relabels its input).
    assert s.neurons == 64 + 32 + 32 + 18 + 3
    assert s.relus == 32 and s.relu_layers == 1 and s.maxpools == 1
    assert s.params == 2 + (18 + 2) + 0 + 54 + 3  # Scale mul+add, Conv w+b, Dense w+b
    assert s.nodes[1].detail == "1 → 2 k3×3 stride 2,2 pad 1,1,1,1"
    assert any("folded BatchNormalization 'bn' into Conv2d 'conv'" == n for n in s.notes)
    assert any(n.startswith("stripped trailing Softmax 'softmax'") for n in s.notes)


def test_inspect_prints_a_readable_summary(cnn_path):
    result = CliRunner().invoke(app, ["inspect", str(cnn_path)], terminal_width=160)
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("cnn.onnx", "(1, 1, 8, 8)", "Conv2d", "MaxPool2d", "Dense", "ReLUs 32", "neurons 149",
                 "folded BatchNormalization 'bn' into Conv2d 'conv'", "stripped trailing Softmax", "3 classes"):
        assert text in out, f"{text!r} missing from:\n{out}"


def test_inspect_json(cnn_path):
    result = CliRunner().invoke(app, ["inspect", str(cnn_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["relus"] == 32 and data["num_classes"] == 3 and data["input_shape"] == [1, 1, 8, 8]
    assert [n["op"] for n in data["nodes"]][:2] == ["Scale", "Conv2d"]
    assert data["nodes"][3]["output_shape"] == [2, 3, 3]
    assert data["source"] == str(cnn_path)


def _run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mlrobust", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    # rich wraps long lines to the terminal width; compare on single-spaced text.
    return exit_info.value.code, " ".join(captured.out.split()), " ".join(captured.err.split())


def test_missing_file_exits_2_without_traceback(monkeypatch, capsys, tmp_path):
    code, out, err = _run_main(monkeypatch, capsys, "inspect", str(tmp_path / "missing.onnx"))
    assert code == 2
    assert "error:" in err and "does not exist" in err and "Traceback" not in err + out


def test_unsupported_op_exits_2_naming_the_op(monkeypatch, capsys, tmp_path):
    path = tmp_path / "erf.onnx"
    onnx.save(single_node_model("Erf", [1, 4]), str(path))
    code, out, err = _run_main(monkeypatch, capsys, "inspect", str(path))
    assert code == 2
    assert "unsupported ONNX op 'Erf' at node 'erf_node'" in err and "Supported ops:" in err


def test_console_script(cnn_path, tmp_path):
    """The installed entry point runs end to end, and a non-ONNX file gives exit code 2 and one clear line."""
    exe = [sys.executable, "-c", "from mlrobust.cli import main; main()"]
    ok = subprocess.run([*exe, "inspect", str(cnn_path), "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["relus"] == 32
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    bad = subprocess.run([*exe, "inspect", str(junk)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    err = " ".join(bad.stderr.split())
    assert f"error: {junk} is not an ONNX model" in err and "Traceback" not in err
