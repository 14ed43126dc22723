"""``python -m benchmarks run --suite smoke|full``: run the benchmark suite, write ``<suite>.json`` and
``<suite>.md`` to ``benchmarks/results/`` (or ``--out``), and exit with status 1 on a soundness violation.

    python -m benchmarks run --suite smoke                       # CI: a few minutes
    python -m benchmarks run --suite full --workers 2            # the committed figures (long)
    python -m benchmarks run --suite full --steps topk,backends  # only some steps
    python -m benchmarks report benchmarks/results/full.json     # the Markdown again, from the JSON
    python -m benchmarks vnncomp --methods crown_milp,alpha_bab_milp --timeout 60   # VNN-COMP-style instances
    python -m benchmarks scale --budget 120                      # largest proven scale of searched neighborhoods
    python -m benchmarks onnx-ops --timeout 60                   # mlrobust vnnlib on one network per ONNX pattern
    python -m benchmarks bound-tier                              # bound tier: frozen vs joint intermediate bounds
    python -m benchmarks scale-ladder --budgets 120 --images 1   # 64x64, 84x84 top-3, 3x300x300 at real budgets
    python -m benchmarks ladder-gap RESULT.json                  # which verifier proves a ladder result scaled up
    python -m benchmarks workers                                 # the search's queries per second at 1 and 2 workers
    python -m benchmarks side-file --result out.json             # side file size and write time, coded vs XOR
    python -m benchmarks anchor --abcrown DIR                    # against α,β-CROWN on the same instances
    python -m benchmarks anchor --abcrown DIR --groups ladder --ladder-results R.json   # ... on verify's results
    python -m benchmarks anchor-radius --abcrown DIR             # largest L∞ radius per model, both tools
    python -m benchmarks devset-search                           # search on the dev models, before/after joint
    python -m benchmarks bab-boxes --variants default,refresh_stale=true   # BaB on fixed boxes, per knob

Single-threaded BLAS and torch (parallelism comes from ``--workers`` processes). The reference experiment's raw
lines go to ``--work`` (default ``build/benchmarks/<suite>``) and are resumed by a re-run with the same settings.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.suite import ROOT, STEPS, SUITES, report_violations, run_suite  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vnncomp"]:
        from benchmarks.bench_vnncomp import main as vnncomp_main

        return vnncomp_main(argv[1:])
    if argv[:1] == ["onnx-ops"]:
        from benchmarks.bench_onnx_ops import main as onnx_ops_main

        return onnx_ops_main(argv[1:])
    if argv[:1] == ["scale-ladder"]:
        from benchmarks.bench_ladder import main as ladder_main

        return ladder_main(argv[1:])
    if argv[:1] == ["ladder-gap"]:
        from benchmarks.bench_ladder_gap import main as ladder_gap_main

        return ladder_gap_main(argv[1:])
    if argv[:1] == ["side-file"]:
        from benchmarks.bench_side_file import main as side_file_main

        return side_file_main(argv[1:])
    if argv[:1] == ["workers"]:
        from benchmarks.bench_workers import main as workers_main

        return workers_main(argv[1:])
    if argv[:1] == ["anchor-radius"]:
        from benchmarks.bench_anchor_radius import main as anchor_radius_main

        return anchor_radius_main(argv[1:])
    if argv[:1] == ["bab-boxes"]:
        from benchmarks.bench_bab_boxes import main as bab_boxes_main

        return bab_boxes_main(argv[1:])
    if argv[:1] == ["devset-search"]:
        from benchmarks.bench_devset_search import main as devset_search_main

        return devset_search_main(argv[1:])
    if argv[:1] == ["anchor"]:
        from benchmarks.bench_anchor import main as anchor_main

        return anchor_main(argv[1:])
    if argv[:1] == ["scale"]:
        from benchmarks.bench_scale import main as scale_main

        return scale_main(argv[1:])
    if argv[:1] == ["bound-tier"]:
        from benchmarks.bench_bound_tier import main as bound_tier_main

        return bound_tier_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite")
    run.add_argument("--suite", choices=sorted(SUITES), default="smoke")
    run.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where <suite>.json/.md go")
    run.add_argument("--work", type=Path, default=None, help="raw batch lines (default build/benchmarks/<suite>)")
    run.add_argument("--examples", type=Path, default=ROOT / "examples", help="folder with manifest.json and models/")
    run.add_argument("--workers", type=int, default=None, help="processes for the reference experiment")
    run.add_argument("--steps", default=None, help=f"comma-separated subset of {','.join(STEPS)}")
    run.add_argument("--images", type=int, default=None, help="images of the reference experiment")
    run.add_argument("--models", default=None, help="comma-separated model names (default: all shipped)")
    run.add_argument("--quiet", action="store_true", help="no step log")
    sub.add_parser("vnncomp", help="VNN-COMP-style instances (python -m benchmarks vnncomp --help)")
    sub.add_parser("scale", help="largest proven scale per method (python -m benchmarks scale --help)")
    sub.add_parser("onnx-ops", help="mlrobust vnnlib per ONNX pattern (python -m benchmarks onnx-ops --help)")
    sub.add_parser("bound-tier", help="bound tier, frozen vs joint intermediate bounds "
                                      "(python -m benchmarks bound-tier --help)")
    sub.add_parser("scale-ladder", help="the three sizes at real budgets (python -m benchmarks scale-ladder --help)")
    sub.add_parser("workers", help="queries per second of the search's worker pool at 1 and 2 workers "
                   "(python -m benchmarks workers --help)")
    sub.add_parser("anchor", help="against α,β-CROWN (python -m benchmarks anchor --help)")
    sub.add_parser("bab-boxes", help="the branch and bound on fixed whole-image boxes, per BabOptions variant "
                                     "(python -m benchmarks bab-boxes --help)")
    sub.add_parser("devset-search", help="the search on the development models before/after the joint pass "
                                         "(python -m benchmarks devset-search --help)")
    sub.add_parser("anchor-radius", help="largest L∞ radius against α,β-CROWN (python -m benchmarks anchor-radius "
                                         "--help)")
    report = sub.add_parser("report", help="rewrite a suite's Markdown report from its JSON results")
    report.add_argument("results", type=Path, nargs="?", default=ROOT / "benchmarks" / "results" / "full.json")
    docs = sub.add_parser("docs", help="write docs/results.md from a suite's results")
    docs.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "full.json")
    docs.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    if args.command == "docs":
        return write_results_page(args.results, args.out)
    if args.command == "report":
        import json

        from benchmarks.suite_report import markdown

        out = args.results.with_suffix(".md")
        out.write_text(markdown(json.loads(args.results.read_text())))
        print(f"wrote {out}")
        return 0

    import torch

    torch.set_num_threads(1)
    cfg = SUITES[args.suite]
    if args.steps:
        steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
        cfg = replace(cfg, steps=steps)
    if args.workers:
        cfg = replace(cfg, workers=args.workers)
    if args.images:
        cfg = replace(cfg, images=args.images)
    if args.models:
        cfg = replace(cfg, models=tuple(m.strip() for m in args.models.split(",") if m.strip()))
    work = args.work or ROOT / "build" / "benchmarks" / cfg.name

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    results = run_suite(cfg, args.out, work, args.examples, log)
    print(f"wrote {args.out / (cfg.name + '.json')} and {args.out / (cfg.name + '.md')} "
          f"({results['seconds']:.0f} s)", flush=True)
    if report_violations(results["violations"]):
        return 1
    print("soundness checks passed", flush=True)
    return 0


def write_results_page(results_path: Path, out: Path) -> int:
    """docs/results.md: how to reproduce, then the suite's report with links into benchmarks/results/, and the
    headline numbers of the committed data-set report (docs/report/summary.csv) where there is one."""
    import json
    import os

    from benchmarks.suite_report import markdown

    results = json.loads(results_path.read_text())
    prefix = os.path.relpath(results_path.parent, out.parent).replace(os.sep, "/") + "/"
    intro = (
        "Every number on this page comes from one run of the benchmark suite, whose raw results are committed in "
        f"[`{prefix}{results_path.name}`]({prefix}{results_path.name}); the text that compares the models is computed "
        f"from them. To reproduce ({results['seconds'] / 60:.0f} min on this machine; a re-run resumes the searches it "
        "already finished):\n\n"
        "```bash\n"
        f"{results['command']}\n"
        "python -m benchmarks docs          # this page, from benchmarks/results/full.json\n"
        "```\n\n"
        "The smoke suite (a few minutes; CI runs it through `tests/test_benchmarks_smoke.py` and fails on any "
        "soundness violation) is `python -m benchmarks run --suite smoke`.\n")
    from benchmarks.report_page import report_section

    body = markdown(results, link_prefix=prefix, title="Results")
    head, rest = body.split("\n", 1)
    checks = results_path.parent / "checks.json"
    default = ""
    if checks.is_file():
        # the default method first: the reference experiment below predates it
        from benchmarks.bench_checks import results_section

        default = results_section(json.loads(checks.read_text()), prefix) + "\n## The reference experiment suite\n\n"
        intro = intro.replace("Every number on this page comes from one run", "Every number below comes from one run")
    # the data-set report (mlrobust report) lives in docs/report/ and is linked from the docs folder
    section = report_section(ROOT / "docs" / "report" / "summary.csv", "report/index.html")
    out.write_text(head + "\n\n" + default + intro + rest + ("\n" + section if section else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
