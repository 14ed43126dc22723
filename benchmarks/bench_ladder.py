"""The scale ladder: what ``mlrobust verify`` does with its time at each size — 64x64 Double-MNIST (top-2), 84x84
Triple-MNIST (top-3), 3x300x300 RGB objects (top-k, k = the image's object count).

For each rung x image x budget it runs the command as a user would (a fresh process, ``--time-limit B --json``) and
records: wall time, peak RSS of the process, JSON and side-file sizes, layers with a proven ε > 0, certified layers,
w·ε, how the search stopped, each tier's seconds per verifier call; then the *attack scale* of the returned
neighborhood ε*: the smallest s at which PGD (``--restarts`` x ``--steps``) breaks the box of s·ε* (doubling from 1,
then bisection; 1 or less would be a soundness violation). Queries per second at 1 and 2 worker processes: a fixed
list of independent bound checks (ε* scaled by 0.5 .. 1.5 per layer group) answered by the search's own worker pool
(mlrobust.search.pool, as ``mlrobust verify --workers N``) of each size, with the verdicts compared.

    python -m benchmarks scale-ladder --budgets 120 --images 1     # -> benchmarks/results/scale_ladder.md
    python -m benchmarks scale-ladder --rungs 3x300x300 --method uniform --out u.md   # the uniform baseline
    python -m benchmarks scale-ladder --merge a.json b.json          # one report from runs made side by side

Each run is ``mlrobust verify`` as the console script runs it (its process ends once its outputs are written).
The report lists each tier's measured seconds per call (the search's cost model, ``details.costs`` of the JSON) and
what each run never tried.

Timings depend on the machine and its load (recorded with the results).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OUT = ROOT / "benchmarks" / "results" / "scale_ladder.md"
MAX_SCALE = 64.0


@dataclass(frozen=True)
class Rung:
    """One size of the ladder: its model, the manifest of its images, and its top-k (None: each image's own)."""

    name: str
    model: str
    manifest: str
    k: int | None


RUNGS = (
    Rung("64x64", "mnist2_nodefense", "manifest.json", 2),
    Rung("84x84", "triple_mnist", "ladder.json", 3),
    Rung("3x300x300", "rgb_objects", "ladder.json", None),
)


def rung_images(examples: Path, rung: Rung, n: int) -> list[dict]:
    """The first ``n`` images of ``rung``'s manifest (for the ladder manifest, those of its model)."""
    manifest = json.loads((examples / rung.manifest).read_text())
    entries = [e for e in manifest["images"] if e.get("model", rung.model) == rung.model]
    return entries[:n]


def run_verify(cmd: list[str]) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in MB) of one command in a fresh process (``wait4``: its own peak)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss / 1024.0


def attack_scale(network, target: int, k: int, box: Callable, restarts: int, steps: int,
                 iterations: int = 6) -> float:
    """The smallest scale s at which PGD breaks the box of s·ε* (``inf`` when not even ``MAX_SCALE``)."""
    from mlrobust.verify.attack import PgdAttack

    attack = PgdAttack(restarts=restarts, steps=steps)

    def broken(s: float) -> bool:
        return attack.run(network, box(s), target, k).counterexample is not None

    if broken(1.0):
        return 1.0
    lo, hi = 1.0, 2.0
    while hi <= MAX_SCALE and not broken(hi):
        lo, hi = hi, hi * 2
    if hi > MAX_SCALE:
        return math.inf
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if broken(mid) else (mid, hi)
    return hi


def queries_per_second(model: Path, image: Path, target: int, k: int, mask: Path, eps: np.ndarray,
                       n: int, workers: int) -> tuple[float, list[str]]:
    """Queries per second of ``n`` independent bound checks (ε* scaled 0.5..1.5) answered by the search's own worker
    pool (:class:`mlrobust.search.pool.QueryPool`, the network sent once per worker; 1: in this process), and the
    verdicts (status:tier)."""
    from benchmarks.bench_workers import throughput
    from mlrobust.api import prepare
    from mlrobust.search.pool import VerifyJob
    from mlrobust.search.tiers import cheap_tiers
    from mlrobust.verify.cascade import Cascade

    prep = prepare(model, image, target, k=k, object_mask=mask)
    bounds = cheap_tiers(Cascade(), attack=False)
    assert bounds is not None
    jobs = [VerifyJob(prep.nbhd.box(np.minimum(s * eps, 1.0)), target, k, "decide", 60.0, bounds, [], False, False,
                      seed=i) for i, s in enumerate(np.linspace(0.5, 1.5, n))]
    row = throughput(prep.network, jobs, workers)
    return row["queries_per_second"], row["verdicts"]


def run_one(examples: Path, rung: Rung, entry: dict, budget: float, work: Path, restarts: int, steps: int,
            method: str = "boundary") -> dict:
    """One ``mlrobust verify`` at ``budget`` seconds, measured, then the attack scale of its result."""
    import mlrobust
    from mlrobust.api import prepare

    k = rung.k if rung.k is not None else int(entry["k"])
    model = examples / "models" / f"{rung.model}.onnx"
    out = work / f"{rung.model}_{entry['id']}_{budget:g}{'' if method == 'boundary' else '_' + method}.json"
    # the console script's own entry point, as a user runs ``mlrobust verify`` (its process ends as soon as the
    # outputs are written, and the hard deadline at the limit is armed)
    cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 'mlrobust'; from mlrobust.cli import console; console()",
           "verify", str(model), str(examples / entry["file"]), "--target",
           str(entry["target_label"]), "--object-mask", str(examples / entry["mask"]), "--k", str(k),
           "--time-limit", str(budget), "--json", str(out), "--quiet", "--method", method]
    code, wall, rss = run_verify(cmd)
    row: dict = {"rung": rung.name, "model": rung.model, "image": entry["id"], "k": k, "budget": budget,
                 "method": method, "exit_code": code, "wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1)}
    if not out.is_file():
        row["error"] = "no JSON written"
        return row
    data = mlrobust.load_result(out)
    side = out.parent / data["arrays"]["file"] if "arrays" in data else None
    eps = np.asarray(data["epsilons"], dtype=np.float64)
    stats = data["statistics"]
    calls = max(int(stats.get("verifier_calls", 0)), 1)
    row.update({
        "json_kb": round(out.stat().st_size / 1024, 1),
        "side_kb": round(side.stat().st_size / 1024, 1) if side is not None and side.is_file() else None,
        "layers": len(eps), "layers_eps_pos": int(np.count_nonzero(eps > 0)),
        "certified": int(data["certified_layers"]), "size": float(data["size"]), "eps0": float(eps[0]),
        "verified": bool(data["verified"]), "stop": data["stop_reason"],
        "queries": int(stats["queries"]), "verifier_calls": int(stats.get("verifier_calls", 0)),
        "seconds_per_call": {t: round(s / calls, 3) for t, s in stats.get("seconds_by_tier", {}).items()},
        # the search's own cost model: seconds per call of each tier, its calls, and calls not started
        "tier_costs": data.get("details", {}).get("costs", {}).get("tiers", {}),
        "never_tried": data.get("summary", {}).get("never_tried", []),
    })
    prep = prepare(model, examples / entry["file"], int(entry["target_label"]), k=k,
                   object_mask=examples / entry["mask"])
    start = time.perf_counter()
    if row["verified"] and np.any(eps > 0):
        scale = attack_scale(prep.network, int(entry["target_label"]), k,
                             lambda s: prep.nbhd.box(np.minimum(s * eps, 1.0)), restarts, steps)
        row["attack_scale"] = scale if math.isfinite(scale) else f">{MAX_SCALE:g}"
    else:
        row["attack_scale"] = None
    row["attack_s"] = round(time.perf_counter() - start, 1)
    row["violation"] = isinstance(row["attack_scale"], float) and row["attack_scale"] <= 1.0
    return row


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}g}"
    return str(v)


def markdown(results: dict) -> str:
    runs = results.get("runs") or [results]
    from benchmarks.suite import header_lines

    lines = ["# Scale ladder", ""]
    for run_ in runs:  # each run's own facts, as recorded (the platform in "machine")
        lines += [*header_lines(run_["command"], cpus=run_["cpus"], processor=run_["machine"],
                                load_start=run_["load_average"], load_end=run_.get("load_average_end"),
                                git=run_.get("git"), date=run_["started"]), ""]
    lines += [
             "| rung | image | k | method | budget s | exit | wall s | peak RSS MB | JSON kB | side kB | layers ε>0 "
             "| certified | w·ε | ε₀ | attack scale | stopped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(
            f"| {r['rung']} | {r['image']} | {r['k']} | {r.get('method', 'boundary')} | {r['budget']:g} | "
            f"{r['exit_code']} | {r['wall_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {_fmt(r.get('json_kb'))} | {_fmt(r.get('side_kb'))} | "
            f"{r.get('layers_eps_pos', '–')}/{r.get('layers', '–')} | {r.get('certified', '–')} | "
            f"{_fmt(r.get('size'))} | {_fmt(r.get('eps0'))} | {_fmt(r.get('attack_scale'))} | "
            f"{r.get('stop', r.get('error', ''))} |")
    lines += ["", "Each tier's measured seconds per call (the search's cost model: seconds per call x calls; "
              "'skipped': calls not started because they could not finish in the time left):", ""]
    for r in results["rows"]:
        per = ", ".join(f"{t} {c['seconds_per_call']:.3g} x {c['calls']}"
                        + (f" ({c['skipped']} skipped)" if c.get("skipped") else "")
                        for t, c in sorted(r.get("tier_costs", {}).items()) if c.get("seconds_per_call") is not None)
        if not per:  # results from before the cost model: the tier's total seconds / verifier calls
            per = ", ".join(f"{t} {s:g}" for t, s in sorted(r.get("seconds_per_call", {}).items()))
        lines.append(f"- {r['rung']} {r['image']} {r.get('method', 'boundary')} at {r['budget']:g} s "
                     f"({r.get('verifier_calls', 0)} verifier calls): {per}")
    never = [r for r in results["rows"] if r.get("never_tried")]
    if never:
        lines += ["", "Parts of the search never tried (the summary's 'not tried' line):", ""]
        lines += [f"- {r['rung']} {r['image']} {r.get('method', 'boundary')} at {r['budget']:g} s: "
                  + "; ".join(r["never_tried"]) for r in never]
    if results.get("throughput"):
        lines += ["", "Queries per second on a fixed list of independent bound checks (`verifier=bounds`), by "
                  "worker processes:", "", "| rung | queries | 1 worker q/s | 2 workers q/s | speed-up | same verdicts |",
                  "|---|---|---|---|---|---|"]
        for t in results["throughput"]:
            lines.append(f"| {t['rung']} | {t['queries']} | {t['qps'][0]:.2f} | {t['qps'][1]:.2f} | "
                         f"{t['qps'][1] / t['qps'][0]:.2f}x | {t['same_verdicts']} |")
    attack = (f"{results['restarts']} restarts x {results['steps']} steps" if "runs" not in results else
              "each run's --restarts x --steps (20 x 200 where its command names none)")
    lines += ["", f"PGD for the attack scale: {attack}. Soundness: "
              + ("no returned neighborhood broken at scale 1." if not results["violations"] else
                 f"VIOLATIONS: {results['violations']}"), ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    import torch

    from benchmarks.suite import command_line, end_facts, run_facts

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rungs = [r for r in RUNGS if r.name in args.rungs.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    facts = run_facts(command_line("python -m benchmarks scale-ladder", args.argv))  # the load before the work
    # kept in the layout of the runs recorded before (``appended`` merges old and new runs)
    results: dict = {"command": facts["command"], "started": facts["date"], "machine": facts["machine"]["platform"],
                     "cpus": facts["machine"]["cpus"], "load_average": facts["machine"].get("load_average_at_start"),
                     "git": facts["git"], "restarts": args.restarts,
                     "steps": args.steps, "rows": [], "throughput": [], "violations": []}
    for rung in rungs:
        for entry in rung_images(Path(args.examples), rung, args.images):
            for budget in budgets:
                row = run_one(Path(args.examples), rung, entry, budget, work, args.restarts, args.steps,
                              method=args.method)
                log(json.dumps(row))
                results["rows"].append(row)
                if row.get("violation"):
                    results["violations"].append(f"{rung.name} {entry['id']} {args.method} at {budget:g} s")
        if args.throughput_queries:
            entry = rung_images(Path(args.examples), rung, 1)[0]
            done = [r for r in results["rows"] if r["rung"] == rung.name and r.get("layers")]
            if not done:
                continue
            import mlrobust

            eps = np.asarray(mlrobust.load_result(
                work / f"{rung.model}_{entry['id']}_{done[0]['budget']:g}"
                f"{'' if args.method == 'boundary' else '_' + args.method}.json")["epsilons"])
            k = rung.k if rung.k is not None else int(entry["k"])
            model = Path(args.examples) / "models" / f"{rung.model}.onnx"
            qps, verdicts = [], []
            for workers in (1, 2):
                rate, v = queries_per_second(model, Path(args.examples) / entry["file"], int(entry["target_label"]),
                                             k, Path(args.examples) / entry["mask"], eps, args.throughput_queries,
                                             workers)
                qps.append(rate)
                verdicts.append(v)
            results["throughput"].append({"rung": rung.name, "queries": args.throughput_queries, "qps": qps,
                                          "same_verdicts": verdicts[0] == verdicts[1]})
            log(json.dumps(results["throughput"][-1]))
    results["load_average_end"] = end_facts()["load_average_at_end"]
    return results


def appended(earlier: dict, new: dict) -> dict:
    """``new``'s rows and throughput added to ``earlier``'s (a row of the same rung, image, method and budget is
    replaced); every run's command, time and load average are kept."""
    def key(r: dict) -> tuple:
        return r["rung"], r["image"], r.get("method", "boundary"), r["budget"]

    fresh = {key(r) for r in new["rows"]}
    head = ("command", "started", "machine", "cpus", "load_average", "load_average_end", "git")
    runs = (earlier.get("runs") or [{h: earlier[h] for h in head if h in earlier}]) + [
        {h: new[h] for h in head if h in new}]
    rungs = {t["rung"] for t in new["throughput"]}
    return {**new, "runs": runs, "rows": [r for r in earlier["rows"] if key(r) not in fresh] + new["rows"],
            "throughput": [t for t in earlier.get("throughput", []) if t["rung"] not in rungs] + new["throughput"],
            "violations": earlier.get("violations", []) + new["violations"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale-ladder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", default=",".join(r.name for r in RUNGS))
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--budgets", default="60,120,300", help="comma-separated --time-limit values")
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--throughput-queries", type=int, default=8, help="0: skip the 1 vs 2 workers step")
    parser.add_argument("--examples", default=str(EXAMPLES))
    parser.add_argument("--work", default=str(ROOT / "build" / "benchmarks" / "scale_ladder"))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--method", default="boundary", help="the search method of every run (uniform: the baseline)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="run nothing: write --out from these earlier "
                        "result files (later rows replace earlier ones of the same rung, image, method and budget)")
    parser.add_argument("--append", action="store_true", help="keep the rows already in --out's JSON (a row of the "
                        "same rung, image, method and budget is replaced)")
    args = parser.parse_args(argv)
    args.argv = argv
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        # no run: the rows of earlier result files (e.g. rungs run side by side into their own files), in order
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        results = parts[0]
        for part in parts[1:]:
            results = appended(results, part)
    else:
        results = run(args)
    if args.append and out.with_suffix(".json").is_file():
        results = appended(json.loads(out.with_suffix(".json").read_text()), results)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    out.write_text(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 1 if results["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
