"""The command line never ends in a traceback: usage errors, bad files and unwritable outputs give one ``error:``
line and exit 2 (before any work), answers are exit codes, writes are atomic, and Ctrl-C is 130.

Each test names the defect it guards against; all run in-process on the tiny model of test_verify_cli.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_objects import find_object, region_logits, two_blob_image
from test_verify_cli import files  # noqa: F401  (the module-scoped fixture: a tiny model, image and mask)

import mlrobust
from mlrobust.cli import EXIT_INTERRUPTED, run
from mlrobust.cli.files import IMAGE_SUFFIXES, atomic_path, atomic_write_text
from mlrobust.errors import InputError
from mlrobust.neighborhood.image_io import write_image

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def base(files, *extra):  # noqa: F811
    return ("verify", files["model"], files["image"], "--target", files["target"], "--object-mask", files["mask"],
            "--time-limit", "60", *extra)


# --- usage errors: typer's own click copy raised them past the handler, as tracebacks --------------------------------
@pytest.mark.parametrize("args,message", [
    (["verify"], "Missing argument 'model'"),
    (["verify", "m.onnx", "i.png", "--target", "abc"], "--target"),
    (["verify", "m.onnx", "i.png", "--target", "1", "--bogus"], "No such option: --bogus"),
    (["--bogus"], "No such option: --bogus"),
    (["nosuchcommand"], "No such command"),
    (["vnnlib", "m.onnx"], "Missing argument 'PROP'"),
])
def test_usage_errors_are_one_line_and_exit_2(capsys, args, message):
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert message.lower() in one_error_line(err).lower()


def test_no_arguments_prints_help_and_exits_2(capsys):
    code, out, err = cli(capsys)
    assert code == 2 and "Usage: mlrobust" in err and "verify" in err and "Traceback" not in err


def test_version(capsys):
    code, out, err = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"mlrobust {mlrobust.__version__}"


def test_both_click_exception_families_are_caught():
    from mlrobust.cli import _exception_types

    found = _exception_types("ClickException")
    import click.exceptions

    assert click.exceptions.ClickException in found
    try:
        import typer._click.exceptions as own
    except ImportError:  # typer < 0.29 uses click itself
        return
    assert own.ClickException in found


def test_help_documents_the_exit_codes(capsys):
    for command in ("verify", "vnnlib"):
        code, out, _ = cli(capsys, command, "--help")
        text = " ".join(out.split())
        assert code == 0 and "Exit codes: 0" in text and "10 counterexample" in text and "130 interrupted" in text
    doc = (ROOT / "docs" / "cli.md").read_text()
    assert "## Exit codes" in doc and "| 10 |" in doc and "| 130 |" in doc


# --- input files -------------------------------------------------------------------------------------------------
def test_a_folder_is_not_called_missing(capsys, files, tmp_path):  # noqa: F811
    code, _, err = cli(capsys, "verify", files["model"], tmp_path, "--target", "0")
    assert code == 2 and "is a folder, not a file" in one_error_line(err)
    code, _, err = cli(capsys, "vnnlib", files["model"], tmp_path)
    assert code == 2 and "is a folder, not a file" in one_error_line(err)


def test_errors_come_before_torch_is_imported(files, tmp_path):  # noqa: F811
    """Argument and file errors are answered from the light modules (no torch, no solvers): a fresh process."""
    write_image(tmp_path / "big.png", np.zeros((8, 8)))
    for image, message in ((tmp_path, "is a folder"), (tmp_path / "big.png", "expects 5x5")):
        script = ("import sys; from mlrobust.cli import run; "
                  f"code = run(['verify', {str(files['model'])!r}, {str(image)!r}, '--target', '0']); "
                  "print(code, 'torch' in sys.modules, 'pyomo' in sys.modules)")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.stdout.split() == ["2", "False", "False"] and message in proc.stderr, proc.stderr



def test_a_broken_vnnlib_file_is_reported_before_torch_is_imported(files, tmp_path):  # noqa: F811
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    script = ("import sys; from mlrobust.cli import run; "
              f"code = run(['vnnlib', {str(files['model'])!r}, {str(prop)!r}]); "
              "print(code, 'torch' in sys.modules, 'pyomo' in sys.modules, 'scipy' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False", "False"], proc.stderr
    assert "VNN-LIB line 2" in proc.stderr

# --- outputs checked before the work -----------------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """The search and the check must not start."""
    from mlrobust import api

    def refuse(*args, **kwargs):
        raise AssertionError("the work started before the outputs were checked")

    monkeypatch.setattr(api, "maximize", refuse)
    monkeypatch.setattr(api, "check", refuse)


@pytest.mark.parametrize("option,name,message", [
    ("--json", ".", "is a folder"),
    ("--heatmap", "h.txt", "must end in one of .png"),
    ("--heatmap", "h", "must end in one of .png"),
])
def test_bad_output_paths_fail_before_the_work(capsys, files, tmp_path, no_work, option, name, message):  # noqa: F811
    code, _, err = cli(capsys, *base(files, option, f"{tmp_path}/{name}"))
    assert code == 2 and message in one_error_line(err)


def test_output_under_a_file_fails_before_the_work(capsys, files, tmp_path, no_work):  # noqa: F811
    (tmp_path / "plain").write_text("x")
    code, _, err = cli(capsys, *base(files, "--json", tmp_path / "plain" / "r.json"))
    assert code == 2 and "is a file, not a folder" in one_error_line(err)


def test_missing_output_folders_are_created(capsys, files, tmp_path):  # noqa: F811
    out_json, out_png = tmp_path / "a" / "b" / "r.json", tmp_path / "c" / "h.png"
    code, _, err = cli(capsys, *base(files, "--eps", "0.01", "--json", out_json, "--heatmap", out_png))
    assert code == 0, err
    assert json.loads(out_json.read_text())["status"] == "robust" and out_png.stat().st_size > 1000
    # the JSON and its side file of arrays; no temporary file left behind
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["r.json", "r.npz"]


def test_the_command_line_knows_the_shipped_solvers():
    from mlrobust.backends.registry import _BUILTIN
    from mlrobust.cli.verify_cmd import SHIPPED_SOLVERS

    assert set(SHIPPED_SOLVERS) == set(_BUILTIN)


def test_heatmap_suffixes_are_formats_matplotlib_writes():
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    assert {s.lstrip(".") for s in IMAGE_SUFFIXES} <= set(supported)


def test_vnnlib_out_folder_is_created_and_the_answer_is_the_exit_code(capsys, tmp_path):
    from test_vnnlib import robustness_property

    from mlrobust.ir.onnx_import import load_onnx

    model = ROOT / "examples" / "models" / "mnist2_nodefense.onnx"
    net = load_onnx(model)
    x0 = np.full(int(np.prod(net.sample_shape)), 0.0)
    target = int(np.argmax(net.logits(x0.reshape(net.sample_shape)[None])[0]))
    path = tmp_path / "p.vnnlib"
    path.write_text(robustness_property(x0, 1.0, target, net.num_classes))
    out = tmp_path / "new" / "result.txt"
    code, stdout, err = cli(capsys, "vnnlib", model, path, "--out", out, "--timeout", "60")
    assert code == 10, err  # sat: the whole pixel range holds a counterexample
    assert stdout.startswith("sat\n") and out.read_text() == stdout
    assert "(X_0 -0.0)" not in stdout and "-0.0)" not in stdout  # a pixel at 0 reads 0.0, not -0.0


_SLOW_SOLVER = """
import sys, time
import mlrobust.verify.vnnlib as vnnlib

def never_stops(*args, **kwargs):  # a solver stuck in C code past every limit it was given
    time.sleep(60)

vnnlib.check_vnnlib = never_stops
sys.argv = ["mlrobust", *sys.argv[1:]]
from mlrobust.cli import console
console()
"""


def test_vnnlib_hard_deadline_answers_timeout_when_the_work_overruns(tmp_path):
    from test_vnnlib import robustness_property

    from mlrobust.ir.onnx_import import load_onnx

    model = ROOT / "examples" / "models" / "mnist2_nodefense.onnx"
    net = load_onnx(model)
    x0 = np.full(int(np.prod(net.sample_shape)), 0.5)
    path = tmp_path / "p.vnnlib"
    path.write_text(robustness_property(x0, 0.01, 0, net.num_classes))
    out = tmp_path / "result.txt"
    proc = subprocess.run([sys.executable, "-c", _SLOW_SOLVER, "vnnlib", str(model), str(path), "--timeout", "4",
                           "--out", str(out)], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 20, proc.stderr
    assert proc.stdout == "timeout\n" and out.read_text() == "timeout\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.vnnlib", "result.txt"]  # no temporary file left


def test_hard_deadline_is_off_outside_the_console_script():
    from mlrobust.cli import HARD_DEADLINES, hard_deadline

    assert not HARD_DEADLINES["enabled"]
    assert hard_deadline(0.0, lambda: 20) is None  # run() in a test or a notebook never ends its process


@pytest.mark.parametrize("console,late", [(True, True), (True, False), (False, False), (False, True)])
def test_the_time_limit_counts_from_the_process_start_in_the_console_script(monkeypatch, console, late):
    """The console script's first command counts its process's start-up, however slow the imports were (on a
    loaded machine they took over 2 s); elsewhere only a command run soon after the import does."""
    import mlrobust.cli as cli

    start_up = 10.0 if late else 0.5  # from the process start to the import of mlrobust.cli
    now = 1000.0
    monkeypatch.setattr(cli.time, "monotonic", lambda: now)
    monkeypatch.setattr(cli, "PROCESS_START", now - start_up - 0.5)
    monkeypatch.setattr(cli, "_IMPORTED", now - 0.5)
    monkeypatch.setattr(cli, "CLOCK", {"start": 0.0, "commands": 0})
    monkeypatch.setattr(cli, "HARD_DEADLINES", {"enabled": console})
    cli._start_clock()
    fresh = console or not late
    assert cli.seconds_since_start() == (start_up + 0.5 if fresh else 0.0)
    cli._start_clock()  # a second command in the same process counts from its own start
    assert cli.seconds_since_start() == 0.0


# --- atomic writes and Ctrl-C ------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_no_file(tmp_path, error):
    target = tmp_path / "r.json"
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise error()
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert target.stat().st_mode & 0o044  # readable by others like any new file, not mkstemp's private mode


def test_ctrl_c_during_a_check_exits_130_and_writes_nothing(capsys, files, tmp_path, monkeypatch):  # noqa: F811
    from mlrobust import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "check", interrupted)
    out_json = tmp_path / "o" / "r.json"
    code, _, err = cli(capsys, *base(files, "--eps", "0.01", "--json", out_json))
    assert code == EXIT_INTERRUPTED and err.strip() == "interrupted"
    assert not out_json.parent.exists()  # nothing written: the folder made for it is removed again


def test_a_search_returned_as_interrupted_is_written_and_exits_130(capsys, files, tmp_path, monkeypatch):  # noqa: F811
    from mlrobust import api

    real = api.maximize

    def stopped_early(*args, **kwargs):
        result = real(*args, **kwargs)
        result.interrupted = True  # what a search stopped by Ctrl-C returns: the best proven vector so far
        return result

    monkeypatch.setattr(api, "maximize", stopped_early)
    out_json = tmp_path / "r.json"
    code, out, err = cli(capsys, *base(files, "--method", "uniform", "--no-certify", "--quiet", "--json", out_json))
    assert code == EXIT_INTERRUPTED, err
    data = json.loads(out_json.read_text())
    assert data["interrupted"] is True and data["verified"] is True and "interrupted=True" in out


# --- the other defects -------------------------------------------------------------------------------------------
def test_json_records_solver_and_limits(capsys, files, tmp_path):  # noqa: F811
    check_json, search_json = tmp_path / "c.json", tmp_path / "s.json"
    code, _, err = cli(capsys, *base(files, "--eps", "0.01", "--json", check_json))
    assert code == 0, err
    assert json.loads(check_json.read_text())["settings"] == {"solver": "highs", "verifier": "cascade",
                                                             "time_limit": 60.0, "k": 2, "weights": "uniform"}
    code, _, err = cli(capsys, *base(files, "--method", "uniform", "--no-certify", "--quiet", "--query-time-limit",
                                     "7", "--json", search_json))
    assert code == 0, err
    settings = json.loads(search_json.read_text())["settings"]
    assert settings["query_time_limit"] == 7.0 and settings["time_limit"] == 60.0 and settings["solver"] == "highs"


def test_no_negative_zero_in_the_json(capsys, files, tmp_path):  # noqa: F811
    from mlrobust.cli.verify_cmd import plain_zero

    assert json.dumps(plain_zero({"x": [-0.0, [1.0, -0.0]], "m": -0.0})) == '{"x": [0.0, [1.0, 0.0]], "m": 0.0}'
    path = tmp_path / "c.json"
    code, _, err = cli(capsys, *base(files, "--eps", "0.9", "--json", path))
    assert code == 10, err
    assert "-0.0" not in path.read_text()


def test_unknown_solver_prints_no_pyomo_noise(files):  # noqa: F811
    """In a fresh process (pytest would capture Pyomo's log records): no warnings, no traceback, one line."""
    args = [sys.executable, "-c", "from mlrobust.cli import main; main()", *map(str, base(files)), "--eps", "0.01",
            "--solver", "bogus"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown solver 'bogus'" in one_error_line(proc.stderr)


def test_rgb_image_for_a_grayscale_model_is_a_one_line_note(capsys, files, tmp_path):  # noqa: F811
    from mlrobust.neighborhood.image_io import read_image

    gray = read_image(files["image"])[0]
    rgb = np.stack([gray, gray * 0.5, gray * 0.25])
    write_image(tmp_path / "rgb.png", rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw warning would fail here; the command turns it into a note
        code, out, err = cli(capsys, "verify", files["model"], tmp_path / "rgb.png", "--target", files["target"],
                             "--object-mask", files["mask"], "--eps", "0", "--time-limit", "30")
    notes = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 2, 10, 20) and "UserWarning" not in err and "warnings.warn" not in err
    # once: the command's quick look at the image before the work must not repeat the note the real load prints
    assert sum(line.startswith("note: ") and "colour" in line for line in notes) == 1, err


def test_object_label_not_in_the_image_is_an_error():
    img, left, right = two_blob_image()
    with pytest.raises(InputError, match="object label 5 is not among the labels the model sees"):
        find_object(img, region_logits, target=7, object_label=5)
    assert find_object(img, region_logits, target=7, object_label=3).label == 3


def test_batch_quiet_summary_is_one_line_when_not_a_terminal(capsys, tmp_path):
    from test_batch import tiny_data, tiny_model

    from mlrobust.data.double_mnist import save_npz

    model = tiny_model(tmp_path / "tiny.onnx")
    npz = save_npz(tmp_path / "tiny.npz", {"test": tiny_data(model, n=2)})
    code, out, err = cli(capsys, "batch", model, npz, "--out", tmp_path / "new" / "r.jsonl", "--limit", "1",
                         "--target-side", "right", "--method", "uniform", "--no-certify", "--delta", "0.05",
                         "--time-limit", "20", "--quiet")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("images=1 ") and " wall=" in lines[0]


@pytest.mark.parametrize("text,line", [
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\n(assert (<= X_0 1))\n(assert (bogus X_0 0))\n", 5),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0\n 1)\n", 3),
    ("(declare-const X_0 Real)\n(declare-const Z Real)\n", 2),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n"
     "(assert (<= (+ X_0 Y_0) 0))\n", 5),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1e999))\n", 3),
])
def test_vnnlib_errors_name_the_line(text, line):
    from mlrobust.verify.vnnlib import parse_vnnlib

    with pytest.raises(InputError, match=rf"^VNN-LIB line {line}: "):
        parse_vnnlib(text)


def test_vnncomp_output_has_no_negative_zero():
    from mlrobust.verify.vnnlib import VnnlibResult

    text = VnnlibResult("sat", x=np.array([-0.0, 0.5]), y=np.array([-0.0])).to_vnncomp()
    assert text == "sat\n((X_0 0.0)\n (X_1 0.5)\n (Y_0 0.0))\n"


def test_console_script_ends_fast_with_complete_outputs(files, tmp_path):  # noqa: F811
    """The console script skips Python's slow shutdown after verify; its answer, exit code and JSON are whole."""
    out_json = tmp_path / "r.json"
    args = [sys.executable, "-c", "from mlrobust.cli import console; console()", *map(str, base(files)),
            "--eps", "0.9", "--json", str(out_json)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 10, proc.stderr
    assert proc.stdout.startswith("not robust") and "counterexample with margin" in proc.stdout
    assert json.loads(out_json.read_text())["status"] == "not_robust"
