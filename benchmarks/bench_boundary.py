"""How close the search gets to the boundary: per model, image and method at an equal time budget — w·ε*, the
object's ε_0 against its own robust radius, the attack scale (the smallest s at which a strong PGD breaks s·ε*),
layers certified maximal, layers with an upper bound, the median per-layer gap ratio ε*_d / refuted_ε_d, time — and
the soundness checks (ε* never broken by the attack; every refuted ε backed by a counterexample that re-runs).

    python -m benchmarks.bench_boundary --models mnist2_pgd --images 0 --budget 60,120 --methods boundary,optimize,uniform

Writes ``benchmarks/results/boundary.json`` and ``boundary.md`` (``--out``) after every run, so an interrupted run
keeps what it measured. The object's own radius is computed once per model and image (its own budget,
``--object-budget``). Single-threaded BLAS and torch.
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
#: The attack scale is searched in [1, SCALE_MAX] to a relative resolution of SCALE_TOL.
SCALE_MAX = 64.0
SCALE_TOL = 0.02


def attack_scale(network, nbhd, target: int, k: int, eps: np.ndarray, seed: int = 0) -> tuple[float | None, bool]:
    """The smallest ``s`` (to SCALE_TOL, within [1, SCALE_MAX]) at which a strong PGD breaks ``s * eps`` (None: not
    even at SCALE_MAX), and whether it broke ``eps`` itself (a soundness violation)."""
    from mlrobust.verify.attack import pgd
    from mlrobust.verify.counterexample import TopKProperty

    prop = TopKProperty(int(target), int(k))
    sat = np.maximum(nbhd.image, 1 - nbhd.image).max()

    def breaks(s: float) -> bool:
        box = nbhd.box(np.minimum(s * eps, sat))
        return pgd(network, box, prop, restarts=10, steps=100, seed=seed).counterexample is not None

    if breaks(1.0):
        return 1.0, True
    if not breaks(SCALE_MAX):
        return None, False
    lo, hi = 1.0, SCALE_MAX
    while hi / lo > 1 + SCALE_TOL:
        mid = float(np.sqrt(lo * hi))
        lo, hi = (lo, mid) if breaks(mid) else (mid, hi)
    return hi, False


def object_radius(network, nbhd, target: int, k: int, delta: float, budget: float) -> float:
    """The object's own robust radius (layer 0 alone, the rings at 0) by bisection with the default cascade."""
    from mlrobust.api import make_verifier
    from mlrobust.search.baselines import bisect_scale
    from mlrobust.search.problem import Budget, SearchProblem

    pb = SearchProblem(network, nbhd, target, make_verifier("cascade"), k=k,
                       budget=Budget(time_limit=budget, query_time_limit=min(30.0, budget)))
    n = nbhd.num_layers

    def alone(v: float) -> np.ndarray:
        e = np.zeros(n)
        e[0] = v
        return pb.clip(e)

    return bisect_scale(pb, alone, 0.0, float(pb.saturation[0]), delta, "object alone")


def refutations_rerun(result, network, nbhd) -> bool:
    """Every refuted ε has a counterexample in the box of (ε* with that layer at refuted ε) violating top-k."""
    from mlrobust.verify.counterexample import TopKProperty, check_points

    prop = TopKProperty(result.target, result.k)
    for m in result.maximality:
        if m.refuted_eps is None:
            continue
        grown = np.asarray(result.epsilons, dtype=np.float64).copy()
        grown[m.layer] = m.refuted_eps
        box = nbhd.box(grown)
        if m.counterexample is None or not box.contains(m.counterexample):
            return False
        if not check_points(network, box, [m.counterexample], prop)[0].confirmed:
            return False
    return True


def run_one(model: str, entry: dict, method: str, budget: float, examples: Path) -> dict:
    from mlrobust import api

    prep = api.prepare(examples / "models" / f"{model}.onnx", examples / entry["file"], int(entry["target_label"]),
                       object_mask=examples / entry["mask"])
    start = time.perf_counter()
    res = api.maximize(prep.network, examples / entry["file"], int(entry["target_label"]),
                       object_mask=examples / entry["mask"], method=method, time_limit=budget)
    seconds = time.perf_counter() - start
    eps = np.asarray(res.epsilons)
    scale, broken = attack_scale(prep.network, prep.nbhd, res.target, res.k, eps)
    return {"model": model, "image": entry["id"], "method": method, "budget": budget, "size": res.size,
            "eps0": res.eps0, "object_radius_search": res.object_radius,
            "object_refuted_search": res.details.get("object", {}).get("refuted_alone"), "attack_scale": scale,
            "proven_broken_by_attack": broken, "certified": res.certified_layers, "layers": res.num_layers,
            "upper_bounded": res.upper_bounded_layers, "median_gap": res.median_gap,
            "median_gap_ratio": res.median_gap_ratio, "refutations_rerun": refutations_rerun(res, prep.network, prep.nbhd),
            "verified": res.verified, "delta": res.delta, "seconds": seconds,
            "milp_calls": res.stats.milp_calls, "stop_reason": res.stop_reason,
            "push": res.details.get("push"), "scale": res.details.get("scale")}


def fmt(v, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec) if isinstance(v, float) else str(v)


def markdown(data: dict) -> str:
    from benchmarks.suite import report_header

    lines = ["# Neighborhoods at the boundary", "", *report_header(data), "",
             ("Per model, image and method at the same time budget (seconds, the whole search including the "
              "maximality check). *object r* is the object's own robust radius (layer 0 alone, by bisection with "
              "the cascade, its own budget); *attack scale* is the smallest s at which PGD (10 restarts × 100 "
              "steps) breaks s·ε* (– : not even at 64); *upper* counts layers with a refuted ε (a confirmed "
              "counterexample, others at ε*); *gap ratio* is the median of ε*_d / refuted_ε_d over them. *r↑* is "
              "the object-alone radius the search's attack refuted (an upper bound of the true radius, so "
              "ε_0 / r↑ is a lower bound of ε_0 over the true radius); *push* counts the push's proofs / "
              "refutations / undecided queries (boundary method), then the common factor its final scale step "
              "proved with the complete verifier."), "",
             ("| model | image | method | budget | w·ε* | ε_0 | object r | ε_0 / r | r↑ | ε_0 / r↑ | attack scale | "
              "certified | upper | gap ratio | median gap | push | time s | MILP | sound |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        ratio = (r["eps0"] / r["object_radius"]) if r.get("object_radius") else None
        sound = r["verified"] and not r["proven_broken_by_attack"] and r["refutations_rerun"]
        up = r.get("object_refuted_search")
        ratio_up = (r["eps0"] / up) if up else None
        push = r.get("push")
        push_s = "–" if not push else f"{push['proven']}/{push['refuted']}/{push['undecided']}"
        if r.get("scale"):
            push_s += f", ×{r['scale']['scale']:.3g}"
        lines.append(f"| {r['model']} | {r['image']} | {r['method']} | {r['budget']:g} | {fmt(r['size'])} | "
                     f"{fmt(r['eps0'])} | {fmt(r.get('object_radius'))} | {fmt(ratio, '.2f')} | {fmt(up)} | "
                     f"{fmt(ratio_up, '.2f')} | "
                     f"{fmt(r['attack_scale'], '.2f')} | {r['certified']}/{r['layers']} | "
                     f"{r['upper_bounded']}/{r['layers']} | {fmt(r['median_gap_ratio'], '.2f')} | "
                     f"{fmt(r['median_gap'])} | {push_s} | {r['seconds']:.0f} | {r['milp_calls']} | {fmt(sound)} |")
    lines += ["", ("Soundness: *sound* = the result is proven, the attack never broke ε*, and every refuted ε has a "
                   "counterexample inside its box that violates top-k when re-run on the network."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.suite import command_line, end_facts, run_facts

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_boundary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mnist2_pgd", help="comma-separated shipped model names")
    parser.add_argument("--images", default="0", help="comma-separated indices into examples/manifest.json")
    parser.add_argument("--budget", default="60", help="comma-separated seconds per search")
    parser.add_argument("--object-budget", type=float, default=60.0, help="seconds for the object's own radius")
    parser.add_argument("--methods", default="boundary,optimize,uniform")
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    manifest = json.loads((args.examples / "manifest.json").read_text())
    runs: list[dict] = []
    radii: dict[tuple[str, int], float] = {}
    # the load at the end is the latest run's: the report is rewritten after every run
    data = {**run_facts(command_line("python -m benchmarks.bench_boundary", argv)), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    for budget in (float(b) for b in args.budget.split(",")):
        for model in args.models.split(","):
            for idx in (int(i) for i in args.images.split(",")):
                entry = manifest["images"][idx]
                for method in args.methods.split(","):
                    r = run_one(model, entry, method, budget, args.examples)
                    if (model, idx) not in radii:
                        from mlrobust import api

                        prep = api.prepare(args.examples / "models" / f"{model}.onnx", args.examples / entry["file"],
                                           int(entry["target_label"]), object_mask=args.examples / entry["mask"])
                        radii[model, idx] = object_radius(prep.network, prep.nbhd, int(entry["target_label"]), 2,
                                                          r["delta"], args.object_budget)
                    r["object_radius"] = radii[model, idx]
                    runs.append(r)
                    data.update(end_facts())
                    print(json.dumps(r), flush=True)
                    (args.out / "boundary.json").write_text(json.dumps(data, indent=1))
                    (args.out / "boundary.md").write_text(markdown(data))
    print(f"wrote {args.out / 'boundary.md'}")
    return 1 if any(r["proven_broken_by_attack"] or not r["refutations_rerun"] for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
