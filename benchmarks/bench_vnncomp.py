"""VNN-COMP-style comparison of verifier configurations on the instances of ``benchmarks/vnncomp/``.

Every (instance, method) runs in a fresh Python process with a hard wall-clock limit; the answer is "unsat" (the
property holds), "sat" (a counterexample), "timeout" or "unknown". An answer counts only if the verifier finished
within the instance's timeout, measured inside the process after the model is loaded and the property parsed (as
VNN-COMP times ``run_instance`` after ``prepare_instance``); the process is killed ``--grace`` seconds after the
timeout, which then reads as a timeout too. Every sat counterexample is re-checked on onnxruntime (inside the
property's input box, in the output region); an instance answered unsat by one method and sat with a confirmed
counterexample by another is a soundness violation and fails the run (exit status 1).

Methods: the names of :mod:`benchmarks.methods` (top-k verifiers; the property must be a top-k property such as
"the label stays the argmax" or "output 0 is not the minimum", which every shipped instance is) and "vnnlib" (the
``mlrobust vnnlib`` route: any VNN-LIB property, attack -> CROWN -> MILP over the output disjunction; "vnnlib_bab":
the same with ``--verifier cascade-bab``, branch and bound before the MILP). Methods the
installed code lacks are reported as not available.

    python -m benchmarks vnncomp --methods crown_milp,alpha_bab_milp --timeout 60
    python -m benchmarks vnncomp --methods crown_milp --models mnist_fc_256x2 --families eps0.03 --limit 5

Raw results go to ``--work`` (default ``build/benchmarks/vnncomp/raw.jsonl``), one line per (instance, method,
timeout); a re-run reuses them unless ``--fresh``. Single-threaded BLAS and torch in every worker.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.suite import add_notes_arguments, read_notes  # noqa: E402
from mlrobust.verify.vnnlib_parse import topk_form  # noqa: E402  (the property as a top-k question)

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = ROOT / "benchmarks" / "vnncomp"
OUT = ROOT / "benchmarks" / "results" / "vnncomp.md"
WORK = ROOT / "build" / "benchmarks" / "vnncomp" / "raw.jsonl"
#: An onnxruntime margin below this (the counterexample misses the output region by more than float32 noise) makes
#: a sat answer wrong; between it and 0 the answer is reported as borderline.
ORT_TOLERANCE = 1e-4
SOLVED = ("unsat", "sat")


@dataclass(frozen=True)
class Instance:
    model: str  # path relative to the instance folder
    prop: str
    timeout: float

    @property
    def model_name(self) -> str:
        return Path(self.model).stem

    @property
    def family(self) -> str:
        """``eps0.03`` for the MNIST local-robustness properties, else the property's prefix (``acas``)."""
        m = re.search(r"eps([0-9.]+?)\.vnnlib$", self.prop)
        return f"eps{m.group(1)}" if m else Path(self.prop).stem.split("_")[0]

    @property
    def key(self) -> str:
        return f"{self.model_name}/{Path(self.prop).stem}"


def read_instances(folder: Path) -> list[Instance]:
    """``instances.csv``: model, property, timeout (paths relative to ``folder``), as in VNN-COMP."""
    path = folder / "instances.csv"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (build it with python -m benchmarks.vnncomp_models)")
    with path.open() as fh:
        return [Instance(row[0].strip(), row[1].strip(), float(row[2])) for row in csv.reader(fh) if row]


#: mlrobust's VNN-LIB route (``mlrobust vnnlib``) as a method, by its ``--verifier``: any property, not only top-k.
VNNLIB_METHODS = {"vnnlib": "cascade", "vnnlib_bab": "cascade-bab"}
VNNLIB_DESCRIPTIONS = {"vnnlib": "the `mlrobust vnnlib` route (attack -> CROWN -> MILP)",
                       "vnnlib_bab": "the `mlrobust vnnlib --verifier cascade-bab` route (attack -> CROWN -> BaB "
                                     "-> MILP)"}


# --- the worker (one instance, one method, a fresh process) -----------------------------------------------------------
def run_worker(spec: dict) -> dict:
    """Load, parse, then decide; ``seconds`` counts only the deciding."""
    import torch

    torch.set_num_threads(1)
    from benchmarks.methods import MethodUnavailable, build
    from mlrobust import load_onnx
    from mlrobust.verify.counterexample import torch_module
    from mlrobust.verify.spec import Box
    from mlrobust.verify.verdict import NotRobust
    from mlrobust.verify.vnnlib import check_vnnlib, parse_vnnlib

    t0 = time.perf_counter()
    network = load_onnx(spec["model"])
    prop = parse_vnnlib(Path(spec["property"]))
    load_seconds = time.perf_counter() - t0
    timeout = float(spec["timeout"])
    if spec["method"] in VNNLIB_METHODS:
        start = time.perf_counter()
        res = check_vnnlib(network, prop, timeout=timeout, verifier=VNNLIB_METHODS[spec["method"]])
        out = {"status": res.status, "tier": res.tier, "reason": res.reason,
               "x": None if res.x is None else res.x.tolist()}
        out["seconds"] = time.perf_counter() - start
        out["load_seconds"] = load_seconds
        return out
    form = topk_form(prop)
    if form is None:
        return {"status": "n/a", "reason": "not a top-k property", "seconds": 0.0, "load_seconds": load_seconds}
    target, k = form
    try:
        verifier = build(spec["method"])
    except MethodUnavailable as exc:
        return {"status": "n/a", "reason": str(exc), "seconds": 0.0, "load_seconds": load_seconds}
    start = time.perf_counter()
    status, tier, reason, x = "unsat", "", "", None
    tiers: dict[str, float] = {}
    for region in prop.regions:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            status, reason = "timeout", "no time left"
            break
        box = Box(region.lower.reshape(network.sample_shape), region.upper.reshape(network.sample_shape))
        verdict = verifier.verify(network, box, target, k, "decide", time_limit=left)
        tier = verdict.tier
        for name, secs in verdict.seconds.items():  # seconds per tier, to see where the time went
            tiers[name] = tiers.get(name, 0.0) + float(secs)
        if verdict.is_robust:
            continue
        if isinstance(verdict, NotRobust) and verdict.counterexample is not None:
            status, x = "sat", np.asarray(verdict.counterexample).reshape(-1)
            break
        elapsed = time.perf_counter() - start
        status = "timeout" if elapsed >= 0.98 * timeout else "unknown"
        reason = getattr(verdict, "reason", "")
        break
    seconds = time.perf_counter() - start
    out = {"status": status, "tier": tier, "reason": reason, "seconds": seconds, "load_seconds": load_seconds,
           "target": target, "k": k, "tier_seconds": tiers, "x": None if x is None else x.tolist()}
    if x is not None:
        with torch.no_grad():
            y = torch_module(network).logits(torch.as_tensor(x.reshape(1, *network.sample_shape),
                                                             dtype=torch.float32))
        out["y"] = y[0].double().tolist()
    return out


def _worker_main(spec_json: str) -> int:
    print("RESULT " + json.dumps(run_worker(json.loads(spec_json))), flush=True)
    return 0


def run_one(folder: Path, inst: Instance, method: str, timeout: float, grace: float) -> dict:
    """One (instance, method) in a fresh process under a hard wall-clock limit of ``timeout + grace``."""
    spec = {"model": str(folder / inst.model), "property": str(folder / inst.prop), "timeout": timeout,
            "method": method}
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    start = time.perf_counter()
    row: dict[str, Any] = {"instance": inst.key, "model": inst.model_name, "family": inst.family,
                           "property": inst.prop, "method": method, "timeout": timeout}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_vnncomp", "--worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout + grace, env=env, cwd=ROOT,
                              check=False)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", reason=f"killed after {timeout + grace:g} s", seconds=timeout,
                   wall_seconds=time.perf_counter() - start)
        return row
    row["wall_seconds"] = time.perf_counter() - start
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row.update(status="error", reason=" | ".join(tail) or f"exit status {proc.returncode}", seconds=0.0)
        return row
    row.update(json.loads(line[len("RESULT "):]))
    if row["status"] in SOLVED and row["seconds"] > timeout:
        row["reason"] = f"answered {row['status']} after {row['seconds']:.1f} s, over the timeout"
        row["status"] = "timeout"
        row.pop("x", None)
    return row


# --- checks ------------------------------------------------------------------------------------------------------------
class OrtChecker:
    """Re-checks counterexamples on onnxruntime (one session per model)."""

    def __init__(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SystemExit("error: onnxruntime is needed to re-check counterexamples (pip install onnxruntime)")
        self._sessions: dict[str, Any] = {}

    def outputs(self, model: Path, x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        key = str(model)
        if key not in self._sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self._sessions[key] = ort.InferenceSession(key, opts, providers=["CPUExecutionProvider"])
        sess = self._sessions[key]
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        return sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0].reshape(-1).astype(np.float64)

    def check(self, folder: Path, inst: Instance, x: list[float]) -> dict:
        """``{"ort_margin", "in_box", "verdict"}``: verdict "confirmed", "borderline" or "wrong"."""
        from mlrobust.milp.disjunction import clause_margin
        from mlrobust.verify.vnnlib import parse_vnnlib

        prop = parse_vnnlib(folder / inst.prop)
        xa = np.asarray(x, dtype=np.float64)
        y = self.outputs(folder / inst.model, xa)
        best, in_box = -np.inf, False
        x32 = xa.astype(np.float32).astype(np.float64)
        for region in prop.regions:
            inside = float32_in_box(x32, region.lower, region.upper)
            in_box |= inside
            if inside:
                best = max(best, float(clause_margin(y[None], region.clauses)[0]))
        verdict = ("wrong" if not in_box or best < -ORT_TOLERANCE else "borderline" if best < 0 else "confirmed")
        return {"ort_margin": best, "in_box": in_box, "verdict": verdict}


def float32_in_box(x32: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> bool:
    """Whether the float32 point ``x32`` (what onnxruntime is fed) is the float32 rounding of some point of the box
    ``[lower, upper]``. Rounding to nearest is monotone, so those are the float32 values between the roundings of
    the bounds: a box narrower than float32's spacing (a layered box's outer rings at ε ~1e-14 around a pixel
    value k/255, which is no float32) holds no float32 value at all, and its points reach the network as the
    rounding of a bound."""
    lo32 = np.asarray(lower, dtype=np.float64).astype(np.float32).astype(np.float64)
    hi32 = np.asarray(upper, dtype=np.float64).astype(np.float32).astype(np.float64)
    return bool(np.all(x32 >= lo32) and np.all(x32 <= hi32))


def soundness(rows: list[dict]) -> list[str]:
    """Violations: a wrong sat (counterexample outside the box or the output region on onnxruntime), or an
    instance answered unsat by one method and sat with a confirmed counterexample by another."""
    out = []
    by_inst: dict[str, list[dict]] = {}
    for r in rows:
        by_inst.setdefault(r["instance"], []).append(r)
        if r["status"] == "sat" and r.get("ort", {}).get("verdict") == "wrong":
            out.append(f"{r['instance']}: {r['method']} answered sat but its counterexample fails on onnxruntime "
                       f"(margin {r['ort']['ort_margin']:.3g}, in box {r['ort']['in_box']})")
    for inst, rs in by_inst.items():
        unsat = sorted(r["method"] for r in rs if r["status"] == "unsat")
        sat = sorted(r["method"] for r in rs if r["status"] == "sat" and r.get("ort", {}).get("verdict") == "confirmed")
        if unsat and sat:
            out.append(f"{inst}: unsat by {', '.join(unsat)} but a confirmed counterexample from {', '.join(sat)}")
    return out


# --- summary and report ----------------------------------------------------------------------------------------------
def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per (model, family) and method: instances, unsat, sat, timeouts, solved, median time of the solved."""
    groups = sorted({(r["model"], r["family"]) for r in rows}) + [("all", "all")]
    out = []
    for model, family in groups:
        for m in methods:
            rs = [r for r in rows if r["method"] == m and (model == "all" or (r["model"], r["family"]) == (model, family))]
            if not rs:
                continue
            solved = [r for r in rs if r["status"] in SOLVED]
            out.append({"model": model, "family": family, "method": m, "instances": len(rs),
                        "unsat": sum(r["status"] == "unsat" for r in rs), "sat": sum(r["status"] == "sat" for r in rs),
                        "timeout": sum(r["status"] == "timeout" for r in rs),
                        "other": sum(r["status"] not in (*SOLVED, "timeout") for r in rs),
                        "solved": len(solved),
                        "median_s": statistics.median(r["seconds"] for r in solved) if solved else None,
                        "total_s": sum(float(r.get("seconds", 0.0)) for r in rs)})
    return out


def markdown(results: dict) -> str:
    methods = results["methods"]
    from benchmarks.suite import report_header

    avail = results["availability"]
    m = results["machine"]
    out = ["# VNN-COMP-style instances: solved count and median time per method", "", *report_header(results),
           (f"{m['platform']}, Python {m['python']}; one BLAS/torch thread per worker, {results['workers']} worker(s) "
            f"at a time; run time {results['seconds'] / 60:.1f} min.  "),
           f"Slice: {results['slice']}.  ",
           (f"Timeout {results['timeout_note']}; each (instance, method) in a fresh process, killed "
            f"{results['grace']:g} s after the timeout; time = verifier time after loading the model and parsing the "
            "property (as VNN-COMP times run_instance after prepare_instance). Every sat counterexample is re-checked "
            "on onnxruntime."), ""]
    out += ["Methods:", ""]
    from benchmarks.methods import METHODS

    for name in methods:
        desc = METHODS[name].description if name in METHODS else VNNLIB_DESCRIPTIONS.get(name, name)
        out.append(f"- **{name}**: {desc}" + (f" — *not available*: {avail[name]}" if avail.get(name) else ""))
    live = [n for n in methods if not avail.get(n)]
    out += ["", "## Solved (unsat + sat) / instances, median seconds of the solved", "",
            "| model | family | " + " | ".join(live) + " |", "|---|---|" + "---|" * len(live)]
    summary = results["summary"]
    for model, family in dict.fromkeys((s["model"], s["family"]) for s in summary):
        cells = []
        for name in live:
            s = next((s for s in summary if (s["model"], s["family"], s["method"]) == (model, family, name)), None)
            if s is None:
                cells.append("–")
                continue
            med = "–" if s["median_s"] is None else f"{s['median_s']:.1f} s"
            pct = 100.0 * s["solved"] / s["instances"]
            cells.append(f"{s['solved']}/{s['instances']} ({pct:.0f}%; {s['unsat']} unsat, {s['sat']} sat), {med}")
        label = "**all**" if model == "all" else model
        out.append(f"| {label} | {family if model != 'all' else ''} | " + " | ".join(cells) + " |")
    out += ["", "## Soundness", ""]
    if results["violations"]:
        out += [f"- **VIOLATION**: {v}" for v in results["violations"]]
    else:
        sats = [r for r in results["rows"] if r["status"] == "sat"]
        border = [r for r in sats if r.get("ort", {}).get("verdict") == "borderline"]
        out.append(f"No violation: {len(sats)} sat answers, every counterexample inside its box and in the output "
                   f"region on onnxruntime" + (f" ({len(border)} borderline within {ORT_TOLERANCE:g})" if border else "")
                   + "; no instance is unsat for one method and sat for another.")
    out += ["", "## Per instance", "", "Cells: status, seconds, deciding tier.", "",
            "| instance | " + " | ".join(live) + " |", "|---|" + "---|" * len(live)]
    by_inst: dict[str, dict[str, dict]] = {}
    for r in results["rows"]:
        by_inst.setdefault(r["instance"], {})[r["method"]] = r
    for inst, rs in by_inst.items():
        cells = []
        for name in live:
            r = rs.get(name)
            cells.append("–" if r is None else f"{r['status']} {float(r.get('seconds', 0.0)):.1f}"
                         + (f" ({r['tier']})" if r.get("tier") else ""))
        out.append(f"| {inst} | " + " | ".join(cells) + " |")
    if results.get("notes"):
        out += ["", "## Notes", "", results["notes"]]
    return "\n".join(out) + "\n"


# --- driver ------------------------------------------------------------------------------------------------------------
def select(instances: list[Instance], models: list[str] | None, families: list[str] | None,
           limit: int | None) -> list[Instance]:
    """Instances of the given models and families, the first ``limit`` of each (model, family)."""
    out: list[Instance] = []
    seen: dict[tuple[str, str], int] = {}
    for inst in instances:
        if models and inst.model_name not in models:
            continue
        if families and inst.family not in families:
            continue
        key = (inst.model_name, inst.family)
        seen[key] = seen.get(key, 0) + 1
        if limit is None or seen[key] <= limit:
            out.append(inst)
    return out


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    from benchmarks.methods import availability
    from benchmarks.suite import command_line, end_facts, run_facts

    facts = run_facts(command_line("python -m benchmarks vnncomp", args.argv))  # the load before the work
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    avail = availability([m for m in methods if m not in VNNLIB_METHODS])
    avail.update({m: "" for m in methods if m in VNNLIB_METHODS})
    for m, why in avail.items():
        if why and m in methods:
            log(f"method {m}: not available ({why})")
    instances = select(read_instances(args.instances), args.models and args.models.split(","),
                       args.families and args.families.split(","), args.limit)
    live = [m for m in methods if not avail.get(m)]
    cache: dict[tuple, dict] = {}
    if args.work.is_file() and not args.fresh:
        for line in args.work.read_text().splitlines():
            r = json.loads(line)
            cache[(r["instance"], r["method"], r["timeout"])] = r
    args.work.parent.mkdir(parents=True, exist_ok=True)
    checker = OrtChecker()
    jobs = [(inst, m) for inst in instances for m in live]
    if args.cached_only:  # a report of what ran before, nothing new: the instances every method has run
        def done(inst: Instance) -> bool:
            timeout = args.timeout if args.timeout is not None else inst.timeout
            return all((inst.key, m, timeout) in cache for m in live)

        jobs = [(inst, m) for inst, m in jobs if done(inst)]
    start = time.perf_counter()

    def job(item: tuple[Instance, str]) -> dict:
        inst, m = item
        timeout = args.timeout if args.timeout is not None else inst.timeout
        key = (inst.key, m, timeout)
        if key in cache:
            return cache[key]
        r = run_one(args.instances, inst, m, timeout, args.grace)
        if r["status"] == "sat" and r.get("x") is not None:
            r["ort"] = checker.check(args.instances, inst, r["x"])
        with args.work.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        return r

    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(args.workers, 1)) as pool:
        for i, r in enumerate(pool.map(job, jobs)):
            rows.append(r)
            log(f"[{i + 1}/{len(jobs)}] {r['instance']} {r['method']}: {r['status']} {float(r.get('seconds', 0)):.1f} s"
                + (f" ({r['tier']})" if r.get("tier") else "") + (f" ort {r['ort']['verdict']}" if "ort" in r else ""))
    for r in rows:
        r.pop("x", None)  # the counterexamples stay in the raw lines; the results JSON keeps their checks
        r.pop("y", None)
    if args.cached_only:
        ran = {inst.key for inst, _ in jobs}
        instances = [inst for inst in instances if inst.key in ran]
    slice_note = (f"{len(instances)} instances" + (f" of models {args.models}" if args.models else "")
                  + (f", families {args.families}" if args.families else "")
                  + (f", first {args.limit} per model and family" if args.limit else "")
                  + ("; of the selection, the instances every method has run (earlier raw results)"
                     if args.cached_only else ""))
    return {**facts, **end_facts(), "methods": methods, "availability": avail, "workers": args.workers, "grace": args.grace,
            "timeout_note": f"{args.timeout:g} s per instance" if args.timeout is not None else "from instances.csv",
            "slice": slice_note, "rows": rows, "summary": summarise(rows, live),
            "violations": soundness(rows), "seconds": time.perf_counter() - start, "notes": args.notes or ""}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks vnncomp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="crown_milp,alpha_bab_milp",
                   help="comma-separated: crown, alpha, bab, milp, milp_alpha, crown_milp, alpha_bab_milp, vnnlib")
    p.add_argument("--timeout", type=float, default=None, help="seconds per instance (default: instances.csv)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds after the timeout before the process is killed")
    p.add_argument("--instances", type=Path, default=INSTANCES, help="folder with instances.csv")
    p.add_argument("--models", default=None, help="comma-separated model names (default: all)")
    p.add_argument("--families", default=None, help="comma-separated families, e.g. eps0.03,eps0.05,acas")
    p.add_argument("--limit", type=int, default=None, help="first N instances of each model and family")
    p.add_argument("--workers", type=int, default=1, help="instances run at once")
    p.add_argument("--out", type=Path, default=OUT, help="Markdown report (the JSON goes next to it)")
    p.add_argument("--work", type=Path, default=WORK, help="raw result lines, reused by a re-run")
    p.add_argument("--fresh", action="store_true", help="ignore earlier raw results")
    p.add_argument("--cached-only", action="store_true", help="report the earlier raw results of the selection's "
                                                                "instances that every method has run; run nothing")
    add_notes_arguments(p)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main(argv[1])
    args = read_notes(parser().parse_args(argv), argv)
    from benchmarks.suite import report_violations, run_and_write

    results = run_and_write(args, run, markdown)
    for s in results["summary"]:
        if s["model"] == "all":
            med = "–" if s["median_s"] is None else f"{s['median_s']:.1f} s"
            print(f"  {s['method']}: solved {s['solved']}/{s['instances']}, median {med}", flush=True)
    return report_violations(results["violations"])


if __name__ == "__main__":
    sys.exit(main())

