"""How far each verifier proves the neighborhoods the search returns: the largest proven scale, side by side.

For every shipped model (``examples/models``) and image (``examples/manifest.json``): take the layered neighborhood
ε* the current search returns (``mlrobust.maximize`` with ``--search-time``; stored in ``--neighborhoods`` so a
re-run skips it), then

- the *attack scale*: the smallest scale s at which a strong PGD attack (``--restarts`` x ``--steps``) finds a
  confirmed counterexample in the box of s·ε* (doubling from 1, then bisection; stored with the neighborhood); an
  upper bound on any proof;
- for each method (:mod:`benchmarks.methods`: crown, alpha, bab, milp_alpha, crown_milp, alpha_bab_milp): the
  largest s it proves robust (scale 1, then growing steps of 5%, 10%, 20%, ... above the last proof, bisecting once
  a step fails) below the attack scale, within ``--budget`` seconds in total per method and image (each query at
  most ``--query-limit`` seconds; a timeout counts as not proven);
- the *gap to the attack*: attack scale / proven scale (1 = the verifier proves everything the attack cannot break).

Whole-image check: the cascades on the boxes of ``--check-model`` at ``--check-scales`` (1.05x and 1.5x of the
search result), each decided within ``--budget`` seconds or not.

Soundness: a method that proves a scale at or above one where any attack or method found a confirmed
counterexample is a violation (exit status 1).

    python -m benchmarks scale --models mnist2_pgd --images 2 --budget 120 [--methods crown,alpha,...]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.suite import add_notes_arguments, read_notes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OUT = ROOT / "benchmarks" / "results" / "scale.md"
NEIGHBORHOODS = ROOT / "benchmarks" / "results" / "scale_neighborhoods.json"
DEFAULT_METHODS = "crown,alpha,bab,milp_alpha,crown_milp,alpha_bab_milp"
K = 2
MAX_SCALE = 64.0


@dataclass
class Query:
    scale: float
    verdict: str  # "robust", "not robust", "unknown"
    seconds: float
    tier: str = ""


@dataclass
class ScaleResult:
    """The bisection of one method on one neighborhood."""

    method: str
    proven: float  # largest proven scale (0: none)
    refuted: float | None  # smallest scale with a confirmed counterexample from this method
    seconds: float
    queries: list[Query] = field(default_factory=list)


# --- inputs -------------------------------------------------------------------------------------------------------------
def manifest_images(examples: Path, n: int) -> list[dict]:
    return json.loads((examples / "manifest.json").read_text())["images"][:n]


def neighborhood(examples: Path, model: str, entry: dict, cache: dict, search_time: float,
                 log: Callable[[str], None]) -> dict:
    """ε* of the search for (model, image), from ``cache`` or a fresh ``mlrobust.maximize`` run (stored in it)."""
    key = f"{model}/{entry['id']}"
    if key in cache:
        return cache[key]
    import mlrobust

    log(f"  searching {key} ({search_time:g} s)")
    res = mlrobust.maximize(examples / "models" / f"{model}.onnx", examples / entry["file"],
                            int(entry["target_label"]), object_mask=examples / entry["mask"], k=K,
                            time_limit=search_time)
    cache[key] = {"epsilons": [float(e) for e in res.epsilons], "size": res.size, "verified": bool(res.verified),
                  "proof_tier": res.proof_tier, "search_seconds": search_time, "stop_reason": res.stop_reason}
    return cache[key]


def box_factory(examples: Path, model: str, entry: dict, eps: np.ndarray):
    """(network, target, box(s)): the box of s·ε* in the model's input shape."""
    from mlrobust.api import prepare

    prep = prepare(examples / "models" / f"{model}.onnx", examples / entry["file"], int(entry["target_label"]),
                   k=K, object_mask=examples / entry["mask"])

    def box(scale: float):
        return prep.nbhd.box(np.minimum(scale * eps, 1.0))

    return prep.network, int(entry["target_label"]), box


# --- scales ---------------------------------------------------------------------------------------------------------------
def attack_scale(network, target: int, box, restarts: int, steps: int, iterations: int = 7) -> tuple[float, float]:
    """(smallest scale broken by PGD, seconds); ``inf`` when even ``MAX_SCALE`` is not broken."""
    from mlrobust.verify.attack import PgdAttack

    attack = PgdAttack(restarts=restarts, steps=steps)
    start = time.perf_counter()

    def broken(s: float) -> bool:
        return attack.run(network, box(s), target, K).counterexample is not None

    lo, hi = 1.0, 2.0
    while hi <= MAX_SCALE and not broken(hi):
        lo, hi = hi, hi * 2
    if hi > MAX_SCALE:
        return math.inf, time.perf_counter() - start
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if broken(mid):
            hi = mid
        else:
            lo = mid
    return hi, time.perf_counter() - start


def verdict_name(v) -> str:
    return "robust" if v.is_robust else "not robust" if v.is_not_robust else "unknown"


def proven_scale(verifier, method: str, network, target: int, box, upper: float, budget: float, query_limit: float,
                 tolerance: float = 1.02, max_queries: int = 10, first_step: float = 0.05) -> ScaleResult:
    """The largest proven scale in (0, upper) within ``budget`` seconds in total.

    Scale 1 (the search's own result) first. Above the largest proven scale ``lo`` the next query is
    ``lo * (1 + step)``: the step starts at ``first_step`` and doubles after a proof, so small gains are measured
    before expensive large boxes (a bisection's first query halfway to the attack scale is usually a timeout that
    spends the whole budget). Once a query fails, the next lies geometrically between ``lo`` and the failed scale.
    Below a failed scale 1 the scale halves until a proof.
    """
    start = time.perf_counter()
    lo, hi = 0.0, (upper if math.isfinite(upper) else MAX_SCALE)
    refuted: float | None = None
    queries: list[Query] = []
    failed = False
    step = first_step
    s = min(1.0, hi / 1.05)  # the search's own result first
    while len(queries) < max_queries:
        left = budget - (time.perf_counter() - start)
        if left <= 0.5:
            break
        t0 = time.perf_counter()
        v = verifier.verify(network, box(s), target, K, "decide", time_limit=min(left, query_limit))
        q = Query(s, verdict_name(v), time.perf_counter() - t0, v.tier)
        queries.append(q)
        if q.verdict == "robust":
            lo = s
        else:
            hi, failed = s, True
            if q.verdict == "not robust":
                refuted = s if refuted is None else min(refuted, s)
        if lo > 0 and hi / lo <= tolerance:
            break
        if lo == 0:
            s = hi / 2
        elif failed:
            s = math.sqrt(lo * hi)
        else:
            s = min(lo * (1 + step), math.sqrt(lo * hi))
            step *= 2
    return ScaleResult(method, lo, refuted, time.perf_counter() - start, queries)


def geomean(values: list[float]) -> float | None:
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


# --- report -------------------------------------------------------------------------------------------------------------
def _s(v: float | None) -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return f">{MAX_SCALE:g}"
    return f"{v:.3g}"


def markdown(results: dict) -> str:
    from benchmarks.suite import report_header

    m = results["machine"]
    live = [n for n in results["methods"] if not results["availability"].get(n)]
    out = ["# Largest proven scale of the searched neighborhoods, per method", "", *report_header(results),
           (f"{m['platform']}, Python {m['python']}; one BLAS/torch thread; run time {results['seconds'] / 60:.1f} "
            "min.  "),
           (f"Budget {results['budget']:g} s per method and image (each query at most {results['query_limit']:g} s); "
            f"attack: PGD {results['restarts']} restarts x {results['steps']} steps; neighborhoods: "
            f"{results['neighborhood_note']}."), ""]
    for name, why in results["availability"].items():
        if why:
            out.append(f"- **{name}**: not available ({why})")
    out += ["", "## Proven scale (x ε*) per image; attack scale; gap = attack / proven", "",
            "| model | image | layers | w·ε* | " + " | ".join(live) + " | attack | gap (best method) |",
            "|---|---|---|---|" + "---|" * len(live) + "---|---|"]
    for r in results["rows"]:
        best = max((r["methods"][n]["proven"] for n in live if n in r["methods"]), default=0.0)
        gap = r["attack_scale"] / best if best > 0 else None
        out.append(f"| {r['model']} | {r['image']} | {r['layers']} | {r['size']:.3g} | "
                   + " | ".join(_s(r["methods"][n]["proven"]) if n in r["methods"] else "–" for n in live)
                   + f" | {_s(r['attack_scale'])} | {_s(gap)} |")
    out += ["", "## Geometric means per model", "", "| model | " + " | ".join(live) + " | attack | "
            + " | ".join(f"gap {n}" for n in live) + " |", "|---|" + "---|" * (2 * len(live) + 1)]
    for model, g in results["geomeans"].items():
        out.append(f"| {model} | " + " | ".join(_s(g["proven"].get(n)) for n in live) + f" | {_s(g['attack'])} | "
                   + " | ".join(_s(g["gap"].get(n)) for n in live) + " |")
    if results.get("whole_image"):
        limit = results.get("check_budget", results["budget"])
        out += ["", f"## Whole-image check: decided robust within {limit:g} s?", "",
                "| model | image | method | scale | verdict | seconds | tier | seconds per tier |",
                "|---|---|---|---|---|---|---|---|"]
        for w in results["whole_image"]:
            per_tier = ", ".join(f"{t} {v:.1f}" for t, v in w.get("tier_seconds", {}).items())
            out.append(f"| {w['model']} | {w['image']} | {w['method']} | {w['scale']:g} | {w['verdict']} | "
                       f"{w['seconds']:.1f} | {w['tier']} | {per_tier} |")
    out += ["", "## Queries", "", "Per method and image: scale → verdict (seconds).", ""]
    for r in results["rows"]:
        for n in live:
            if n in r["methods"]:
                qs = ", ".join(f"{q['scale']:.3g}→{q['verdict']} ({q['seconds']:.1f})"
                               for q in r["methods"][n]["queries"])
                out.append(f"- {r['model']}/{r['image']} {n}: {qs}")
    out += ["", "## Soundness", ""]
    out += ([f"- **VIOLATION**: {v}" for v in results["violations"]] if results["violations"] else
            [("No violation: no method proves a scale at or above one where an attack or another method found a "
              "confirmed counterexample.")])
    if results.get("notes"):
        out += ["", "## Notes", "", results["notes"]]
    return "\n".join(out) + "\n"


# --- driver ---------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    import torch

    from benchmarks.methods import availability, build
    from benchmarks.suite import command_line, end_facts, run_facts

    facts = run_facts(command_line("python -m benchmarks scale", args.argv))  # the load before the work
    torch.set_num_threads(1)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    avail = availability(methods)
    for name, why in avail.items():
        if why:
            log(f"method {name}: not available ({why})")
    live = [n for n in methods if not avail[n]]
    verifiers = {n: build(n) for n in live}
    models = [m.strip() for m in args.models.split(",")] if args.models else sorted(
        p.stem for p in (args.examples / "models").glob("*.onnx"))
    cache = json.loads(args.neighborhoods.read_text()) if args.neighborhoods.is_file() else {}
    start = time.perf_counter()
    rows, violations, whole = [], [], []
    for model in models:
        for entry in manifest_images(args.examples, args.images):
            log(f"{model}/{entry['id']}")
            nb = neighborhood(args.examples, model, entry, cache, args.search_time, log)
            args.neighborhoods.parent.mkdir(parents=True, exist_ok=True)
            args.neighborhoods.write_text(json.dumps(cache, indent=1) + "\n")
            eps = np.asarray(nb["epsilons"], dtype=np.float64)
            network, target, box = box_factory(args.examples, model, entry, eps)
            akey = f"attack_{args.restarts}x{args.steps}"
            if akey not in nb:
                a_scale, a_secs = attack_scale(network, target, box, args.restarts, args.steps)
                nb[akey] = {"scale": a_scale, "seconds": a_secs}
                args.neighborhoods.write_text(json.dumps(cache, indent=1) + "\n")
            a_scale, a_secs = float(nb[akey]["scale"]), float(nb[akey]["seconds"])
            log(f"  attack breaks at x{_s(a_scale)} ({a_secs:.0f} s)")
            row: dict = {"model": model, "image": entry["id"], "layers": int(eps.size),
                         "size": float(nb["size"]), "attack_scale": a_scale, "attack_seconds": a_secs, "methods": {}}
            for n in live:
                res = proven_scale(verifiers[n], n, network, target, box, a_scale, args.budget, args.query_limit)
                row["methods"][n] = {"proven": res.proven, "refuted": res.refuted, "seconds": res.seconds,
                                     "queries": [q.__dict__ for q in res.queries]}
                log(f"  {n}: proves x{_s(res.proven)} ({res.seconds:.0f} s, {len(res.queries)} queries)")
            refuted = [a_scale] + [r["refuted"] for r in row["methods"].values() if r["refuted"] is not None]
            for n, r in row["methods"].items():
                if r["proven"] > 0 and r["proven"] >= min(refuted):
                    violations.append(f"{model}/{entry['id']}: {n} proves x{r['proven']:.4g} but a counterexample "
                                      f"exists at x{min(refuted):.4g}")
            rows.append(row)
            if model == args.check_model:
                for n in [m for m in ("crown_milp", "alpha_bab_milp") if m in verifiers]:
                    for s in args.check_scales:
                        t0 = time.perf_counter()
                        v = verifiers[n].verify(network, box(s), target, K, "decide", time_limit=args.check_budget)
                        whole.append({"model": model, "image": entry["id"], "method": n, "scale": s,
                                      "verdict": verdict_name(v), "seconds": time.perf_counter() - t0,
                                      "tier": v.tier, "tier_seconds": dict(v.seconds)})
                        if v.is_robust and s >= a_scale:
                            violations.append(f"{model}/{entry['id']}: {n} proves x{s:g} beyond the attack's "
                                              f"x{a_scale:.4g}")
                        log(f"  whole-image {n} x{s:g}: {verdict_name(v)} ({whole[-1]['seconds']:.0f} s)")
    geomeans: dict[str, dict] = {}
    for model in models:
        rs = [r for r in rows if r["model"] == model]
        proven = {n: geomean([r["methods"][n]["proven"] for r in rs]) for n in live}
        attack = geomean([r["attack_scale"] for r in rs])
        gap = {n: geomean([r["attack_scale"] / r["methods"][n]["proven"] for r in rs
                           if r["methods"][n]["proven"] > 0 and math.isfinite(r["attack_scale"])]) for n in live}
        geomeans[model] = {"proven": proven, "attack": attack, "gap": gap}
    note = (f"from {args.neighborhoods.relative_to(ROOT) if args.neighborhoods.is_relative_to(ROOT) else args.neighborhoods}"
            f" (mlrobust.maximize, {args.search_time:g} s per search where computed here)")
    return {**facts, **end_facts(), "methods": methods, "availability": avail, "budget": args.budget, "query_limit": args.query_limit,
            "check_budget": args.check_budget, "restarts": args.restarts, "steps": args.steps,
            "neighborhood_note": note, "rows": rows,
            "geomeans": geomeans, "whole_image": whole, "violations": violations,
            "seconds": time.perf_counter() - start, "notes": args.notes}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated shipped model names (default: all)")
    p.add_argument("--images", type=int, default=5, help="first N images of the manifest")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--budget", type=float, default=120.0, help="seconds per method and image (and per whole-image "
                                                               "check)")
    p.add_argument("--query-limit", type=float, default=None, help="seconds per query (default: budget / 2)")
    p.add_argument("--search-time", type=float, default=60.0, help="seconds of mlrobust.maximize per neighborhood")
    p.add_argument("--restarts", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--check-model", default="mnist2_pgd")
    p.add_argument("--check-scales", type=float, nargs="+", default=[1.05, 1.5])
    p.add_argument("--check-budget", type=float, default=None, help="seconds per whole-image check (default: budget)")
    p.add_argument("--examples", type=Path, default=EXAMPLES)
    p.add_argument("--neighborhoods", type=Path, default=NEIGHBORHOODS, help="stored search results (JSON)")
    p.add_argument("--out", type=Path, default=OUT)
    add_notes_arguments(p)
    p.add_argument("--quiet", action="store_true")
    args = read_notes(p.parse_args(argv), argv)
    if args.query_limit is None:
        args.query_limit = args.budget / 2
    if args.check_budget is None:
        args.check_budget = args.budget

    from benchmarks.suite import report_violations, run_and_write

    return report_violations(run_and_write(args, run, markdown)["violations"])


if __name__ == "__main__":
    sys.exit(main())
