"""Queries per second of the search's worker pool (``mlrobust verify --workers N``) on a fixed list of queries.

The list is what a search asks as one batch: every layer's question with the other layers fixed (ε* grown by
``--grow`` times the uniform radius in that layer alone), on the push's bound tier (the cascade's bounds, no attack),
for one image. The same jobs go to :class:`mlrobust.search.pool.QueryPool` with 1 worker (in this process, no pool)
and with 2 (or ``--workers``) processes; the pool's start (spawn, torch import, the network sent once per worker)
is timed apart from the queries. The verdicts (status and tier per query) must be identical.

    python -m benchmarks workers                       # mnist2_pgd, ex00 -> benchmarks/results/workers.md

Timings depend on the machine and its load: the load average before and after is recorded with the results.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OUT = ROOT / "benchmarks" / "results" / "workers.md"


def per_layer_jobs(network, nbhd, target: int, k: int, base: np.ndarray, grow: float,
                   time_limit: float | None = 30.0) -> list:
    """One job per layer: ``base`` grown by ``grow`` in that layer alone (clipped to the layer's saturation), on the
    push's bound tier, without the search's warm attack (the list is about the verifier's queries)."""
    from mlrobust.search.pool import VerifyJob
    from mlrobust.search.problem import layer_saturation
    from mlrobust.search.tiers import cheap_tiers
    from mlrobust.verify.cascade import Cascade

    bounds = cheap_tiers(Cascade(), attack=False)
    assert bounds is not None
    sat = layer_saturation(nbhd)
    jobs = []
    for d in range(nbhd.num_layers):
        eps = np.minimum(base.copy(), sat)
        eps[d] = min(eps[d] + grow, sat[d])
        jobs.append(VerifyJob(nbhd.box(eps), target, k, "decide", time_limit, bounds, [], False, False, seed=d))
    return jobs


def throughput(network, jobs: list, workers: int) -> dict:
    """The jobs answered by a pool of ``workers``: queries per second (the pool's start apart), and the verdicts."""
    from mlrobust.search.pool import QueryPool, run_verify_job
    from mlrobust.search.problem import status_of

    with QueryPool(network, workers) as pool:
        start = time.perf_counter()
        if pool.parallel:
            pool.map(run_verify_job, jobs[:workers])  # start-up: spawn, imports, the network once per worker
        started = time.perf_counter() - start
        start = time.perf_counter()
        outcomes = pool.map(run_verify_job, jobs)
        seconds = time.perf_counter() - start
    verdicts = [f"{status_of(o.verdict)}:{o.verdict.tier}" for o in outcomes]
    # the jobs' own wall seconds, summed: equal at 1 and 2 workers when each worker has a core to itself; twice as
    # large when the two workers share one core's worth of CPU (a loaded machine, or the session's fair share)
    job_seconds = float(sum(o.seconds for o in outcomes))
    return {"workers": workers, "queries": len(jobs), "seconds": round(seconds, 3),
            "job_seconds": round(job_seconds, 3),
            "queries_per_second": round(len(jobs) / seconds, 3), "pool_start_s": round(started, 3),
            "verdicts": verdicts}


def uniform_radius(network, nbhd, target: int, k: int, tol: float = 1e-3) -> float:
    """The uniform radius the bound tier proves (bisection): the scale of the list's questions."""
    from mlrobust.search.problem import status_of
    from mlrobust.search.tiers import cheap_tiers
    from mlrobust.verify.cascade import Cascade

    bounds = cheap_tiers(Cascade(), attack=False)
    assert bounds is not None
    lo, hi = 0.0, 0.5
    while hi - lo > tol:
        mid = (lo + hi) / 2
        verdict = bounds.verify(network, nbhd.box(np.full(nbhd.num_layers, mid)), target, k, "decide", 30.0)
        lo, hi = (mid, hi) if status_of(verdict) == "robust" else (lo, mid)
    return lo


def run(args: argparse.Namespace, log=print) -> dict:
    from benchmarks.suite import end_facts, load_average, run_facts
    from mlrobust.api import prepare

    model = Path(args.examples) / "models" / f"{args.model}.onnx"
    image = Path(args.examples) / "images" / f"{args.image}.png"
    mask = Path(args.examples) / "images" / f"{args.image}_perturbed.png"
    prep = prepare(model, image, args.target, k=args.k, object_mask=mask)
    radius = uniform_radius(prep.network, prep.nbhd, args.target, args.k)
    base = np.full(prep.nbhd.num_layers, radius)
    jobs = per_layer_jobs(prep.network, prep.nbhd, args.target, args.k, base, args.grow * radius)
    log(f"{model.name} {image.name}: {len(jobs)} per-layer queries at uniform radius {radius:.4g} "
        f"(+{args.grow:g}x in one layer); load average {load_average()}")
    facts = run_facts(args.command)  # the load before the timed work
    rows = []
    for workers in [1] + [w for w in args.workers if w > 1]:
        row = throughput(prep.network, jobs, workers)
        log(f"  {workers} worker(s): {row['queries_per_second']:.3f} queries/s ({row['seconds']:.1f} s; pool start "
            f"{row['pool_start_s']:.1f} s)")
        rows.append(row)
    one = rows[0]
    for row in rows:
        row["speedup"] = round(row["queries_per_second"] / one["queries_per_second"], 3)
        row["identical_verdicts"] = row["verdicts"] == one["verdicts"]
    result = {**facts, "model": model.name, "image": image.name, "target": args.target, "k": args.k,
              "uniform_radius": radius, "grow": args.grow, "cores": len(os.sched_getaffinity(0)),
              **end_facts(), "rows": rows,
              "verdict_counts": {v: one["verdicts"].count(v) for v in sorted(set(one["verdicts"]))}}
    return result


def markdown(result: dict) -> str:
    from benchmarks.suite import report_header

    lines = [
        "# Search worker pool: queries per second at 1 and 2 workers",
        "",
        *report_header(result),
        f"{result['model']}, {result['image']} (target {result['target']}, "
        f"top-{result['k']}): every layer's question with the others fixed (the uniform radius "
        f"{result['uniform_radius']:.4g}, grown by {result['grow']:g}x in one layer), on the push's bound tier. "
        f"{result['cores']} cores available to this process.",
        "",
        "| workers | queries | seconds | queries/s | speed-up | jobs' own seconds (sum) | pool start (s) | "
        "identical verdicts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['workers']} | {row['queries']} | {row['seconds']} | {row['queries_per_second']} | "
                     f"{row['speedup']}x | {row['job_seconds']} | {row['pool_start_s']} | "
                     f"{'yes' if row['identical_verdicts'] else 'NO'} |")
    lines += ["", "Verdicts (status:tier): " + ", ".join(f"{v} {n}" for v, n in result["verdict_counts"].items()),
              "",
              "The jobs' own seconds show whether the workers had the cores: if their sum doubles at 2 workers, each "
              "worker ran at half speed (other processes on the cores; on Linux with autogroup scheduling a "
              "session's processes share one session's part of the CPU, so more workers get no more of it), and "
              "the ratio measures the pool's overhead, not its gain.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import command_line

    parser = argparse.ArgumentParser(prog="python -m benchmarks workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist2_pgd")
    parser.add_argument("--image", default="ex00")
    parser.add_argument("--target", type=int, default=1)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--grow", type=float, default=1.0, help="a layer's step, in uniform radii")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[2],
                        help="comma-separated worker counts besides 1")
    parser.add_argument("--examples", default=str(EXAMPLES))
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    args.command = command_line("python -m benchmarks workers", argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["identical_verdicts"] for r in result["rows"]) else 1
