"""Benchmark of α-CROWN against CROWN on whole-image L-inf boxes of the shipped models.

For each shipped model and the first images of ``examples/manifest.json`` (target: the image's target label, top-2):

* ``eps CROWN``: the largest radius of a whole-image L-inf box (clipped to [0, 1]) whose top-2 property CROWN's
  margin bounds prove, by bisection; ``eps α``: the same for the ``"alpha"`` bound tier (α-CROWN on the margins
  CROWN leaves open, pairs of margins for k = 2, 20 iterations, early stop on proof); ``eps PGD``: the smallest radius
  where the PGD attack finds a confirmed counterexample (searched up to 4 × eps CROWN; ``>`` when none was found).
* At ``1.05 × eps CROWN``: the k-th largest margin's upper bound by CROWN and by α-CROWN (every margin row, no early
  stop), the seconds per α-CROWN call and per iteration, and (first image per model) the last pre-activation layer
  re-bounded by α-CROWN: unstable ReLUs before/after and seconds.
* Batched: one α-CROWN call on 64 sub-domains at once (branch-and-bound style), float64 vs float32 steps.
* Warm start: a search-like run over nested growing boxes (``eps CROWN × 1.00 .. 1.10``) with 5 iterations per box,
  cold (CROWN's parameters) vs warm (the previous box's optimised parameters, ``warm=`` of
  :func:`mlrobust.bounds.alpha_crown.alpha_margin_bounds`).

Single-threaded (BLAS and torch); peak memory is the process's maximum resident set size.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.bench_alpha [--images 5] [--out benchmarks/results/alpha.md]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from PIL import Image

from mlrobust.bounds.alpha_crown import (
    AlphaOptions,
    alpha_bounds,
    alpha_margin_bounds,
    initial_domain,
    margin_coeffs,
    tighten_intermediate,
)
from mlrobust.bounds.alpha_margin import AlphaCache, alpha_topk_bounds
from mlrobust.bounds.crown import crown
from mlrobust.bounds.margin import margin_bounds
from mlrobust.ir.graph import Network
from mlrobust.ir.onnx_import import load_onnx
from mlrobust.verify.attack import PgdAttack
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
K = 2
ITERATIONS = 20


def _box(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    return np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)


def _kth(upper: np.ndarray, target: int) -> float:
    return float(np.sort(np.delete(upper, target))[-K])


def crown_kth(net: Network, x: np.ndarray, target: int, eps: float) -> float:
    lo, hi = _box(x, eps)
    b = crown(net, lo, hi)
    return _kth(margin_bounds(net, lo, hi, target, bounds=b)[1], target)


def alpha_tier_kth(net: Network, x: np.ndarray, target: int, eps: float, cache: AlphaCache | None = None,
                   iterations: int = ITERATIONS) -> float:
    lo, hi = _box(x, eps)
    b = crown(net, lo, hi)
    c_lo, c_hi = margin_bounds(net, lo, hi, target, bounds=b)
    top = alpha_topk_bounds(net, b, target, K, c_lo, c_hi, options=AlphaOptions(iterations=iterations),
                            cache=cache, family=target)
    return top.kth_upper


def frontier(proven: Callable[[float], bool], start: float, steps: int = 7, grow: float = 1.5) -> float:
    """Largest eps with ``proven(eps)`` by bisection from a proven ``start`` (or 0) and a first failure above it."""
    lo, hi = (start, start * grow) if proven(start) else (0.0, start)
    while proven(hi) and hi < 1.0:
        lo, hi = hi, hi * grow
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if proven(mid) else (lo, mid)
    return lo


def attack_frontier(net: Network, x: np.ndarray, target: int, top: float, steps: int = 7) -> float | None:
    """Smallest eps (<= top) at which PGD confirms a counterexample, None if none up to ``top``."""
    attack = PgdAttack()

    def broken(eps: float) -> bool:
        return attack.run(net, Box(*_box(x, eps)), target, K).counterexample is not None

    if not broken(top):
        return None
    lo, hi = 0.0, top
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if broken(mid) else (mid, hi)
    return hi


def measure_image(net: Network, x: np.ndarray, target: int, intermediate: bool) -> dict:
    row: dict = {}
    t0 = time.perf_counter()
    eps_c = frontier(lambda e: crown_kth(net, x, target, e) < -ROBUST_TOLERANCE, 0.01)
    row["eps_crown"] = eps_c
    row["eps_alpha"] = frontier(lambda e: alpha_tier_kth(net, x, target, e) < -ROBUST_TOLERANCE, eps_c)
    row["eps_pgd"] = attack_frontier(net, x, target, 4 * eps_c)
    row["frontier_seconds"] = time.perf_counter() - t0
    eps = 1.05 * eps_c
    lo, hi = _box(x, eps)
    b = crown(net, lo, hi)
    _, c_hi = margin_bounds(net, lo, hi, target, bounds=b)
    t1 = time.perf_counter()
    _, a_hi, _ = alpha_margin_bounds(net, lo, hi, target, intermediate=b,
                                        options=AlphaOptions(iterations=ITERATIONS))
    secs = time.perf_counter() - t1
    row.update(crown_kth=_kth(c_hi, target), alpha_kth=_kth(a_hi, target), alpha_seconds=secs,
               per_iteration=secs / ITERATIONS, unstable=b.num_unstable,
               mean_gain=float(np.mean(np.delete(c_hi - a_hi, target))))
    if intermediate:
        t2 = time.perf_counter()
        tight, rows = tighten_intermediate(net, b, AlphaOptions(iterations=10, time_limit=60.0))
        row.update(inter_seconds=time.perf_counter() - t2, inter_rows=rows, unstable_after=tight.num_unstable)
    return row


def warm_start_run(net: Network, x: np.ndarray, target: int, eps_c: float) -> dict:
    """Nested growing boxes, 5 iterations each, every margin row, no early stop: the k-th largest margin upper bound
    per box from CROWN's parameters (cold) and from the previous box's optimised ones (warm)."""
    scales = np.linspace(1.0, 1.1, 6)
    opts = AlphaOptions(iterations=5)
    cold, warm = [], []
    state = None
    for s in scales:
        lo, hi = _box(x, eps_c * s)
        b = crown(net, lo, hi)
        cold.append(_kth(alpha_margin_bounds(net, lo, hi, target, intermediate=b, options=opts)[1], target))
        _, up, state = alpha_margin_bounds(net, lo, hi, target, intermediate=b, options=opts, warm=state)
        warm.append(_kth(up, target))
    return {"scales": scales.tolist(), "cold": cold, "warm": warm}


def batched_run(net: Network, x: np.ndarray, target: int, eps: float, domains: int = 64) -> dict:
    """Seconds of one batched α-CROWN call (``domains`` copies of the box, one margin row, 20 iterations), with the
    optimisation steps in float64 and in float32: the cost of bounding a batch of branch-and-bound sub-domains."""
    lo, hi = _box(x, eps)
    dom = initial_domain(net, lo, hi, crown(net, lo, hi)).select([0] * domains)
    rows, _ = margin_coeffs(net.num_classes, target)
    out: dict = {"domains": domains}
    for dtype in ("float64", "float32"):
        t0 = time.perf_counter()
        res = alpha_bounds(net, dom, -rows[:1], options=AlphaOptions(iterations=ITERATIONS, loop_dtype=dtype))
        out[dtype] = time.perf_counter() - t0
        out[dtype + "_bound"] = float(res.lower[0, 0])
    return out


def images(n: int) -> list[tuple[str, np.ndarray, int]]:
    manifest = json.loads((EXAMPLES / "manifest.json").read_text())
    out = []
    for im in manifest["images"][:n]:
        x = np.asarray(Image.open(EXAMPLES / im["file"]), dtype=np.float64)[None] / 255.0
        out.append((im["id"], x, int(im["target_label"])))
    return out


def _f(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def report(results: dict, seconds: float) -> str:
    from benchmarks.suite import report_header

    lines = ["# α-CROWN vs CROWN on whole-image L-inf boxes", "", *report_header(results),
             (f"torch {torch.__version__}, 1 thread; {seconds:.0f} s in all. Top-{K} property of the image's target label; boxes are L-inf balls of "
              "radius eps around the whole image, clipped to [0, 1]."), "",
             "## Largest proven radius", "",
             ("`eps α` is the `\"alpha\"` bound tier: α-CROWN (20 iterations, early stop) on the margins CROWN "
              "leaves open, then pairs of margins. `eps PGD`: smallest radius where PGD finds a confirmed "
              "counterexample (`>x`: none up to x)."), "",
             "| model | image | eps CROWN | eps α | α / CROWN | eps PGD |", "|---|---|---|---|---|---|"]
    ratios = []
    for model, rows in results["models"].items():
        for img, r in rows.items():
            ratio = r["eps_alpha"] / r["eps_crown"] if r["eps_crown"] > 0 else float("nan")
            ratios.append(ratio)
            pgd = _f(r["eps_pgd"]) if r["eps_pgd"] is not None else f">{4 * r['eps_crown']:.3g}"
            lines.append(f"| {model} | {img} | {_f(r['eps_crown'])} | {_f(r['eps_alpha'])} | {ratio:.3f} | {pgd} |")
    geo = float(np.exp(np.mean(np.log([r for r in ratios if np.isfinite(r) and r > 0])))) if ratios else float("nan")
    lines += ["", f"Geometric mean of eps α / eps CROWN: **{geo:.3f}**.", "",
              "## Bounds at 1.05 × eps CROWN", "",
              ("k-th largest margin upper bound (a proof needs < 0) from every margin row (CROWN vs α-CROWN, 20 "
               "iterations, no early stop, per-class only), mean tightening of the per-class margin upper bounds, "
               "unstable ReLUs (CROWN), seconds per α-CROWN call (18 rows: upper and lower bound of every margin) "
               "and per iteration."), "",
              "| model | image | unstable | CROWN k-th | α k-th | mean gain | α s/call | ms/iter |",
              "|---|---|---|---|---|---|---|---|"]
    per_call, per_iter = [], []
    for model, rows in results["models"].items():
        for img, r in rows.items():
            per_call.append(r["alpha_seconds"])
            per_iter.append(r["per_iteration"])
            lines.append(f"| {model} | {img} | {r['unstable']} | {r['crown_kth']:.4f} | {r['alpha_kth']:.4f} | "
                         f"{r['mean_gain']:.4f} | {r['alpha_seconds']:.2f} | {1000 * r['per_iteration']:.1f} |")
    lines += ["", (f"Median α-CROWN call: {statistics.median(per_call):.2f} s, "
                   f"{1000 * statistics.median(per_iter):.1f} ms per iteration. Peak resident memory of the whole "
                   f"run: {results['max_rss_mb']:.0f} MB."), "",
              "## Re-bounding the last pre-activation layer (`optimize_intermediate`)", "",
              "| model | image | rows | unstable before | unstable after | seconds |", "|---|---|---|---|---|---|"]
    for model, rows in results["models"].items():
        for img, r in rows.items():
            if "inter_seconds" in r:
                lines.append(f"| {model} | {img} | {r['inter_rows']} | {r['unstable']} | {r['unstable_after']} | "
                             f"{r['inter_seconds']:.1f} |")
    lines += ["", "## Batched sub-domains (branch and bound)", "",
              ("One call on 64 domains (copies of the 1.05 × eps CROWN box) × 1 margin row, 20 iterations, optimisation "
               "steps in float64 vs float32 (the default; the reported bound is float64 either way)."), "",
              "| model | image | float64 s | float32 s | ms per domain-iteration (float32) | bound f64 / f32 |",
              "|---|---|---|---|---|---|"]
    for model, b in results.get("batched", {}).items():
        per = 1000 * b["float32"] / (b["domains"] * ITERATIONS)
        lines.append(f"| {model} | {b['image']} | {b['float64']:.2f} | {b['float32']:.2f} | {per:.2f} | "
                     f"{b['float64_bound']:.4f} / {b['float32_bound']:.4f} |")
    lines += ["", "## Warm start over nested growing boxes (5 iterations per box)", "",
              ("k-th largest margin upper bound per box (every margin row, no early stop), starting from CROWN's "
               "parameters (cold) or from the previous box's optimised ones (warm)."), ""]
    for model, w in results["warm"].items():
        lines += [f"**{model}** ({w['image']}):", "", "| scale | " + " | ".join(f"{s:.2f}" for s in w["scales"]) + " |",
                  "|---|" + "---|" * len(w["scales"]),
                  "| cold | " + " | ".join(f"{v:.4f}" for v in w["cold"]) + " |",
                  "| warm | " + " | ".join(f"{v:.4f}" for v in w["warm"]) + " |", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import command_line, end_facts, run_facts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=["mnist2_nodefense", "mnist2_l0", "mnist2_pgd"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "alpha.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # the documented command sets one BLAS thread
    results: dict = {**run_facts(command_line("OPENBLAS_NUM_THREADS=1 python -m benchmarks.bench_alpha", argv)),
                     "models": {}, "warm": {}}
    imgs = images(args.images)
    for model in args.models:
        net = load_onnx(EXAMPLES / "models" / f"{model}.onnx")
        rows = {}
        for i, (img, x, target) in enumerate(imgs):
            rows[img] = measure_image(net, x, target, intermediate=(i == 0))
            print(model, img, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[img].items()},
                  flush=True)
        results["models"][model] = rows
        img, x, target = imgs[0]
        results["warm"][model] = dict(warm_start_run(net, x, target, rows[img]["eps_crown"]), image=img)
        results.setdefault("batched", {})[model] = dict(batched_run(net, x, target, 1.05 * rows[img]["eps_crown"]),
                                                        image=img)
    results["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.update(end_facts())
    text = report(results, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
