"""The images of a batch run: read a data set (a folder with a manifest, or the npz of the data builder) into
self-contained jobs — image, perturbed-object mask and target label — with stable ids.

Each job carries its pixels and mask as arrays, so a worker (a local process or a Dask worker on another machine)
needs neither the data set's files nor its layout. Which object is the target is chosen per image by a *side
rule*:

- ``manifest``: the manifest's own choice (``target_label`` and ``mask`` of the shipped examples);
- an object's name — ``left`` / ``right`` (Double-MNIST), ``left`` / ``middle`` / ``right`` (Triple-MNIST),
  ``obj0`` .. ``obj3`` (RGB objects) — or its 0-based index: that object is the target;
- ``alternate``: the objects in turn (left for even positions in the data set, right for odd ones with two objects:
  how the shipped examples were made);
- ``both`` (or ``each``): one job per object;
- ``auto`` (default): ``manifest`` where the manifest names a target, else ``alternate``.

The perturbed object is chosen by a *perturbed rule*: ``next`` (default; the next object after the target, cyclically,
so with two objects the other one), or an object's name or index. A data set whose images hold different numbers of
objects (the RGB set) gives each job its own ``k`` (its object count), and so does a manifest entry with a ``k``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mlrobust.errors import InputError

SIDE_RULES = ("auto", "manifest", "left", "right", "middle", "alternate", "both", "each")
SIDES = ("left", "right")
PERTURBED_RULES = ("next",)


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
    k: int | None = None  # the image's own top-k (its object count) where the data set says so; else the run's

    def pixels(self) -> np.ndarray:
        """The image as float64 in [0, 1]."""
        if self.image.dtype == np.uint8:
            return self.image.astype(np.float64) / 255.0
        return np.asarray(self.image, dtype=np.float64)


def _named(rule: str, names: tuple[str, ...], present: list[int], what: str) -> int:
    """The object index ``rule`` names (a name of ``names`` or a 0-based index) among the ``present`` objects."""
    index = int(rule) if rule.isdigit() else (names.index(rule) if rule in names else None)
    if index is None or index not in present:
        have = ", ".join(names[j] for j in present)
        raise InputError(f"unknown {what} {rule!r} for an image with the objects {have} (name one, or give its "
                         "0-based index)")
    return index


def _pairs(rule: str, perturbed_rule: str, names: tuple[str, ...], present: list[int],
           position: int) -> list[tuple[int, int]]:
    """(target, perturbed) object indices of one image under the side and perturbed rules."""
    if rule == "alternate":
        targets = [present[position % len(present)]]
    elif rule in ("both", "each"):
        targets = list(present)
    else:
        targets = [_named(rule, names, present, "target side")]
    pairs = []
    for t in targets:
        if perturbed_rule == "next":
            p = present[(present.index(t) + 1) % len(present)]
        else:
            p = _named(perturbed_rule, names, present, "perturbed side")
            if p == t:
                raise InputError(f"the perturbed object {perturbed_rule!r} is also the target; choose another one")
        pairs.append((t, p))
    return pairs


def _check_rule(rule: str) -> None:
    if rule not in SIDE_RULES and not rule.isdigit() and not (rule.startswith("obj") and rule[3:].isdigit()):
        raise InputError(f"unknown target side rule {rule!r}; choose one of {', '.join(SIDE_RULES)}, an object "
                         "name (obj0, ...) or a 0-based index")


def _select(n: int, start: int, limit: int | None) -> range:
    if start < 0:
        raise InputError(f"--start must be >= 0, got {start}")
    if limit is not None and limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    stop = n if limit is None else min(n, start + limit)
    return range(min(start, n), stop)


# --- npz from ``mlrobust data double-mnist`` -------------------------------------------------------------------------
def npz_jobs(path: Path, split: str = "test", side_rule: str = "auto", start: int = 0,
             limit: int | None = None, perturbed_rule: str = "next") -> Iterator[Job]:
    """Jobs from a data-builder npz: image ``i`` of ``split`` with the target object chosen by ``side_rule`` and
    the perturbed one by ``perturbed_rule``."""
    from mlrobust.data.double_mnist import load_npz, object_names

    _check_rule(side_rule)
    if side_rule == "manifest":
        raise InputError("an npz data set names no target per image; use --target-side with an object name, "
                         "alternate or both")
    sets = load_npz(path)
    if split not in sets:
        raise InputError(f"{path} has no split {split!r}; it holds {', '.join(sorted(sets))}")
    data = sets[split]
    rule = "alternate" if side_rule == "auto" else side_rule
    names = object_names(data.masks.shape[1])
    digits_all = np.asarray(data.digits).astype(np.int64)
    counts = data.object_counts()
    varying = bool(len(data)) and bool(np.any(counts != data.masks.shape[1]))
    for i in _select(len(data), start, limit):
        image = np.asarray(data.images[i], dtype=np.uint8)
        digits = digits_all[i]
        present = [int(j) for j in np.flatnonzero(digits >= 0)]
        for t, p in _pairs(rule, perturbed_rule, names, present, i):
            yield Job(
                id=f"{split}/{i:05d}/{names[t]}",
                image=image,
                mask=np.asarray(data.masks[i, p], dtype=bool),
                target=int(digits[t]),
                source={"dataset": str(path), "split": split, "index": int(i), "target_side": names[t],
                        "perturbed_side": names[p], "digits": [int(digits[j]) for j in present],
                        "perturbed_label": int(digits[p])},
                k=len(present) if varying else None,
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
                     "with a manifest or an npz file from 'mlrobust data'")


def _entry_masks(entry: dict, root: Path) -> dict[str, Path] | None:
    """The per-object mask files of an entry by object name, where the manifest says which object each is (else
    None)."""
    if isinstance(entry.get("masks"), list) and len(entry["masks"]) >= 2:  # data builder: one per object, in order
        # The builder names each mask file <image>_<object>.png.
        return {Path(m).stem.rsplit("_", 1)[-1]: root / m for m in entry["masks"]}
    if "mask" in entry and "target_mask" in entry and isinstance(entry.get("target"), dict):
        t_side = entry["target"].get("side")
        if t_side in SIDES:
            other = SIDES[1 - SIDES.index(t_side)]
            return {t_side: root / entry["target_mask"], other: root / entry["mask"]}
    return None


def manifest_jobs(path: Path, split: str = "test", side_rule: str = "auto", start: int = 0,
                  limit: int | None = None, perturbed_rule: str = "next") -> Iterator[Job]:
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
                       "digits": digits, "perturbed_label": perturbed, "target_side": "manifest"},
                      k=int(entry["k"]) if "k" in entry else None)
            continue
        masks = _entry_masks(entry, root)
        if masks is None or not isinstance(digits, list) or len(digits) != len(masks):
            raise InputError(f"{manifest_path}: entry {base!r} has no per-object masks and digits, so "
                             f"--target-side {side_rule} cannot choose a target")
        names = tuple(masks)
        for t, p in _pairs(rule, perturbed_rule, names, list(range(len(names))), pos):
            mask_path = masks[names[p]]
            yield Job(f"{base}/{names[t]}", image, read_mask(mask_path, image.shape[-2:]), int(digits[t]),
                      {"manifest": str(manifest_path), "file": entry["file"],
                       "mask": str(mask_path.relative_to(root)), "digits": [int(d) for d in digits],
                       "perturbed_label": int(digits[p]), "target_side": names[t], "perturbed_side": names[p]},
                      k=int(entry["k"]) if "k" in entry else None)


def load_jobs(dataset: str | Path, split: str = "test", side_rule: str = "auto", start: int = 0,
              limit: int | None = None, perturbed_rule: str = "next") -> list[Job]:
    """Every job of ``dataset`` (an ``.npz`` file, a manifest, or a folder with one), in data-set order."""
    path = Path(dataset)
    if not path.exists():
        raise InputError(f"data set {str(path)!r} does not exist")
    if path.is_file() and path.suffix == ".npz":
        jobs = list(npz_jobs(path, split, side_rule, start, limit, perturbed_rule))
    else:
        jobs = list(manifest_jobs(path, split, side_rule, start, limit, perturbed_rule))
    seen: set[str] = set()
    for job in jobs:
        if job.id in seen:
            raise InputError(f"{path}: two images have the id {job.id!r}; ids must be unique to resume a run")
        seen.add(job.id)
    return jobs
