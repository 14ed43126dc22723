"""Benchmark of the branch-and-bound verifier on whole-image L∞ boxes of the shipped models.

Part 1 (cost per node): on one image of ``mnist2_pgd`` (the reference architecture) at ``--node-factor`` times the
CROWN radius, a BaB run limited to ``--node-domains`` domains per bound engine (α/β-CROWN, plain CROWN under the
splits): seconds per domain, domains per second, the worst open bound after that many domains, process peak memory
(max RSS) and the domain store's bytes per domain. With ``--baseline DIR`` (another checkout of the project, e.g.
the main branch) the same part runs there too, in a subprocess, alternating with this checkout ``--repeat``
times, so that both see the same machine load.

Part 2 (what it proves): for the first ``--images`` images of ``examples/manifest.json`` and each model of
``--models``, ε* = the largest whole-image L∞ radius (clipped to [0, 1]) that CROWN margin bounds prove for top-2
membership of the target (bisection), then boxes at ``--factors`` × ε*, each decided by BaB, the MILP (HiGHS, CROWN
bounds), the cascade (attack → bounds → MILP) and the cascade with the BaB tier (attack → bounds → BaB half the
time → MILP) within ``--time-limit`` seconds. Single-threaded BLAS and torch.

    python -m benchmarks.bench_bab [--images 5] [--models mnist2_pgd] [--factors 1.05 1.1 1.25]
                                   [--time-limit 60] [--out benchmarks/results/bab.md]
                                   [--skip-compare] [--node-domains 400] [--baseline ../main --repeat 2]
                                   [--notes-file NOTES.md]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from benchmarks.suite import (
    command_line,
    end_facts,
    git_revision,
    load_average,
    load_text,
    report_header,
    run_facts,
)
from mlrobust import load_onnx
from mlrobust.bounds.tier import tighten
from mlrobust.ir.graph import Network
from mlrobust.neighborhood.image_io import read_image
from mlrobust.verify.bab import BabVerifier
from mlrobust.verify.bound_check import margin_range
from mlrobust.verify.cascade import Cascade
from mlrobust.verify.milp_verifier import MilpVerifier
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust

ROOT = Path(__file__).resolve().parent.parent
K = 2


def crown_radius(net: Network, image: np.ndarray, target: int, steps: int = 12, top: float = 0.25) -> float:
    """Largest whole-image ε (to ``top`` · 2^-steps) that CROWN margin bounds prove for top-K membership."""
    lo, hi = 0.0, top
    for _ in range(steps):
        mid = (lo + hi) / 2
        box = Box.around(image, mid)
        t = tighten(net, box.lower, box.upper, "crown", target=target)
        if margin_range(t, target, K)[1] < -ROBUST_TOLERANCE:
            lo = mid
        else:
            hi = mid
    return lo


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def status(v) -> str:
    return "robust" if isinstance(v, Robust) else ("not robust" if isinstance(v, NotRobust) else "unknown")


def node_cost(net: Network, image: np.ndarray, target: int, factor: float, domains: int) -> list[dict]:
    eps = crown_radius(net, image, target) * factor
    box = Box.around(image, eps)
    rows = []
    for engine in ("alpha", "crown"):
        start_rss = peak_rss_mib()
        v = BabVerifier(engine=engine, max_domains=domains, root_attack=False, time_limit=600).verify(
            net, box, target, K)
        s = v.stats["bab"]
        rows.append({"code": "this", "engine": engine, "eps": eps, "status": status(v), "domains": s["domains"],
                     "seconds": s["seconds"], "seconds_per_domain": s["seconds_per_domain"],
                     "domains_per_second": s["domains"] / max(s["bound_seconds"] + s["branch_seconds"], 1e-9),
                     "root_bound": s["root_bound"], "final_bound": s["final_bound"], "max_depth": s["max_depth"],
                     "peak_rss_mib": peak_rss_mib(), "rss_before_mib": start_rss,
                     "store_bytes_per_domain": s.get("store_bytes_per_domain")})
        print(rows[-1], flush=True)
    return rows


def baseline_node_cost(directory: Path, args: argparse.Namespace) -> list[dict]:
    """Part 1 run by another checkout of the project (its own code, in a subprocess), its rows tagged with it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bab.md"
        cmd = [sys.executable, "-m", "benchmarks.bench_bab", "--skip-compare", "--node-domains", str(args.node_domains),
               "--node-factor", str(args.node_factor), "--node-image", str(args.node_image), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(directory)}
        subprocess.run(cmd, cwd=directory, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = json.loads(out.with_suffix(".json").read_text())["node"]
    rev = git_revision(directory)
    for r in rows:
        r["code"] = f"baseline {rev}"
    print(rows, flush=True)
    return rows


def compare(models: list[tuple[str, Network]], images: list[dict], factors: list[float],
            time_limit: float) -> tuple[list[dict], list[dict]]:
    radii, rows = [], []
    for name, net in models:
        for img in images:
            x = img["image"].reshape(net.sample_shape)
            eps_star = crown_radius(net, x, img["target"])
            radii.append({"model": name, "image": img["id"], "eps_star": eps_star})
            for f in factors:
                box = Box.around(x, eps_star * f)
                methods = {"bab": BabVerifier(), "milp": MilpVerifier("highs"), "cascade": Cascade("highs"),
                           "cascade-bab": Cascade("highs", use_bab=True)}
                for method, verifier in methods.items():
                    t0 = time.perf_counter()
                    v = verifier.verify(net, box, img["target"], K, time_limit=time_limit)
                    secs = time.perf_counter() - t0
                    bab = v.stats.get("bab", {})
                    rows.append({"model": name, "image": img["id"], "factor": f, "eps": eps_star * f,
                                 "method": method, "status": status(v), "tier": v.tier, "seconds": secs,
                                 "bab_domains": bab.get("domains"), "bab_final_bound": bab.get("final_bound")})
                    print(rows[-1], flush=True)
    return radii, rows


def markdown(node_rows: list[dict], radii: list[dict], rows: list[dict], args: argparse.Namespace,
             facts: dict) -> str:
    """The report; ``facts``: :func:`benchmarks.suite.run_facts` with :func:`benchmarks.suite.end_facts`."""
    out = ["# Branch and bound on whole-image boxes", "", *report_header(facts),
           f"torch {torch.__version__}, one thread; time limit {args.time_limit:g} s per query.", "",
           "## Cost per node (mnist2_pgd, reference architecture)", "",
           (f"Image {args.node_image}, whole-image box at {args.node_factor:g} × the CROWN radius, at most "
           f"{args.node_domains} domains. *s/domain* is bounding time per domain (the branching heuristic and the "
           "attacks excluded); *domains/s* counts bounding and branching; *final bound* is the worst open bound "
           "after those domains (lower is better); *peak RSS* is the whole benchmark process (torch, model, "
           "domains); *store B/domain* the domain store's bytes per open domain (bounds, splits, coefficients, "
           "α/β warm start). *load* is the machine's load average (1, 5, 15 min) when the row started: the "
           "machine is shared, so compare rows run back to back."), "",
           "| code | engine | ε | verdict | domains | s/domain | domains/s | root bound | final bound | depth | "
           "peak RSS MiB | store B/domain | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in node_rows:
        store = r.get("store_bytes_per_domain")
        out.append(f"| {r.get('code', 'this')} | {r['engine']} | {r['eps']:.4f} | {r['status']} | {r['domains']} | "
                   f"{r['seconds_per_domain']:.3f} | {r['domains_per_second']:.1f} | {r['root_bound']:.4f} | "
                   f"{r['final_bound']:.4f} | {r['max_depth']} | {r['peak_rss_mib']:.0f} | "
                   f"{'-' if store is None else store} | {r.get('load', '-')} |")
    out += ["", "## BaB vs MILP vs cascade", "",
            ("ε* = the largest whole-image L∞ radius CROWN proves (top-2, target label of the manifest); boxes at "
            "multiples of it. Each cell: verdict and seconds."), "",
            "| model | image | ε* |", "|---|---|---|"]
    for r in radii:
        out.append(f"| {r['model']} | {r['image']} | {r['eps_star']:.4f} |")
    methods = ["bab", "milp", "cascade", "cascade-bab"]
    out += ["", "| model | image | factor | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    keys = sorted({(r["model"], r["image"], r["factor"]) for r in rows})
    for key in keys:
        cells = []
        for m in methods:
            r = next((r for r in rows if (r["model"], r["image"], r["factor"]) == key and r["method"] == m), None)
            cells.append("-" if r is None else f"{r['status']} {r['seconds']:.1f} s")
        out.append(f"| {key[0]} | {key[1]} | {key[2]:g} | " + " | ".join(cells) + " |")
    out += ["", "Decided within the limit (robust or not robust), per method and factor:", "",
            "| factor | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for f in sorted({r["factor"] for r in rows}):
        cells = []
        for m in methods:
            sel = [r for r in rows if r["factor"] == f and r["method"] == m]
            done = [r for r in sel if r["status"] != "unknown"]
            med = float(np.median([r["seconds"] for r in done])) if done else float("nan")
            cells.append(f"{len(done)}/{len(sel)} (median {med:.1f} s)")
        out.append(f"| {f:g} | " + " | ".join(cells) + " |")
    if args.notes_file is not None:
        out += ["", "## Notes", "", args.notes_file.read_text().rstrip()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--models", nargs="+", default=["mnist2_pgd"])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.05, 1.1, 1.25])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--node-image", type=int, default=0)
    parser.add_argument("--node-factor", type=float, default=1.25)
    parser.add_argument("--node-domains", type=int, default=100)
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of the project whose part 1 runs too, alternating with this one")
    parser.add_argument("--repeat", type=int, default=1, help="runs of part 1 (each side, alternating)")
    parser.add_argument("--notes-file", type=Path, default=None, help="Markdown for the report's Notes section")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bab.md")
    args = parser.parse_args(argv)
    facts = run_facts(command_line("python -m benchmarks.bench_bab", argv))  # the load before the work
    manifest = json.loads((args.examples / "manifest.json").read_text())
    images = [{"id": e["id"], "image": read_image(args.examples / e["file"]), "target": int(e["target_label"])}
              for e in manifest["images"][: args.images]]
    models = [(m, load_onnx(args.examples / "models" / f"{m}.onnx")) for m in args.models]
    ref = load_onnx(args.examples / "models" / "mnist2_pgd.onnx")
    node_img = images[args.node_image] if args.node_image < len(images) else images[0]
    node_rows: list[dict] = []
    for _ in range(args.repeat):
        if args.baseline is not None:
            load = load_text(load_average())
            node_rows += [{**r, "load": load} for r in baseline_node_cost(args.baseline, args)]
        load = load_text(load_average())
        node_rows += [{**r, "load": load} for r in node_cost(ref, node_img["image"].reshape(ref.sample_shape),
                                                              node_img["target"], args.node_factor,
                                                              args.node_domains)]
    radii, rows = ([], []) if args.skip_compare else compare(models, images, args.factors, args.time_limit)
    facts.update(end_facts())
    text = markdown(node_rows, radii, rows, args, facts)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({**facts, "node": node_rows, "radii": radii, "rows": rows},
                                                        indent=1))


if __name__ == "__main__":
    main()
