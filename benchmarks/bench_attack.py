"""The cascade's attack tier, plain against diversified PGD, on the search's layered boxes scaled up until broken.

    python -m benchmarks.bench_attack [--images 5] [--scales 1.0,1.25,1.5,1.75,2.0] [--seeds 3]

For each shipped model and example image, the neighbourhood the search found (``benchmarks/results/
scale_neighborhoods.json``) times each scale, attacked with ``PgdAttack(diversify=False)`` (every restart on the
top-2 margin; the tier before the diversified attack) and ``PgdAttack()`` (the default: restarts aimed at single
clauses, output-diversified starts, restarts when stuck), same restarts and steps, over a few seeds. Reports per
attack the boxes broken (a confirmed counterexample: re-checked on both executors), the boxes only one of them
breaks, and the median seconds; ``benchmarks/results/attack.md``. Single thread; timings are indicative.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "attack.md"
MODELS = ("mnist2_pgd", "mnist2_nodefense", "mnist2_l0")
ATTACKS = ("plain", "diversified")


def run(args: argparse.Namespace) -> dict:
    from benchmarks.bench_scale import box_factory, manifest_images
    from benchmarks.suite import command_line, end_facts, run_facts
    from mlrobust.verify.attack import PgdAttack

    facts = run_facts(command_line("python -m benchmarks.bench_attack", args.argv))  # the load before the work
    searched = json.loads(args.neighborhoods.read_text())
    scales = [float(s) for s in args.scales.split(",")]
    rows = []
    start = time.perf_counter()
    for model in MODELS:
        for entry in manifest_images(args.examples, args.images):
            key = f"{model}/{entry['id']}"
            if key not in searched:
                continue
            network, target, box = box_factory(args.examples, model, entry, np.asarray(searched[key]["epsilons"]))
            for scale in scales:
                for seed in range(args.seeds):
                    row: dict = {"model": model, "image": entry["id"], "scale": scale, "seed": seed}
                    for name in ATTACKS:
                        attack = PgdAttack(restarts=args.restarts, steps=args.steps, seed=seed,
                                           diversify=name == "diversified")
                        t0 = time.perf_counter()
                        res = attack.run(network, box(scale), target, 2)
                        row[name] = {"broken": res.counterexample is not None, "seconds": time.perf_counter() - t0,
                                     "best_margin": res.best.margin if res.best else None}
                    rows.append(row)
                    print(f"{key} x{scale:g} seed {seed}: " + ", ".join(
                        f"{n} {'broken' if row[n]['broken'] else 'held'} {row[n]['seconds']:.2f} s" for n in ATTACKS),
                        flush=True)
    return {**facts, **end_facts(), "restarts": args.restarts, "steps": args.steps, "rows": rows, "seconds": time.perf_counter() - start}


def markdown(results: dict) -> str:
    rows = results["rows"]
    from benchmarks.suite import report_header

    out = ["# Attack tier: plain against diversified PGD", "", *report_header(results),
           (f"{results['restarts']} restarts x {results['steps']} steps for both; "
            f"{len(rows)} (box, seed) runs; {results['seconds'] / 60:.1f} min."), "",
           "| attack | runs broken | broken only by this attack | median seconds | median seconds, held boxes |",
           "|---|---|---|---|---|"]
    for name in ATTACKS:
        other = ATTACKS[1 - ATTACKS.index(name)]
        broken = sum(r[name]["broken"] for r in rows)
        only = sum(r[name]["broken"] and not r[other]["broken"] for r in rows)
        held = [r[name]["seconds"] for r in rows if not r[name]["broken"]]
        out.append(f"| {name} | {broken}/{len(rows)} | {only} | {statistics.median(r[name]['seconds'] for r in rows):.3f}"
                   f" | {statistics.median(held) if held else float('nan'):.3f} |")
    out += ["", "## Per box (broken runs out of seeds)", "", "| box | scale | plain | diversified |", "|---|---|---|---|"]
    boxes: dict[tuple, list[dict]] = {}
    for r in rows:
        boxes.setdefault((f"{r['model']}/{r['image']}", r["scale"]), []).append(r)
    for (box, scale), rs in boxes.items():
        out.append(f"| {box} | {scale:g} | " + " | ".join(f"{sum(r[n]['broken'] for r in rs)}/{len(rs)}"
                                                         for n in ATTACKS) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_attack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--scales", default="1.0,1.25,1.5,1.75,2.0")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--restarts", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--examples", type=Path, default=ROOT / "examples")
    p.add_argument("--neighborhoods", type=Path, default=ROOT / "benchmarks" / "results" / "scale_neighborhoods.json")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.argv = argv
    import torch

    torch.set_num_threads(1)
    from benchmarks.suite import write_results

    results = run(args)
    path = write_results(args.out, results, markdown(results))
    print(f"wrote {args.out} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
