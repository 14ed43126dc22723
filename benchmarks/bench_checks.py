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


def write(records: list[dict], out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    load = os.getloadavg()
    lines = ["# Where the search's time goes (tutorial image ex00, target 1)", "",
             f"Command: `{command}`", "",
             f"Package: `{records[0]['package'] if records else ''}`; load average at the end "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on a shared 2-core machine: timings are indicative.", "",
             "| model | method | budget s | w·ε | ε₀ | certified | run s | undecided queries | undecided s | "
             "share of run |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['method']} | {r['budget']:g} | {r['size']:.4f} | {r['eps0']:.4f} | "
                     f"{r['certified']}/{r['layers']} | {r['seconds']:.1f} | {r['undecided_queries']}/"
                     f"{r['queries']} | {r['wasted_seconds']:.1f} | {100 * r['wasted_share']:.0f} % |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist2_pgd,mnist2_nodefense,mnist2_l0")
    parser.add_argument("--methods", default="boundary,uniform")
    parser.add_argument("--budgets", default="30,60,120")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checks"))
    args = parser.parse_args(argv)
    import mlrobust

    command = "python -m benchmarks.bench_checks " + " ".join(sys.argv[1:] if argv is None else argv)
    records: list[dict] = []
    for model in args.models.split(","):
        for budget in (float(b) for b in args.budgets.split(",")):
            for method in args.methods.split(","):
                rec = run_one(model, method, budget)
                rec["package"] = str(Path(mlrobust.__file__).parent)
                records.append(rec)
                print(json.dumps({k: rec[k] for k in ("model", "method", "budget", "size", "eps0", "seconds",
                                                       "wasted_share")}), flush=True)
                write(records, Path(args.out), command)


if __name__ == "__main__":
    main()
