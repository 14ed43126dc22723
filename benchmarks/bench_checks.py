"""Where a search's time goes, and what it buys: per model, method and budget the size w·ε, the object's ε_0, and
the share of the run spent in verifier queries that decided nothing (the verifier returned *unknown*), split by
phase (exploration, upper bounds, push to the boundary, maximality check).

    python -m benchmarks.bench_checks --models mnist2_pgd,mnist2_nodefense,mnist2_l0 --budgets 30,60,120 \
        --methods boundary,uniform --out benchmarks/results/checks

Every query of the search is timed by wrapping ``SearchProblem.query`` (wall time of the query, warm attack and
caches included), so the same script measures any version of the package that has that method: run it with
``PYTHONPATH`` pointing at another checkout to measure that one. Writes ``OUT.json`` (one record per run) and
``OUT.md`` after every run. The image is the tutorial's (examples/images/ex00.png, target 1, the 6 perturbed).
Single-threaded BLAS and torch.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The phases (``SearchProblem.phase``) that ask per-layer questions after the search.
CHECK_PHASES = ("boundary", "maximality")


def timed_queries() -> list[dict]:
    """Wrap ``SearchProblem.query`` so that every query appends ``{phase, status, tier, seconds}`` to the returned
    list."""
    from mlrobust.search.problem import SearchProblem, status_of

    log: list[dict] = []
    original = SearchProblem.query

    def query(self, eps, purpose="", *args, **kwargs):
        phase = self.phase
        start = time.perf_counter()
        verdict = original(self, eps, purpose, *args, **kwargs)
        # the kind of question: the purpose without its layer number ("boundary of layer (bab)")
        kind = re.sub(r"[0-9.]+", "", purpose).replace("  ", " ").strip()
        log.append({"phase": phase, "kind": kind, "status": status_of(verdict), "tier": verdict.tier or "",
                    "seconds": time.perf_counter() - start})
        return verdict

    SearchProblem.query = query  # type: ignore[method-assign]
    return log


def summarise(log: list[dict], total: float) -> dict:
    """Seconds by phase and outcome; the undecided ones (an *unknown* that was not the spent budget) are wasted."""
    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_kind: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    wasted = 0.0
    for q in log:
        by_phase[q["phase"]][q["status"]] += q["seconds"]
        by_kind[q["kind"]][q["status"]] += q["seconds"]
        if q["status"] == "unknown" and q["tier"] != "budget":
            wasted += q["seconds"]
    return {"wasted_seconds": wasted, "wasted_share": wasted / total if total > 0 else 0.0,
            "queries": len(log), "undecided_queries": sum(q["status"] == "unknown" and q["tier"] != "budget"
                                                          for q in log),
            "seconds_by_phase": {p: {s: round(v, 3) for s, v in d.items()} for p, d in by_phase.items()},
            "seconds_by_question": {p: {s: round(v, 3) for s, v in d.items()} for p, d in by_kind.items()}}


def run_one(model: str, method: str, budget: float) -> dict:
    import mlrobust

    log = timed_queries()
    start = time.perf_counter()
    result = mlrobust.maximize(EXAMPLES / "models" / f"{model}.onnx", EXAMPLES / "images" / "ex00.png", 1,
                               object_mask=EXAMPLES / "images" / "ex00_perturbed.png", method=method,
                               time_limit=budget)
    total = time.perf_counter() - start
    counts = result.maximality_counts()
    return {"model": model, "method": method, "budget": budget, "size": float(result.size),
            "eps0": float(result.eps0), "verified": bool(result.verified), "seconds": total,
            "certified": int(result.certified_layers), "layers": int(result.num_layers),
            "statuses": dict(counts), "timings": {k: round(float(v), 3) for k, v in result.timings.items()},
            **summarise(log, total)}


def write(records: list[dict], out: Path, facts: dict) -> None:
    """The records (JSON) and their table (Markdown); ``facts``: :func:`benchmarks.suite.run_facts` with
    :func:`benchmarks.suite.end_facts` of the latest record."""
    from benchmarks.suite import report_header

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    lines = ["# Where the search's time goes (tutorial image ex00, target 1)", "", *report_header(facts),
             f"Run from the repository root; package: `{Path(records[0]['package']).name if records else ''}`.", "",
             "| model | method | budget s | w·ε | ε₀ | certified | run s | undecided queries | undecided s | "
             "share of run | of which in the checks |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        checks = sum(r["seconds_by_phase"].get(p, {}).get("unknown", 0.0) for p in CHECK_PHASES)
        lines.append(f"| {r['model']} | {r['method']} | {r['budget']:g} | {r['size']:.4f} | {r['eps0']:.4f} | "
                     f"{r['certified']}/{r['layers']} | {r['seconds']:.1f} | {r['undecided_queries']}/"
                     f"{r['queries']} | {r['wasted_seconds']:.1f} | {100 * r['wasted_share']:.0f} % | "
                     f"{100 * checks / r['seconds']:.0f} % |")
    lines += ["", "*Undecided*: the verifier answered unknown (a spent budget not counted). *In the checks*: in the "
                  "per-layer phases after the search (the push to the boundary and the scale step of the default "
                  "method, the maximality check of the others)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    from benchmarks.suite import command_line, end_facts, load_average, run_facts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist2_pgd,mnist2_nodefense,mnist2_l0")
    parser.add_argument("--methods", default="boundary,uniform")
    parser.add_argument("--budgets", default="30,60,120")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checks"))
    args = parser.parse_args(argv)
    import mlrobust

    facts = run_facts(command_line("python -m benchmarks.bench_checks", argv))  # the load before the work
    records: list[dict] = []
    for model in args.models.split(","):
        for budget in (float(b) for b in args.budgets.split(",")):
            for method in args.methods.split(","):
                rec = run_one(model, method, budget)
                rec["package"] = str(Path(mlrobust.__file__).parent)
                rec["command"] = facts["command"]
                rec["load"] = load_average()
                records.append(rec)
                facts.update(end_facts())
                print(json.dumps({k: rec[k] for k in ("model", "method", "budget", "size", "eps0", "seconds",
                                                       "wasted_share")}), flush=True)
                write(records, Path(args.out), facts)


if __name__ == "__main__":
    main()


def load_text(records: list[dict]) -> str:
    """The 1-minute load averages over the runs, as "lo-hi"."""
    loads = [r["load"][0] for r in records if r.get("load")]
    if not loads:
        return "unknown"
    lo, hi = f"{min(loads):.0f}", f"{max(loads):.0f}"
    return f"about {lo}" if lo == hi else f"{lo}-{hi}"


def results_section(records: list[dict], link: str) -> str:
    """The section of docs/results.md on the default method: boundary against the uniform baseline per model and
    budget (w·ε, the object's ε₀), and the share of each run spent in questions the verifier left undecided."""
    runs = {(r["model"], r["budget"], r["method"]): r for r in records}
    models = list(dict.fromkeys(r["model"] for r in records))
    budgets = sorted({r["budget"] for r in records})
    lines = ["## The default method against the simplest baseline", "",
             "The default search (`--method boundary`) against one ε for every layer (`--method uniform`) on the "
             "tutorial's question (image ex00, target 1, the 6 perturbed), at equal time limits, from "
             f"[`{link}checks.json`]({link}checks.json) (`{records[0].get('command', '')}`; a shared 2-core machine: "
             "timings are indicative). The default keeps the object's ε₀ at least half of the object's own radius "
             "(`--object-share 0.5`): where the uniform baseline's w·ε is larger, its ε₀ is smaller — the size it "
             "wins is bought by starving the object the question is about, a trade the summary of `mlrobust verify` "
             "names (`trade`) and `--object-share 0` declines. \"Undecided\" is the share of the run spent in "
             "verifier questions that came back unknown. The machine was shared with other work (load average "
             f"{load_text(records)} on 2 cores): the search phase of the default gets fewer queries than on an idle "
             "machine, and where it did not prove the floored starts in time it grew from the object alone and "
             "ended far below the baseline (the summary's `not tried` line names what the time limit cut off).",
             "",
             "| model | budget s | default w·ε | default ε₀ | uniform w·ε | uniform ε₀ | default undecided | "
             "uniform undecided |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in models:
        for budget in budgets:
            b, u = runs.get((model, budget, "boundary")), runs.get((model, budget, "uniform"))
            if b is None or u is None:
                continue
            lines.append(f"| {model} | {budget:g} | {b['size']:.4f} | {b['eps0']:.4f} | {u['size']:.4f} | "
                         f"{u['eps0']:.4f} | {100 * b['wasted_share']:.0f} % | {100 * u['wasted_share']:.0f} % |")
    lines += ["", "How close each layer gets to its boundary with the default method (proven against refuted ε per "
                  f"layer, several images and budgets): [`{link}boundary.md`]({link}boundary.md).", ""]
    return "\n".join(lines)
