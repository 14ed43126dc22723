"""The pictures behind a results line, where they can be found: the image and the perturbed object's mask, read
from the data set the line names (or the one the user points to), and checked against the mask's hash in the line.

Pictures are optional in a report: a line whose data set is not on this machine, or whose mask does not match the
hash it recorded (another data set under the same name), simply has no thumbnail.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.errors import MlrobustError

SIDES = ("left", "right")


def mask_hash(mask: np.ndarray) -> str:
    """The hash a batch line records for its object mask (SHA-256 of the packed bits)."""
    return hashlib.sha256(np.packbits(np.asarray(mask, dtype=bool)).tobytes()).hexdigest()


@lru_cache(maxsize=4)
def _npz(path: str) -> dict[str, Any]:
    from mlrobust.data.double_mnist import load_npz

    return load_npz(path)


@lru_cache(maxsize=4)
def _manifest_jobs(path: str, split: str, rule: str) -> dict[str, Any]:
    from mlrobust.batch.dataset import load_jobs

    return {job.id: job for job in load_jobs(path, split=split, side_rule=rule)}


def _from_npz(path: Path, source: dict) -> tuple[np.ndarray, np.ndarray] | None:
    split, index, side = source.get("split", "test"), source.get("index"), source.get("target_side")
    if index is None or side not in SIDES:
        return None
    sets = _npz(str(path))
    if split not in sets or not 0 <= int(index) < len(sets[split]):
        return None
    data = sets[split]
    perturbed = 1 - SIDES.index(side)
    return data.images[int(index)].astype(np.float64) / 255.0, np.asarray(data.masks[int(index), perturbed], bool)


def _from_manifest(path: Path, line: dict) -> tuple[np.ndarray, np.ndarray] | None:
    source = line.get("source") or {}
    rule = "manifest" if source.get("target_side") == "manifest" else "both"
    job = _manifest_jobs(str(path), str(source.get("split", "test")), rule).get(line["id"])
    return None if job is None else (job.pixels(), np.asarray(job.mask, dtype=bool))


def find_picture(line: dict, dataset: str | Path | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The image (float in [0, 1]) and object mask of a batch line, from ``dataset`` or else from the data set the
    line names; None where they cannot be found or the mask is not the one the line was computed on."""
    source = line.get("source") or {}
    where = dataset or source.get("dataset") or source.get("manifest")
    if not where:
        return None
    path = Path(where)
    try:
        if path.is_file() and path.suffix == ".npz":
            found = _from_npz(path, source)
        elif path.exists():
            found = _from_manifest(path, line)
        else:
            return None
    except (MlrobustError, OSError, ValueError, KeyError):
        return None
    if found is None:
        return None
    recorded = ((line.get("result") or {}).get("object") or {}).get("mask_sha256")
    if recorded is not None and recorded != mask_hash(found[1]):
        return None
    return found
