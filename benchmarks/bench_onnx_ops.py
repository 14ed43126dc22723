"""``mlrobust vnnlib`` on one small network per ONNX pattern of :mod:`benchmarks.onnx_patterns`.

Each pattern module builds its model(s) and a few VNN-LIB properties; every (model, property) runs ``mlrobust
vnnlib`` in its own process with ``--timeout``. Every sat counterexample is re-run on onnxruntime: it must lie in the
property's box (as float32) and reach the output region (margin >= -1e-4), or the answer counts as wrong and the run
exits with status 1. Results go to ``benchmarks/results/onnx_ops.md`` (and ``.json``).

    python -m benchmarks onnx-ops                          # every pattern, 60 s per property
    python -m benchmarks onnx-ops --patterns unet,rank1_mlp --timeout 20
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.bench_vnncomp import ORT_TOLERANCE, Instance, OrtChecker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "onnx_ops.md"
WORK = ROOT / "build" / "benchmarks" / "onnx_ops"
_X_ENTRY = re.compile(r"\(X_(\d+) ([^()\s]+)\)")
_VERBOSE = re.compile(r"^\S+ by (\S+) in ([0-9.]+) s", re.MULTILINE)  # what --verbose prints on stderr


def run_property(model: Path, prop: Path, timeout: float, grace: float = 30.0) -> dict:
    """One ``mlrobust vnnlib`` process: its answer, exit code, wall time and counterexample (for sat)."""
    cmd = [sys.executable, "-c", "from mlrobust.cli import main; main()", "vnnlib", str(model), str(prop),
           "--timeout", str(timeout), "--verbose"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + grace, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"answer": "killed", "exit": None, "seconds": time.perf_counter() - start, "x": None, "error": "",
                "tier": "-", "solve_seconds": None}
    seconds = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    answer = lines[0].strip() if lines else "error"
    x = None
    if answer == "sat":
        pairs = sorted((int(i), float(v)) for i, v in _X_ENTRY.findall(proc.stdout))
        x = [v for _, v in pairs]
    tier = _VERBOSE.search(proc.stderr)
    error = proc.stderr.strip().splitlines()[-1] if proc.returncode not in (0, 10, 20) and proc.stderr.strip() else ""
    return {"answer": answer, "exit": proc.returncode, "seconds": seconds, "x": x, "error": error,
            "tier": tier.group(1) if tier else "-", "solve_seconds": float(tier.group(2)) if tier else None}


def run(patterns: list[str] | None, timeout: float, work: Path, log,
        command: str = "python -m benchmarks onnx-ops") -> dict:
    from benchmarks.onnx_patterns import patterns as all_patterns
    from benchmarks.suite import end_facts, run_facts
    from mlrobust import load_onnx

    found = all_patterns()
    names = patterns or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise SystemExit(f"error: unknown pattern(s) {', '.join(unknown)}; known: {', '.join(found)}")
    facts = run_facts(command)  # the load before the work
    checker = OrtChecker()
    rows = []
    for name in names:
        out_dir = work / name
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs = found[name].build(out_dir)
        for model, prop in pairs:
            net = load_onnx(model)
            row = {"pattern": name, "model": model.name, "property": prop.stem,
                   "ops": sorted({n.kind for n in net.nodes}), "neurons": int(sum(n.size for n in net.nodes)),
                   "relus": net.num_relus}
            row.update(run_property(model, prop, timeout))
            if row["answer"] == "sat" and row["x"] is not None:
                inst = Instance(model=str(model.relative_to(out_dir)), prop=str(prop.relative_to(out_dir)),
                                timeout=timeout)
                row.update(checker.check(out_dir, inst, row["x"]))
            elif row["answer"] == "sat":
                row["verdict"] = "wrong"  # a sat answer without a counterexample cannot be checked
            row.pop("x", None)
            rows.append(row)
            log(f"{name:12s} {prop.stem:28s} {row['answer']:8s} {row['seconds']:6.1f} s  {row['tier']}"
                + (f"  ort margin {row['ort_margin']:.3g} ({row['verdict']})" if "verdict" in row else "")
                + (f"  {row['error']}" if row["error"] else ""))
    return {**facts, **end_facts(), "timeout": timeout, "python": platform.python_version(), "rows": rows}


def wrong(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r.get("verdict") == "wrong" or r["answer"] in ("error", "killed")]


def markdown(results: dict) -> str:
    from benchmarks.suite import report_header

    rows = results["rows"]
    # results written before the shared header kept the load at the end only, as "load"
    header = report_header({"command": "python -m benchmarks onnx-ops", "load_average_at_end": results.get("load"),
                            **results})
    lines = ["# ONNX patterns: `mlrobust vnnlib` on one small network per pattern", "", *header,
             f"Python {results['python']}.", "",
             "Written by `python -m benchmarks onnx-ops` (`benchmarks/bench_onnx_ops.py`); the networks and "
             "properties are built by `benchmarks/onnx_patterns/` (seeded random weights, L-inf boxes of "
             "four radii per pattern around one input, chosen around the radius where the answer turns; the "
             "property: the top output stays the top one, for the U-Net among one pixel's class scores). "
             "'verify' is the time `mlrobust vnnlib --verbose` reports for deciding the property (after the model is loaded); 'process' the wall time of the whole process "
             "(Python start-up, imports, model import and property parsing included), "
             f"with `--timeout {results['timeout']:g}`. Every sat counterexample is re-run on onnxruntime: it must "
             f"lie in the box and reach the output region (margin >= -{ORT_TOLERANCE:g}).", "",
             "| pattern | property | IR ops | neurons | ReLUs | answer | decided by | verify (s) | process (s) | "
             "onnxruntime check |",
             "|---|---|---|---:|---:|---|---|---:|---:|---|"]
    for r in rows:
        check = f"{r['verdict']} (margin {r['ort_margin']:.3g})" if "verdict" in r and "ort_margin" in r else (
            r.get("verdict", "—"))
        solve = "—" if r.get("solve_seconds") is None else f"{r['solve_seconds']:.2f}"
        lines.append(f"| {r['pattern']} | {r['property']} | {', '.join(r['ops'])} | {r['neurons']} | {r['relus']} | "
                     f"{r['answer']} | {r['tier']} | {solve} | {r['seconds']:.1f} | {check} |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["answer"]] = counts.get(r["answer"], 0) + 1
    bad = wrong(results)
    lines += ["", "Answers: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
              + f"; wrong or failed: {len(bad)}."]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks onnx-ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", default=None, help="comma-separated pattern names (default: all)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per property (mlrobust vnnlib --timeout)")
    p.add_argument("--work", type=Path, default=WORK, help="where the models and properties are written")
    p.add_argument("--out", type=Path, default=OUT, help="the Markdown report (the JSON goes beside it)")
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import command_line

    args = parser().parse_args(argv)
    names = [n.strip() for n in args.patterns.split(",") if n.strip()] if args.patterns else None
    results = run(names, args.timeout, args.work, lambda msg: print(msg, flush=True),
                  command_line("python -m benchmarks onnx-ops", argv))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.write_text(markdown(results))
    print(f"wrote {args.out}")
    bad = wrong(results)
    for r in bad:
        print(f"WRONG or FAILED: {r['pattern']} {r['property']}: {r['answer']} {r.get('verdict', '')} "
              f"{r['error']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

