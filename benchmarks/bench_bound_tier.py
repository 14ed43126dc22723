"""The bound tier with frozen vs jointly optimised intermediate bounds: k-th margin bound and seconds per query.

For each model the bound tier (``tighten(..., "alpha")``: CROWN, then α-CROWN on the margins CROWN leaves open and,
for k = 2, on pairs of them; 10 s budget, no warm start between queries) runs twice per box:

* ``frozen``: ``AlphaOptions(joint_intermediate="off")``, the pre-activation bounds stay CROWN's;
* ``joint``: the tier's default (``joint_intermediate="auto"``), the conv2 pre-activation bounds re-derived at every
  step of the same optimisation (:mod:`mlrobust.bounds.alpha_joint`).

Boxes: (a) the layered search vectors stored in ``benchmarks/results/scale_neighborhoods.json`` (the neighborhoods
``benchmarks/results/scale5_*.json`` scale) at 1.0/1.05/1.1×, first ``--images`` images of the manifest; (b)
whole-image L∞ boxes (clipped to [0, 1]) at ``--radii`` times the largest radius CROWN proves (bisection) on the
same images, for the shipped models and every model in
``--devset`` (other seeds and defenses of the same architecture; their target is the image's target label when the
model ranks it in its top 2, else the model's own top class). A box counts as proven when the k-th margin bound is
below ``-ROBUST_TOLERANCE``. Single-threaded; timings are wall-clock on whatever else the machine runs (the load
average is recorded).

    OPENBLAS_NUM_THREADS=1 python -m benchmarks bound-tier [--images 5] [--radii 1.02 1.05 1.1]
        [--devset DIR] [--out benchmarks/results/bound_tier.md]

``--sequence`` asks the tier a *sequence* of related queries per model and image instead, as a search does (warm
starts kept between the queries of one network and target): grow the box by :data:`GROWTH` per query until the tier
fails to prove it, then bisect (geometric middle) between the last proven and the first failed size for
``--seq-steps`` queries. Sizes are scales of the stored layered search vector (from 0.9) or of the largest
whole-image L∞ radius CROWN proves (from 1.0). Each sequence runs three times, its queries following its own
answers: ``off`` (frozen intermediate bounds), ``on`` (the joint pass wherever it runs: ``joint_intermediate="auto"``
without a policy, the tier's choice before the policy) and ``policy`` (``"auto"`` decided per query by a
:class:`~mlrobust.bounds.joint_policy.JointPolicy`, as the cascade's bound check does now); per variant the boxes
proven, the largest size proven and the seconds in all.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks bound-tier --sequence [--images 5] [--seq-steps 8]
        [--out benchmarks/results/bound_tier_sequence.md]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NEIGHBORHOODS = ROOT / "benchmarks" / "results" / "scale_neighborhoods.json"
OUT = ROOT / "benchmarks" / "results" / "bound_tier.md"
OUT_SEQUENCE = ROOT / "benchmarks" / "results" / "bound_tier_sequence.md"
DEVSET = ROOT / "benchmarks" / "devset" / "models"
#: A bound-tier query slower than this misses the tier's time target (issue 18: ≤ 1 s per query on 64x64 nets).
SLOW_QUERY_S = 1.0
K = 2
SCALES = (1.0, 1.05, 1.1)
RADII = (1.02, 1.05, 1.1)  # times the largest radius CROWN proves on that model and image
METHODS = ("frozen", "joint")
VARIANTS = ("off", "on", "policy")  # --sequence: frozen, joint wherever it runs, decided per query by JointPolicy
#: --sequence: growth per query while the tier proves, the largest size asked, and the bisection steps after it
GROWTH = 1.05
MAX_SIZE = 2.0
SEQ_STEPS = 8


def tier_query(network, lower: np.ndarray, upper: np.ndarray, target: int, method: str,
               budget: float = 10.0) -> dict:
    """One bound-tier query: the k-th margin's proven upper bound and the seconds, with frozen or joint bounds."""
    from mlrobust.bounds.alpha_crown import AlphaOptions
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bound_check import margin_range
    from mlrobust.verify.verdict import ROBUST_TOLERANCE

    options = AlphaOptions(joint_intermediate="off" if method == "frozen" else "auto")
    start = time.perf_counter()
    tight = tighten(network, lower, upper, "alpha", target=target, time_budget=budget, k=K, alpha_options=options)
    seconds = time.perf_counter() - start
    kth = float(margin_range(tight, target, K)[1])
    return {"kth": kth, "seconds": seconds, "proven": kth < -ROBUST_TOLERANCE}


def crown_radius(network, x: np.ndarray, target: int, steps: int = 12, top: float = 0.1) -> float:
    """The largest whole-image L∞ radius (bisection, ``steps`` halvings of ``[0, top]``) CROWN's margins prove."""
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bound_check import margin_range
    from mlrobust.verify.verdict import ROBUST_TOLERANCE

    lo_r, hi_r = 0.0, top
    for _ in range(steps):
        mid = 0.5 * (lo_r + hi_r)
        tight = tighten(network, np.clip(x - mid, 0, 1), np.clip(x + mid, 0, 1), "crown", target=target, k=K)
        if margin_range(tight, target, K)[1] < -ROBUST_TOLERANCE:
            lo_r = mid
        else:
            hi_r = mid
    return lo_r


def _target(network, x: np.ndarray, label: int) -> int:
    logits = network.forward(x[None]).reshape(-1)
    return label if label in np.argsort(logits)[::-1][:K] else int(np.argmax(logits))


def _boxes(args: argparse.Namespace, log: Callable[[str], None]) -> Iterator[tuple]:
    """Every (model, image, kind) the benchmark asks about: ``(model, image id, kind, network, target, box_at,
    r_crown)`` with ``box_at(size) -> (lower, upper)``: the stored layered search vector scaled by ``size``
    (kind "layered", shipped models with a stored vector; ``r_crown`` None) or the whole-image L∞ ball of
    ``size`` times the largest radius CROWN proves (kind "linf", ``r_crown`` that radius). Models whose input is
    not the manifest images' shape (the other shipped rungs) are skipped."""
    from PIL import Image

    from benchmarks.bench_scale import box_factory, manifest_images
    from mlrobust.ir.onnx_import import load_onnx

    images = manifest_images(args.examples, args.images)
    cache = json.loads(args.neighborhoods.read_text()) if args.neighborhoods.is_file() else {}
    shipped = sorted(p.stem for p in (args.examples / "models").glob("*.onnx"))
    models = [(m, args.examples / "models" / f"{m}.onnx", True) for m in shipped]
    if args.devset is not None and args.devset.is_dir():
        models += [(p.stem, p, False) for p in sorted(args.devset.glob("*.onnx"))]
    image_shape = (1, *np.asarray(Image.open(args.examples / images[0]["file"])).shape)
    for model, path, has_vectors in models:
        network = load_onnx(path)
        if tuple(network.sample_shape) != image_shape:  # the other shipped rungs (84x84, 3x300x300)
            log(f"{model}: skipped (input {tuple(network.sample_shape)}, the manifest's images are {image_shape})")
            continue
        for entry in images:
            key = f"{model}/{entry['id']}"
            if has_vectors and key in cache:
                eps = np.asarray(cache[key]["epsilons"], dtype=np.float64)
                net_l, target_l, box = box_factory(args.examples, model, entry, eps)

                def layered(size: float, box=box) -> tuple[np.ndarray, np.ndarray]:
                    b = box(size)
                    return b.lower, b.upper

                yield model, entry["id"], "layered", net_l, target_l, layered, None
            x = np.asarray(Image.open(args.examples / entry["file"]), dtype=np.float64)[None] / 255.0
            target = _target(network, x, int(entry["target_label"]))
            r_crown = crown_radius(network, x, target)

            def linf(size: float, x=x, r_crown=r_crown) -> tuple[np.ndarray, np.ndarray]:
                return np.clip(x - size * r_crown, 0.0, 1.0), np.clip(x + size * r_crown, 0.0, 1.0)

            yield model, entry["id"], "linf", network, target, linf, r_crown


def _start(args: argparse.Namespace) -> dict:
    """One torch thread; the header's facts (:func:`benchmarks.suite.run_facts`), with the load before the work."""
    import torch

    from benchmarks.suite import command_line, run_facts

    torch.set_num_threads(1)
    return run_facts(command_line("python -m benchmarks bound-tier", args.argv))


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    from benchmarks.suite import end_facts

    facts = _start(args)
    rows: list[dict] = []
    start = time.perf_counter()
    for model, image, kind, network, target, box_at, r_crown in _boxes(args, log):
        for size in (args.scales if kind == "layered" else args.radii):
            lo, hi = box_at(size)
            row = {"model": model, "image": image, "kind": kind, "size": size, "target": target}
            if r_crown is not None:
                row["radius"] = size * r_crown
            for m in METHODS:
                row[m] = tier_query(network, lo, hi, target, m)
            rows.append(row)
            log(_line(row))
    return {**facts, "rows": rows, "seconds": time.perf_counter() - start, "devset": str(args.devset) if args.devset else None,
            **end_facts()}


def run_sequence(network, box_at: Callable[[float], tuple[np.ndarray, np.ndarray]], start: float, target: int,
                 variant: str, steps: int = SEQ_STEPS, budget: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter) -> dict:
    """A search's sequence of bound-tier queries on the boxes ``box_at(size)`` (one warm-start cache for the
    sequence), with the joint pass ``off``, ``on`` or decided by a fresh ``policy``: the size grows by
    :data:`GROWTH` from ``start`` while proven (up to :data:`MAX_SIZE`), then ``steps`` bisection queries between
    the last proven and the first failed size. Returns boxes proven, the largest size proven (0: none), seconds in
    all (``clock``), α-CROWN calls (CROWN left the box open), the calls that ran the joint pass, and per query its
    size, k-th margin bound and the policy's choice."""
    from mlrobust.bounds.alpha_crown import AlphaOptions
    from mlrobust.bounds.alpha_margin import AlphaCache
    from mlrobust.bounds.joint_policy import JointPolicy
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bound_check import margin_range
    from mlrobust.verify.verdict import ROBUST_TOLERANCE

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    cache = AlphaCache()
    policy = JointPolicy(clock=clock) if variant == "policy" else None
    options = AlphaOptions(joint_intermediate="off") if variant == "off" else None  # None: the tier's "auto"
    out: dict = {"proven": 0, "largest": 0.0, "seconds": 0.0, "alpha_calls": 0, "joint_runs": 0, "sizes": [],
                 "kth": [], "choices": []}

    def ask(size: float) -> bool:
        lo, hi = box_at(size)
        t0 = clock()
        tight = tighten(network, lo, hi, "alpha", target=target, time_budget=budget, k=K, alpha_options=options,
                        alpha_cache=cache, joint_policy=policy)
        out["seconds"] += clock() - t0
        kth = float(margin_range(tight, target, K)[1])
        proven = kth < -ROBUST_TOLERANCE
        out["proven"] += proven
        if proven:
            out["largest"] = max(out["largest"], size)
        out["sizes"].append(size)
        out["kth"].append(kth)
        ran = tight.stats.get("joint")  # absent where CROWN decided alone
        out["alpha_calls"] += ran is not None
        out["joint_runs"] += ran == "on"
        out["choices"].append(tight.stats.get("joint_choice") if ran is not None else None)
        return proven

    good, size = 0.5 * start, start
    while size <= MAX_SIZE and ask(size):
        good, size = size, size * GROWTH
    bad = min(size, MAX_SIZE)
    for _ in range(steps if good < bad else 0):
        mid = float(np.sqrt(good * bad))
        if ask(mid):
            good = mid
        else:
            bad = mid
    return out


def run_sequences(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Every (model, image, kind) sequence with every variant, back to back (see the module doc)."""
    from benchmarks.suite import end_facts

    facts = _start(args)
    rows: list[dict] = []
    start = time.perf_counter()
    for model, image, kind, network, target, box_at, _ in _boxes(args, log):
        row: dict = {"model": model, "image": image, "kind": kind, "target": target}
        for v in VARIANTS:
            # layered sizes from 0.9 of the stored vector, whole-image ones from CROWN's radius
            row[v] = run_sequence(network, box_at, 0.9 if kind == "layered" else 1.0, target, v, steps=args.seq_steps)
        rows.append(row)
        log(" ".join([f"{model}/{image} {kind}:"] + [f"{v} {row[v]['proven']}/{len(row[v]['sizes'])} proven, up to "
                                                      f"{row[v]['largest']:.4f}, {row[v]['seconds']:.1f} s;"
                                                      for v in VARIANTS]))
    return {**facts, "rows": rows, "seconds": time.perf_counter() - start, "sequence": True, "steps": args.seq_steps,
            **end_facts()}


def sequence_markdown(results: dict) -> str:
    rows = results["rows"]
    out = ["# Bound tier on a search's sequences of queries: joint pass off, on, or decided by gain per second", "",
           *_header(results),
           "Each sequence asks the bound tier (CROWN, then α-CROWN where CROWN leaves the box open; warm starts kept "
           "between the queries, as a search's bound check does) about one model, image and target, as a search "
           f"does: the box grows by {GROWTH:g}× per query while the tier proves it, then {results['steps']} "
           "bisection queries between the last proven and the first failed size. Size: scale of the stored layered "
           "search vector (from 0.9), or of the largest whole-image L∞ radius CROWN proves (linf, from 1.0). Each "
           "variant follows its own answers: `off` frozen intermediate bounds; `on` the joint pass wherever it runs "
           "(the tier's \"auto\" before the policy); `policy` \"auto\" decided per query by `JointPolicy`. "
           "Proven: queries whose k-th margin bound is below −1e-4 (each variant asks its own sizes, so a variant that "
           "grows further bisects where fewer boxes are provable: the count is not the measure of strength); "
           "largest: the largest size proven, as a ratio to `on`'s (geometric mean over the sequences): the "
           "result a search would keep; seconds: all queries (for `policy` the joint calls that follow its "
           "exploring frozen ones included); joint: the policy's α calls that ran the joint pass.", "",
           "## Summary", "",
           "| model | kind | sequences | queries off / on / policy | proven off / on / policy | largest off / policy "
           "vs on | s off / on / policy | joint (policy) |", "|---|---|---|---|---|---|---|---|"]

    def ratio(rs: list[dict], v: str) -> str:
        pairs = [(r[v]["largest"], r["on"]["largest"]) for r in rs if r[v]["largest"] > 0 and r["on"]["largest"] > 0]
        return f"{float(np.exp(np.mean([np.log(a / b) for a, b in pairs]))):.4f}" if pairs else "–"

    groups = sorted({(r["model"], r["kind"]) for r in rows})
    for model, kind in groups + [("all", "all")]:
        rs = [r for r in rows if (model == "all" or r["model"] == model) and (kind == "all" or r["kind"] == kind)]
        if not rs:
            continue
        name = "**all**" if model == "all" else model
        out.append(f"| {name} | {kind} | {len(rs)} | "
                   + " / ".join(str(sum(len(r[v]["sizes"]) for r in rs)) for v in VARIANTS) + " | "
                   + " / ".join(str(sum(r[v]["proven"] for r in rs)) for v in VARIANTS) + " | "
                   + f"{ratio(rs, 'off')} / {ratio(rs, 'policy')} | "
                   + " / ".join(f"{sum(r[v]['seconds'] for r in rs):.1f}" for v in VARIANTS) + " | "
                   f"{sum(r['policy']['joint_runs'] for r in rs)} of {sum(r['policy']['alpha_calls'] for r in rs)} |")
    out += ["", "## Every sequence", "",
            "| model | image | kind | target | proven off / on / policy | largest off / on / policy | "
            "s off / on / policy | policy's choices |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        choices = "".join({"joint": "J", "frozen": "F"}.get(c, "·") for c in r["policy"]["choices"])
        out.append(f"| {r['model']} | {r['image']} | {r['kind']} | {r['target']} | "
                   + " / ".join(str(r[v]["proven"]) for v in VARIANTS) + " | "
                   + " / ".join(f"{r[v]['largest']:.4f}" for v in VARIANTS) + " | "
                   + " / ".join(f"{r[v]['seconds']:.1f}" for v in VARIANTS) + f" | `{choices}` |")
    out += ["", "Choices: one letter per query of the policy's sequence, J joint, F frozen, · CROWN decided alone "
            "(no α call)."]
    return "\n".join(out) + "\n"


def _line(row: dict) -> str:
    f, j = row["frozen"], row["joint"]
    return (f"{row['model']}/{row['image']} {row['kind']} {row['size']:g}: frozen {f['kth']:+.4f} "
            f"({f['seconds']:.2f} s), joint {j['kth']:+.4f} ({j['seconds']:.2f} s)")


def _header(results: dict) -> list[str]:
    """The report's header (:func:`benchmarks.suite.report_header`): one thread, wall-clock seconds."""
    from benchmarks.suite import report_header

    return [*report_header(results), f"One thread; {results['seconds']:.0f} s (wall-clock).", ""]


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "–"


def markdown(results: dict) -> str:
    rows = results["rows"]
    out = ["# Bound tier: frozen vs jointly optimised intermediate bounds", "", *_header(results),
           f"Queries over {SLOW_QUERY_S:g} s: joint {sum(r['joint']['seconds'] > SLOW_QUERY_S for r in rows)} of "
           f"{len(rows)}, frozen {sum(r['frozen']['seconds'] > SLOW_QUERY_S for r in rows)} of {len(rows)} (the "
           "issue's target: every bound-tier query within 1 s on our 64x64 nets).", "",
           "k-th margin bound: proven upper bound of the second-largest margin `y_c − y_target` over the box "
           "(negative = proven by the bound tier alone); seconds: the whole tier query (CROWN + α-CROWN).", "",
           "## Summary", "",
           "| model | boxes | kind | proven frozen | proven joint | median s frozen | median s joint | max s joint | "
           "median bound drop | largest drop |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["kind"]) for r in rows})
    for model, kind in keys:
        rs = [r for r in rows if r["model"] == model and r["kind"] == kind]
        drop = [r["frozen"]["kth"] - r["joint"]["kth"] for r in rs]
        out.append(f"| {model} | {len(rs)} | {kind} | {sum(r['frozen']['proven'] for r in rs)} | "
                   f"{sum(r['joint']['proven'] for r in rs)} | {_median([r['frozen']['seconds'] for r in rs])} | "
                   f"{_median([r['joint']['seconds'] for r in rs])} | "
                   f"{max(r['joint']['seconds'] for r in rs):.2f} | {statistics.median(drop):+.3f} | "
                   f"{max(drop):+.3f} |")
    looser = [r for r in rows if r["joint"]["kth"] > r["frozen"]["kth"] + 1e-9
              and not (r["joint"]["proven"] and r["frozen"]["proven"])]
    both = sum(r["joint"]["proven"] and r["frozen"]["proven"] for r in rows)
    out += ["", f"Both prove {both} boxes (each optimisation stops at its first proof, so its bound there says "
            "nothing more). Boxes not proven by both where the joint bound is looser than the frozen one: "
            f"{len(looser)} of {len(rows) - both}"
            + (": " + ", ".join(f"{r['model']}/{r['image']} {r['kind']} {r['size']:g} "
                                f"(+{r['joint']['kth'] - r['frozen']['kth']:.4f})" for r in looser) if looser else "")
            + ".", "", "## Every box", "",
            "| model | image | kind | size | target | frozen bound | frozen s | joint bound | joint s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, j = r["frozen"], r["joint"]
        out.append(f"| {r['model']} | {r['image']} | {r['kind']} | {r['size']:g} | {r['target']} | {f['kth']:+.4f} "
                   f"| {f['seconds']:.2f} | {j['kth']:+.4f} | {j['seconds']:.2f} |")
    out.append("")
    out.append("size: the scale of the stored search vector (layered), or of the largest whole-image L∞ radius "
               "CROWN proves on that model and image (linf; the radius is in the JSON).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks bound-tier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5, help="first N images of the manifest")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES), help="scales of the search vectors")
    p.add_argument("--radii", type=float, nargs="+", default=list(RADII),
                   help="whole-image L-inf radii, as multiples of the largest radius CROWN proves")
    p.add_argument("--devset", type=Path, default=DEVSET,
                   help="folder of further .onnx models, whole-image boxes only (default: the development set's, "
                        "when present)")
    p.add_argument("--examples", type=Path, default=EXAMPLES)
    p.add_argument("--neighborhoods", type=Path, default=NEIGHBORHOODS, help="stored search vectors (JSON)")
    p.add_argument("--sequence", action="store_true",
                   help="sequences of growing boxes per model and image, joint pass off / on / by policy")
    p.add_argument("--seq-steps", type=int, default=SEQ_STEPS,
                   help="--sequence: bisection queries after the growth")
    p.add_argument("--out", type=Path, default=None,
                   help=f"default {OUT.relative_to(ROOT)} ({OUT_SEQUENCE.relative_to(ROOT)} with --sequence)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    if args.out is None:
        args.out = OUT_SEQUENCE if args.sequence else OUT
    results = run_sequences(args, log) if args.sequence else run(args, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(sequence_markdown(results) if args.sequence else markdown(results))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
