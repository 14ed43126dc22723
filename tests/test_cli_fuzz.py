"""Fuzzing the command line: random arguments and broken files (random bytes, truncated ONNX / PNG / VNN-LIB, NaN
and inf, wrong shapes, huge values) never end in a traceback or a half-written output. Every run exits with one of
the documented codes 0, 2, 10, 20, and an output file is either absent or whole.

Runs in-process (the imports are paid once) on the tiny model of test_verify_cli; a few examples by default, many
more with ``-m slow``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_verify_cli import files  # noqa: F401  (module-scoped fixture: tiny model, image, mask)

from mlrobust.cli import run
from mlrobust.neighborhood.image_io import write_image

ALLOWED = {0, 2, 10, 20}


@pytest.fixture(scope="module")
def broken(files, tmp_path_factory):  # noqa: F811
    """Valid and broken inputs next to each other."""
    d = tmp_path_factory.mktemp("fuzz")
    model_bytes = Path(files["model"]).read_bytes()
    png_bytes = Path(files["image"]).read_bytes()
    rng = np.random.default_rng(0)
    out = {"model": files["model"], "image": files["image"], "mask": files["mask"], "folder": d,
           "missing": d / "missing.onnx"}
    (d / "random.onnx").write_bytes(rng.bytes(300))
    (d / "cut.onnx").write_bytes(model_bytes[: len(model_bytes) // 2])
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.png").write_bytes(rng.bytes(200))
    (d / "cut.png").write_bytes(png_bytes[: len(png_bytes) // 2])
    write_image(d / "big.png", np.zeros((9, 7)))
    image = np.load(files["image"]) if str(files["image"]).endswith(".npy") else None
    shape = (5, 5) if image is None else image.shape
    np.save(d / "nan.npy", np.full(shape, np.nan))
    np.save(d / "inf.npy", np.full(shape, np.inf))
    np.save(d / "huge.npy", np.full(shape, 1e300))
    np.save(d / "shape.npy", np.zeros((3, 4, 5, 6)))
    (d / "text.npy").write_text("not numpy")
    header = "".join(f"(declare-const X_{i} Real)\n" for i in range(25)) + "(declare-const Y_0 Real)\n" \
        "(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n"
    bounds = "".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(25))
    good = header + bounds + "(assert (>= Y_1 Y_0))\n"
    (d / "good.vnnlib").write_text(good)
    (d / "cut.vnnlib").write_text(good[: len(good) // 2])
    (d / "random.vnnlib").write_bytes(rng.bytes(200))
    (d / "nan.vnnlib").write_text(header + bounds.replace(" 1))", " nan))") + "(assert (>= Y_1 Y_0))\n")
    (d / "inf.vnnlib").write_text(header + bounds.replace(" 1))", " 1e999))") + "(assert (>= Y_1 Y_0))\n")
    (d / "huge.vnnlib").write_text(header + bounds.replace(" 1))", " 1e300))") + "(assert (>= Y_1 Y_0))\n")
    (d / "big.vnnlib").write_text(header + bounds.replace(" 1))", " 1e30))") + "(assert (>= Y_1 Y_0))\n")
    (d / "shape.vnnlib").write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n"
                                    "(assert (<= X_0 1))\n(assert (>= Y_0 0))\n")
    return out


MODELS = ["model", "missing", "folder", "random.onnx", "cut.onnx", "empty.onnx", "image"]
IMAGES = ["image", "folder", "missing", "random.png", "cut.png", "big.png", "nan.npy", "inf.npy", "huge.npy",
          "shape.npy", "text.npy", "model"]
PROPS = ["good.vnnlib", "cut.vnnlib", "random.vnnlib", "nan.vnnlib", "inf.vnnlib", "huge.vnnlib", "big.vnnlib",
         "shape.vnnlib",
         "folder", "missing", "model"]
NUMBERS = ["0", "1", "2", "-1", "0.01", "0.5", "nan", "inf", "-inf", "1e308", "abc", ""]


def _path(broken: dict, key: str) -> str:
    return str(broken[key] if key in broken else broken["folder"] / key)


def _outputs(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@st.composite
def command_lines(draw, broken: dict, out_dir: Path) -> tuple[list[str], list[Path]]:
    kind = draw(st.sampled_from(["verify", "vnnlib", "inspect"]))
    model = _path(broken, draw(st.sampled_from(MODELS)))
    outputs: list[Path] = []
    if kind == "inspect":
        return ["inspect", model] + draw(st.sampled_from([[], ["--json"], ["--bogus"]])), outputs
    if kind == "vnnlib":
        args = ["vnnlib", model, _path(broken, draw(st.sampled_from(PROPS)))]
        if draw(st.booleans()):
            args += ["--timeout", draw(st.sampled_from(NUMBERS[:9]))]
        if draw(st.booleans()):
            out = out_dir / draw(st.sampled_from(["r.txt", "new/r.txt", "."]))
            args += ["--out", str(out)]
            outputs.append(out)
        if draw(st.booleans()):
            args += ["--tightening", draw(st.sampled_from(["ibp", "crown", "lp", ""]))]
        return args, outputs
    args = ["verify", model, _path(broken, draw(st.sampled_from(IMAGES))),
            "--target", draw(st.sampled_from(["0", "1", "2", "-1", "99", "abc"]))]
    args += draw(st.sampled_from([["--object-mask", str(broken["mask"])], ["--object-box", "0,0,2,2"],
                                  ["--object-box", "3,3,1,1"], ["--object-box", "x"], ["--object-label", "1"],
                                  ["--object-mask", _path(broken, "random.png")]]))
    args += draw(st.sampled_from([["--eps", draw(st.sampled_from(NUMBERS))],
                                  ["--eps-layers", draw(st.sampled_from(["0.1,0.05,0,0", "0.1", "nan,0,0,0",
                                                                         "1e308,1,1,1", "a,b", ""]))]]))
    for option, values in (("--k", ["0", "1", "2", "3", "100"]), ("--time-limit", ["5", "0", "-1", "nan", "inf"]),
                           ("--verifier", ["cascade", "bounds", "attack", "milp", "bogus"]),
                           ("--solver", ["highs", "bogus"]), ("--weights", ["uniform", "count", "nofile"])):
        if draw(st.booleans()):
            args += [option, draw(st.sampled_from(values))]
    if draw(st.booleans()):
        out = out_dir / draw(st.sampled_from(["r.json", "a/b/r.json", "."]))
        args += ["--json", str(out)]
        outputs.append(out)
    if draw(st.booleans()):
        out = out_dir / draw(st.sampled_from(["h.png", "new/h.svg", "h.txt", "h"]))
        args += ["--heatmap", str(out)]
        outputs.append(out)
    if draw(st.booleans()):
        args.append("--quiet")
    return args, outputs


def _check_run(args: list[str], outputs: list[Path], out_dir: Path) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run(args)
    text = stdout.getvalue() + stderr.getvalue()
    assert code in ALLOWED, f"exit {code} for {args}:\n{text[-3000:]}"
    assert "Traceback" not in text, f"{args}:\n{text[-3000:]}"
    if code == 2:
        assert any(line.startswith("error: ") for line in stderr.getvalue().splitlines()), (args, text[-2000:])
    leftovers = [p for p in _outputs(out_dir) if ".part" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for path in outputs:
        if path.is_file():  # present means whole
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".txt":
                assert path.read_text().split("\n", 1)[0] in ("sat", "unsat", "timeout", "unknown")
            else:
                assert path.stat().st_size > 0


def _fuzz(broken: dict, tmp_path_factory, data) -> None:
    out_dir = tmp_path_factory.mktemp("fuzz_out")
    args, outputs = data.draw(command_lines(broken, out_dir))
    _check_run(args, outputs, out_dir)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_fuzz_command_line(broken, tmp_path_factory, data):
    _fuzz(broken, tmp_path_factory, data)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_command_line_long(broken, tmp_path_factory, data):
    _fuzz(broken, tmp_path_factory, data)


@pytest.mark.parametrize("name", ["random.onnx", "cut.onnx", "empty.onnx", "folder", "image"])
def test_broken_models(broken, tmp_path, name):
    _check_run(["inspect", _path(broken, name)], [], tmp_path)


@pytest.mark.parametrize("name", ["random.png", "cut.png", "big.png", "nan.npy", "inf.npy", "huge.npy", "shape.npy",
                                  "text.npy"])
def test_broken_images(broken, tmp_path, name):
    _check_run(["verify", str(broken["model"]), _path(broken, name), "--target", "0", "--object-box", "0,0,2,2",
                "--eps", "0.01", "--json", str(tmp_path / "r.json")], [tmp_path / "r.json"], tmp_path)


@pytest.mark.parametrize("name", ["good.vnnlib", "cut.vnnlib", "random.vnnlib", "nan.vnnlib", "inf.vnnlib",
                                  "huge.vnnlib", "big.vnnlib", "shape.vnnlib"])
def test_broken_properties(broken, tmp_path, name):
    _check_run(["vnnlib", str(broken["model"]), _path(broken, name), "--timeout", "20", "--out",
                str(tmp_path / "r.txt")], [tmp_path / "r.txt"], tmp_path)
