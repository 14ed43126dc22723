"""The benchmark suite: one entry point for the reference experiment, the verifier micro-benchmarks, the
top-k-vs-pairwise comparison, backend agreement and (on request: ``--steps bounds``) the bounds benchmark.

``smoke`` runs in CI in a few minutes and exists to catch soundness violations; ``full`` produces the committed
figures. Both write ``<suite>.json`` (every number) and ``<suite>.md`` (tables, and the answers computed from the
numbers) to the output folder; the full suite also draws the heatmaps of the three models side by side.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("reference", "verifier", "topk", "backends", "bounds", "ladder")


@dataclass(frozen=True)
class SuiteConfig:
    """What a suite runs. Time limits are per search (reference) or per query (verifier steps)."""

    name: str
    steps: tuple[str, ...]
    images: int
    methods: tuple[str, ...]
    time_limit: float
    query_time_limit: float | None  # None: the default of mlrobust.maximize
    delta: float | None  # None: the default of mlrobust.maximize
    attack_restarts: int
    attack_steps: int
    tiny_queries: int
    tiny_factors: tuple[float, ...]
    model_images: int
    factors: tuple[float, ...]
    verifier_time_limit: float
    tightenings: tuple[str, ...] = ("ibp", "crown", "lp")
    solvers: tuple[str, ...] = ("highs", "cbc", "scip", "gurobi")
    topk_modes: tuple[str, ...] = ("decide", "optimize")
    topk_optimize_models: bool = True  # optimise mode on the model queries too (slow: every pair solved)
    workers: int = 1
    heatmap_images: int = 0
    models: tuple[str, ...] = field(default_factory=tuple)


SUITES = {
    "smoke": SuiteConfig(
        name="smoke", steps=("reference", "topk", "backends", "ladder"), images=1,
        methods=("optimize-fixed",), time_limit=10.0, query_time_limit=4.0, delta=0.02,
        attack_restarts=16, attack_steps=60, tiny_queries=4, tiny_factors=(1.2, 1.5, 2.0), model_images=0,
        factors=(1.25,),
        verifier_time_limit=8.0, tightenings=("ibp", "crown"), topk_modes=("decide", "optimize")),
    "full": SuiteConfig(
        # the verifier step is also available here (--steps verifier); its committed figures come from
        # benchmarks/bench_verifier.py, which measures more (decide vs optimise, Pyomo hand-over, time limits)
        name="full", steps=("reference", "topk", "backends"), images=5,
        methods=("optimize-fixed", "optimize-sensitivity", "layer-search", "uniform"), time_limit=90.0,
        query_time_limit=None, delta=None, attack_restarts=64, attack_steps=200, tiny_queries=8,
        tiny_factors=(1.2, 1.5, 2.0, 3.0), model_images=2, factors=(1.1, 1.5), verifier_time_limit=30.0,
        topk_optimize_models=False, heatmap_images=3),
}


def load_average() -> list[float] | None:
    """The machine's load average (1, 5, 15 min), rounded to 0.01; None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def git_revision(checkout: Path = ROOT) -> str:
    """The short commit of ``checkout`` (this project by default), marked when tracked files have uncommitted
    changes; "?" without git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=checkout,
                             timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=checkout, timeout=10, check=False).stdout.strip()
        return (rev or "?") + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict:
    """The machine a run is on, with its load average at the start (call it before the work, not after)."""
    from mlrobust.search.result import versions

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions(),
            "threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}}
    load = load_average()
    if load is not None:
        info["load_average_at_start"] = load
    return info


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command a benchmark ran as: ``prog`` (how it is started) and its arguments (this process's when
    ``argv`` is None)."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


def run_facts(command: str) -> dict[str, Any]:
    """What a report's header states, collected as a run starts: ``command``, ``date`` (UTC), ``machine``
    (:func:`machine`, with the load average at the start) and ``git`` (:func:`git_revision`). Merge it into the
    results and add :func:`end_facts` when the work is done."""
    return {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "git": git_revision()}


def end_facts() -> dict[str, Any]:
    """What a report's header states from the end of a run: ``load_average_at_end``."""
    return {"load_average_at_end": load_average()}


def load_text(load: Any) -> str:
    """A load average as recorded (1/5/15-min triple, a single 1-minute figure, or nothing), as text."""
    if load is None:
        return "not recorded"
    if isinstance(load, (int, float)):
        return f"{load:.2f}"
    return " / ".join(f"{float(x):.2f}" for x in load)


def header_lines(command: str | None, *, cpus: int | None, processor: str | None = None, load_start: Any = None,
                 load_end: Any = None, git: str | None = None, date: str | None = None) -> list[str]:
    """A benchmark report's header: the command; the date and code revision (where recorded); the machine's CPUs
    and its load average at the start and the end, which say how shared it was; that timings are therefore
    indicative. Two Markdown lines ending in a hard line break, so the benchmark's own set-up (threads, jobs, run
    time...) can follow in the same paragraph."""
    where = (f"{cpus} CPUs" if cpus else "CPUs not recorded") + (f" ({processor})" if processor else "")
    parts = [f"date {date}" if date else "", f"code {git}" if git else "",
             f"machine: {where}, shared with other work (load average {load_text(load_start)} at the start, "
             f"{load_text(load_end)} at the end): timings are indicative"]
    facts = "; ".join(part for part in parts if part)
    return [f"Command: `{command}`  " if command else "Command: not recorded  ", f"{facts[0].upper()}{facts[1:]}.  "]


def report_header(results: dict) -> list[str]:
    """:func:`header_lines` from results laid out as :func:`run_facts` and :func:`end_facts` lay them out (older
    results without a date or revision render without them; a machine recorded as one line of text is shown as
    it is)."""
    m = results.get("machine") or {}
    if isinstance(m, str):
        m = {"processor": m}
    return header_lines(results.get("command"), cpus=m.get("cpus"), processor=m.get("processor"),
                        load_start=m.get("load_average_at_start"), load_end=results.get("load_average_at_end"),
                        git=results.get("git"), date=results.get("date"))


# --- steps ----------------------------------------------------------------------------------------------------------
def write_results(out: Path, results: dict, text: str) -> Path:
    """Write the Markdown report ``text`` to ``out`` and ``results`` to its ``.json`` sibling (folder created);
    returns the JSON path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    out.write_text(text)
    return path


def add_notes_arguments(parser: Any, paragraph: bool = True) -> None:
    """The report's Notes options: ``--notes`` (a paragraph, where ``paragraph``) and ``--notes-file`` (Markdown)."""
    if paragraph:
        parser.add_argument("--notes", default="", help="a paragraph for the report's Notes section")
    parser.add_argument("--notes-file", type=Path, default=None, help="Markdown for the report's Notes section")


def read_notes(args: Any, argv: list[str]) -> Any:
    """``args`` with the command line it came from (``argv``) and its notes: ``--notes-file``'s text where given,
    else ``--notes`` (empty without one)."""
    args.argv = argv
    args.notes = args.notes_file.read_text().strip() if args.notes_file is not None else getattr(args, "notes", "")
    return args


def run_and_write(args, run, markdown) -> dict:
    """``run(args, log)`` (``log`` prints unless ``args.quiet``), its Markdown report written to ``args.out`` and the
    results next to it, one line saying so; the results."""

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    results = run(args, log)
    path = write_results(args.out, results, markdown(results))
    print(f"wrote {args.out} and {path} ({results['seconds']:.0f} s)", flush=True)
    return results


def report_violations(violations: list) -> int:
    """Print soundness violations to stderr; the exit status a benchmark ends with (1 if there are any)."""
    if not violations:
        return 0
    print(f"SOUNDNESS VIOLATIONS: {len(violations)}", file=sys.stderr)
    for v in violations:
        print(f"  {v}", file=sys.stderr)
    return 1


def step_reference(cfg: SuiteConfig, examples: Path, work: Path, log: Callable) -> dict:
    from benchmarks.suite_reference import aggregate, cascade_rates, run_reference, which_model

    res = run_reference(examples, work / "reference", n_images=cfg.images, methods=list(cfg.methods),
                        time_limit=cfg.time_limit, query_time_limit=cfg.query_time_limit, delta=cfg.delta,
                        workers=cfg.workers, attack_restarts=cfg.attack_restarts, attack_steps=cfg.attack_steps,
                        models=list(cfg.models) or None, log=log)
    res["aggregate"] = aggregate(res["rows"])
    res["cascade"] = cascade_rates(res["rows"])
    res["answers"] = [which_model(res["rows"], m) for m in cfg.methods]
    return res


def _model_query_set(cfg: SuiteConfig, examples: Path, log: Callable) -> list:
    """Calibrated object-only queries on the shipped models (first ``model_images`` images)."""
    from benchmarks.suite_reference import shipped_models
    from benchmarks.suite_verifier import model_queries
    from mlrobust import load_onnx
    from mlrobust.batch import load_jobs
    from mlrobust.neighborhood import LayeredNeighborhood

    queries = []
    if cfg.model_images <= 0:
        return queries
    jobs = load_jobs(examples, limit=cfg.model_images)
    for name, path in shipped_models(examples):
        if cfg.models and name not in cfg.models:
            continue
        net = load_onnx(path)
        for job in jobs:
            nbhd = LayeredNeighborhood.build(job.pixels(), job.mask, net.sample_shape)
            qs = model_queries(f"{name}/{job.id}", net, nbhd, job.target, 2, cfg.factors)
            log(f"queries: {name}/{job.id}: CROWN proves the object up to eps = {qs[0].info['crown_radius']:.4f}")
            queries.extend(qs)
    return queries


def step_verifier(cfg: SuiteConfig, queries: list, log: Callable) -> dict:
    """Tightening methods on HiGHS, then every available solver on CROWN bounds, decide mode."""
    from benchmarks.suite_verifier import agreement, available_solvers, solve_query

    solvers = available_solvers(cfg.solvers)
    tightening_rows, solver_rows = [], []
    for q in queries:
        for t in cfg.tightenings:
            row = solve_query(q, t, "highs", "decide", cfg.verifier_time_limit)
            tightening_rows.append(row)
            log(f"verifier: {q.name} {t}/highs -> {row['status']} ({row.get('seconds', 0):.2f} s)")
        for s in solvers:
            row = solve_query(q, "crown", s, "decide", cfg.verifier_time_limit)
            solver_rows.append(row)
            log(f"verifier: {q.name} crown/{s} -> {row['status']} ({row.get('seconds', 0):.2f} s)")
    agree = agreement(solver_rows + tightening_rows)
    violations = [{"kind": "verdicts disagree", "query": a["query"], "verdicts": a["verdicts"]}
                  for a in agree if a["conflict"]]
    return {"solvers": solvers, "tightening": tightening_rows, "solver": solver_rows, "agreement": agree,
            "violations": violations}


def step_topk(cfg: SuiteConfig, queries: list, log: Callable) -> dict:
    from benchmarks.suite_verifier import topk_vs_pairwise

    rows = []
    violations = []
    for q in queries:
        for mode in cfg.topk_modes:
            if mode == "optimize" and q.kind == "model" and not cfg.topk_optimize_models:
                continue
            r = topk_vs_pairwise(q, "highs", mode, cfg.verifier_time_limit)
            rows.append(r)
            log(f"top-k: {q.name} {mode}: one MILP {r['one_milp']['status']} {r['one_milp']['seconds']:.2f} s, "
                f"pairwise {r['pairwise']['status']} {r['pairwise']['seconds']:.2f} s "
                f"({r['pairwise']['solved']} MILPs)")
            if r["conflict"]:
                violations.append({"kind": "one-MILP and pairwise verdicts disagree", "query": q.name,
                                   "mode": mode, "one_milp": r["one_milp"]["status"],
                                   "pairwise": r["pairwise"]["status"]})
            one, pair = r["one_milp"], r["pairwise"]
            if (mode == "optimize" and one["status"] != "unknown" and pair["status"] != "unknown"
                    and one.get("objective") is not None and pair.get("value") is not None
                    and abs(one["objective"] - pair["value"]) > 1e-3 * (1 + abs(one["objective"]))):
                violations.append({"kind": "one-MILP and pairwise optima differ", "query": q.name,
                                   "one_milp": one["objective"], "pairwise": pair["value"]})
    return {"rows": rows, "violations": violations}


def step_bounds(log: Callable) -> dict:
    """The bounds benchmark script (IBP vs CROWN), run as it is and kept as its own Markdown."""
    from benchmarks import bench_bounds

    rows, note = bench_bounds.run(list(bench_bounds.RADII), 3, 20000)
    log("bounds: done")
    return {"rows": rows, "image_note": note,
            "markdown": bench_bounds.markdown(rows, note, "python -m benchmarks run --suite full")}


# --- the suite --------------------------------------------------------------------------------------------------------
def step_ladder(cfg: SuiteConfig, examples: Path, work: Path, log: Callable) -> dict:
    """The scale ladder's smallest rung (``python -m benchmarks scale-ladder``) as a user runs it: one image, the
    suite's time limit, the suite's attack on the returned neighborhood (broken at scale 1 = a violation)."""
    from benchmarks.bench_ladder import RUNGS, run_one, rung_images

    rung = RUNGS[0]
    rows = [run_one(examples, rung, entry, cfg.time_limit, work, cfg.attack_restarts, cfg.attack_steps)
            for entry in rung_images(examples, rung, 1)]
    for row in rows:
        log(f"ladder {row['rung']} {row['image']}: exit {row['exit_code']}, {row['wall_s']:.1f} s, "
            f"{row['peak_rss_mb']:.0f} MB, attack scale {row.get('attack_scale')}")
    violations = [{"kind": "ladder neighborhood broken", "rung": r["rung"], "image": r["image"]}
                  for r in rows if r.get("violation")]
    return {"rows": rows, "violations": violations}


def run_suite(cfg: SuiteConfig, out: Path, work: Path, examples: Path, log: Callable = print) -> dict:
    """Run ``cfg``'s steps; write ``out/<name>.json`` and ``out/<name>.md``; return the results."""
    from benchmarks.suite_report import heatmaps, markdown
    from benchmarks.suite_verifier import tiny_queries
    from mlrobust.jsonvalues import jsonable

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {"suite": cfg.name, "config": _config_dict(cfg), "machine": machine(),
                               "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "violations": []}
    step_seconds: dict[str, float] = {}
    has_models = (examples / "manifest.json").is_file()
    queries = None
    for step in cfg.steps:
        t0 = time.perf_counter()
        if step in ("reference", "ladder") and not has_models:
            log(f"{step}: skipped ({examples}/manifest.json not found)")
            continue
        if step == "reference":
            results["reference"] = step_reference(cfg, examples, work, log)
        elif step in ("verifier", "topk", "backends"):
            if queries is None:
                tiny = tiny_queries(cfg.tiny_queries, factors=cfg.tiny_factors)
                model = _model_query_set(cfg, examples, log) if has_models else []
                queries = {"tiny": tiny, "model": model}
                results["queries"] = [{"name": q.name, "kind": q.kind, "target": q.target, "k": q.k, **q.info}
                                      for q in tiny + model]
            if step == "verifier":
                results["verifier"] = step_verifier(cfg, queries["model"], log)
            elif step == "backends":
                results["backends"] = step_verifier(replace(cfg, tightenings=("ibp",)), queries["tiny"], log)
            else:
                results["topk"] = step_topk(cfg, queries["tiny"] + queries["model"], log)
        elif step == "bounds":
            results["bounds"] = step_bounds(log)
        elif step == "ladder":
            results["ladder"] = step_ladder(cfg, examples, work, log)
        step_seconds[step] = time.perf_counter() - t0
        results["violations"] += results.get(step, {}).get("violations", [])
    results["step_seconds"] = step_seconds
    results["seconds"] = time.perf_counter() - start
    if cfg.heatmap_images and "reference" in results:
        results["heatmaps"] = heatmaps(results["reference"], examples, out / "img", cfg.name, cfg.heatmap_images)
    (out / f"{cfg.name}.json").write_text(json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n")
    (out / f"{cfg.name}.md").write_text(markdown(results))
    return results


def _config_dict(cfg: SuiteConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)

