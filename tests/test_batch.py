"""``mlrobust batch`` on a tiny model and data set: lines, resumability (a real kill, a cut last line), errors,
local processes and a Dask LocalCluster, and the data-set readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlrobust.batch import BatchSettings, ModelRef, ResultStore, load_jobs, run_batch, summarize
from mlrobust.data.double_mnist import DoubleMnist, save_npz
from mlrobust.errors import InputError
from mlrobust.verify.margin import topk_labels

SIDE = 8  # tiny "Double-MNIST": 8x8 images, a left and a right blob
FAST = BatchSettings(method="uniform", delta=0.05, time_limit=20, query_time_limit=5)


def tiny_model(path: Path, seed: int = 0, hidden: int = 8) -> Path:
    """Flatten -> Gemm(64 -> hidden) -> Relu -> Gemm(hidden -> 10), float32 weights from ``seed``."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (hidden, SIDE * SIDE)).astype(np.float32)
    b1 = rng.normal(0, 0.1, hidden).astype(np.float32)
    w2 = rng.normal(0, 0.5, (10, hidden)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 10).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, SIDE, SIDE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def tiny_data(model_path: Path, n: int = 8, seed: int = 1, bad: int | None = None) -> DoubleMnist:
    """``n`` images whose two "digits" are the model's own top-2 labels (so either may be the target); image
    ``bad`` instead names a digit the model ranks last (its target side fails with an InputError)."""
    from mlrobust import load_onnx

    net = load_onnx(model_path)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIDE, SIDE), dtype=np.uint8)
    masks = np.zeros((n, 2, SIDE, SIDE), dtype=bool)
    for i in range(n):
        for side in range(2):
            blob = rng.random((SIDE - 2, SIDE // 2 - 1)) < 0.5
            block = np.zeros((SIDE, SIDE // 2), dtype=bool)
            block[1:-1, :-1] = blob
            masks[i, side, :, side * SIDE // 2:(side + 1) * SIDE // 2] = block
            images[i][masks[i, side]] = rng.integers(80, 256, int(block.sum()))
    logits = net.logits(images[:, None].astype(np.float64) / 255.0)
    digits = np.array(topk_labels(logits, 2), dtype=np.int64)
    if bad is not None:
        digits[bad, 1] = int(np.argmin(logits[bad]))
    labels = np.zeros((n, 10), dtype=np.uint8)
    np.put_along_axis(labels, digits, 1, axis=1)
    return DoubleMnist(images, labels, digits, masks, np.zeros((n, 2, 2), dtype=np.int64),
                       np.zeros((n, 2), dtype=np.int64), split="test", seed=seed)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = tiny_model(root / "tiny.onnx")
    data = tiny_data(model, n=8, bad=7)
    npz = save_npz(root / "tiny.npz", {"test": data})
    return model, npz, data


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the store --------------------------------------------------------------------------------------------------
def test_store_cuts_an_unfinished_last_line_and_ignores_garbage(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append({"id": "a", "status": "done"})
    store.append({"id": "b", "status": "error"})
    with open(path, "ab") as fh:
        fh.write(b"not json\n")
        fh.write(b'{"id": "c", "status": "do')  # a write cut by a crash
    state = store.read()
    assert set(state.lines) == {"a", "b"} and state.unreadable == 1 and state.truncated_bytes > 0
    assert state.finished() == {"a", "b"} and state.finished(retry_errors=True) == {"a"}
    assert path.read_bytes().endswith(b'"do')  # reading alone changes nothing
    store.read(repair=True)
    store.append({"id": "c", "status": "done"})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"id": "c", "status": "done"} and len(lines) == 4
    with pytest.raises(ValueError):
        store.append({"id": "d", "x": float("nan")})  # never a line that is not strict JSON


# --- data sets --------------------------------------------------------------------------------------------------
def test_npz_jobs_choose_the_target_side(tiny):
    _, npz, data = tiny
    alt = load_jobs(npz, side_rule="auto")
    assert [j.id for j in alt[:2]] == ["test/00000/left", "test/00001/right"]
    j = alt[1]
    assert j.target == data.digits[1, 1] and np.array_equal(j.mask, data.masks[1, 0])
    assert j.image.dtype == np.uint8 and j.pixels().max() <= 1.0
    both = load_jobs(npz, side_rule="both", start=2, limit=3)
    assert len(both) == 6 and both[0].id == "test/00002/left" and both[-1].id == "test/00004/right"
    assert {j.target for j in both[:2]} == set(data.digits[2])
    with pytest.raises(InputError, match="no split 'train'"):
        load_jobs(npz, split="train")
    with pytest.raises(InputError, match="names no target"):
        load_jobs(npz, side_rule="manifest")
    with pytest.raises(InputError, match="unknown target side"):
        load_jobs(npz, side_rule="middle")
    with pytest.raises(InputError, match="does not exist"):
        load_jobs(npz.parent / "missing.npz")


def test_manifest_jobs_from_the_examples_format_and_the_data_builder(tiny, tmp_path):
    from mlrobust.data.double_mnist import save_png
    from mlrobust.training.examples import write_examples

    model, _, data = tiny
    from mlrobust import load_onnx

    logits = load_onnx(model).logits(data.float_images().astype(np.float64))
    write_examples(tmp_path / "ex", data, [0, 1, 2], {"tiny": logits})
    jobs = load_jobs(tmp_path / "ex")
    assert [j.id for j in jobs] == ["ex00", "ex01", "ex02"]
    # the examples take the left digit as target for even entries: the manifest's own choice
    assert jobs[0].target == data.digits[0, 0] and np.array_equal(jobs[0].mask, data.masks[0, 1])
    assert jobs[1].target == data.digits[1, 1] and np.array_equal(jobs[1].mask, data.masks[1, 0])
    assert np.allclose(jobs[2].pixels()[0], data.images[2] / 255.0)
    swapped = load_jobs(tmp_path / "ex", side_rule="right")
    assert swapped[0].id == "ex00/right" and swapped[0].target == data.digits[0, 1]
    assert np.array_equal(swapped[0].mask, data.masks[0, 0])
    save_png(tmp_path / "png", {"test": data.subset(slice(0, 3))})
    built = load_jobs(tmp_path / "png", side_rule="auto")  # finds test/manifest.json; no target: alternate
    assert [j.id for j in built] == ["00000/left", "00001/right", "00002/left"]
    assert built[1].target == data.digits[1, 1] and np.array_equal(built[1].mask, data.masks[1, 0])
    with pytest.raises(InputError, match="no manifest.json"):
        load_jobs(tmp_path)


# --- runs -------------------------------------------------------------------------------------------------------
def test_run_writes_one_line_per_image_and_resumes(tiny, tmp_path):
    model, npz, data = tiny
    out = tmp_path / "r.jsonl"
    jobs = load_jobs(npz, side_rule="right")  # image 7's right digit is ranked last: an error line
    first = run_batch(model, jobs[:3], out, FAST)
    assert first.written == 3 and first.skipped == 0
    lines = read_lines(out)
    assert [line["id"] for line in lines] == [j.id for j in jobs[:3]]
    for line, job in zip(lines, jobs):
        assert line["status"] == "done" and line["target"] == job.target
        r = line["result"]
        assert r["verified"] and r["method"] == "uniform" and r["k"] == 2 and r["target"] == job.target
        assert len(r["epsilons"]) == len(r["layer_counts"]) and r["size"] == pytest.approx(
            float(np.dot(r["weights"], r["epsilons"])))
        assert r["model"]["sha256"] == ModelRef.from_file(model).sha256
        assert r["object"]["pixels"] == int(job.mask.sum())
    seen = []
    second = run_batch(model, jobs, out, FAST, on_line=lambda line, n, todo: seen.append((line["id"], n, todo)))
    assert second.skipped == 3 and second.written == len(jobs) - 3
    assert [s[0] for s in seen] == [j.id for j in jobs[3:]] and seen[-1][1:] == (5, 5)
    lines = read_lines(out)
    assert [line["id"] for line in lines] == [j.id for j in jobs]  # nothing run twice
    bad = lines[-1]
    assert bad["status"] == "error" and bad["error"]["type"] == "InputError"
    assert "not among the top-2" in bad["error"]["message"]
    s = summarize(second.lines)
    assert (s.images, s.done, s.errors, s.verified) == (8, 7, 1, 7)
    assert s.sizes.size == 7 and s.layers == sum(len(line["result"]["epsilons"]) for line in lines[:-1])
    # a third run has nothing to do; errors are re-run only when asked
    assert run_batch(model, jobs, out, FAST).written == 0
    assert run_batch(model, jobs, out, FAST, retry_errors=True).new_ids == [jobs[-1].id]
    # other settings on the same file are refused instead of mixing two configurations
    with pytest.raises(InputError, match="another model or other settings"):
        run_batch(model, jobs, out, BatchSettings(method="layer-search", delta=0.05, time_limit=20))


def test_a_search_stopped_by_ctrl_c_ends_the_run_without_a_line(tiny, tmp_path, monkeypatch):
    """Ctrl-C inside a search makes it return what it had proven, flagged interrupted: in a batch that must end the
    run (130 from the command line) and leave the image for the resumed run, not be written as its answer."""
    import mlrobust.api

    model, npz, _ = tiny
    jobs = load_jobs(npz, side_rule="right")[:3]
    real = mlrobust.api.maximize
    calls = []

    def stopped_on_the_second(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        if len(calls) == 2:
            result.interrupted = True
        return result

    monkeypatch.setattr(mlrobust.api, "maximize", stopped_on_the_second)
    out = tmp_path / "r.jsonl"
    run = run_batch(model, jobs, out, FAST)
    assert run.interrupted and run.written == 1
    assert [line["id"] for line in read_lines(out)] == [jobs[0].id]


def test_bad_settings_fail_before_any_job(tiny, tmp_path):
    model, npz, _ = tiny
    jobs = load_jobs(npz, limit=1)
    for settings, msg in ((BatchSettings(method="bisect"), "unknown search method"),
                          (BatchSettings(verifier="oracle"), "unknown verifier"),
                          (BatchSettings(solver="nosuchsolver"), "unknown solver")):
        with pytest.raises(Exception, match=msg):
            run_batch(model, jobs, tmp_path / "x.jsonl", settings)
    assert not (tmp_path / "x.jsonl").exists()


def test_memory_limit_reaches_every_search_and_is_not_part_of_the_question(tiny, tmp_path, monkeypatch):
    """``--memory-limit`` is handed to each image's search; it is a resource, like the workers: a run resumed with
    another limit keeps its lines. A limit that is not a number of MiB > 0 fails before any job."""
    import mlrobust.api

    model, npz, _ = tiny
    jobs = load_jobs(npz, limit=2)
    real = mlrobust.api.maximize
    limits = []

    def recording(*args, **kwargs):
        limits.append(kwargs["memory_limit_mib"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mlrobust.api, "maximize", recording)
    out = tmp_path / "m.jsonl"
    tight = BatchSettings(**{**FAST.__dict__, "memory_limit_mib": 700.0})
    assert tight.fingerprint("x") == FAST.fingerprint("x") != BatchSettings(**{**FAST.__dict__, "k": 1}).fingerprint("x")
    assert run_batch(model, jobs[:1], out, tight).written == 1
    assert run_batch(model, jobs, out, FAST).written == 1  # the first line is kept under the default limit
    assert limits == [700.0, FAST.memory_limit_mib] and FAST.memory_limit_mib == 1024.0
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(InputError, match="--memory-limit must be a finite number of MiB > 0"):
            run_batch(model, jobs, tmp_path / "y.jsonl", BatchSettings(memory_limit_mib=bad))
    assert not (tmp_path / "y.jsonl").exists()
    proc = subprocess.run(_cli("batch", model, npz, "--out", tmp_path / "z.jsonl", "--memory-limit", "0"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "--memory-limit" in proc.stderr


def test_local_processes(tiny, tmp_path):
    model, npz, _ = tiny
    jobs = load_jobs(npz, limit=4)
    run = run_batch(model, jobs, tmp_path / "p.jsonl", FAST, workers=2)
    lines = read_lines(tmp_path / "p.jsonl")
    assert run.written == 4 and sorted(line["id"] for line in lines) == sorted(j.id for j in jobs)
    assert len({line["worker"] for line in lines}) >= 1 and all(line["status"] == "done" for line in lines)
    assert str(os.getpid()) not in {line["worker"].split(":")[1] for line in lines}  # really other processes


def test_dask_local_cluster(tiny, tmp_path):
    distributed = pytest.importorskip("distributed")
    model, npz, _ = tiny
    jobs = load_jobs(npz, limit=3)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        out = tmp_path / "d.jsonl"
        run = run_batch(model, jobs[:2], out, FAST, dask_address=cluster.scheduler_address)
        assert run.written == 2 and run.executor.startswith("dask")
        run = run_batch(model, jobs, out, FAST, dask_address=cluster.scheduler_address)
        assert run.skipped == 2 and run.new_ids == [jobs[2].id]
    lines = read_lines(out)
    assert sorted(line["id"] for line in lines) == sorted(j.id for j in jobs)
    assert all(line["status"] == "done" and line["result"]["verified"] for line in lines)


def test_dask_unreachable_scheduler_is_a_clear_error(tiny, tmp_path):
    pytest.importorskip("distributed")
    model, npz, _ = tiny
    from mlrobust.errors import MlrobustError

    with pytest.raises(MlrobustError, match="cannot reach the Dask scheduler"):
        run_batch(model, load_jobs(npz, limit=1), tmp_path / "x.jsonl", FAST, dask_address="tcp://127.0.0.1:9",
                  dask_timeout=2)


# --- the command, killed for real -------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mlrobust.cli import main; main()", *map(str, args)]


def default_sigint() -> None:
    """In the child before exec: Ctrl-C handled as a user's shell would. Earlier tests in this process (the Dask
    cluster) can leave SIGINT ignored, and an ignored signal stays ignored across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_wait(args: list, env: dict, out: Path, lines: int) -> subprocess.Popen:
    """Start ``mlrobust batch`` and return once ``out`` holds at least ``lines`` lines (it is still running)."""
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read().decode()[-500:]
    return proc


def test_cli_interrupted_and_killed_resumes_without_losing_or_repeating_lines(tmp_path):
    model = tiny_model(tmp_path / "tiny.onnx", seed=3)
    data = tiny_data(model, n=14, seed=5)
    npz = save_npz(tmp_path / "d.npz", {"test": data})
    out = tmp_path / "r.jsonl"
    args = ["batch", model, npz, "--out", out, "--method", "uniform", "--delta", "0.05", "--time-limit", "20",
            "--target-side", "both", "--quiet"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    # Ctrl-C: the run stops after the lines it wrote, says so, exits with 130
    proc = _start_and_wait(args, env, out, 2)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in stdout
    first = out.read_bytes()
    n_first = first.count(b"\n")
    assert first.endswith(b"\n") and 2 <= n_first < 28
    # SIGKILL (no chance to clean up) while resuming: only complete lines reach the file
    proc = _start_and_wait(args, env, out, n_first + 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes()
    assert before.startswith(first) and before.endswith(b"\n")
    n_before = before.count(b"\n")
    assert n_first + 2 <= n_before < 28
    with open(out, "ab") as fh:  # and a crash in the middle of a write leaves at worst a cut last line
        fh.write(b'{"schema":"mlrobust.batch/1","id":"test/00013/right","sta')
    done = subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipped={n_before} written={28 - n_before}" in done.stdout
    after = out.read_bytes()
    assert after.startswith(before)  # finished lines are never rewritten
    ids = [json.loads(line)["id"] for line in after.decode().splitlines()]
    assert len(ids) == len(set(ids)) == 28


def test_cli_summary_and_errors(tiny, tmp_path):
    from typer.testing import CliRunner

    from mlrobust.cli import _register, app

    _register()
    model, npz, _ = tiny
    runner = CliRunner()
    res = runner.invoke(app, ["batch", str(model), str(npz), "--out", str(tmp_path / "r.jsonl"), "--start", "6",
                              "--target-side", "right", "--method", "uniform", "--delta", "0.05", "--time-limit", "20",
                              "--summary-json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "Batch summary" in res.output and "1 searched, 1 errors (InputError 1)" in res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images"] == 2 and summary["done"] == 1 and summary["errors"] == 1 and summary["written"] == 2
    proc = subprocess.run(_cli("batch", model, tmp_path / "nothing", "--out", tmp_path / "x.jsonl"),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_batch_searches_with_the_defaults_of_verify():
    """``mlrobust batch`` and ``mlrobust verify`` share their search defaults (and those of ``maximize``)."""
    import typer

    from mlrobust.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    defaults = {name: {p.name: p.default for p in group.commands[name].params} for name in ("batch", "verify")}
    settings = BatchSettings()
    defaults["verify"]["memory_limit_mib"] = defaults["verify"]["memory_limit"]
    defaults["batch"]["memory_limit_mib"] = defaults["batch"]["memory_limit"]
    for key in ("k", "method", "cutting", "weights", "solver", "verifier", "time_limit", "query_time_limit",
                "max_queries", "memory_limit_mib"):
        assert defaults["batch"][key] == defaults["verify"][key] == getattr(settings, key), key
    # --delta is text on the command line ("auto" or a number): both parse to the API's automatic tolerance
    from mlrobust.cli.verify_cmd import parse_delta

    assert defaults["batch"]["delta"] == defaults["verify"]["delta"] == "auto"
    assert parse_delta("auto") is None is settings.delta
    assert parse_delta("0.01") == 0.01


def test_jobs_name_any_object_of_multi_object_images(tmp_path):
    """Triple-MNIST and RGB objects: a target by name or index, the perturbed object by rule, and the RGB set's own
    k per image (its object count)."""
    from mlrobust.data import build_rgb_objects, build_triple_mnist, save_npz, save_png

    rng = np.random.default_rng(0)
    digits = np.zeros((30, 28, 28), np.uint8)
    digits[:, 8:20, 8:20] = rng.integers(1, 256, size=(30, 12, 12))
    labels = np.arange(30) % 10
    triple = build_triple_mnist(digits, labels, 4, seed=1, split="test")
    save_npz(tmp_path / "t.npz", {"test": triple})
    jobs = load_jobs(tmp_path / "t.npz", side_rule="middle")
    assert [j.id for j in jobs] == [f"test/{i:05d}/middle" for i in range(4)]
    assert all(j.target == triple.digits[i, 1] and np.array_equal(j.mask, triple.masks[i, 2]) and j.k is None
               for i, j in enumerate(jobs))
    by_index = load_jobs(tmp_path / "t.npz", side_rule="2", perturbed_rule="left", limit=1)[0]
    assert by_index.target == triple.digits[0, 2] and np.array_equal(by_index.mask, triple.masks[0, 0])
    each = load_jobs(tmp_path / "t.npz", side_rule="each", limit=1)
    assert [j.source["perturbed_side"] for j in each] == ["middle", "right", "left"]
    assert [j.id for j in load_jobs(tmp_path / "t.npz", side_rule="alternate")][:3] == [
        "test/00000/left", "test/00001/middle", "test/00002/right"]
    with pytest.raises(InputError, match="also the target"):
        load_jobs(tmp_path / "t.npz", side_rule="left", perturbed_rule="0")
    with pytest.raises(InputError, match="unknown target side"):
        load_jobs(tmp_path / "t.npz", side_rule="obj3")

    rgb = build_rgb_objects(digits, labels, 3, seed=0, split="test")
    save_png(tmp_path / "rgb", {"test": rgb})
    jobs = load_jobs(tmp_path / "rgb", side_rule="obj0")
    counts = rgb.object_counts()
    assert [j.k for j in jobs] == [None] * 3  # a PNG folder names no k per image: the run's --k applies
    save_npz(tmp_path / "rgb.npz", {"test": rgb})
    jobs = load_jobs(tmp_path / "rgb.npz", side_rule="obj0")
    assert [j.k for j in jobs] == counts.tolist()
    assert all(np.array_equal(j.mask, rgb.masks[i, 1]) and j.image.shape == (3, 300, 300) for i, j in enumerate(jobs))
