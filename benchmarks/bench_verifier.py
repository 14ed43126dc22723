"""Benchmark of the exact verifier on the 64×64 reference architecture: bound tightening, build and solve times,
decide vs optimise mode, solver backends, the Pyomo route, and HiGHS's time-limit overshoot.

Models: every ``examples/models/*.onnx`` (else a fixed-seed random network of the reference architecture);
images: the first ``--images`` of ``examples/manifest.json`` with their perturbed-object masks and target labels.
Queries are object-only boxes (ε on the perturbed object, layer 0 of the layered neighborhood): for each image the
largest ε that CROWN margin bounds prove robust, ε*, is found by bisection, and the queries sit at multiples of ε*
(``--factors``), where the bounds no longer decide and a search has to call the MILP. Single-threaded BLAS and
torch; HiGHS as it comes.

    python -m benchmarks.bench_verifier [--images 2] [--factors 1.25 1.5 2 3] [--time-limit 60]
                                        [--solvers highs cbc scip gurobi] [--out benchmarks/results/verifier.md]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from mlrobust.backends import get_backend  # noqa: E402
from mlrobust.errors import SolverLimitError, SolverNotAvailableError  # noqa: E402
from mlrobust.ir.graph import Network, Node  # noqa: E402
from mlrobust.ir.ops import Conv2d, Dense, MaxPool2d, Relu, Reshape  # noqa: E402
from mlrobust.milp.builder import build_topk_milp  # noqa: E402
from mlrobust.milp.pyomo_model import to_pyomo  # noqa: E402
from mlrobust.milp.tightening import tighten  # noqa: E402
from mlrobust.verify.bound_check import margin_range  # noqa: E402
from mlrobust.verify.cascade import Cascade  # noqa: E402
from mlrobust.verify.milp_verifier import MilpVerifier  # noqa: E402
from mlrobust.verify.spec import Box  # noqa: E402
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K = 2


@dataclass
class Query:
    model: str
    image: str
    network: Network
    box: Box
    target: int
    eps: float
    factor: float


# --- inputs -------------------------------------------------------------------------------------------------------
def reference_network(seed: int = 0) -> Network:
    """The reference architecture with He-initialised random weights (used when no trained model is shipped)."""
    rng = np.random.default_rng(seed)

    def conv(c_in, c_out):
        w = rng.normal(0, np.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3))
        return Conv2d(w, rng.normal(0, 0.1, c_out), (2, 2), (1, 1, 1, 1))

    nodes = [Node("conv1", conv(1, 8), ("input",), "c1", (8, 32, 32)), Node("relu1", Relu(), ("c1",), "r1", (8, 32, 32)),
             Node("conv2", conv(8, 16), ("r1",), "c2", (16, 16, 16)), Node("relu2", Relu(), ("c2",), "r2", (16, 16, 16)),
             Node("pool", MaxPool2d((4, 4), (4, 4)), ("r2",), "p", (16, 4, 4)),
             Node("flatten", Reshape((256,)), ("p",), "f", (256,)),
             Node("fc", Dense(rng.normal(0, np.sqrt(2.0 / 256), (10, 256)), rng.normal(0, 0.1, 10)), ("f",), "y", (10,))]
    return Network("input", (1, 1, 64, 64), nodes, "y")


def load_inputs(examples: Path, n_images: int) -> tuple[list[tuple[str, Network]], list[dict], str]:
    """(models, images, note). Images carry the picture, the object mask and the target label."""
    from mlrobust import load_onnx
    from mlrobust.neighborhood.image_io import read_image, read_mask

    models = [(p.stem, load_onnx(p)) for p in sorted((examples / "models").glob("*.onnx"))]
    manifest = examples / "manifest.json"
    images = []
    if manifest.is_file():
        for entry in json.loads(manifest.read_text())["images"][:n_images]:
            images.append({"id": entry["id"], "image": read_image(examples / entry["file"]),
                           "mask": read_mask(examples / entry["mask"]), "target": int(entry["target_label"])})
    if models and images:
        return models, images, f"shipped models and images from {examples}"
    rng = np.random.default_rng(0)
    net = reference_network(0)
    img = np.zeros((64, 64))
    img[12:44, 6:26] = rng.uniform(0.6, 1.0, (32, 20))
    img[20:52, 38:58] = rng.uniform(0.6, 1.0, (32, 20))
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:52, 38:58] = True
    target = int(np.argsort(-net.logits(img[None, None])[0])[0])
    return [("random-reference", net)], [{"id": "synthetic", "image": img, "mask": mask, "target": target}], \
        "no shipped models/images: a fixed-seed random reference network and a synthetic two-block image"


def object_box(image: np.ndarray, mask: np.ndarray, eps: float, shape: tuple[int, ...]) -> Box:
    x = np.asarray(image, dtype=np.float64).reshape(shape)
    m = np.asarray(mask, dtype=bool).reshape(shape)
    return Box(np.where(m, np.clip(x - eps, 0, 1), x), np.where(m, np.clip(x + eps, 0, 1), x))


def crown_radius(net: Network, image, mask, target: int, steps: int = 14) -> float:
    """Largest object-only ε (to 2^-steps) that CROWN margin bounds prove robust for top-K membership."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        box = object_box(image, mask, mid, net.sample_shape)
        t = tighten(net, box.lower, box.upper, "crown", target=target)
        if margin_range(t, target, K)[1] < -ROBUST_TOLERANCE:
            lo = mid
        else:
            hi = mid
    return lo


def make_queries(models, images, factors) -> tuple[list[Query], list[dict]]:
    queries, radii = [], []
    for name, net in models:
        for img in images:
            logits = net.logits(np.asarray(img["image"], dtype=np.float64).reshape(1, *net.sample_shape))[0]
            if img["target"] not in np.argsort(-logits)[:K]:
                continue  # the model does not put the target in its top-k on the clean image
            eps_star = crown_radius(net, img["image"], img["mask"], img["target"])
            radii.append({"model": name, "image": img["id"], "eps_star": eps_star})
            for f in factors:
                eps = min(eps_star * f, 1.0) if eps_star > 0 else 0.01 * f
                box = object_box(img["image"], img["mask"], eps, net.sample_shape)
                queries.append(Query(name, img["id"], net, box, img["target"], eps, f))
    return queries, radii


# --- measurements -------------------------------------------------------------------------------------------------
def verdict_name(v) -> str:
    return "robust" if isinstance(v, Robust) else "not robust" if isinstance(v, NotRobust) else "unknown"


def run_tightening(queries: list[Query], time_limit: float, lp_budget: float) -> list[dict]:
    """Per query and tightening: bound time, unstable ReLUs, binaries, build time, decide and optimise solves."""
    rows = []
    for q in queries:
        for method in ("ibp", "crown", "lp"):
            t = tighten(q.network, q.box.lower, q.box.upper, method, target=q.target, time_budget=lp_budget)
            start = time.perf_counter()
            problem = build_topk_milp(q.network, t.bounds, q.target, K, t.margin_lower, t.margin_upper)
            build = time.perf_counter() - start
            row = {"model": q.model, "image": q.image, "factor": q.factor, "eps": q.eps, "tightening": method,
                   "tighten_s": t.seconds, "unstable": t.num_unstable, "binaries": problem.num_binaries,
                   "variables": problem.num_cols, "constraints": problem.num_rows, "build_s": build,
                   "margin_upper": problem.stats["margin_upper_bound"]}
            for mode in ("decide", "optimize") if method == "crown" else ("decide",):
                # the MILP alone, started from the box centre (no attack in front of it)
                v = MilpVerifier("highs", method, lp_time_budget=lp_budget).verify(
                    q.network, q.box, q.target, K, mode=mode, time_limit=time_limit, tightened=t,
                    hints=[q.box.center])
                row[f"{mode}_verdict"] = verdict_name(v)
                row[f"{mode}_s"] = v.stats.get("solve_seconds", 0.0)
                row[f"{mode}_total_s"] = v.total_seconds + t.seconds
                if mode == "optimize":
                    row["optimum"] = v.stats.get("objective")
                    row["bound"] = v.stats.get("bound", v.stats["margin_bounds"][1])
            if method == "crown":
                c = Cascade("highs", "crown").verify(q.network, q.box, q.target, K, time_limit=time_limit)
                row.update(cascade_verdict=verdict_name(c), cascade_tier=c.tier, cascade_s=c.total_seconds)
            rows.append(row)
            print(f"  {q.model} {q.image} x{q.factor:g} eps={q.eps:.4f} {method:5s} unstable {row['unstable']:5d} "
                  f"bin {row['binaries']:5d} build {build:.3f}s decide {row['decide_verdict']} {row['decide_s']:.2f}s",
                  flush=True)
    return rows


def run_solvers(queries: list[Query], solvers: list[str], time_limit: float) -> list[dict]:
    rows = []
    for q in queries:
        t = tighten(q.network, q.box.lower, q.box.upper, "crown", target=q.target)
        problem = build_topk_milp(q.network, t.bounds, q.target, K, t.margin_lower, t.margin_upper)
        for name in solvers:
            row = {"model": q.model, "image": q.image, "factor": q.factor, "solver": name,
                   "variables": problem.num_cols, "constraints": problem.num_rows, "binaries": problem.num_binaries}
            try:
                backend = get_backend(name)
            except SolverNotAvailableError as exc:
                row["verdict"] = f"not installed ({exc})"
                rows.append(row)
                continue
            try:
                v = MilpVerifier(backend, "crown").verify(q.network, q.box, q.target, K, mode="decide",
                                                          time_limit=time_limit, tightened=t, hints=[q.box.center])
                row.update(verdict=verdict_name(v), solve_s=v.stats.get("solve_seconds", 0.0),
                           status=v.stats.get("status", "bounds"))
            except SolverLimitError:
                row["verdict"] = "over licence size"
            rows.append(row)
            print(f"  {q.model} {q.image} x{q.factor:g} {name:8s} {row.get('verdict')} {row.get('solve_s', 0):.2f}s",
                  flush=True)
    return rows


def run_pyomo_route(queries: list[Query], time_limit: float) -> list[dict]:
    """Direct highspy hand-over vs the Pyomo model (build + appsi HiGHS) on the same problems (optimise mode)."""
    rows = []
    for q in queries:
        t = tighten(q.network, q.box.lower, q.box.upper, "crown", target=q.target)
        start = time.perf_counter()
        problem = build_topk_milp(q.network, t.bounds, q.target, K, t.margin_lower, t.margin_upper)
        build = time.perf_counter() - start
        start = time.perf_counter()
        to_pyomo(problem)
        pyomo_build = time.perf_counter() - start
        direct = get_backend("highs").solve(problem, time_limit=time_limit)
        via = get_backend("pyomo:appsi_highs").solve(problem, time_limit=time_limit)
        rows.append({"model": q.model, "image": q.image, "factor": q.factor, "nonzeros": problem.nnz,
                     "build_s": build, "pyomo_model_s": pyomo_build,
                     "direct_handover_s": direct.stats.get("handover_seconds", 0.0), "direct_total_s": direct.seconds,
                     "pyomo_total_s": via.seconds, "direct_objective": direct.objective,
                     "pyomo_objective": via.objective, "same_optimum": (direct.objective is not None
                                                                    and via.objective is not None
                                                                    and abs(direct.objective - via.objective) < 1e-4)})
    return rows


def run_fusion(queries: list[Query]) -> list[dict]:
    """Binaries with ReLU -> MaxPool encoded as max(0, window) over pre-activations, against a separate ReLU layer."""
    from mlrobust.milp import builder as builder_module

    rows = []
    for q in queries:
        t = tighten(q.network, q.box.lower, q.box.upper, "crown", target=q.target)
        fused = build_topk_milp(q.network, t.bounds, q.target, K, t.margin_lower, t.margin_upper)
        original = builder_module.MilpBuilder._feeds_only_pools
        builder_module.MilpBuilder._feeds_only_pools = lambda self, node: False  # type: ignore[method-assign]
        try:
            plain = build_topk_milp(q.network, t.bounds, q.target, K, t.margin_lower, t.margin_upper)
        finally:
            builder_module.MilpBuilder._feeds_only_pools = original  # type: ignore[method-assign]
        rows.append({"model": q.model, "image": q.image, "factor": q.factor, "unstable": t.num_unstable,
                     "plain": plain.num_binaries, "fused": fused.num_binaries,
                     "relu_plain": plain.stats["relu_binaries"], "relu_fused": fused.stats["relu_binaries"],
                     "pool_plain": plain.stats["maxpool_binaries"], "pool_fused": fused.stats["maxpool_binaries"]})
    return rows


def run_time_limit(queries: list[Query], limit: float) -> list[dict]:
    """Wall time of HiGHS optimise runs with a time limit, with and without the callback that enforces it."""
    from mlrobust.backends.highs import HighsBackend

    rows = []
    for q in queries:
        t = tighten(q.network, q.box.lower, q.box.upper, "ibp", target=q.target)
        problem = build_topk_milp(q.network, t.bounds, q.target, K, t.margin_lower, t.margin_upper)
        for enforce in (False, True):
            start = time.perf_counter()
            res = HighsBackend(enforce_time_limit=enforce).solve(problem, time_limit=limit)
            rows.append({"model": q.model, "image": q.image, "factor": q.factor, "limit_s": limit,
                         "callback": enforce, "wall_s": time.perf_counter() - start, "status": res.status})
        if rows[-1]["status"] != "time_limit":
            rows = rows[:-2]  # decided within the limit: says nothing about overshoot
    return rows


# --- report -------------------------------------------------------------------------------------------------------
def _f(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def markdown(note, radii, tight_rows, solver_rows, pyomo_rows, limit_rows, args, seconds,
             fusion_rows, facts: dict) -> str:
    """The report; ``facts``: :func:`benchmarks.suite.run_facts` with :func:`benchmarks.suite.end_facts`."""
    import highspy

    from benchmarks.suite import report_header

    out = ["# Exact verifier benchmark", "", *report_header(facts),
           f"Python {platform.python_version()}, HiGHS {highspy.Highs().version()}, torch {torch.__version__}; one BLAS/torch thread; "
           f"run time {seconds / 60:.1f} min.  ",
           f"Inputs: {note}. Queries: object-only boxes (ε on the perturbed object) at multiples of ε*, the largest ε "
           f"CROWN margin bounds prove robust; top-{K} membership of the target label; time limit "
           f"{args.time_limit:g} s per solve, LP tightening budget {args.lp_budget:g} s.", ""]
    out += ["## ε* per model and image", "", "| model | image | ε* (CROWN) |", "|---|---|---|"]
    out += [f"| {r['model']} | {r['image']} | {r['eps_star']:.4f} |" for r in radii]
    out += ["", "## Tightening: unstable ReLUs, binaries, build and solve time (HiGHS)", "",
            "Times in seconds. The MILP alone (no attack in front), warm-started from the box centre. *decide* stops "
            "at the sign; *optimise* (CROWN only) solves to optimality and returns the weakest points. Unstable "
            "ReLUs count every ReLU whose pre-activation bounds straddle 0; binaries are those of the full top-k "
            "model (ReLUs that feed the max pool are encoded inside it; decide mode drops further classes).", "",
            "| model | image | ×ε* | ε | tightening | bound s | unstable ReLUs | binaries | vars | rows | build s | "
            "decide | decide s | optimise | optimise s | optimum | bound |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in tight_rows:
        out.append(f"| {r['model']} | {r['image']} | {r['factor']:g} | {r['eps']:.4f} | {r['tightening']} | "
                   f"{_f(r['tighten_s'])} | {r['unstable']} | {r['binaries']} | {r['variables']} | "
                   f"{r['constraints']} | {_f(r['build_s'], 3)} | {r['decide_verdict']} | {_f(r['decide_s'])} | "
                   f"{r.get('optimize_verdict', '')} | {_f(r.get('optimize_s'))} | {_f(r.get('optimum'), 4)} | "
                   f"{_f(r.get('bound'), 4)} |")
    out += ["", "Medians over the queries:", "", "| tightening | bound s | unstable ReLUs | binaries | build s | "
            "decide s | decided |", "|---|---|---|---|---|---|---|"]
    for method in ("ibp", "crown", "lp"):
        rs = [r for r in tight_rows if r["tightening"] == method]
        if rs:
            decided = sum(r["decide_verdict"] != "unknown" for r in rs)
            out.append(f"| {method} | {_f(_median(r['tighten_s'] for r in rs))} | "
                       f"{_median(r['unstable'] for r in rs):.0f} | {_median(r['binaries'] for r in rs):.0f} | "
                       f"{_f(_median(r['build_s'] for r in rs), 3)} | {_f(_median(r['decide_s'] for r in rs))} | "
                       f"{decided}/{len(rs)} |")
    crown_rows = [r for r in tight_rows if r["tightening"] == "crown"]
    if crown_rows:
        out += ["", f"Decide vs optimise (CROWN, HiGHS): median solve {_f(_median(r['decide_s'] for r in crown_rows))}"
                f" s vs {_f(_median(r['optimize_s'] for r in crown_rows))} s; decided "
                f"{sum(r['decide_verdict'] != 'unknown' for r in crown_rows)}/{len(crown_rows)} vs "
                f"{sum(r['optimize_verdict'] != 'unknown' for r in crown_rows)}/{len(crown_rows)}."]
    if crown_rows and "cascade_tier" in crown_rows[0]:
        out += ["", "## Cascade (PGD attack → CROWN margin bounds → MILP, HiGHS) on the same queries", "",
                "| model | image | ×ε* | verdict | decided by | total s |", "|---|---|---|---|---|---|"]
        for r in crown_rows:
            out.append(f"| {r['model']} | {r['image']} | {r['factor']:g} | {r['cascade_verdict']} | "
                       f"{r['cascade_tier']} | {_f(r['cascade_s'])} |")
        tiers = {}
        for r in crown_rows:
            tiers[r["cascade_tier"]] = tiers.get(r["cascade_tier"], 0) + 1
        out += ["", "Decided by tier: " + ", ".join(f"{t} {n}" for t, n in sorted(tiers.items())) + "."]
    if solver_rows:
        solvers = list(dict.fromkeys(r["solver"] for r in solver_rows))
        out += ["", "## Solvers (decide mode, CROWN bounds, same problems)", "",
                "Cells: verdict and solve seconds. Gurobi runs under the size-limited licence of the pip build "
                "(2000 variables and 2000 constraints): larger models are reported as over the licence size.", "",
                "| model | image | ×ε* | vars | rows | binaries | " + " | ".join(solvers) + " |",
                "|---|---|---|---|---|---|" + "---|" * len(solvers)]
        keys = list(dict.fromkeys((r["model"], r["image"], r["factor"]) for r in solver_rows))
        for key in keys:
            rs = {r["solver"]: r for r in solver_rows if (r["model"], r["image"], r["factor"]) == key}
            first = next(iter(rs.values()))
            cells = []
            for s in solvers:
                r = rs.get(s, {})
                cells.append(f"{r.get('verdict', '–')} {_f(r.get('solve_s'))}" if "solve_s" in r
                             else r.get("verdict", "–"))
            out.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {first['variables']} | {first['constraints']} | "
                       f"{first['binaries']} | " + " | ".join(cells) + " |")
        out += ["", "| solver | median solve s | decided |", "|---|---|---|"]
        for s in solvers:
            rs = [r for r in solver_rows if r["solver"] == s and "solve_s" in r]
            if rs:
                out.append(f"| {s} | {_f(_median(r['solve_s'] for r in rs))} | "
                           f"{sum(r['verdict'] != 'unknown' for r in rs)}/{len(rs)} |")
    if pyomo_rows:
        out += ["", "## Model hand-over: direct highspy vs the Pyomo model", "",
                "The matrix build is shared; *Pyomo model* is the time to emit the Pyomo `ConcreteModel` "
                "(LinearExpression rows); totals include hand-over and solve (optimise mode).", "",
                "| model | image | ×ε* | nonzeros | matrix build s | Pyomo model s | highspy hand-over s | "
                "direct total s | Pyomo (appsi HiGHS) total s | same optimum |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in pyomo_rows:
            out.append(f"| {r['model']} | {r['image']} | {r['factor']:g} | {r['nonzeros']} | {_f(r['build_s'], 3)} | "
                       f"{_f(r['pyomo_model_s'], 3)} | {_f(r['direct_handover_s'], 3)} | {_f(r['direct_total_s'])} | "
                       f"{_f(r['pyomo_total_s'])} | {r['same_optimum']} |")
    if fusion_rows:
        out += ["", "## ReLU → MaxPool encoded as one max(0, window)", "",
                "Binaries of the same top-k model (CROWN bounds) with the second ReLU layer encoded separately "
                "(*plain*) and inside the max pool (*fused*).", "",
                "| model | image | ×ε* | unstable ReLUs | binaries plain → fused | ReLU binaries | max-pool binaries |",
                "|---|---|---|---|---|---|---|"]
        for r in fusion_rows:
            out.append(f"| {r['model']} | {r['image']} | {r['factor']:g} | {r['unstable']} | {r['plain']} → "
                       f"{r['fused']} | {r['relu_plain']} → {r['relu_fused']} | {r['pool_plain']} → "
                       f"{r['pool_fused']} |")
        saved = [1 - r["fused"] / r["plain"] for r in fusion_rows if r["plain"]]
        out += ["", f"Binaries saved: median {100 * _median(saved):.0f}% (range {100 * min(saved):.0f}–"
                f"{100 * max(saved):.0f}%)."]
    if limit_rows:
        out += ["", "## HiGHS time limit", "",
                "Wall time of optimise runs (IBP bounds, hard queries) with HiGHS's own `time_limit` only, and with "
                "the interrupt callback that also enforces it.", "",
                "| model | image | ×ε* | limit s | callback | wall s | status |", "|---|---|---|---|---|---|---|"]
        for r in limit_rows:
            out.append(f"| {r['model']} | {r['image']} | {r['factor']:g} | {r['limit_s']:g} | {r['callback']} | "
                       f"{_f(r['wall_s'])} | {r['status']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import command_line, end_facts, run_facts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.25, 1.5, 2.0, 3.0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--lp-budget", type=float, default=20.0)
    parser.add_argument("--solvers", nargs="+", default=["highs", "cbc", "scip", "gurobi"])
    parser.add_argument("--solver-queries", type=int, default=6, help="queries (spread over models) for the "
                                                                        "solver comparison")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["tightening", "solvers", "pyomo", "timelimit", "fusion"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "verifier.md")
    args = parser.parse_args(argv)
    facts = run_facts(command_line("python -m benchmarks.bench_verifier", argv))  # the load before the work
    start = time.perf_counter()
    models, images, note = load_inputs(args.examples, args.images)
    queries, radii = make_queries(models, images, args.factors)
    print(f"{len(queries)} queries on {len(models)} models x {len(images)} images", flush=True)
    tight_rows = run_tightening(queries, args.time_limit, args.lp_budget) if "tightening" not in args.skip else []
    spread = queries[:: max(1, len(queries) // max(args.solver_queries, 1))][: args.solver_queries]
    solver_rows = run_solvers(spread, args.solvers, args.time_limit) if "solvers" not in args.skip else []
    pyomo_rows = run_pyomo_route(spread[:3], args.time_limit) if "pyomo" not in args.skip else []
    hard = [q for q in queries if q.factor == max(args.factors)][:2]
    limit_rows = run_time_limit(hard, 2.0) if "timelimit" not in args.skip else []
    fusion_rows = run_fusion(queries) if "fusion" not in args.skip else []
    text = markdown(note, radii, tight_rows, solver_rows, pyomo_rows, limit_rows, args, time.perf_counter() - start,
                    fusion_rows, {**facts, **end_facts()})
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"radii": radii, "tightening": tight_rows, "solvers": solver_rows, "pyomo": pyomo_rows,
         "time_limit": limit_rows, "fusion": fusion_rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
