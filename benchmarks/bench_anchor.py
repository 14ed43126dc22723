"""mlrobust against α,β-CROWN (the anchor) on the same instances: ``python -m benchmarks anchor --abcrown DIR``.

Not part of CI: it needs an α,β-CROWN checkout set up outside the project as ../shared/anchors/alpha-beta-crown/
describes (``DIR/run_one.sh``, ``DIR/configs/``, a CPU venv). The instance list, in three groups:

- ``ours``: the layered boxes of mlrobust's search on the shipped ``mnist2_pgd`` (benchmarks/results/
  scale_neighborhoods.json) at 1.0/1.05/1.1/1.2x on ex00, ex02, ex04 (VNN-LIB written into ``--work``);
- ``devset``: ``benchmarks/devset/instances.csv`` (whole-image L∞ balls and layered boxes on the development models);
- ``vnncomp``: ``benchmarks/vnncomp/instances.csv`` (the first ``--vnncomp-limit`` of every model and family);
- ``ladder`` (only when named): the neighborhoods ``mlrobust verify`` returned on the scale ladder's rungs (the
  result JSON files given with ``--ladder-results``, e.g. ``build/benchmarks/scale_ladder/triple_mnist_*_120.json``)
  at ``--ladder-scales`` times their ε vector, with each result's own model, image, mask, target and k.

Every (instance, tool) runs in a fresh process with one CPU thread, at most ``--jobs`` (≤ 2) at once, under the same
timeout. Times are whole-process wall times, start-up included, for both tools (mlrobust's time after loading the
model and parsing the property is kept too). α,β-CROWN's config follows the model: ``conv64_cpu.yaml`` for the 64x64
conv nets, ``acasxu_cpu.yaml`` for the ACAS-like net, ``mnistfc_cpu.yaml`` (with the input shape read from the ONNX
file) for the flat MNIST nets. Every sat answer's counterexample, of either tool, is re-checked on onnxruntime; a wrong
one, or an instance answered unsat by one tool and sat with a confirmed counterexample by the other, is a soundness
violation (exit status 1). ``--budget`` stops starting new jobs after that many seconds (what ran is reported).

Raw lines go to ``--work``/raw.jsonl and are reused by a re-run (``--fresh`` ignores them).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.bench_vnncomp import Instance, OrtChecker, read_instances, run_one, select  # noqa: E402
from benchmarks.suite import add_notes_arguments, read_notes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "anchor.md"
WORK = ROOT / "build" / "benchmarks" / "anchor"
GROUPS = ("ours", "devset", "vnncomp", "ladder")
#: The groups run when ``--groups`` is not given (``ladder`` needs ``--ladder-results``).
DEFAULT_GROUPS = ("ours", "devset", "vnncomp")
OURS_IMAGES = ("ex00", "ex02", "ex04")
OURS_SCALES = (1.0, 1.05, 1.1, 1.2)
ABC = "abcrown"
TOOLS = ("mlrobust", ABC)
SOLVED = ("unsat", "sat")
_RESULT = re.compile(r"^RESULT (\S+) ([0-9.]+)\s*$", re.M)
_CEX_X = re.compile(r"\(\s*X_(\d+)\s+([^\s()]+)\s*\)")


@dataclass(frozen=True)
class AnchorInstance:
    """One ONNX model and one VNN-LIB property (absolute paths) with its group and timeout."""

    group: str
    model: Path
    prop: Path
    timeout: float

    @property
    def key(self) -> str:
        return f"{self.group}:{self.model.stem}/{self.prop.stem}"

    def as_vnncomp(self) -> Instance:
        """The same instance for :mod:`benchmarks.bench_vnncomp`'s runner (absolute paths under folder ``/``)."""
        return Instance(str(self.model), str(self.prop), self.timeout)


# --- the instance list ---------------------------------------------------------------------------------------------
def ours_instances(work: Path, examples: Path, neighborhoods: Path, timeout: float) -> list[AnchorInstance]:
    """The search's layered boxes on mnist2_pgd at every scale of :data:`OURS_SCALES` (files written once)."""
    from benchmarks.devset_instances import layered_boxes, manifest_entry, write_property

    searched = json.loads(neighborhoods.read_text())
    model = examples / "models" / "mnist2_pgd.onnx"
    out = []
    for image in OURS_IMAGES:
        paths = [work / "ours" / f"layered_{image}_x{scale:g}.vnnlib" for scale in OURS_SCALES]
        if not all(p.is_file() for p in paths):
            eps = np.asarray(searched[f"mnist2_pgd/{image}"]["epsilons"], dtype=np.float64)
            boxes, target = layered_boxes(model, examples, manifest_entry(examples, image), eps, OURS_SCALES)
            for path, scale, (lower, upper) in zip(paths, OURS_SCALES, boxes):
                write_property(path, lower, upper, target,
                               f"{image} (target {target}): {scale:g} x the layered box mlrobust's search proved "
                               "for mnist2_pgd; the target stays among the top-2")
        out += [AnchorInstance("ours", model, path, timeout) for path in paths]
    return out


def ladder_instances(work: Path, results: list[Path], scales: tuple[float, ...],
                     timeout: float) -> list[AnchorInstance]:
    """The layered boxes of ``mlrobust verify`` results (scale ladder) at every scale (files written once): the
    result's ε vector scaled and clipped to [0, 1], around its own image and mask, the target among its top-k."""
    from benchmarks.devset_instances import write_property
    from mlrobust import load_result
    from mlrobust.api import prepare

    out = []
    for result in results:
        data = load_result(result)
        model, image = Path(data["model"]["path"]), Path(data["image"]["path"])
        paths = [work / "ladder" / f"{result.stem}_x{scale:g}.vnnlib" for scale in scales]
        if not all(p.is_file() for p in paths):
            target, k = int(data["target"]), int(data["k"])
            prep = prepare(model, image, target, k=k, object_mask=np.asarray(data["object"]["mask"]) > 0)
            eps = np.asarray(data["epsilons"], dtype=np.float64)
            for path, scale in zip(paths, scales):
                box = prep.nbhd.box(np.minimum(scale * eps, 1.0))
                write_property(path, box.lower.reshape(-1), box.upper.reshape(-1), target,
                               f"{result.stem} (target {target}, top-{k}): {scale:g} x the layered box mlrobust "
                               f"verify returned for {model.name} on {image.name}", k=k,
                               n_out=prep.network.num_classes)
        out += [AnchorInstance("ladder", model, path, timeout) for path in paths]
    return out


def csv_instances(group: str, folder: Path, timeout: float | None, limit: int | None = None) -> list[AnchorInstance]:
    rows = select(read_instances(folder), None, None, limit)
    return [AnchorInstance(group, (folder / r.model).resolve(), (folder / r.prop).resolve(),
                           timeout if timeout is not None else r.timeout) for r in rows]


# --- α,β-CROWN ----------------------------------------------------------------------------------------------------
def model_kind(model: Path) -> str:
    """"conv64" (a 64x64 image net), "acas" (5 inputs) or "mnist_fc" (a flat 784-pixel input), from the ONNX input."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    size = int(np.prod(dims)) if dims else 0
    if size == 5:
        return "acas"
    if len(dims) >= 2:
        return "conv64"
    return "mnist_fc"


def abc_config(abc_dir: Path, kind: str, work: Path) -> Path:
    """The α,β-CROWN config for a model kind; for flat MNIST nets the mnist_fc config without its fixed
    (1, 28, 28) input shape (written into ``work``), so the shape comes from the ONNX file."""
    configs = abc_dir / "configs"
    if kind == "conv64":
        return configs / "conv64_cpu.yaml"
    if kind == "acas":
        return configs / "acasxu_cpu.yaml"
    text = (configs / "mnistfc_cpu.yaml").read_text()
    flat = "\n".join(line for line in text.splitlines()
                     if not line.strip().startswith("input_shape") and line.strip() != "model:")
    path = work / "mnistfc_flat_cpu.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(flat + "\n")
    return path


def parse_abc_result(stdout: str) -> tuple[str, float | None]:
    """``run_one.sh``'s last ``RESULT <status> <seconds>`` line; ("error", None) when there is none."""
    found = _RESULT.findall(stdout)
    if not found:
        return "error", None
    status, seconds = found[-1]
    if status not in ("sat", "unsat", "unknown", "timeout", "error"):
        return "error", float(seconds)
    return status, float(seconds)


def parse_cex(text: str, n_inputs: int) -> np.ndarray | None:
    """The input of a VNN-COMP counterexample (``(X_i value)`` entries), or None unless every X_i is there once."""
    values: dict[int, float] = {}
    for index, value in _CEX_X.findall(text):
        i = int(index)
        if i in values:
            return None
        try:
            values[i] = float(value)
        except ValueError:
            return None
    if sorted(values) != list(range(n_inputs)):
        return None
    return np.array([values[i] for i in range(n_inputs)], dtype=np.float64)


_TIME = re.compile(r"^Time: ([0-9.]+)\s*$", re.M)


def read_abc_answer(abc_dir: Path, tag: str, timeout: float) -> dict | None:
    """α,β-CROWN's answer from its files when it wrote one in time although run_one.sh's process did not end (it
    sometimes hangs after writing its verdict until the hard kill, which run_one.sh reports as a timeout): the verdict
    file's first line, its own "Time:" (after its start-up), and the seconds from the log's creation to the verdict
    file's last write (whole process, start-up included). None when there is no sat/unsat verdict file."""
    out, log = abc_dir / "logs" / f"abc_{tag}.out", abc_dir / "logs" / f"abc_{tag}.log"
    if not out.is_file() or not log.is_file():
        return None
    lines = out.read_text().splitlines()
    status = lines[0].strip() if lines else ""
    if status not in SOLVED:
        return None
    times = _TIME.findall(log.read_text(errors="replace"))
    internal = float(times[-1]) if times else None
    born: float | None = None
    try:  # the log's creation time (run_one.sh creates it as the process starts); 0 where unknown
        born = float(subprocess.run(["stat", "-c", "%W", str(log)], capture_output=True, text=True, check=True,
                                    timeout=10).stdout.strip()) or None
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    wall = out.stat().st_mtime - born if born else None
    if internal is None or internal > timeout:
        return None
    return {"status": status, "abc_seconds": internal, "answer_wall_seconds": wall}


def _tag(inst: AnchorInstance) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", inst.key)


def run_abc(abc_dir: Path, inst: AnchorInstance, work: Path, grace: float) -> dict:
    """One instance through ``DIR/run_one.sh`` (one thread; it kills α,β-CROWN 30 s after the timeout)."""
    tag = _tag(inst)
    config = abc_config(abc_dir, model_kind(inst.model), work)
    env = dict(os.environ, ABC_CONFIG=str(config))
    start = time.perf_counter()
    row: dict[str, Any] = {"config": config.name}
    try:
        proc = subprocess.run(["bash", str(abc_dir / "run_one.sh"), str(inst.model), str(inst.prop),
                               f"{inst.timeout:g}", tag], capture_output=True, text=True, env=env, check=False,
                              timeout=inst.timeout + 30 + grace)
        status, seconds = parse_abc_result(proc.stdout)
    except subprocess.TimeoutExpired:
        status, seconds = "timeout", None
    wall = time.perf_counter() - start
    row.update(status=status, wall_seconds=wall, seconds=seconds if seconds is not None else wall)
    settle_abc_row(abc_dir, inst, row)
    return row


def settle_abc_row(abc_dir: Path, inst: AnchorInstance, row: dict) -> None:
    """Fill in the verdict α,β-CROWN wrote before it hung, its own time, and its counterexample."""
    answer = read_abc_answer(abc_dir, _tag(inst), inst.timeout)
    if answer is not None:
        if row["status"] not in SOLVED:
            row["reason"] = "verdict written in time; the process then hung until killed"
        row.update(status=answer["status"], abc_seconds=answer["abc_seconds"], seconds=answer["abc_seconds"],
                   answer_wall_seconds=answer["answer_wall_seconds"])
        row["verifier_seconds"] = answer["abc_seconds"]
    elif row["status"] in SOLVED:
        row.update(status="timeout", reason="no verdict within the timeout by its own clock")
    if row["status"] == "sat" and "x" not in row:
        tag = _tag(inst)
        cex = abc_dir / "logs" / f"abc_{tag}.cex"
        from mlrobust.verify.vnnlib import parse_vnnlib

        n_inputs = parse_vnnlib(inst.prop).num_inputs
        x = parse_cex(cex.read_text(), n_inputs) if cex.is_file() else None
        row["x"] = None if x is None else x.tolist()


# --- running ------------------------------------------------------------------------------------------------------
def run_ours(inst: AnchorInstance, method: str, grace: float) -> dict:
    r = run_one(Path("/"), inst.as_vnncomp(), method, inst.timeout, grace)
    keep = {"status", "seconds", "wall_seconds", "load_seconds", "tier", "reason", "x"}
    out = {k: v for k, v in r.items() if k in keep}
    out["verifier_seconds"] = out.get("seconds")  # after loading the model and parsing the property
    return out


#: A counterexample this close to its box (float32 rounding of a bound) is checked clipped into the box, as
#: VNN-COMP's checker tolerates small input violations.
INPUT_TOLERANCE = 1e-6


def check_sat(checker: OrtChecker, inst: AnchorInstance, row: dict) -> None:
    """Attach the onnxruntime check of a sat row's counterexample ("wrong" when it has none)."""
    if row["status"] != "sat":
        return
    x = row.get("x")
    if x is None:
        row["ort"] = {"verdict": "wrong", "ort_margin": None, "in_box": False, "reason": "no counterexample given"}
        return
    row["ort"] = checker.check(Path("/"), inst.as_vnncomp(), x)
    if row["ort"]["verdict"] == "wrong" and not row["ort"]["in_box"]:
        from mlrobust.milp.disjunction import clause_margin
        from mlrobust.verify.vnnlib import parse_vnnlib

        xa = np.asarray(x, dtype=np.float64)
        y = checker.outputs(inst.model, xa)
        for region in parse_vnnlib(inst.prop).regions:
            outside = float(np.max(np.maximum(region.lower - xa, xa - region.upper)))
            margin = float(clause_margin(y[None], region.clauses)[0])
            if outside <= INPUT_TOLERANCE and margin >= 0:
                row["ort"] = {"verdict": "confirmed", "ort_margin": margin, "in_box": False, "outside_by": outside}
                return


def run_tool(args: argparse.Namespace, inst: AnchorInstance, tool: str) -> dict:
    """One instance in a fresh process: α,β-CROWN for :data:`ABC`, else mlrobust with method ``tool``."""
    if tool == ABC:
        return run_abc(args.abcrown, inst, args.work, args.grace)
    return run_ours(inst, tool, args.grace)


def read_raw(args: argparse.Namespace, key: Callable[[dict], tuple]) -> dict[tuple, dict]:
    """The raw result lines of earlier runs in ``--work``/raw.jsonl by ``key(row)`` (none with ``--fresh``)."""
    raw = args.work / "raw.jsonl"
    if args.fresh or not raw.is_file():
        return {}
    rows = (json.loads(line) for line in raw.read_text().splitlines() if line.strip())
    return {key(r): r for r in rows}


def record(args: argparse.Namespace, checker: OrtChecker, inst: AnchorInstance, row: dict,
           lock: threading.Lock) -> None:
    """Re-check a sat row's counterexample on onnxruntime and append the row to ``--work``/raw.jsonl (one job at a
    time: the jobs run in threads)."""
    with lock:
        check_sat(checker, inst, row)
        with (args.work / "raw.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def soundness(rows: list[dict]) -> list[str]:
    """A sat answer whose counterexample fails on onnxruntime; an instance unsat for one tool and sat with a
    confirmed counterexample for the other."""
    out = []
    by_inst: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_inst.setdefault(r["instance"], {})[r["tool"]] = r
        if r["status"] == "sat" and r.get("ort", {}).get("verdict") == "wrong":
            out.append(f"{r['instance']}: {r['tool']} answered sat with a counterexample that fails on onnxruntime")
    for inst, rs in by_inst.items():
        unsat = [t for t, r in rs.items() if r["status"] == "unsat"]
        sat = [t for t, r in rs.items() if r["status"] == "sat" and r.get("ort", {}).get("verdict") == "confirmed"]
        if unsat and sat:
            out.append(f"{inst}: unsat by {', '.join(unsat)} but a confirmed counterexample from {', '.join(sat)}")
    return out


def wrong_rows(rows: list[dict], violations: list[str]) -> dict[str, int]:
    """Wrong verdicts per tool: its sat fails on onnxruntime, or its unsat meets the other tool's confirmed sat."""
    out = dict.fromkeys(TOOLS, 0)
    by_inst: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_inst.setdefault(r["instance"], {})[r["tool"]] = r
    for rs in by_inst.values():
        confirmed = any(r["status"] == "sat" and r.get("ort", {}).get("verdict") == "confirmed" for r in rs.values())
        for tool, r in rs.items():
            if (r["status"] == "sat" and r.get("ort", {}).get("verdict") == "wrong") or (
                    r["status"] == "unsat" and confirmed):
                out[tool] = out.get(tool, 0) + 1
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Per group (and all): instances both tools ran, decided by each, median seconds of the decided; of those
    α,β-CROWN decides, how many mlrobust decides and how many in no more than α,β-CROWN's time."""
    by_inst: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_inst.setdefault(r["instance"], {})[r["tool"]] = r
    both = {k: v for k, v in by_inst.items() if all(t in v for t in TOOLS)}
    out = []
    for group in [*GROUPS, "all"]:
        insts = [v for v in both.values() if group == "all" or v["mlrobust"]["group"] == group]
        if not insts:
            continue
        row: dict[str, Any] = {"group": group, "instances": len(insts)}
        for tool in TOOLS:
            decided = [v[tool] for v in insts if v[tool]["status"] in SOLVED]
            row[tool] = {"decided": len(decided), "unsat": sum(r["status"] == "unsat" for r in decided),
                         "sat": sum(r["status"] == "sat" for r in decided),
                         "median_s": statistics.median(r["seconds"] for r in decided) if decided else None}
        abc_decided = [v for v in insts if v["abcrown"]["status"] in SOLVED]
        ours_too = [v for v in abc_decided if v["mlrobust"]["status"] in SOLVED]
        row["abc_decided"] = len(abc_decided)
        row["ours_also"] = len(ours_too)
        row["ours_no_slower"] = sum(v["mlrobust"]["seconds"] <= v["abcrown"]["seconds"] for v in ours_too)
        row["ours_only"] = sum(v["mlrobust"]["status"] in SOLVED and v["abcrown"]["status"] not in SOLVED
                               for v in insts)
        out.append(row)
    return out


def _med(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f} s"


def anchor_header(results: dict, *tool_lines: str) -> list[str]:
    """The header of an α,β-CROWN comparison's report: :func:`benchmarks.suite.report_header`, the jobs and run
    time, then ``tool_lines``."""
    from benchmarks.suite import report_header

    return [*report_header(results), (f"One CPU thread per tool, {results['jobs']} job(s) at a time; run time "
                                      f"{results['seconds'] / 60:.1f} min.  "), *tool_lines]


def markdown(results: dict) -> str:
    out = ["# mlrobust against α,β-CROWN on the same instances", "",
           *anchor_header(results, f"α,β-CROWN {results['abcrown']}.  "),
           (f"mlrobust method: `{results['method']}`. Times are each tool's own clock: mlrobust's after loading the "
            "model and parsing the property (as VNN-COMP times run_instance), α,β-CROWN's own `Time:` (after its "
            "start-up); an answer counts when that clock is within the timeout "
            f"({results['timeout_note']}). Every process is killed 30 s after the timeout (start-up, which the load "
            "stretches, included). α,β-CROWN sometimes hangs after writing its verdict until the kill: its verdict "
            "file counts then. Every sat counterexample is re-checked on onnxruntime."), ""]
    if results.get("stopped_early"):
        out += [f"Stopped starting jobs after the {results['budget']:g} s budget: "
                f"{results['jobs_done']} of {results['jobs_planned']} jobs ran.", ""]
    out += ["## Decided instances", "",
            "| group | instances | α,β-CROWN decided (unsat/sat), median | mlrobust decided (unsat/sat), median "
            "| of α,β-CROWN's: mlrobust decides / in ≤ its time | only mlrobust |", "|---|---|---|---|---|---|"]
    for s in results["summary"]:
        a, o = s["abcrown"], s["mlrobust"]
        out.append(f"| {'**all**' if s['group'] == 'all' else s['group']} | {s['instances']} "
                   f"| {a['decided']} ({a['unsat']}/{a['sat']}), {_med(a['median_s'])} "
                   f"| {o['decided']} ({o['unsat']}/{o['sat']}), {_med(o['median_s'])} "
                   f"| {s['ours_also']}/{s['abc_decided']} / {s['ours_no_slower']}/{s['abc_decided']} "
                   f"| {s['ours_only']} |")
    out += ["", "## Soundness", ""]
    wrong = results["wrong"]
    out.append(f"Wrong verdicts: mlrobust {wrong.get('mlrobust', 0)}, α,β-CROWN {wrong.get('abcrown', 0)}.")
    out += [f"- **VIOLATION**: {v}" for v in results["violations"]]
    out += ["", "## Per instance", "", "Cells: status, seconds on the tool's own clock (mlrobust: deciding tier).", "",
            "| instance | α,β-CROWN | mlrobust |", "|---|---|---|"]
    by_inst: dict[str, dict[str, dict]] = {}
    for r in results["rows"]:
        by_inst.setdefault(r["instance"], {})[r["tool"]] = r
    for inst, rs in by_inst.items():
        cells = []
        for tool in ("abcrown", "mlrobust"):
            r = rs.get(tool)
            cells.append("–" if r is None else f"{r['status']} {float(r.get('seconds') or 0.0):.1f}"
                         + (f" ({r['tier']})" if r.get("tier") else "")
                         + (" **wrong cex**" if r.get("ort", {}).get("verdict") == "wrong" else ""))
        out.append(f"| {inst} | " + " | ".join(cells) + " |")
    if results.get("notes"):
        out += ["", "## Notes", "", results["notes"]]
    return "\n".join(out) + "\n"


def instance_list(args: argparse.Namespace) -> list[AnchorInstance]:
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise SystemExit(f"error: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    out: list[AnchorInstance] = []
    if "ours" in groups:
        out += ours_instances(args.work, args.examples, args.neighborhoods, args.timeout or 60.0)
    if "devset" in groups:
        out += csv_instances("devset", args.devset, args.timeout, args.devset_limit)
    if "vnncomp" in groups:
        out += csv_instances("vnncomp", args.vnncomp, args.timeout, args.vnncomp_limit)
    if "ladder" in groups:
        if not args.ladder_results:
            raise SystemExit("error: the ladder group needs --ladder-results (mlrobust verify result JSON files)")
        scales = tuple(float(v) for v in args.ladder_scales.split(",") if v)
        out += ladder_instances(args.work, args.ladder_results, scales, args.timeout or 60.0)
    return out


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    from benchmarks.suite import command_line, end_facts, run_facts

    facts = run_facts(command_line("python -m benchmarks anchor", args.argv))  # the load before the work
    instances = instance_list(args)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = read_raw(args, lambda r: (r["instance"], r["tool"], r["timeout"],
                                      r.get("method", "vnnlib") if r["tool"] == "mlrobust" else ""))
    checker = OrtChecker()
    lock = threading.Lock()
    start = time.perf_counter()
    jobs = [(inst, tool) for inst in instances for tool in TOOLS]
    skipped = 0

    def job(item: tuple[AnchorInstance, str]) -> dict | None:
        nonlocal skipped
        inst, tool = item
        key = (inst.key, tool, inst.timeout, args.method if tool == "mlrobust" else "")  # another method: run again
        if key in cache:
            r = cache[key]
            if tool == ABC:  # its files may hold a verdict an earlier reading missed
                settle_abc_row(args.abcrown, inst, r)
            elif r.get("verifier_seconds") is not None:  # mlrobust's own clock (lines of earlier runs held wall time)
                r["seconds"] = r["verifier_seconds"]
            if r["status"] == "sat" and r.get("ort", {}).get("verdict") != "confirmed":
                check_sat(checker, inst, r)
            return r
        if args.budget is not None and time.perf_counter() - start > args.budget:
            skipped += 1
            return None
        r = run_tool(args, inst, ABC if tool == ABC else args.method)
        r.update(instance=inst.key, group=inst.group, tool=tool, timeout=inst.timeout,
                 **({"method": args.method} if tool == "mlrobust" else {}),
                 model=str(inst.model.relative_to(ROOT)) if inst.model.is_relative_to(ROOT) else str(inst.model))
        record(args, checker, inst, r, lock)
        return r

    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for i, r in enumerate(pool.map(job, jobs)):
            if r is None:
                continue
            rows.append(r)
            log(f"[{i + 1}/{len(jobs)}] {r['instance']} {r['tool']}: {r['status']} {float(r['seconds']):.1f} s"
                + (f" ({r['tier']})" if r.get("tier") else "") + (f" ort {r['ort']['verdict']}" if "ort" in r else ""))
    for r in rows:
        r.pop("x", None)  # the counterexamples stay in the raw lines
    violations = soundness(rows)
    return {**facts, "abcrown": _abc_version(args.abcrown), "method": args.method, "jobs": args.jobs,
            "timeout_note": f"{args.timeout:g} s" if args.timeout else "60 s", "budget": args.budget,
            "stopped_early": bool(skipped), "jobs_planned": len(jobs), "jobs_done": len(rows), "rows": rows,
            "summary": summarise(rows), "violations": violations, "wrong": wrong_rows(rows, violations),
            "seconds": time.perf_counter() - start, **end_facts(), "notes": args.notes or ""}


def _abc_version(abc_dir: Path) -> str:
    readme = abc_dir / "complete_verifier" / "abcrown.py"
    return f"checkout at {abc_dir}" + ("" if readme.is_file() else " (complete_verifier/abcrown.py missing)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks anchor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", default=",".join(DEFAULT_GROUPS),
                   help=f"comma-separated subset of {','.join(GROUPS)} (default: {','.join(DEFAULT_GROUPS)})")
    p.add_argument("--ladder-results", type=Path, nargs="*", default=[],
                   help="mlrobust verify result JSON files for the ladder group")
    p.add_argument("--ladder-scales", default="1,1.2,1.5", help="the ladder group's factors of each ε vector")
    p.add_argument("--method", default="vnnlib_bab",
                   help="mlrobust's method (benchmarks vnncomp's names; default vnnlib_bab, what `mlrobust vnnlib` "
                        "runs by default: attack, CROWN, branch and bound, MILP)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per instance (default: the lists', 60)")
    p.add_argument("--vnncomp-limit", type=int, default=2, help="first N instances per VNN-style model and family")
    p.add_argument("--devset-limit", type=int, default=None,
                   help="first N instances per development model and property family (eps0.003, eps0.008, "
                        "layered: one per image, so 3 is the whole set)")
    p.add_argument("--vnncomp", type=Path, default=ROOT / "benchmarks" / "vnncomp")
    p.add_argument("--neighborhoods", type=Path, default=ROOT / "benchmarks" / "results" /
                   "scale_neighborhoods.json")
    add_anchor_arguments(p, OUT, WORK)
    return p


def add_anchor_arguments(p: argparse.ArgumentParser, out: Path, work: Path) -> None:
    """The options every α,β-CROWN comparison (this one and ``anchor-radius``) takes: the checkout, the process
    limits, the inputs' folders and where the report, the VNN-LIB files and the raw lines go."""
    p.add_argument("--abcrown", type=Path, required=True, help="α,β-CROWN folder holding run_one.sh and configs/")
    p.add_argument("--grace", type=float, default=30.0, help="seconds after the timeout before a process is killed")
    p.add_argument("--jobs", type=int, default=2, help="processes at once (1 or 2)")
    p.add_argument("--budget", type=float, default=None, help="start no job after this many seconds")
    p.add_argument("--examples", type=Path, default=ROOT / "examples")
    p.add_argument("--devset", type=Path, default=ROOT / "benchmarks" / "devset")
    p.add_argument("--out", type=Path, default=out, help="Markdown report (the JSON goes next to it)")
    p.add_argument("--work", type=Path, default=work, help="written VNN-LIB files and raw result lines")
    p.add_argument("--fresh", action="store_true", help="ignore earlier raw results")
    add_notes_arguments(p, paragraph=False)
    p.add_argument("--quiet", action="store_true")


def parse_anchor_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line of an α,β-CROWN comparison (this one and ``anchor-radius``), its paths made absolute; a
    clear error when the α,β-CROWN checkout is not set up or ``--jobs`` is out of range."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = read_notes(parser.parse_args(argv), argv)
    args.abcrown = args.abcrown.resolve()
    args.work = args.work.resolve()  # run_one.sh works in its own folder: configs written here need full paths
    if not (args.abcrown / "run_one.sh").is_file():
        raise SystemExit(f"error: {args.abcrown / 'run_one.sh'} not found: set α,β-CROWN up as "
                         "../shared/anchors/alpha-beta-crown/README.md describes and pass its folder")
    if args.jobs not in (1, 2):
        raise SystemExit("error: --jobs must be 1 or 2 (one CPU thread per job)")
    return args


def anchor_main(parser: argparse.ArgumentParser, run: Callable, markdown: Callable[[dict], str],
                argv: list[str] | None) -> int:
    """Run an α,β-CROWN comparison, write its report; exit status 1 on a soundness violation."""
    from benchmarks.suite import report_violations, run_and_write

    results = run_and_write(parse_anchor_args(parser, argv), run, markdown)
    return report_violations(results["violations"])


def main(argv: list[str] | None = None) -> int:
    return anchor_main(parser(), run, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
