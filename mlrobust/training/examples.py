"""The shipped example set: test images every model gets right, written as PNGs with the perturbed- and
target-object masks and a manifest saying which digit is the target and which is perturbed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from mlrobust.data.double_mnist import DoubleMnist

SIDES = ("left", "right")


def select_examples(data: DoubleMnist, correct: np.ndarray, n: int = 20, seed: int = 0) -> list[int]:
    """``n`` indices of images with ``correct`` True (every model right), in a seeded random order, taking at most
    one image per unordered digit pair first so the set covers many digits."""
    order = np.random.default_rng(seed).permutation(len(data))
    order = order[np.asarray(correct)[order]]
    chosen: list[int] = []
    pairs: set[tuple[int, int]] = set()
    for i in order:  # first pass: new digit pairs only
        pair = tuple(sorted(int(d) for d in data.digits[i]))
        if pair not in pairs:
            pairs.add(pair)
            chosen.append(int(i))
        if len(chosen) == n:
            return chosen
    rest = [int(i) for i in order if int(i) not in set(chosen)]
    return chosen + rest[: n - len(chosen)]


def write_examples(
    out_dir: str | Path,
    data: DoubleMnist,
    indices: list[int],
    logits: Mapping[str, np.ndarray],
    k: int = 2,
    extra: Mapping | None = None,
) -> dict:
    """Write ``images/exNN.png`` (64x64 grey), ``images/exNN_perturbed.png`` and ``images/exNN_target.png`` (255 =
    object) and ``manifest.json`` under ``out_dir``. Example ``j`` takes the left digit as target when ``j`` is even,
    the right one when odd, and perturbs the other. ``logits`` maps model names to their (N, 10) logits on
    ``data`` (the manifest records each model's logits and top-k on every shipped image)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for j, i in enumerate(indices):
        name = f"ex{j:02d}"
        t_side, p_side = (0, 1) if j % 2 == 0 else (1, 0)
        Image.fromarray(data.images[i]).save(out_dir / "images" / f"{name}.png")
        for role, side in (("perturbed", p_side), ("target", t_side)):
            mask = np.where(data.masks[i, side], 255, 0).astype(np.uint8)
            Image.fromarray(mask).save(out_dir / "images" / f"{name}_{role}.png")
        predictions = {}
        for model, z in logits.items():
            row = np.asarray(z[i], dtype=np.float64)
            top = np.argsort(-row, kind="stable")[:k]
            predictions[model] = {"topk": [int(c) for c in top], "logits": [round(float(v), 6) for v in row]}
        entries.append(
            {
                "id": name,
                "file": f"images/{name}.png",
                "mask": f"images/{name}_perturbed.png",
                "target_mask": f"images/{name}_target.png",
                "digits": [int(d) for d in data.digits[i]],
                "labels": [int(v) for v in data.labels[i]],
                "target": {"side": SIDES[t_side], "digit": int(data.digits[i, t_side])},
                "perturbed": {"side": SIDES[p_side], "digit": int(data.digits[i, p_side])},
                "target_label": int(data.digits[i, t_side]),
                "source": {
                    "split": data.split,
                    "index": int(i),
                    "mnist_indices": [int(s) for s in data.source[i]],
                    "positions_yx": data.positions[i].tolist(),
                },
                "predictions": predictions,
            }
        )
    manifest = {
        "description": "Double-MNIST test images (64x64 grey, pixels/255 in [0, 1]) with the perturbed object's "
        "mask ('mask', 255 = object) and the target object's mask; 'digits' are (left, right); the target label "
        "must stay among the top-k.",
        "k": k,
        "all_models_correct": True,
        "selection": "every image is classified correctly by all models: its top-k set is exactly its two digits",
        "models": sorted(logits),
        **(dict(extra) if extra else {}),
        "images": entries,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
