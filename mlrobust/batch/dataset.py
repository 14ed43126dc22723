"""The images of a batch run: read a data set (a folder with a manifest, or the npz of the data builder) into
self-contained jobs — image, perturbed-object mask and target label — with stable ids.

Each job carries its pixels and mask as arrays, so a worker (a local process or a Dask worker on another machine)
needs neither the data set's files nor its layout. Which digit is the target and which one is perturbed is chosen
per image by a *side rule*:

- ``manifest``: the manifest's own choice (``target_label`` and ``mask`` of the shipped examples);
- ``left`` / ``right``: that digit is the target, the other one is perturbed;
- ``alternate``: left for even positions in the data set, right for odd ones (how the shipped examples were made);
- ``both``: two jobs per image, one per side;
- ``auto`` (default): ``manifest`` where the manifest names a target, else ``alternate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mlrobust.errors import InputError

SIDE_RULES = ("auto", "manifest", "left", "right", "alternate", "both")
SIDES = ("left", "right")


def compact(image: np.ndarray) -> np.ndarray:
    """8-bit images as uint8 (0..255, an eighth of the float64 bytes to ship to workers); others unchanged."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    scaled = np.asarray(arr, dtype=np.float64) * 255.0
    levels = np.round(scaled)
    if np.all(np.abs(scaled - levels) < 1e-6) and levels.min() >= 0 and levels.max() <= 255:
        return levels.astype(np.uint8)
    return np.asarray(arr, dtype=np.float64)


@dataclass
class Job:
    """One image to verify: ``image`` (H, W) or (C, H, W) — uint8 0..255 or float in [0, 1] —, the perturbed
    object's ``mask`` (H, W), the ``target`` label, and where it came from (``source``: file names or the npz
    index, digits, side)."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    target: int
    source: dict[str, Any] = field(default_factory=dict)

    def pixels(self) -> np.ndarray:
        """The image as float64 in [0, 1]."""
        if self.image.dtype == np.uint8:
            return self.image.astype(np.float64) / 255.0
        return np.asarray(self.image, dtype=np.float64)


def _sides(rule: str, position: int) -> list[str]:
    if rule in SIDES:
        return [rule]
    if rule == "alternate":
        return [SIDES[position % 2]]
    if rule == "both":
        return list(SIDES)
    raise InputError(f"unknown target side rule {rule!r}; choose one of {', '.join(SIDE_RULES)}")


def _check_rule(rule: str) -> None:
    if rule not in SIDE_RULES:
        raise InputError(f"unknown target side rule {rule!r}; choose one of {', '.join(SIDE_RULES)}")


def _select(n: int, start: int, limit: int | None) -> range:
    if start < 0:
        raise InputError(f"--start must be >= 0, got {start}")
    if limit is not None and limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    stop = n if limit is None else min(n, start + limit)
    return range(min(start, n), stop)


# --- npz from ``mlrobust data double-mnist`` -------------------------------------------------------------------------
def npz_jobs(path: Path, split: str = "test", side_rule: str = "auto", start: int = 0,
             limit: int | None = None) -> Iterator[Job]:
    """Jobs from a Double-MNIST npz: image ``i`` of ``split`` with the target digit chosen by ``side_rule``."""
    from mlrobust.data.double_mnist import load_npz

    _check_rule(side_rule)
    if side_rule == "manifest":
        raise InputError("an npz data set names no target per image; use --target-side left, right, alternate "
                         "or both")
    sets = load_npz(path)
    if split not in sets:
        raise InputError(f"{path} has no split {split!r}; it holds {', '.join(sorted(sets))}")
    data = sets[split]
    rule = "alternate" if side_rule == "auto" else side_rule
    for i in _select(len(data), start, limit):
        image = np.asarray(data.images[i], dtype=np.uint8)
        for side in _sides(rule, i):
            t, p = SIDES.index(side), 1 - SIDES.index(side)
            yield Job(
                id=f"{split}/{i:05d}/{side}",
                image=image,
                mask=np.asarray(data.masks[i, p], dtype=bool),
                target=int(data.digits[i, t]),
                source={"dataset": str(path), "split": split, "index": int(i), "target_side": side,
                        "digits": [int(d) for d in data.digits[i]], "perturbed_label": int(data.digits[i, p])},
            )


# --- folders with a manifest ------------------------------------------------------------------------------------------
def find_manifest(path: Path, split: str = "test") -> Path:
    """The manifest of ``path``: the file itself, ``path/manifest.json``, or ``path/<split>/manifest.json`` (the
    PNG folders of the data builder hold one folder per split)."""
    if path.is_file():
        return path
    for candidate in (path / "manifest.json", path / split / "manifest.json"):
        if candidate.is_file():
            return candidate
    raise InputError(f"{path} holds no manifest.json (nor {split}/manifest.json); a batch data set is a folder "
                     "with a manifest or an npz file from 'mlrobust data double-mnist'")


def _entry_masks(entry: dict, root: Path) -> dict[str, Path] | None:
    """The per-side mask files of an entry, where the manifest says which side each is (else None)."""
    if isinstance(entry.get("masks"), list) and len(entry["masks"]) == 2:  # data builder: [left, right]
        return {"left": root / entry["masks"][0], "right": root / entry["masks"][1]}
    if "mask" in entry and "target_mask" in entry and isinstance(entry.get("target"), dict):
        t_side = entry["target"].get("side")
        if t_side in SIDES:
            other = SIDES[1 - SIDES.index(t_side)]
            return {t_side: root / entry["target_mask"], other: root / entry["mask"]}
    return None


def manifest_jobs(path: Path, split: str = "test", side_rule: str = "auto", start: int = 0,
                  limit: int | None = None) -> Iterator[Job]:
    """Jobs from a manifest (the shipped examples' format, or the data builder's PNG folders)."""
    from mlrobust.neighborhood.image_io import read_image, read_mask

    _check_rule(side_rule)
    manifest_path = find_manifest(path, split)
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {manifest_path} as a manifest with an 'images' list: {exc}") from None
    root = manifest_path.parent
    for pos in _select(len(entries), start, limit):
        entry = entries[pos]
        if not isinstance(entry, dict) or "file" not in entry:
            raise InputError(f"{manifest_path}: entry {pos} has no 'file'")
        base = str(entry.get("id") or Path(entry["file"]).stem)
        digits = entry.get("digits")
        rule = side_rule
        if rule == "auto":
            rule = "manifest" if "target_label" in entry else "alternate"
        image_file = root / entry["file"]
        image = compact(read_image(image_file))
        if rule == "manifest":
            if "target_label" not in entry or "mask" not in entry:
                raise InputError(f"{manifest_path}: entry {base!r} names no 'target_label' and 'mask'; use "
                                 "--target-side left, right, alternate or both")
            mask_file = root / entry["mask"]
            perturbed = entry.get("perturbed", {}).get("digit") if isinstance(entry.get("perturbed"), dict) else None
            yield Job(base, image, read_mask(mask_file, image.shape[-2:]), int(entry["target_label"]),
                      {"manifest": str(manifest_path), "file": entry["file"], "mask": entry["mask"],
                       "digits": digits, "perturbed_label": perturbed, "target_side": "manifest"})
            continue
        masks = _entry_masks(entry, root)
        if masks is None or not isinstance(digits, list) or len(digits) != 2:
            raise InputError(f"{manifest_path}: entry {base!r} has no per-side masks and digits, so "
                             f"--target-side {side_rule} cannot choose a target")
        for side in _sides(rule, pos):
            t, p = SIDES.index(side), 1 - SIDES.index(side)
            other = SIDES[p]
            yield Job(f"{base}/{side}", image, read_mask(masks[other], image.shape[-2:]), int(digits[t]),
                      {"manifest": str(manifest_path), "file": entry["file"],
                       "mask": str(masks[other].relative_to(root)), "digits": [int(d) for d in digits],
                       "perturbed_label": int(digits[p]), "target_side": side})


def load_jobs(dataset: str | Path, split: str = "test", side_rule: str = "auto", start: int = 0,
              limit: int | None = None) -> list[Job]:
    """Every job of ``dataset`` (an ``.npz`` file, a manifest, or a folder with one), in data-set order."""
    path = Path(dataset)
    if not path.exists():
        raise InputError(f"data set {str(path)!r} does not exist")
    if path.is_file() and path.suffix == ".npz":
        jobs = list(npz_jobs(path, split, side_rule, start, limit))
    else:
        jobs = list(manifest_jobs(path, split, side_rule, start, limit))
    seen: set[str] = set()
    for job in jobs:
        if job.id in seen:
            raise InputError(f"{path}: two images have the id {job.id!r}; ids must be unique to resume a run")
        seen.add(job.id)
    return jobs
