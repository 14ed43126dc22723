"""``python -m benchmarks bab-boxes``: the branch and bound on fixed whole-image boxes, with and without a knob.

The boxes are those of ``python -m benchmarks scale`` (the search's stored ε vectors of the shipped models, from
``benchmarks/results/scale_neighborhoods.json``) at fixed scales, each decided once per method and *variant* under
the same time limit: a variant sets fields of the branch and bound's :class:`~mlrobust.verify.bab.BabOptions`
(``refresh_stale=true``), so a change behind a knob is measured before and after in one run, box by box. Per query:
the verdict, the seconds, the deciding tier and the branch and bound's own figures (root and final worst bound,
domains bounded, stale domains refreshed, deepest split). Every proof at a scale where another query of the same
box found a confirmed counterexample is reported as a soundness violation (exit status 1).

    python -m benchmarks bab-boxes --models mnist2_l0 --images 5 --scales 1.0 1.05 --methods bab \\
        --variants default,refresh_stale=true --limit 30
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.bench_scale import EXAMPLES, NEIGHBORHOODS, K, box_factory, manifest_images, verdict_name  # noqa: E402
from benchmarks.suite import add_notes_arguments, read_notes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "bab_boxes.md"
STAT_KEYS = ("root_bound", "final_bound", "domains", "refreshed", "window_splits", "max_depth", "reason", "domains_per_second",
             "store_bytes_per_domain", "bound_chunks", "rounds")


def parse_variant(text: str) -> dict[str, Any]:
    """``"default"`` -> {}; ``"a=1,b=false"`` -> BabOptions overrides (ints, floats, true/false/none as such)."""
    if text.strip() in ("", "default"):
        return {}
    out: dict[str, Any] = {}
    for part in text.split("+"):
        key, _, raw = part.partition("=")
        low = raw.strip().lower()
        value: Any = {"true": True, "false": False, "none": None}.get(low, raw.strip())
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".e") else int(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def bab_tiers(verifier: Any) -> list[Any]:
    """The branch-and-bound verifiers inside a method's verifier (itself, a Cascade's ``bab``, a Chain's tiers)."""
    from mlrobust.verify.bab import BabVerifier

    if isinstance(verifier, BabVerifier):
        return [verifier]
    found = []
    bab = getattr(verifier, "bab", None)
    if isinstance(bab, BabVerifier):
        found.append(bab)
    for _, tier in getattr(verifier, "tiers", []):
        found.extend(bab_tiers(tier))
    return found


def with_variant(verifier: Any, overrides: dict[str, Any]) -> Any:
    """``verifier`` with ``overrides`` set on the options of every branch and bound inside it."""
    for bab in bab_tiers(verifier):
        bab.options = replace(bab.options, **overrides)
    return verifier


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    import torch

    from benchmarks.methods import build
    from benchmarks.suite import command_line, end_facts, run_facts

    torch.set_num_threads(1)
    facts = run_facts(command_line("python -m benchmarks bab-boxes", args.argv))  # the load before the work
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    cache = json.loads(args.neighborhoods.read_text())
    start = time.perf_counter()
    rows = []
    for model in [m.strip() for m in args.models.split(",")]:
        for entry in manifest_images(args.examples, args.images):
            eps = np.asarray(cache[f"{model}/{entry['id']}"]["epsilons"], dtype=np.float64)
            network, target, box = box_factory(args.examples, model, entry, eps)
            for scale in args.scales:
                for method in methods:
                    for variant in variants:
                        verifier = with_variant(build(method), parse_variant(variant))
                        t0 = time.perf_counter()
                        v = verifier.verify(network, box(scale), target, K, "decide", time_limit=args.limit)
                        secs = time.perf_counter() - t0
                        bab = v.stats.get("bab", {})
                        row = {"model": model, "image": entry["id"], "scale": scale, "method": method,
                               "variant": variant, "verdict": verdict_name(v), "seconds": secs, "tier": v.tier,
                               **{k: bab.get(k) for k in STAT_KEYS}}
                        rows.append(row)
                        log(f"{model}/{entry['id']} x{scale:g} {method} [{variant}]: {row['verdict']} "
                            f"({secs:.1f} s, {row['tier']}, bound {row['root_bound']} -> {row['final_bound']}, "
                            f"{row['domains']} domains, {row['refreshed']} refreshed)")
    violations = []
    for r in rows:
        refuted = [q for q in rows if q["model"] == r["model"] and q["image"] == r["image"]
                   and q["verdict"] == "not robust" and q["scale"] <= r["scale"]]
        if r["verdict"] == "robust" and refuted:
            violations.append(f"{r['model']}/{r['image']}: {r['method']} [{r['variant']}] proves x{r['scale']:g} "
                              f"where a counterexample exists at x{min(q['scale'] for q in refuted):g}")
    return {**facts, "methods": methods, "variants": variants, "limit": args.limit, "rows": rows, "violations": violations,
            "seconds": time.perf_counter() - start, **end_facts(), "notes": args.notes}


def _num(v: Any) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def markdown(res: dict) -> str:
    from benchmarks.suite import report_header

    lines = ["# Branch and bound on fixed whole-image boxes", "", *report_header(res),
             f"Python {res['machine']['python']}; one BLAS/torch thread; run time {res['seconds'] / 60:.1f} min. "
             f"Time limit {res['limit']:g} s per query.", ""]
    lines += ["## Decided per method and variant", "", "| method | variant | robust | unknown | not robust | "
              "seconds, median of the robust |", "|---|---|---|---|---|---|"]
    for method in res["methods"]:
        for variant in res["variants"]:
            rs = [r for r in res["rows"] if r["method"] == method and r["variant"] == variant]
            robust = [r["seconds"] for r in rs if r["verdict"] == "robust"]
            lines.append(f"| {method} | {variant} | {len(robust)}/{len(rs)} | "
                         f"{sum(r['verdict'] == 'unknown' for r in rs)} | "
                         f"{sum(r['verdict'] == 'not robust' for r in rs)} | "
                         f"{_num(float(np.median(robust))) if robust else '–'} |")
    lines += ["", "## Per box", "", "Cells: verdict, seconds (deciding tier); the branch and bound's worst bound at "
              "its root → at its end, domains bounded, stale domains refreshed, MaxPool window splits made, "
              "domains per second, the store's bytes per open domain (kB) and α/β calls per round (chunks "
              "under the memory budget).", "",
              "| model | image | scale | method | variant | verdict | seconds | tier | root → final bound | domains "
              "| refreshed | window splits | domains/s | kB/domain | chunks/round |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        per_round = (r["bound_chunks"] / r["rounds"] if r.get("bound_chunks") is not None and r.get("rounds")
                     else None)
        kb = None if r.get("store_bytes_per_domain") is None else r["store_bytes_per_domain"] / 1000.0
        lines.append(f"| {r['model']} | {r['image']} | {r['scale']:g} | {r['method']} | {r['variant']} | "
                     f"{r['verdict']} | {r['seconds']:.1f} | {r['tier']} | {_num(r['root_bound'])} → "
                     f"{_num(r['final_bound'])} | {_num(r['domains'])} | {_num(r['refreshed'])} | "
                     f"{_num(r.get('window_splits'))} | {_num(r.get('domains_per_second'))} | {_num(kb)} | "
                     f"{_num(per_round)} |")
    lines += ["", "## Soundness", ""]
    lines += [f"- {v}" for v in res["violations"]] or ["No violation: no query proves a box at or above a scale where "
                                                     "another query of the same image found a confirmed "
                                                     "counterexample."]
    if res.get("notes"):
        lines += ["", "## Notes", "", res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks bab-boxes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnist2_pgd,mnist2_nodefense,mnist2_l0")
    p.add_argument("--images", type=int, default=5, help="first N images of the manifest")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.05])
    p.add_argument("--methods", default="bab", help="comma-separated benchmark methods (benchmarks/methods.py)")
    p.add_argument("--variants", default="default",
                   help="comma-separated BabOptions overrides, one variant each: 'default' or 'key=value+key=value'")
    p.add_argument("--limit", type=float, default=30.0, help="seconds per query")
    p.add_argument("--examples", type=Path, default=EXAMPLES)
    p.add_argument("--neighborhoods", type=Path, default=NEIGHBORHOODS, help="stored search results (JSON)")
    p.add_argument("--out", type=Path, default=OUT)
    add_notes_arguments(p)
    p.add_argument("--quiet", action="store_true")
    args = read_notes(p.parse_args(argv), argv)
    for v in args.variants.split(","):
        parse_variant(v)  # a malformed variant fails here, before any query runs
    from benchmarks.suite import report_violations, run_and_write

    res = run_and_write(args, run, markdown)
    return report_violations(res["violations"])
