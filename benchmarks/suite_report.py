"""The Markdown report of a suite run and the side-by-side heatmaps; every sentence with a number in it is
computed from the results, none is written by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


# --- sections ---------------------------------------------------------------------------------------------------
def answer_text(answers: list[dict], labels: dict[str, str]) -> str:
    """The answer to "which model yields the largest robust neighborhoods?" from the per-method rankings."""
    usable = [a for a in answers if a["ranking"]]
    if not usable:
        return "No method finished on every model, so the question stays open on this run.\n"
    first = usable[0]
    win = first["ranking"][0]
    means = ", ".join(f"{labels.get(m, m)} {first['means'][m]:.3f}" for m in first["ranking"])
    text = (f"**{labels.get(win, win)}** yields the largest robust neighborhoods with the {first['method']} search: "
            f"mean w·ε* over the {first['images']} image(s) every model finished is {means}; it has the largest "
            f"neighborhood on {first['wins'][win]} of {first['images']} image(s).")
    same = [a["method"] for a in usable[1:] if a["ranking"][0] == win]
    other = [a for a in usable[1:] if a["ranking"][0] != win]
    if same:
        text += f" The same model comes first with {', '.join(same)}."
    for a in other:
        text += (f" With {a['method']}, {labels.get(a['ranking'][0], a['ranking'][0])} comes first "
                 f"(mean {a['means'][a['ranking'][0]]:.3f}).")
    return text + "\n"


def reference_section(ref: dict) -> str:
    labels = {a["model"]: a["model_label"] for a in ref["aggregate"]}
    s = ref["settings"]
    delta = "automatic (an eighth of the uniform robust radius)" if s["delta"] is None else s["delta"]
    out = ["## Reference experiment\n",
           f"Models: {', '.join(labels.get(m, m) for m in s['models'])}; images: {', '.join(s['images'])}; "
           f"top-{s['k']}; δ = {delta}; {s['time_limit']:g} s per search, {s['query_time_limit']:g} s per "
           f"verifier call; every returned neighborhood attacked with PGD ({s['attack']['restarts']} restarts × "
           f"{s['attack']['steps']} steps).\n",
           "### Which model yields the largest robust neighborhoods?\n",
           answer_text(ref["answers"], labels),
           "\n### Per model and method\n"]
    rows = []
    for a in ref["aggregate"]:
        rows.append([a["model_label"], a["method"], f"{a['verified']}/{a['images']}", _f(a["size_mean"]),
                     _f(a["size_median"]), _f(a["seconds_median"], 1), _f(a["verifier_calls_mean"], 1),
                     _f(a["milp_calls_mean"], 1), f"{a['certified_layers']}/{a['layers']}",
                     _f(a["attack_max_margin"])])
    out.append(_table(["model", "method", "proven", "mean w·ε*", "median w·ε*", "median s", "verifier calls",
                       "MILP calls", "layers certified maximal", "best attack margin (< 0: unbroken)"], rows))
    out.append("\n### Queries by the tier that answered them (mean per image)\n")
    out.append("`cache`: a stored robust vector or counterexample; `projection`: a stored counterexample clipped into "
               "the box; `warm-attack`: PGD from the search's strongest known points; `attack`, `bounds`, `milp`: "
               "the cascade's tiers; `budget`: refused because the time was spent.\n")
    out.append(tier_table(ref["rows"], labels))
    vs = versus_uniform(ref["rows"])
    if vs:
        out.append("\n### Against the uniform baseline (same image)\n")
        out.append(_table(["method", "images", "w·ε* ≥ uniform's", "mean ratio to uniform"],
                          [[m, n, ge, _f(ratio, 2)] for m, (n, ge, ratio) in vs.items()]))
    out.append("\n### Per image (w·ε*, seconds, verifier / MILP calls, layers certified maximal)\n")
    rows = []
    for r in ref["rows"]:
        if r["status"] != "done":
            rows.append([labels.get(r["model"], r["model"]), r["method"], r["image"], r["target"], "error",
                         r.get("error", {}).get("message", "")[:60], "", "", ""])
            continue
        rows.append([labels.get(r["model"], r["model"]), r["method"], r["image"], r["target"], _f(r["size"]),
                     _f(r["seconds"], 1), f"{r['verifier_calls']} / {r['milp_calls']}",
                     f"{r['certified_layers']}/{r['layers']}", r["stop_reason"]])
    out.append(_table(["model", "method", "image", "target", "w·ε*", "s", "calls", "maximal", "stopped"], rows))
    out.append("\n### ε per layer (optimizer, first layers; layer 0 = the perturbed object)\n")
    rows = []
    for r in ref["rows"]:
        if r["status"] == "done" and r["method"].startswith("optimize"):
            eps = r["epsilons"]
            shown = ", ".join(f"{e:.3f}" for e in eps[:8]) + (", …" if len(eps) > 8 else "")
            rows.append([labels.get(r["model"], r["model"]), r["method"], r["image"], shown,
                         f"{max(eps):.3f}", len(eps)])
    if rows:
        out.append(_table(["model", "method", "image", "ε_0, ε_1, …", "max ε", "layers"], rows))
    out.append("\n### Who answered the searches' queries (all methods and images)\n")
    out.append("Shares of all queries: the caches (a stored robust vector or counterexample, or one clipped into the "
               "box), an attack (the search's own PGD, warm-started from its strongest points, or the cascade's), "
               "the CROWN bounds (their proofs, and the undecided answers of the phases that stop there), the MILP "
               "(decided or timed out), or none (refused: the search's time was spent).\n")
    rows = []
    for c in ref["cascade"]:  # per model: queries by answering tier over all its searches
        t, total = c["by_tier"], c["queries"]
        share = lambda *names: _f(sum(t.get(n, 0) for n in names) / total, 2) if total else "–"  # noqa: E731
        rows.append([c["model_label"], total, share("cache", "projection"), share("warm-attack", "attack"),
                     share("bounds"), share("milp"), share("budget")])
    out.append(_table(["model", "queries", "caches", "attacks", "bounds", "MILP", "no time left"], rows))
    return "\n".join(out)


TIERS = ("cache", "projection", "warm-attack", "attack", "bounds", "milp", "budget")


def tier_table(rows: list[dict], labels: dict[str, str]) -> str:
    """Mean queries per image by the tier that answered them, per model and method."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            groups.setdefault((r["model"], r["method"]), []).append(r)
    tiers = [t for t in TIERS if any(t in r["by_tier"] for rs in groups.values() for r in rs)]
    table = []
    for (model, method), rs in groups.items():
        table.append([labels.get(model, model), method]
                     + [_f(float(np.mean([r["by_tier"].get(t, 0) for r in rs])), 1) for t in tiers]
                     + [_f(float(np.mean([r["queries"] for r in rs])), 1)])
    return _table(["model", "method", *tiers, "all queries"], table)


def versus_uniform(rows: list[dict]) -> dict[str, tuple[int, int, float]]:
    """Per method other than uniform: images compared, how many reach at least the uniform baseline's size on the
    same model and image, and the mean size ratio."""
    uniform = {(r["model"], r["image"]): r["size"] for r in rows
               if r["method"] == "uniform" and r["status"] == "done" and r["verified"]}
    out: dict[str, tuple[int, int, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "uniform"):
        pairs = [(r["size"], uniform[(r["model"], r["image"])]) for r in rows
                 if r["method"] == method and r["status"] == "done" and r["verified"]
                 and (r["model"], r["image"]) in uniform]
        if pairs:
            out[method] = (len(pairs), sum(1 for a, b in pairs if a >= b * (1 - 1e-9)),
                           float(np.mean([a / b for a, b in pairs if b > 0])) if any(b > 0 for _, b in pairs)
                           else float("nan"))
    return out


def verifier_section(ver: dict, title: str, intro: str) -> str:
    out = [f"## {title}\n", intro]
    if ver["tightening"]:
        rows = [[r["query"], r["tightening"], r["status"], _f(r.get("tighten_seconds"), 2),
                 _f(r.get("build_seconds"), 3), _f(r.get("solve_seconds"), 2), r.get("unstable_relus", "–"),
                 r.get("binaries", "–")] for r in ver["tightening"]]
        out.append("### Per bound tightening (HiGHS, decide mode)\n")
        out.append(_table(["query", "tightening", "verdict", "tighten s", "build s", "solve s", "unstable ReLUs",
                           "binaries"], rows))
        by_t: dict[str, list[dict]] = {}
        for r in ver["tightening"]:
            by_t.setdefault(r["tightening"], []).append(r)
        rows = [[t, sum(1 for r in rs if r["status"] in ("robust", "not_robust")), len(rs),
                 _f(_median([r.get("tighten_seconds") for r in rs]), 2),
                 _f(_median([r.get("build_seconds") for r in rs]), 3),
                 _f(_median([r.get("solve_seconds") for r in rs]), 2),
                 _f(_median([r.get("unstable_relus") for r in rs]), 0)] for t, rs in by_t.items()]
        out.append("\nMedians:\n\n" + _table(["tightening", "decided", "queries", "tighten s", "build s", "solve s",
                                              "unstable ReLUs"], rows))
    if ver["solver"]:
        out.append("\n### Per solver (CROWN bounds, decide mode)\n")
        solvers = ver["solvers"]
        by_q: dict[str, dict[str, dict]] = {}
        for r in ver["solver"]:
            by_q.setdefault(r["query"], {})[r["solver"]] = r
        rows = []
        for q, rs in by_q.items():
            rows.append([q] + [f"{rs[s]['status']} {_f(rs[s].get('seconds'), 2)}" if s in rs else "–"
                               for s in solvers])
        out.append(_table(["query"] + [f"{s} (verdict, s)" for s in solvers], rows))
        rows = []
        for s in solvers:
            rs = [r for r in ver["solver"] if r["solver"] == s]
            rows.append([s, sum(1 for r in rs if r["status"] in ("robust", "not_robust")),
                         sum(1 for r in rs if r["status"] == "skipped"), len(rs),
                         _f(_median([r.get("seconds") for r in rs if r["status"] != "skipped"]), 3)])
        out.append("\n" + _table(["solver", "decided", "skipped (licence size)", "queries", "median s"], rows))
    conflicts = [a for a in ver["agreement"] if a["conflict"]]
    out.append(f"\nAgreement: {len(ver['agreement']) - len(conflicts)} of {len(ver['agreement'])} queries without "
               "conflicting verdicts (a conflict is one configuration proving robust where another refutes).\n")
    return "\n".join(out)


def topk_section(topk: dict) -> str:
    rows = []
    for r in topk["rows"]:
        one, pair = r["one_milp"], r["pairwise"]
        rows.append([r["query"], r["mode"], one["status"], pair["status"], _f(one["seconds"], 3),
                     _f(pair["seconds"], 3), f"{pair['solved']} (+{pair['pruned']} pruned)",
                     _f(r["ratio"], 1) if r["ratio"] is not None else "–",
                     _f(one.get("objective"), 4) if r["mode"] == "optimize" else "",
                     _f(pair.get("value"), 4) if r["mode"] == "optimize" else ""])
    decided = [r for r in topk["rows"] if r["one_milp"]["status"] != "unknown" and r["pairwise"]["status"] != "unknown"]
    same = sum(1 for r in decided if r["one_milp"]["status"] == r["pairwise"]["status"])
    ratios = [r["ratio"] for r in decided if r["ratio"] is not None]
    by_mode = {}
    for mode in sorted({r["mode"] for r in decided}):
        rs = [r["ratio"] for r in decided if r["mode"] == mode and r["ratio"] is not None]
        if rs:
            by_mode[mode] = (float(np.median(rs)), len(rs))
    summary = (f"On the {len(decided)} runs both encodings decided, the verdicts agree on {same}; the pairwise "
               f"scheme took a median {_f(_median(ratios), 1)}× the time of the one MILP"
               + ("" if not by_mode else " (" + "; ".join(f"{m}: {v[0]:.1f}× over {v[1]}" for m, v in by_mode.items())
                  + ")") + ".\n")
    return "\n".join([
        "## One top-k MILP against the pairwise scheme\n",
        "Same queries, same CROWN bounds, HiGHS; seconds exclude the shared bound tightening. The pairwise scheme "
        "solves one MILP per pair of labels that the margin bounds do not exclude; in optimize mode its value is the "
        "maximum over pairs, which must equal the one MILP's optimum.\n",
        summary,
        _table(["query", "mode", "one MILP", "pairwise", "one MILP s", "pairwise s", "pairwise MILPs", "ratio",
                "one MILP optimum", "pairwise optimum"], rows)])


def markdown(results: dict, link_prefix: str = "", title: str | None = None) -> str:
    """The report; image links are ``link_prefix`` + the path relative to the results folder."""
    m = results["machine"]
    parts = [f"# {title or 'Benchmark suite: ' + results['suite']}\n",
             f"Command: `{results['command']}`; started {results['started']}; {results['seconds']:.0f} s in all "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in results['step_seconds'].items())}).\n",
             f"Machine: {m['cpus']} CPUs ({m['processor']}), {m['platform']}, Python {m['python']}; load average "
             f"at start {m.get('load_average_at_start')}; versions: "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k != "python") + ".\n"]
    viol = results["violations"]
    parts.append("## Soundness\n")
    if viol:
        parts.append(f"**{len(viol)} soundness violation(s):**\n\n"
                     + "\n".join(f"- {v['kind']}: " + ", ".join(f"{k}={v[k]}" for k in v if k != "kind")
                                 for v in viol) + "\n")
    else:
        checks = []
        if "reference" in results:
            n = sum(1 for r in results["reference"]["rows"] if r["status"] == "done" and r["verified"])
            checks.append(f"{n} proven neighborhoods attacked, none broken")
        for key, what in (("verifier", "model queries"), ("backends", "tiny queries")):
            if key in results:
                checks.append(f"{len(results[key]['agreement'])} {what} without conflicting verdicts across "
                              f"{', '.join(results[key]['solvers'])}")
        if "topk" in results:
            checks.append(f"{len(results['topk']['rows'])} one-MILP/pairwise runs without conflict")
        if "ladder" in results:
            checks.append(f"{len(results['ladder']['rows'])} scale-ladder neighborhood(s) unbroken")
        parts.append("No violation: " + "; ".join(checks) + ".\n")
    if "ladder" in results:
        parts.append("## Scale ladder, smallest rung\n\n| image | budget s | exit | wall s | peak RSS MB | JSON kB | "
                     "side kB | layers ε>0 | attack scale |\n|---|---|---|---|---|---|---|---|---|\n"
                     + "".join(f"| {r['image']} | {r['budget']:g} | {r['exit_code']} | {r['wall_s']:.1f} | "
                               f"{r['peak_rss_mb']:.0f} | {r.get('json_kb')} | {r.get('side_kb')} | "
                               f"{r.get('layers_eps_pos')}/{r.get('layers')} | {r.get('attack_scale')} |\n"
                               for r in results["ladder"]["rows"])
                     + "\nThe whole ladder: `python -m benchmarks scale-ladder` (benchmarks/results/scale_ladder.md).\n")
    if "reference" in results:
        parts.append(reference_section(results["reference"]))
        if results.get("heatmaps"):
            parts.append("\n### Heatmaps (optimizer, fixed cutting weights)\n")
            for h in results["heatmaps"]:
                parts.append(f"![{h['image']}]({link_prefix}{h['path']})\n")
    if "verifier" not in results:
        parts.append("## Verifier micro-benchmarks\n")
        parts.append("Bound tightening (IBP, CROWN, LP) and solvers (HiGHS, CBC, SCIP, Gurobi) on the same MILPs, "
                     "decide against optimise mode, and the cascade's tiers are measured by "
                     "`python -m benchmarks.bench_verifier`; its last results: "
                     f"[verifier.md]({link_prefix}verifier.md).\n")
    if "verifier" in results:
        parts.append(verifier_section(
            results["verifier"], "Verifier micro-benchmarks",
            "Object-only neighborhoods on the shipped models at multiples of the largest radius CROWN proves "
            "(the region where the MILP decides what bounds cannot); the exact MILP verifier alone, no cascade.\n"))
    if "topk" in results:
        parts.append(topk_section(results["topk"]))
    if "backends" in results:
        parts.append(verifier_section(
            results["backends"], "Backend agreement",
            "Tiny random ReLU networks (4x4 inputs, 10 labels) that every solver decides quickly: the verdicts "
            "must agree.\n"))
    if "bounds" in results:
        parts.append("## Bounds (benchmarks/bench_bounds.py)\n")
        parts.append(results["bounds"]["markdown"].split("\n", 1)[1] if results["bounds"]["markdown"].startswith("#")
                     else results["bounds"]["markdown"])
    return "\n".join(parts)


# --- heatmaps ---------------------------------------------------------------------------------------------------------
def heatmaps(ref: dict, examples: Path, img_dir: Path, suite: str, n_images: int,
             method: str = "optimize-fixed") -> list[dict]:
    """One PNG per image: the image with the perturbed object, and each model's epsilon map on a shared scale."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    from mlrobust.batch import load_jobs
    from mlrobust.neighborhood.layers import layer_index
    from mlrobust.viz.heatmap import outline_segments

    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = {j.id: j for j in load_jobs(examples, limit=n_images)}
    rows = [r for r in ref["rows"] if r["method"] == method and r["status"] == "done" and r["image"] in jobs]
    labels = {a["model"]: a["model_label"] for a in ref["aggregate"]}
    models = [m for m in ref["settings"]["models"] if any(r["model"] == m for r in rows)]
    out = []
    for image_id, job in jobs.items():
        mine = {r["model"]: r for r in rows if r["image"] == image_id}
        if not mine:
            continue
        grey = job.pixels().reshape(job.mask.shape) if job.pixels().size == job.mask.size else job.pixels().mean(0)
        layers = layer_index(job.mask)
        maps = {m: np.asarray(mine[m]["epsilons"])[layers] for m in models if m in mine}
        top = max(max(float(e.max()) for e in maps.values()), 1e-6)
        fig = Figure(figsize=(3.1 * (1 + len(models)), 3.4), dpi=100)
        axes = fig.subplots(1, 1 + len(models))
        segs = outline_segments(job.mask)
        axes[0].imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[0].set_title(f"{image_id}: target {job.target}")
        shown = None
        for ax, m in zip(axes[1:], models):
            if m not in maps:
                ax.set_title(f"{labels.get(m, m)}: –")
                continue
            shown = ax.imshow(maps[m], cmap="inferno", vmin=0, vmax=top, interpolation="nearest")
            ink = np.zeros((*grey.shape, 4))
            ink[..., :3] = 1.0
            ink[..., 3] = 0.55 * np.clip(grey, 0, 1)
            ax.imshow(ink, interpolation="nearest")
            ax.set_title(f"{labels.get(m, m)}: w·ε* = {mine[m]['size']:.2f}")
        for ax in axes:
            ax.add_collection(LineCollection(segs, colors="#00e5ff", linewidths=1.2))
            ax.set_xlim(-0.5, job.mask.shape[1] - 0.5)
            ax.set_ylim(job.mask.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
        if shown is not None:
            fig.colorbar(shown, ax=list(axes[1:]), fraction=0.025, pad=0.02).set_label("ε per pixel")
        path = img_dir / f"{suite}_{image_id.replace('/', '_')}.png"
        fig.savefig(path, bbox_inches="tight")
        out.append({"image": image_id, "path": path.relative_to(img_dir.parent).as_posix(), "models": list(maps)})
    return out
