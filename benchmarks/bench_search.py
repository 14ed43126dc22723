"""Benchmark of the maximal-neighborhood search on the shipped models and images.

For every model x image x configuration (the optimizer with fixed and with sensitivity cutting weights, the uniform
baseline, the per-layer baseline) it runs ``mlrobust.maximize`` with the default cascade on HiGHS and records
w . eps*, time, queries by deciding tier, verifier and MILP calls, and how many layers the maximality check
certified. Results go to a JSON-lines file (one line per run; an interrupted benchmark resumes where it stopped)
and a Markdown report.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_search.py --images 5 --time-limit 120

Single-threaded BLAS and torch: the figures are per core, and other work on the machine does not skew them as much.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "optimize/fixed": dict(method="optimize", cutting="fixed"),
    "optimize/sensitivity": dict(method="optimize", cutting="sensitivity"),
    "uniform": dict(method="uniform"),
    "layer-search": dict(method="layer-search"),
}


def run_one(model_path: Path, image: dict, examples: Path, config: str, args: argparse.Namespace) -> dict:
    import mlrobust

    start = time.perf_counter()
    res = mlrobust.maximize(model_path, examples / image["file"], int(image["target_label"]),
                            object_mask=examples / image["mask"], k=args.k, solver=args.solver,
                            time_limit=args.time_limit, query_time_limit=args.query_time_limit, delta=args.delta,
                            **CONFIGS[config])
    wall = time.perf_counter() - start
    st = res.stats
    return {"model": model_path.stem, "image": image["id"], "config": config, "size": res.size,
            "layers": res.num_layers, "verified": res.verified, "proof_tier": res.proof_tier,
            "seconds": wall, "search_seconds": res.timings["search"],
            "maximality_seconds": res.timings["maximality"], "queries": st.total, "by_tier": dict(st.calls),
            "verifier_calls": st.verifier_calls, "milp_calls": st.milp_calls,
            "seconds_by_tier": dict(st.seconds), "certified": res.certified_layers,
            "maximality": res.maximality_counts(), "stop_reason": res.stop_reason,
            "epsilons": [float(e) for e in res.epsilons]}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(rows: list[dict], args: argparse.Namespace, models: list[str], images: list[str]) -> str:
    tiers = sorted({t for r in rows for t in r["by_tier"]})
    lines = ["# Search benchmark", "",
             f"Measured with `benchmarks/bench_search.py` on {platform.machine()} "
             f"({os.cpu_count()} cores visible, BLAS and torch single-threaded), solver {args.solver}, "
             f"time limit {args.time_limit:g} s per search, {args.query_time_limit:g} s per verifier call, "
             f"delta = {args.delta:g}, k = {args.k}, uniform layer weights.",
             f"Models: {', '.join(models)}; images: {', '.join(images)} (examples/manifest.json).", "",
             "Columns: w·ε* (mean and median over the images), time per image (median, and mean), queries "
             "(mean per image) by the tier that decided them (`cache`: a stored robust vector or counterexample; "
             "`projection`: a stored counterexample clipped into the box; `warm-attack`: PGD from the search's "
             "strongest known points; `attack`, `bounds`, `milp`: the cascade's tiers), verifier and MILP calls "
             "(mean), layers certified maximal (refuted or saturated at ε* + δ, mean over images / layers), "
             "and how many results beat the uniform baseline on the same image.", ""]
    by_key = {(r["model"], r["image"], r["config"]): r for r in rows}
    for model in models:
        lines += [f"## {model}", "",
                  "| configuration | w·ε* mean | w·ε* median | time median (s) | time mean (s) | "
                  + " | ".join(f"{t}" for t in tiers) + " | verifier calls | MILP calls | certified layers | "
                  "≥ uniform |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(tiers) + "---:|---:|---:|---:|"]
        for config in CONFIGS:
            rs = [by_key[(model, im, config)] for im in images if (model, im, config) in by_key]
            if not rs:
                continue
            n = len(rs)
            sizes = [r["size"] for r in rs]
            secs = [r["seconds"] for r in rs]
            tier_cells = [f"{sum(r['by_tier'].get(t, 0) for r in rs) / n:.1f}" for t in tiers]
            cert = f"{sum(r['certified'] for r in rs) / n:.1f} / {sum(r['layers'] for r in rs) / n:.1f}"
            better = [r for r in rs if (model, r["image"], "uniform") in by_key]
            beats = sum(1 for r in better if r["size"] >= by_key[(model, r["image"], "uniform")]["size"] - 1e-9)
            lines.append(f"| {config} | {statistics.mean(sizes):.4f} | {_median(sizes):.4f} | {_median(secs):.1f} | "
                         f"{statistics.mean(secs):.1f} | " + " | ".join(tier_cells)
                         + f" | {sum(r['verifier_calls'] for r in rs) / n:.1f} | "
                         f"{sum(r['milp_calls'] for r in rs) / n:.1f} | {cert} | {beats}/{len(better)} |")
        lines += ["", "Per image (w·ε*, seconds, certified layers):", "",
                  "| image | " + " | ".join(CONFIGS) + " |", "|---|" + "---|" * len(CONFIGS)]
        for im in images:
            cells = []
            for config in CONFIGS:
                r = by_key.get((model, im, config))
                cells.append("" if r is None else f"{r['size']:.4f} ({r['seconds']:.0f} s, {r['certified']}"
                                                  f"/{r['layers']})")
            lines.append(f"| {im} | " + " | ".join(cells) + " |")
        lines.append("")
    all_secs = {c: [r["seconds"] for r in rows if r["config"] == c] for c in CONFIGS}
    lines += ["## Median time per image", "", "| configuration | median (s) | runs |", "|---|---:|---:|"]
    lines += [f"| {c} | {_median(s):.1f} | {len(s)} |" for c, s in all_secs.items() if s]
    unverified = [r for r in rows if not r["verified"]]
    lines += ["", f"Every reported ε* was proven robust: {'yes' if not unverified else 'no'} "
                  f"({len(rows) - len(unverified)}/{len(rows)} runs)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--models", nargs="*", help="model names (default: all in the manifest)")
    parser.add_argument("--images", type=int, default=5, help="how many shipped images (the first N)")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--query-time-limit", type=float, default=30.0)
    parser.add_argument("--delta", type=float, default=0.002)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--solver", default="highs")
    parser.add_argument("--raw", type=Path, default=ROOT / "benchmarks" / "results" / "search.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search.md")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    manifest = json.loads((args.examples / "manifest.json").read_text())
    models = args.models or list(manifest["models"])
    images = manifest["images"][: args.images]
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.raw.read_text().splitlines() if line.strip()] \
        if args.raw.exists() else []
    settings = {"time_limit": args.time_limit, "query_time_limit": args.query_time_limit, "delta": args.delta,
                "k": args.k, "solver": args.solver}
    rows = [r for r in rows if r.get("settings") == settings]
    done = {(r["model"], r["image"], r["config"]) for r in rows}
    for model in models:
        model_path = args.examples / "models" / f"{model}.onnx"
        for image in images:
            for config in args.configs:
                if (model, image["id"], config) in done:
                    continue
                row = run_one(model_path, image, args.examples, config, args)
                row["settings"] = settings
                rows.append(row)
                with args.raw.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{model} {image['id']} {config:22s} w.eps {row['size']:.4f}  {row['seconds']:6.1f} s  "
                      f"queries {row['queries']:4d}  milp {row['milp_calls']:3d}  certified "
                      f"{row['certified']}/{row['layers']}", flush=True)
    text = report(rows, args, models, [im["id"] for im in images])
    args.out.write_text(text)
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
