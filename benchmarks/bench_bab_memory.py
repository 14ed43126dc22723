"""Peak memory and speed of one branch-and-bound call, for sizing ``BabOptions.memory_budget_bytes``.

``BabVerifier(root_attack=False)`` on a whole-image L∞ box of radius ``--eps`` around one image of the manifest
(target: the manifest's target label, top-2) on one shipped model, for ``--time-limit`` seconds; prints one JSON
line: status, domains, domains per second, rounds, peak RSS of the process (MiB) and the options used. Run it under
``/usr/bin/time -v`` for the same peak from outside. Single-threaded BLAS and torch.

    python -m benchmarks.bench_bab_memory [--model mnist2_nodefense] [--image ex00] [--eps 0.03]
                                          [--batch-size 32] [--time-limit 30] [--budget-mb 512 | --no-budget]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import resource
from pathlib import Path

import torch

from mlrobust import load_onnx
from mlrobust.neighborhood.image_io import read_image
from mlrobust.verify.bab import BabOptions, BabVerifier
from mlrobust.verify.spec import Box

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist2_nodefense")
    p.add_argument("--image", default="ex00")
    p.add_argument("--eps", type=float, default=0.03)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=30.0)
    p.add_argument("--budget-mb", type=float, default=None, help="memory budget of one bounding call (MiB)")
    p.add_argument("--no-budget", action="store_true", help="no memory budget (every child in one call)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    manifest = json.loads((ROOT / "examples" / "manifest.json").read_text())
    entry = next(e for e in manifest["images"] if e["id"] == args.image)
    net = load_onnx(ROOT / "examples" / "models" / f"{args.model}.onnx")
    image = read_image(ROOT / "examples" / entry["file"])
    box = Box.around(image, args.eps)
    extra: dict = {}
    if args.no_budget:
        extra["memory_budget_bytes"] = None
    elif args.budget_mb is not None:
        extra["memory_budget_bytes"] = int(args.budget_mb * 2 ** 20)
    try:
        opts = BabOptions(batch_size=args.batch_size, root_attack=False, **extra)
    except TypeError:  # a checkout without the option
        opts = BabOptions(batch_size=args.batch_size, root_attack=False)
    verdict = BabVerifier(opts).verify(net, box, int(entry["target_label"]), 2, time_limit=args.time_limit)
    stats = verdict.stats["bab"]
    out = {"model": args.model, "image": args.image, "eps": args.eps, "batch_size": args.batch_size,
           "memory_budget_bytes": getattr(opts, "memory_budget_bytes", "n/a"),
           "status": type(verdict).__name__, "domains": stats.get("domains"), "rounds": stats.get("rounds"),
           "domains_per_second": round(float(stats.get("domains_per_second", 0.0)), 2),
           "bound_chunks": stats.get("bound_chunks"), "rows": stats.get("rows"),
           "store_bytes_per_domain": stats.get("store_bytes_per_domain"), "max_open": stats.get("max_open"), "seconds": round(float(stats.get("seconds", 0.0)), 2),
           "worst_bound": stats.get("final_bound"),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
