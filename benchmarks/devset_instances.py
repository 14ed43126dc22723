"""Write the development set's VNN-LIB instances: ``benchmarks/devset/vnnlib/`` and ``instances.csv``.

For a few shipped example images (``examples/manifest.json``; the target digit must stay among the top-2 labels):

- ``linf_<image>_eps<ε>.vnnlib``: the whole image in an L∞ ball of radius ε (clipped to [0, 1]);
- ``layered_<image>.vnnlib``: the layered box of the neighbourhood the search proved for the shipped ``mnist2_pgd``
  (``benchmarks/results/scale_neighborhoods.json``): a box of the kind mlrobust's search asks about, on models it was
  not found for.

Counterexample region: "the target is not among the top-2" (36 OR-clauses, :func:`benchmarks.vnncomp_models.
topk_vnnlib`). A property file serves every model; ``instances.csv`` pairs it with each development model whose clean
top-2 holds the target (checked on onnxruntime), with a 60 s timeout.

    python -m benchmarks.devset_instances [--images ex00,ex02,ex04] [--eps 0.003,0.008]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.vnncomp_models import topk_vnnlib

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT / "benchmarks" / "devset"
EXAMPLES = ROOT / "examples"
NEIGHBORHOODS = ROOT / "benchmarks" / "results" / "scale_neighborhoods.json"
K = 2
TIMEOUT = 60.0


def manifest_entry(examples: Path, image: str) -> dict:
    entries = json.loads((examples / "manifest.json").read_text())["images"]
    for e in entries:
        if e["id"] == image:
            return e
    raise SystemExit(f"error: no image {image!r} in {examples / 'manifest.json'}")


def layered_boxes(model: Path, examples: Path, entry: dict, eps: np.ndarray,
                  scales: tuple[float, ...] = (1.0,)) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """The layered boxes ``scale * eps`` around ``entry``'s image, flat, one per scale (mlrobust's own box: pixels/255,
    clipped to [0, 1]), and the target label."""
    from mlrobust.api import prepare

    prep = prepare(model, examples / entry["file"], int(entry["target_label"]), k=K, object_mask=examples / entry["mask"])
    boxes = []
    for scale in scales:
        box = prep.nbhd.box(np.minimum(scale * np.asarray(eps, dtype=np.float64), 1.0))
        boxes.append((box.lower.reshape(-1), box.upper.reshape(-1)))
    return boxes, int(entry["target_label"])


def linf_box(examples: Path, entry: dict, eps: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(lower, upper, target) of the whole-image L∞ ball of radius ``eps`` (pixels/255, clipped to [0, 1])."""
    from mlrobust.neighborhood.image_io import read_image

    x = read_image(examples / entry["file"]).astype(np.float64).reshape(-1)  # already pixels/255
    return np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0), int(entry["target_label"])


def write_property(path: Path, lower: np.ndarray, upper: np.ndarray, target: int, comment: str, *,
                   k: int = K, n_out: int = 10) -> Path:
    """The VNN-LIB file of "``target`` stays among the top-``k`` of ``n_out`` outputs" on the box (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(topk_vnnlib(lower, upper, n_out, target, k, comment))
    return path


def clean_topk(model: Path, x: np.ndarray) -> list[int]:
    """The model's top-k labels on the image ``x`` (onnxruntime)."""
    from mlrobust.training.export import onnx_logits

    logits = onnx_logits(model, x.reshape(1, 1, 64, 64))[0]
    return [int(c) for c in np.argsort(-logits, kind="stable")[:K]]


def build(out: Path, examples: Path, images: list[str], radii: list[float], neighborhoods: Path) -> dict:
    models = sorted((out / "models").glob("*.onnx"))
    if not models:
        raise SystemExit(f"error: no models in {out / 'models'} (build them with python -m mlrobust.training.devset)")
    searched = json.loads(neighborhoods.read_text())
    rows: list[tuple[str, str, float]] = []
    info: dict = {"command": "python -m benchmarks.devset_instances " + " ".join(sys.argv[1:]), "k": K,
                  "properties": [], "skipped": []}
    for image in images:
        entry = manifest_entry(examples, image)
        props = []
        for eps in radii:
            lower, upper, target = linf_box(examples, entry, eps)
            name = f"linf_{image}_eps{eps:g}.vnnlib"
            write_property(out / "vnnlib" / name, lower, upper, target,
                           f"{image} (target {target}), whole image in an L-infinity ball of radius {eps:g}: "
                           "the target stays among the top-2")
            props.append(name)
        key = f"mnist2_pgd/{image}"
        if key in searched:
            [(lower, upper)], target = layered_boxes(examples / "models" / "mnist2_pgd.onnx", examples, entry,
                                                     np.asarray(searched[key]["epsilons"]))
            name = f"layered_{image}.vnnlib"
            write_property(out / "vnnlib" / name, lower, upper, target,
                           f"{image} (target {target}), the layered box mlrobust's search proved for mnist2_pgd "
                           "(benchmarks/results/scale_neighborhoods.json): the target stays among the top-2")
            props.append(name)
        x = linf_box(examples, entry, 0.0)[0]
        for model in models:
            top = clean_topk(model, x)
            if int(entry["target_label"]) not in top:
                info["skipped"].append({"model": model.stem, "image": image, "clean_top2": top})
                continue
            rows += [(f"models/{model.name}", f"vnnlib/{p}", TIMEOUT) for p in props]
        info["properties"] += [{"file": p, "image": image, "target": int(entry["target_label"])} for p in props]
    with (out / "instances.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows((m, p, f"{t:g}") for m, p, t in rows)
    info["instances"] = len(rows)
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.devset_instances", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEVSET, help="the development set's folder (models/ inside)")
    p.add_argument("--examples", type=Path, default=EXAMPLES)
    p.add_argument("--images", default="ex00,ex02,ex04")
    p.add_argument("--eps", default="0.003,0.008", help="whole-image L-infinity radii")
    p.add_argument("--neighborhoods", type=Path, default=NEIGHBORHOODS)
    args = p.parse_args(argv)
    info = build(args.out, args.examples, [s for s in args.images.split(",") if s],
                 [float(e) for e in args.eps.split(",") if e], args.neighborhoods)
    print(f"wrote {info['instances']} instances to {args.out / 'instances.csv'} ({len(info['skipped'])} pairs skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
