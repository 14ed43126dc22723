"""Where the gap between a returned neighborhood and the attack lies: which verifier proves the scale ladder's
returned ε vector scaled by a factor (issue 19).

For each result JSON of ``python -m benchmarks scale-ladder`` (its ``--work`` folder: ``<model>_<image>_<budget>.json``)
and each factor s, the box of s·ε* (``whole``), of the object's ε alone with the rings at 0 (``object``) or of the
object's ε scaled with the rings kept (``object+rings``) is asked of: plain CROWN, the bound tier as the search runs
it (α-CROWN, 20 steps, joint intermediate bounds "auto"), α-CROWN with 100 steps and the intermediate bounds always
optimised jointly, and branch and bound (``--bab-limit`` seconds). Each row: the proven upper bound on the k-th
largest margin (< 0: proven) and the seconds. If a stronger verifier proves much larger vectors than the search
returned, the search leaves proof power on the table; if none does, proof power is the limit.

    python -m benchmarks ladder-gap build/benchmarks/scale_ladder/triple_mnist_triple00_120.json --factors 1,1.2,1.5

Timings depend on the machine and its load (recorded with the results).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.bench_ladder import EXAMPLES, RUNGS, rung_images  # noqa: E402

MODES = ("whole", "object", "object+rings")
VERIFIERS = ("crown", "alpha", "alpha-joint-100", "bab")


def scaled_eps(eps: np.ndarray, factor: float, mode: str) -> np.ndarray:
    """The ε vector of one question: all of ε* scaled, the object's ε alone scaled, or the object's scaled with the
    rings kept (every value clipped to the pixel range)."""
    out = np.asarray(eps, dtype=np.float64).copy()
    if mode == "whole":
        out *= factor
    elif mode == "object":
        out[1:] = 0.0
        out[0] *= factor
    elif mode == "object+rings":
        out[0] *= factor
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return np.minimum(out, 1.0)


def kth_bound(network, box, target: int, k: int, verifier: str, bab_limit: float) -> tuple[float, str]:
    """(the proven upper bound on the k-th largest margin, a note) of one verifier on ``box`` (nan: none proven)."""
    from mlrobust.bounds.alpha_crown import AlphaOptions
    from mlrobust.bounds.tier import tighten
    from mlrobust.verify.bab import BabVerifier
    from mlrobust.verify.bound_check import margin_range

    if verifier == "crown":
        return margin_range(tighten(network, box.lower, box.upper, "crown", target=target, k=k), target, k)[1], ""
    if verifier in ("alpha", "alpha-joint-100"):
        options = (AlphaOptions(joint_intermediate="auto") if verifier == "alpha"
                   else AlphaOptions(iterations=100, joint_intermediate="on"))
        tight = tighten(network, box.lower, box.upper, "alpha", target=target, k=k, time_budget=120.0,
                        alpha_options=options)
        return margin_range(tight, target, k)[1], f"subset rows {tight.stats.get('subset_rows', 0)}"
    if verifier == "bab":
        verdict = BabVerifier().verify(network, box, target, k, time_limit=bab_limit)
        return float(getattr(verdict, "bound", float("nan"))), type(verdict).__name__
    raise ValueError(f"unknown verifier {verifier!r}; choose one of {', '.join(VERIFIERS)}")


def entry_of(result: Path, examples: Path) -> tuple[object, dict]:
    """The ladder rung and manifest entry a scale-ladder result file belongs to (by its name)."""
    for rung in RUNGS:
        for entry in rung_images(examples, rung, 100):
            if result.name.startswith(f"{rung.model}_{entry['id']}_"):
                return rung, entry
    raise SystemExit(f"error: {result} is not named like a scale-ladder result (<model>_<image>_<budget>.json)")


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    import mlrobust
    from mlrobust.api import prepare

    torch.set_num_threads(1)
    examples = Path(args.examples)
    rows = []
    for path in map(Path, args.results):
        rung, entry = entry_of(path, examples)
        k = rung.k if rung.k is not None else int(entry["k"])
        target = int(entry["target_label"])
        prep = prepare(examples / "models" / f"{rung.model}.onnx", examples / entry["file"], target, k=k,
                       object_mask=examples / entry["mask"])
        eps = np.asarray(mlrobust.load_result(path)["epsilons"], dtype=np.float64)
        for mode in args.modes.split(","):
            for factor in (float(f) for f in args.factors.split(",")):
                box = prep.nbhd.box(scaled_eps(eps, factor, mode))
                for verifier in args.verifiers.split(","):
                    start = time.perf_counter()
                    bound, note = kth_bound(prep.network, box, target, k, verifier, args.bab_limit)
                    row = {"image": entry["id"], "mode": mode, "factor": factor, "verifier": verifier,
                           "kth_upper": bound, "proven": bool(bound < 0),
                           "seconds": round(time.perf_counter() - start, 1), "note": note}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.suite import command_line, end_facts, run_facts

    parser = argparse.ArgumentParser(prog="python -m benchmarks ladder-gap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="result JSON files of python -m benchmarks scale-ladder")
    parser.add_argument("--factors", default="1,1.2,1.5")
    parser.add_argument("--modes", default="whole,object", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--verifiers", default=",".join(VERIFIERS))
    parser.add_argument("--bab-limit", type=float, default=60.0, help="seconds of branch and bound per question")
    parser.add_argument("--examples", default=str(EXAMPLES))
    parser.add_argument("--out", help="write the rows as JSON here too")
    args = parser.parse_args(argv)
    facts = run_facts(command_line("python -m benchmarks ladder-gap", argv))  # the load before the work
    rows = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps({**facts, **end_facts(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
