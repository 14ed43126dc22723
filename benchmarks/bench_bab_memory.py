"""Peak memory, speed and deadline of one branch-and-bound call, for sizing ``BabOptions.memory_budget_bytes``.

``BabVerifier(root_attack=False)`` on a whole-image L∞ box of radius ``--eps`` around one image of the manifest
(target: the manifest's target label, top-2) on one shipped model, for ``--time-limit`` seconds; prints one JSON
line: status, domains, domains per second, rounds, peak RSS of the process (MiB), the options used, and the call's
wall time with its overshoot past the limit (``wall_s``, ``overshoot_s``). Run it under ``/usr/bin/time -v`` for
the same peak from outside. Single-threaded BLAS and torch.

Other boxes: ``--scale F`` takes the layered whole-image box at ``F`` times the neighborhood the search returned
for that model and image (``benchmarks/results/scale_neighborhoods.json``, the ``scale`` benchmark's boxes);
``--vnnlib FILE --onnx FILE`` decides a VNN-LIB property with ``check_vnnlib(verifier="bab")`` instead (attack,
bounds, then the branch and bound on what is left of ``--time-limit``).

    python -m benchmarks.bench_bab_memory [--model mnist2_nodefense] [--image ex00] [--eps 0.03 | --scale 1.05]
                                          [--batch-size 32] [--time-limit 30] [--budget-mb 512 | --no-budget]
    python -m benchmarks.bench_bab_memory --onnx M.onnx --vnnlib P.vnnlib [--time-limit 30]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
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
    p.add_argument("--scale", type=float, default=None,
                   help="the layered box at this multiple of the searched neighborhood (instead of --eps)")
    p.add_argument("--vnnlib", type=Path, default=None, help="a VNN-LIB property (with --onnx), decided by bab")
    p.add_argument("--onnx", type=Path, default=None, help="the VNN-LIB property's model")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.vnnlib is not None:
        return _vnnlib(args)
    manifest = json.loads((ROOT / "examples" / "manifest.json").read_text())
    entry = next(e for e in manifest["images"] if e["id"] == args.image)
    net = load_onnx(ROOT / "examples" / "models" / f"{args.model}.onnx")
    image = read_image(ROOT / "examples" / entry["file"])
    box = Box.around(image, args.eps)
    if args.scale is not None:
        from benchmarks.bench_scale import NEIGHBORHOODS, box_factory

        eps = np.asarray(json.loads(NEIGHBORHOODS.read_text())[f"{args.model}/{args.image}"]["epsilons"])
        net, _, scaled = box_factory(ROOT / "examples", args.model, entry, eps)
        box = scaled(args.scale)
    extra: dict = {}
    if args.no_budget:
        extra["memory_budget_bytes"] = None
    elif args.budget_mb is not None:
        extra["memory_budget_bytes"] = int(args.budget_mb * 2 ** 20)
    try:
        opts = BabOptions(batch_size=args.batch_size, root_attack=False, **extra)
    except TypeError:  # a checkout without the option
        opts = BabOptions(batch_size=args.batch_size, root_attack=False)
    t0 = time.perf_counter()
    verdict = BabVerifier(opts).verify(net, box, int(entry["target_label"]), 2, time_limit=args.time_limit)
    wall = time.perf_counter() - t0
    stats = verdict.stats["bab"]
    out = {"model": args.model, "image": args.image, "eps": args.eps, "scale": args.scale,
           "time_limit": args.time_limit, "wall_s": round(wall, 2), "overshoot_s": round(wall - args.time_limit, 2),
           "unbounded_children": stats.get("unbounded_children", 0), "fsb_fallbacks": stats.get("fsb_fallbacks"),
           "batch_size": args.batch_size,
           "memory_budget_bytes": getattr(opts, "memory_budget_bytes", "n/a"),
           "status": type(verdict).__name__, "domains": stats.get("domains"), "rounds": stats.get("rounds"),
           "domains_per_second": round(float(stats.get("domains_per_second", 0.0)), 2),
           "bound_chunks": stats.get("bound_chunks"), "rows": stats.get("rows"),
           "store_bytes_per_domain": stats.get("store_bytes_per_domain"), "max_open": stats.get("max_open"), "seconds": round(float(stats.get("seconds", 0.0)), 2),
           "worst_bound": stats.get("final_bound"),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    print(json.dumps(out))
    return out


def _vnnlib(args: argparse.Namespace) -> dict:
    """One VNN-LIB property decided by ``check_vnnlib(verifier="bab")`` within ``--time-limit``."""
    from mlrobust.verify.vnnlib import check_vnnlib

    if args.onnx is None:
        raise SystemExit("error: --vnnlib needs --onnx (the property's model)")
    net = load_onnx(args.onnx)
    t0 = time.perf_counter()
    res = check_vnnlib(net, args.vnnlib, timeout=args.time_limit, verifier="bab")
    wall = time.perf_counter() - t0
    bab = res.stats.get("bab", {})
    out = {"onnx": args.onnx.name, "vnnlib": args.vnnlib.name, "time_limit": args.time_limit,
           "status": res.status, "tier": res.tier, "wall_s": round(wall, 2),
           "overshoot_s": round(wall - args.time_limit, 2), "domains": bab.get("domains"),
           "rounds": bab.get("rounds"), "unbounded_children": bab.get("unbounded_children", 0),
           "fsb_fallbacks": bab.get("fsb_fallbacks"),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
