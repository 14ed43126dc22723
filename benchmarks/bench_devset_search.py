"""The search on the development models, before and after the joint intermediate-bound pass:
``python -m benchmarks devset-search``.

For every development model (``benchmarks/devset/models``) and its first ``--images`` example images whose clean
top-2 holds the target, the maximal-neighborhood search runs as ``mlrobust verify --time-limit 120`` runs it
(:func:`mlrobust.api.maximize` with the command's defaults and the same time limit, less the command's reserve) in a
fresh process with one CPU thread, once per variant of the cascade:

- ``before``: the bound tier's α-CROWN with frozen intermediate bounds (``AlphaOptions(joint_intermediate="off")``);
- ``after``: the cascade as shipped (``joint_intermediate="auto"``: intermediate bounds optimised jointly with the
  output objective where that proves more per second, decided per query by the bound check's
  :class:`~mlrobust.bounds.joint_policy.JointPolicy`; ``devset_search.md`` was measured before the policy, with the
  pass on every query below its work cap).

Then, in the same process, the *attack scale* of the returned vector ε* as :mod:`benchmarks.bench_ladder` measures
it: the smallest s at which PGD (20 restarts × 200 steps) breaks the box of s·ε* (1 or less would be a soundness
violation; larger is a tighter search result only when the proven vector is also larger — read it with w·ε).
At most ``--jobs`` (≤ 2) processes at once. Written to ``benchmarks/results/devset_search.md`` (+ .json).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.suite import add_notes_arguments, read_notes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "devset_search.md"
VARIANTS = ("before", "after")
_STARTED = time.perf_counter()


def make_cascade(variant: str) -> Any:
    """The cascade of one variant (see the module docstring)."""
    from mlrobust.bounds.alpha_crown import AlphaOptions
    from mlrobust.verify.bound_check import BoundCheck
    from mlrobust.verify.cascade import Cascade

    if variant == "after":
        return Cascade()
    if variant == "before":
        return Cascade(bounds=BoundCheck("alpha", alpha_options=AlphaOptions(joint_intermediate="off")))
    raise SystemExit(f"error: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def run_worker(spec: dict) -> dict:
    """One search and its attack scale (the search's clock starts with the process, as the command's does)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from benchmarks.bench_ladder import MAX_SCALE, attack_scale
    from mlrobust import api
    from mlrobust.cli.verify_cmd import RESERVE_SECONDS

    examples = Path(spec["examples"])
    entry = spec["entry"]
    image, mask, target = examples / entry["file"], examples / entry["mask"], int(entry["target_label"])
    verifier = make_cascade(spec["variant"])
    left = max(float(spec["time_limit"]) - (time.perf_counter() - _STARTED) - RESERVE_SECONDS, 0.01)
    start = time.perf_counter()
    res = api.maximize(spec["model"], image, target, object_mask=mask, k=2, verifier=verifier, time_limit=left)
    search_s = time.perf_counter() - start
    eps = np.asarray(res.epsilons, dtype=np.float64)
    row: dict[str, Any] = {"search_s": round(search_s, 1), "size": res.size, "eps0": res.eps0,
                           "verified": bool(res.verified), "layers_eps_pos": int(np.count_nonzero(eps > 0)),
                           "layers": int(eps.size), "certified": int(res.certified_layers),
                           "stop": res.stop_reason, "queries": int(res.stats.total),
                           "seconds_by_tier": {k: round(float(v), 1) for k, v in res.stats.seconds.items()}}
    prep = api.prepare(spec["model"], image, target, k=2, object_mask=mask)
    start = time.perf_counter()
    if res.verified and np.any(eps > 0):
        scale = attack_scale(prep.network, target, 2, lambda s: prep.nbhd.box(np.minimum(s * eps, 1.0)),
                             int(spec["restarts"]), int(spec["steps"]))
        row["attack_scale"] = scale if math.isfinite(scale) else f">{MAX_SCALE:g}"
    else:
        row["attack_scale"] = None
    row["attack_s"] = round(time.perf_counter() - start, 1)
    row["violation"] = isinstance(row["attack_scale"], float) and row["attack_scale"] <= 1.0
    return row


def run_one(spec: dict, grace: float) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    start = time.perf_counter()
    row: dict[str, Any] = {"model": Path(spec["model"]).stem, "image": spec["entry"]["id"],
                           "variant": spec["variant"], "time_limit": spec["time_limit"]}
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_devset_search", "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env, cwd=ROOT, check=False,
                              timeout=float(spec["time_limit"]) + grace)
    except subprocess.TimeoutExpired:
        row.update(error=f"killed after {float(spec['time_limit']) + grace:g} s")
        return row
    row["wall_s"] = round(time.perf_counter() - start, 1)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        row["error"] = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return row
    row.update(json.loads(line[len("RESULT "):]))
    return row


def _median(rows: list[dict], key: str) -> float | str | None:
    """The median of a column; a scale beyond the attack's reach (">64") counts as infinite."""
    vals = [math.inf if isinstance(r.get(key), str) else r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return None
    m = statistics.median(vals)
    return m if math.isfinite(m) else "inf"


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    from benchmarks.bench_anchor_radius import devset_pairs
    from benchmarks.suite import command_line, end_facts, run_facts

    entries = {e["id"]: e for e in json.loads((args.examples / "manifest.json").read_text())["images"]}
    pairs = devset_pairs(args.devset, args.images, [m for m in args.models.split(",") if m] or None)
    specs = [{"model": str(m), "entry": entries[im], "examples": str(args.examples), "variant": v,
              "time_limit": args.time_limit, "restarts": args.restarts, "steps": args.steps}
             for m, im, _ in pairs for v in VARIANTS]
    start = time.perf_counter()
    facts = run_facts(command_line("python -m benchmarks devset-search", args.argv))  # the load before the work
    rows = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(lambda s: run_one(s, args.grace), specs):
            log(json.dumps(row))
            rows.append(row)
    summary = {v: {"runs": sum(r["variant"] == v for r in rows),
                   "median_attack_scale": _median([r for r in rows if r["variant"] == v], "attack_scale"),
                   "median_size": _median([r for r in rows if r["variant"] == v], "size")} for v in VARIANTS}
    violations = [f"{r['model']}/{r['image']} {r['variant']}: attack scale {r['attack_scale']}" for r in rows
                  if r.get("violation")]
    return {**facts, "jobs": args.jobs, "time_limit": args.time_limit, "restarts": args.restarts, "steps": args.steps,
            "rows": rows, "summary": summary, "violations": violations, "seconds": time.perf_counter() - start,
            **end_facts(), "notes": args.notes}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def markdown(results: dict) -> str:
    from benchmarks.suite import report_header

    out = ["# The search on the development models: before and after the joint intermediate-bound pass", "",
           *report_header(results),
           (f"What a search reaches in its time is as indicative as the timings. One CPU thread per process, "
            f"{results['jobs']} at a time; run time {results['seconds'] / 60:.1f} min.  "),
           (f"Each run: the search of `mlrobust verify --time-limit {results['time_limit']:g}` (its defaults, the "
            "cascade variant below). `before`: α-CROWN with frozen intermediate bounds (`joint_intermediate=\"off\"`); "
            "`after`: the shipped cascade (`joint_intermediate=\"auto\"`). Attack scale: the smallest s at which PGD "
            f"({results['restarts']} restarts × {results['steps']} steps) breaks s·ε* (≤ 1 would be a soundness "
            "violation; closer to 1 means a search result closer to the true boundary)."), "",
           "| variant | runs | median attack scale | median w·ε |", "|---|---|---|---|"]
    for v, s in results["summary"].items():
        out.append(f"| {v} | {s['runs']} | {_fmt(s['median_attack_scale'])} | {_fmt(s['median_size'])} |")
    out += ["", "| model | image | variant | w·ε | ε₀ | layers ε > 0 | certified | queries | attack scale | stopped "
            "| search s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if "error" in r:
            out.append(f"| {r['model']} | {r['image']} | {r['variant']} | error: {r['error']} |||||||| ")
            continue
        out.append(f"| {r['model']} | {r['image']} | {r['variant']} | {_fmt(r['size'])} | {_fmt(r['eps0'])} "
                   f"| {r['layers_eps_pos']}/{r['layers']} | {r['certified']} | {r['queries']} "
                   f"| {_fmt(r['attack_scale'])} | {r['stop']} | {r['search_s']} |")
    out += ["", f"Soundness violations (attack scale ≤ 1): {len(results['violations'])}."]
    out += [f"- **VIOLATION**: {v}" for v in results["violations"]]
    if results.get("notes"):
        out += ["", "## Notes", "", results["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        print("RESULT " + json.dumps(run_worker(json.loads(argv[1])), default=float), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks devset-search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="development models by stem (default: all)")
    p.add_argument("--images", type=int, default=1, help="example images per model")
    p.add_argument("--time-limit", type=float, default=120.0, help="verify's --time-limit")
    p.add_argument("--restarts", type=int, default=20, help="PGD restarts of the attack scale")
    p.add_argument("--steps", type=int, default=200, help="PGD steps of the attack scale")
    p.add_argument("--jobs", type=int, default=2, help="processes at once (1 or 2)")
    p.add_argument("--grace", type=float, default=600.0, help="seconds after the time limit before a process is "
                                                             "killed (the attack scale runs after the search)")
    p.add_argument("--examples", type=Path, default=ROOT / "examples")
    p.add_argument("--devset", type=Path, default=ROOT / "benchmarks" / "devset")
    p.add_argument("--out", type=Path, default=OUT)
    add_notes_arguments(p, paragraph=False)
    p.add_argument("--report-only", action="store_true", help="write the Markdown again from --out's JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.jobs not in (1, 2):
        raise SystemExit("error: --jobs must be 1 or 2 (one CPU thread per job)")
    read_notes(args, argv)

    from benchmarks.suite import report_violations, write_results

    if args.report_only:  # the Markdown again from the JSON (e.g. with notes), nothing run
        results = json.loads(args.out.with_suffix(".json").read_text())
        results["notes"] = args.notes or results.get("notes", "")
    else:
        results = run(args, (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True)))
    path = write_results(args.out, results, markdown(results))
    print(f"wrote {args.out} and {path} ({results['seconds']:.0f} s)", flush=True)
    return report_violations(results["violations"])


if __name__ == "__main__":
    sys.exit(main())
