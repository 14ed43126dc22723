"""The largest uniform (whole-image L∞) radius each tool proves, mlrobust against α,β-CROWN:
``python -m benchmarks anchor-radius --abcrown DIR``.

Not part of CI (it needs α,β-CROWN set up as :mod:`benchmarks.bench_anchor` describes). For every development model
(``benchmarks/devset/models``) and its first ``--images`` example images whose clean top-2 holds the target, both
tools search the same fixed grid of radii ``--base · --ratio^i`` (i = 0 .. ``--steps``-1): each probe is one VNN-LIB
instance, "the target leaves the top-2 somewhere in the whole-image L∞ ball of that radius (clipped to [0, 1])",
decided in a fresh process with one CPU thread under a ``--timeout`` cap (60 s) on the tool's own clock.

The search per (model, image, tool) gallops from ``--start`` (up while proven, down while not) and then bisects
between the largest proven and the smallest unproven grid point, so every tool gets the same grid and the same
number of chances; it assumes a larger ball is never easier, which holds for the truth (a counterexample in a ball
lies in every larger one) but not always for a tool's time-out. Reported per model: the largest radius each tool
proved and the smallest it refuted (sat, counterexample re-checked on onnxruntime). At most ``--jobs`` (≤ 2)
processes run at once: the searches are the jobs, each running its probes one after another.

Soundness: a counterexample that fails on onnxruntime, or a radius proven by one tool at or above a radius the other
refuted with a confirmed counterexample, is a violation (exit status 1). Raw lines go to ``--work``/raw.jsonl and are
reused by a re-run (``--fresh`` ignores them).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.bench_anchor import (  # noqa: E402
    ABC,
    AnchorInstance,
    add_anchor_arguments,
    anchor_header,
    anchor_main,
    read_raw,
    record,
    run_tool,
)
from benchmarks.bench_vnncomp import OrtChecker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "anchor_radius.md"
WORK = ROOT / "build" / "benchmarks" / "anchor_radius"
SOLVED = ("unsat", "sat")


def radius_grid(base: float, ratio: float, steps: int) -> list[float]:
    """The probe radii ``base · ratio^i``, rounded to 6 significant digits so file names and reports agree."""
    return [float(f"{base * ratio ** i:.6g}") for i in range(steps)]


def probe_order(start: int, steps: int, proven: Callable[[int], bool]) -> tuple[int, int]:
    """Gallop from ``start`` then bisect on grid indices; ``proven(i)`` runs (and records) one probe.

    Returns (largest proven index or -1, smallest unproven index or ``steps``), the bracket the probes establish
    under the assumption that provability only falls with the radius."""
    lo, hi = -1, steps
    i = min(max(start, 0), steps - 1)
    stride = 1
    if proven(i):
        lo = i
        while lo < hi - 1:  # up while proven, doubling the stride
            j = min(lo + stride, hi - 1)
            if not proven(j):
                hi = j
                break
            lo, stride = j, stride * 2
    else:
        hi = i
        while hi > lo + 1:  # down while unproven, doubling the stride
            j = max(hi - stride, lo + 1)
            if proven(j):
                lo = j
                break
            hi, stride = j, stride * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if proven(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


@dataclass(frozen=True)
class Search:
    """One tool's radius search on one (model, image)."""

    model: Path
    image: str
    tool: str

    @property
    def key(self) -> str:
        return f"{self.model.stem}/{self.image}/{self.tool}"


def devset_pairs(devset: Path, images_per_model: int, models: list[str] | None) -> list[tuple[Path, str, int]]:
    """(model, image, target) for the first images per development model whose clean top-2 holds the target
    (``info.json``'s properties and skipped pairs)."""
    info = json.loads((devset / "info.json").read_text())
    targets: dict[str, int] = {}
    for p in info["properties"]:
        targets.setdefault(p["image"], int(p["target"]))
    skipped = {(s["model"], s["image"]) for s in info["skipped"]}
    out = []
    for model in sorted((devset / "models").glob("*.onnx")):
        if models and model.stem not in models:
            continue
        kept = [im for im in targets if (model.stem, im) not in skipped][:images_per_model]
        out += [(model.resolve(), im, targets[im]) for im in kept]
    return out


def linf_property(work: Path, examples: Path, image: str, radius: float) -> Path:
    """The VNN-LIB file of ``image``'s whole-image L∞ ball of ``radius`` (written once into ``work``)."""
    from benchmarks.devset_instances import linf_box, manifest_entry, write_property

    path = work / "vnnlib" / f"linf_{image}_r{radius:g}.vnnlib"
    if not path.is_file():
        lower, upper, target = linf_box(examples, manifest_entry(examples, image), radius)
        write_property(path, lower, upper, target,
                       f"{image} (target {target}), whole image in an L-infinity ball of radius {radius:g}: "
                       "the target stays among the top-2")
    return path


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    from benchmarks.suite import command_line, end_facts, run_facts

    facts = run_facts(command_line("python -m benchmarks anchor-radius", args.argv))  # the load before the work
    grid = radius_grid(args.base, args.ratio, args.steps)
    pairs = devset_pairs(args.devset, args.images, [m for m in args.models.split(",") if m] or None)
    if not pairs:
        raise SystemExit(f"error: no development model in {args.devset / 'models'} matches --models")
    tools = [*args.methods.split(","), ABC]
    args.work.mkdir(parents=True, exist_ok=True)
    cache = read_raw(args, lambda r: (r["model"], r["image"], r["tool"], r["radius"], r["timeout"]))
    checker = OrtChecker()
    lock = threading.Lock()
    start = time.perf_counter()
    # α,β-CROWN's searches first: they are the long ones, so the two workers stay busy to the end
    searches = [Search(m, im, t) for t in [ABC, *tools[:-1]] for m, im, _ in pairs]
    targets = {(m, im): tg for m, im, tg in pairs}

    def probe(search: Search, radius: float) -> dict:
        key = (search.model.stem, search.image, search.tool, radius, args.timeout)
        if key in cache:
            return cache[key]
        with lock:
            prop = linf_property(args.work, args.examples, search.image, radius)
        inst = AnchorInstance("radius", search.model, prop, args.timeout)
        r = run_tool(args, inst, search.tool)
        r.update(model=search.model.stem, image=search.image, tool=search.tool, radius=radius, timeout=args.timeout,
                 target=targets[(search.model, search.image)])
        record(args, checker, inst, r, lock)
        log(f"{search.key} r={radius:g}: {r['status']} {float(r.get('seconds') or 0.0):.1f} s"
            + (f" ({r['tier']})" if r.get("tier") else "") + (f" ort {r['ort']['verdict']}" if "ort" in r else ""))
        return r

    def one_search(search: Search) -> dict:
        probes: list[dict] = []

        def proven(i: int) -> bool:
            if args.budget is not None and time.perf_counter() - start > args.budget:
                raise TimeoutError
            r = probe(search, grid[i])
            probes.append(r)
            return r["status"] == "unsat"

        try:
            lo, hi = probe_order(args.start, len(grid), proven)
            complete = True
        except TimeoutError:
            lo, hi, complete = -1, len(grid), False
        return {"model": search.model.stem, "image": search.image, "tool": search.tool, "complete": complete,
                "bracket": [lo, hi], "probes": [{k: v for k, v in r.items() if k != "x"} for r in probes]}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(one_search, searches))
    per_pair = summarise(done, grid)
    violations = soundness(done)
    return {**facts, "grid": grid, "timeout": args.timeout, "jobs": args.jobs, "tools": tools,
            "searches": done, "summary": per_pair, "violations": violations, "seconds": time.perf_counter() - start,
            **end_facts(), "notes": args.notes or ""}


def _largest(probes: list[dict], status: str, pick: Callable) -> dict | None:
    hits = [p for p in probes if p["status"] == status and (status != "sat" or
                                                            p.get("ort", {}).get("verdict") == "confirmed")]
    return pick(hits, key=lambda p: p["radius"]) if hits else None


def summarise(searches: list[dict], grid: list[float]) -> list[dict]:
    """Per (model, image): each tool's largest proven radius (with its seconds) and smallest refuted radius, and
    whether mlrobust's largest proven radius is at least α,β-CROWN's (per mlrobust method)."""
    by_pair: dict[tuple[str, str], dict[str, dict]] = {}
    for s in searches:
        by_pair.setdefault((s["model"], s["image"]), {})[s["tool"]] = s
    out = []
    for (model, image), tools in by_pair.items():
        row: dict[str, Any] = {"model": model, "image": image, "tools": {}}
        for tool, s in tools.items():
            best = _largest(s["probes"], "unsat", max)
            refuted = _largest(s["probes"], "sat", min)
            row["tools"][tool] = {
                "proven": best["radius"] if best else None, "proven_seconds": best["seconds"] if best else None,
                "proven_tier": best.get("tier") if best else None,
                "refuted": refuted["radius"] if refuted else None,
                "probes": len(s["probes"]), "complete": s["complete"],
                "probe_seconds": sum(float(p.get("wall_seconds") or p.get("seconds") or 0.0) for p in s["probes"])}
        abc = row["tools"].get(ABC, {}).get("proven")
        row["ours_at_least_abc"] = {t: (v["proven"] or 0.0) >= (abc or 0.0)
                                    for t, v in row["tools"].items() if t != ABC}
        out.append(row)
    return out


def soundness(searches: list[dict]) -> list[str]:
    """A sat counterexample failing on onnxruntime; a radius proven at or above a radius refuted (confirmed) by
    either tool on the same (model, image)."""
    out = []
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for s in searches:
        by_pair.setdefault((s["model"], s["image"]), []).extend({**p, "tool": s["tool"]} for p in s["probes"])
    for (model, image), probes in by_pair.items():
        for p in probes:
            if p["status"] == "sat" and p.get("ort", {}).get("verdict") == "wrong":
                out.append(f"{model}/{image} r={p['radius']:g}: {p['tool']} answered sat with a counterexample "
                           "that fails on onnxruntime")
        refuted = [p for p in probes if p["status"] == "sat" and p.get("ort", {}).get("verdict") == "confirmed"]
        if not refuted:
            continue
        smallest = min(refuted, key=lambda p: p["radius"])
        for p in probes:
            if p["status"] == "unsat" and p["radius"] >= smallest["radius"]:
                out.append(f"{model}/{image}: {p['tool']} proved r={p['radius']:g} but {smallest['tool']} refuted "
                           f"r={smallest['radius']:g} with a confirmed counterexample")
    return out


def _r(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


def markdown(results: dict) -> str:
    tools = results["tools"]
    ours = [t for t in tools if t != ABC]
    grid = results["grid"]
    out = ["# Largest whole-image L∞ radius proven: mlrobust against α,β-CROWN", "",
           *anchor_header(results),
           (f"Grid: {len(grid)} radii {_r(grid[0])} · {grid[1] / grid[0]:.3g}^i up to {_r(grid[-1])} (pixels in "
            f"[0, 1]); each probe one VNN-LIB instance (\"the target leaves the top-2 in the L∞ ball\", 36 "
            f"OR-clauses) capped at {results['timeout']:g} s on the tool's own clock (mlrobust: after loading the "
            "model and parsing the property; α,β-CROWN: its own `Time:`, after its start-up). mlrobust method(s): "
            f"{', '.join(f'`{t}`' for t in ours)}; α,β-CROWN as in `python -m benchmarks anchor` (conv64_cpu.yaml). "
            "Gallop from the start radius, then bisection: the same grid for every tool."), "",
           "## Largest proven radius per model", "",
           "Cells: largest radius proven (seconds, deciding tier) / smallest radius refuted; probes run.", "",
           "| model | image | α,β-CROWN | " + " | ".join(f"mlrobust `{t}`" for t in ours)
           + " | mlrobust ≥ α,β-CROWN |", "|---|---|---|" + "---|" * len(ours) + "---|"]
    for row in results["summary"]:
        cells = []
        for tool in [ABC, *ours]:
            t = row["tools"].get(tool)
            if t is None:
                cells.append("–")
                continue
            secs = "" if t["proven_seconds"] is None else f" ({t['proven_seconds']:.1f} s" + (
                f", {t['proven_tier']})" if t.get("proven_tier") else ")")
            cells.append(f"{_r(t['proven'])}{secs} / {_r(t['refuted'])}; {t['probes']}"
                         + ("" if t["complete"] else " (budget)"))
        wins = ", ".join("yes" if v else "**no**" for v in row["ours_at_least_abc"].values())
        out.append(f"| {row['model']} | {row['image']} | " + " | ".join(cells) + f" | {wins} |")
    n_win = {t: sum(r["ours_at_least_abc"].get(t, False) for r in results["summary"]) for t in ours}
    out += ["", "mlrobust's largest proven radius ≥ α,β-CROWN's: "
            + "; ".join(f"`{t}` on {n} of {len(results['summary'])}" for t, n in n_win.items()) + ".", "",
            "## Soundness", ""]
    out.append(f"Violations: {len(results['violations'])}.")
    out += [f"- **VIOLATION**: {v}" for v in results["violations"]]
    out += ["", "## Every probe", "", "| model | image | tool | radius | status | seconds | tier |",
            "|---|---|---|---|---|---|---|"]
    for s in results["searches"]:
        for p in sorted(s["probes"], key=lambda p: p["radius"]):
            out.append(f"| {s['model']} | {s['image']} | {s['tool']} | {_r(p['radius'])} | {p['status']}"
                       + (" **wrong cex**" if p.get("ort", {}).get("verdict") == "wrong" else "")
                       + f" | {float(p.get('seconds') or 0.0):.1f} | {p.get('tier') or ''} |")
    if results.get("notes"):
        out += ["", "## Notes", "", results["notes"]]
    return "\n".join(out) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks anchor-radius", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="cascade", help="mlrobust method(s), comma-separated (benchmarks vnncomp's "
                                                       "names or vnnlib; default: verify's cascade)")
    p.add_argument("--models", default="", help="development models by stem (default: all)")
    p.add_argument("--images", type=int, default=1, help="example images per model")
    p.add_argument("--base", type=float, default=0.002, help="the grid's smallest radius")
    p.add_argument("--ratio", type=float, default=1.25, help="the grid's ratio")
    p.add_argument("--steps", type=int, default=16, help="radii in the grid")
    p.add_argument("--start", type=int, default=4, help="grid index of the first probe")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per probe (each tool's own clock)")
    add_anchor_arguments(p, OUT, WORK)
    return p


def main(argv: list[str] | None = None) -> int:
    return anchor_main(parser(), run, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
