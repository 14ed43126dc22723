"""Read the results files of ``mlrobust batch`` (one JSON line per image) into runs, and runs into tables: one row
per run and image, or one per run, image and layer.

Only the numbers of the JSON lines are read (ε per layer, the refuted ε and status of each layer's maximality
check, sizes, times, labels); pictures are optional and found elsewhere (:mod:`mlrobust.report.pictures`). Every
problem with a file — missing, not JSON lines, no finished search, images that differ between the runs to be
compared — is one :class:`~mlrobust.errors.InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlrobust.errors import InputError
from mlrobust.report.table import Table

BATCH_SCHEMA = "mlrobust.batch/1"

#: Columns of the per-image table (:func:`image_table`), in order.
IMAGE_COLUMNS = ("run", "image", "target", "object_label", "method", "verified", "size", "eps0", "object_radius",
                 "uniform_radius", "uniform_size", "seconds", "layers", "layers_proven", "layers_refuted",
                 "layers_certified", "delta", "k")
#: Columns of the per-layer table (:func:`layer_table`), in order.
LAYER_COLUMNS = ("run", "image", "target", "object_label", "layer", "pixels", "eps", "refuted_eps", "status",
                 "certified")


@dataclass
class Run:
    """One results file: its name in the report (the model, see :func:`name_runs`), the finished lines (status
    ``done``) in file order, and how many lines were errors or were left unfinished."""

    name: str
    path: Path
    lines: list[dict]
    errors: int = 0
    error_ids: list[str] = field(default_factory=list)
    unfinished_bytes: int = 0

    @property
    def ids(self) -> list[str]:
        return [line["id"] for line in self.lines]

    @property
    def model(self) -> str:
        return str(self.lines[0]["result"].get("model", {}).get("path") or "?")

    @property
    def method(self) -> str:
        return str(self.lines[0]["result"].get("method") or "?")


def _parse_lines(path: Path) -> tuple[list[dict], int]:
    """The result lines of ``path`` (the last line per image id wins, as for a resumed run) and the bytes of an
    unfinished last line (a batch still writing it); any other line that is not a batch line is an error."""
    if path.is_dir():
        raise InputError(f"results file {str(path)!r} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"results file {str(path)!r} does not exist")
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    unfinished = len(data) - end
    if unfinished and not data[end:].strip():
        unfinished = 0
    by_id: dict[str, dict] = {}
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise InputError(f"{path}: line {number} is not JSON; a results file holds the JSON lines of "
                             "'mlrobust batch'") from None
        if not isinstance(obj, dict) or obj.get("schema") != BATCH_SCHEMA or not isinstance(obj.get("id"), str):
            raise InputError(f"{path}: line {number} is not a line of 'mlrobust batch' (schema {BATCH_SCHEMA})")
        if obj.get("status") == "done" and not isinstance(obj.get("result"), dict):
            raise InputError(f"{path}: line {number} (image {obj['id']!r}) says done but carries no result")
        by_id[obj["id"]] = obj
    if unfinished and not by_id:
        raise InputError(f"{path}: not JSON lines (no complete line); a results file holds the JSON lines of "
                         "'mlrobust batch'")
    return list(by_id.values()), unfinished


def read_run(path: str | Path) -> Run:
    """One results file as a :class:`Run` (named after its file until :func:`name_runs` names it)."""
    p = Path(path)
    lines, unfinished = _parse_lines(p)
    if not lines:
        raise InputError(f"results file {str(p)!r} is empty: it holds no lines of 'mlrobust batch'")
    done = [line for line in lines if line.get("status") == "done"]
    errors = [line["id"] for line in lines if line.get("status") != "done"]
    if not done:
        raise InputError(f"results file {str(p)!r} holds no finished search: all {len(lines)} line(s) are errors "
                         "(see their 'error' field; 'mlrobust batch --retry-errors' runs them again)")
    return Run(p.stem, p, done, len(errors), errors, unfinished)


def name_runs(runs: list[Run]) -> list[Run]:
    """Name each run after its model file; where two runs share a model, after model and method; where that is not
    unique either, after the results file (with its folder if need be)."""
    candidates = [
        [Path(r.model).stem for r in runs],
        [f"{Path(r.model).stem} ({r.method})" for r in runs],
        [r.path.stem for r in runs],
        [str(r.path) for r in runs],
    ]
    for names in candidates:
        if len(set(names)) == len(names) and "?" not in names:
            for run, name in zip(runs, names):
                run.name = name
            return runs
    for i, run in enumerate(runs):
        run.name = f"{i + 1}: {run.path}"
    return runs


def _image_key(line: dict) -> tuple[Any, ...]:
    """What must agree for two runs' lines of one id to be the same question: target and (where known) image."""
    result = line.get("result") or {}
    image = result.get("image", {}) if isinstance(result.get("image"), dict) else {}
    return line.get("target"), image.get("array_sha256"), (result.get("object") or {}).get("mask_sha256")


def check_same_images(runs: list[Run]) -> None:
    """Runs compared side by side must hold the same images (ids, targets, pixels and masks where the lines carry
    their hashes); otherwise one clear error."""
    if len(runs) < 2:
        return
    first = runs[0]
    every_first = set(first.ids) | set(first.error_ids)
    for other in runs[1:]:
        every_other = set(other.ids) | set(other.error_ids)
        if every_first != every_other:
            only_a = sorted(every_first - every_other)
            only_b = sorted(every_other - every_first)
            example = f"{only_a[0]!r} only in {first.path}" if only_a else f"{only_b[0]!r} only in {other.path}"
            raise InputError(f"mismatched images across models: {first.path} and {other.path} do not hold the same "
                             f"images ({len(only_a)} only in the first, {len(only_b)} only in the second, e.g. "
                             f"{example}); compare runs of the same data set, split, --start/--limit and "
                             "--target-side")
        lines_a = {line["id"]: line for line in first.lines}
        for line in other.lines:
            a = lines_a.get(line["id"])
            if a is None:
                continue
            ka, kb = _image_key(a), _image_key(line)
            if any(x is not None and y is not None and x != y for x, y in zip(ka, kb)):
                raise InputError(f"mismatched images across models: image {line['id']!r} has another target, pixels "
                                 f"or object mask in {other.path} than in {first.path}")


def read_runs(paths: Sequence[str | Path] | str | Path) -> list[Run]:
    """Read, name and check the results files to report on (several files: the same images, several models)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise InputError("no results file given")
    runs = [read_run(p) for p in paths]
    resolved = [r.path.resolve() for r in runs]
    if len(set(resolved)) != len(resolved):
        raise InputError("the same results file is given twice")
    name_runs(runs)
    check_same_images(runs)
    return runs


def _object_label(line: dict) -> int | None:
    label = (line.get("source") or {}).get("perturbed_label")
    if label is None:
        label = (line["result"].get("object") or {}).get("label")
    return None if label is None else int(label)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _uniform_size(result: dict, radius: float) -> float:
    """``w · ε`` of the uniform vector of ``radius``, each layer clipped at its saturation (as the search clips)."""
    weights = np.asarray(result.get("weights") or [], dtype=np.float64)
    sat = np.asarray(result.get("saturation") or np.ones_like(weights), dtype=np.float64)
    return float(weights @ np.minimum(radius, sat))


def image_rows(run: Run) -> list[dict[str, Any]]:
    """One dict per finished image of ``run`` (the columns of :data:`IMAGE_COLUMNS`)."""
    rows = []
    for line in run.lines:
        r = line["result"]
        eps = np.asarray(r.get("epsilons") or [], dtype=np.float64)
        checks = r.get("maximality") or []
        radius = (r.get("baseline") or {}).get("uniform_radius")
        rows.append({
            "run": run.name, "image": line["id"], "target": int(line.get("target", r.get("target"))),
            "object_label": _object_label(line), "method": r.get("method"), "verified": bool(r.get("verified")),
            "size": _float(r.get("size")), "eps0": float(eps[0]) if eps.size else float("nan"),
            "object_radius": _float((r.get("object") or {}).get("radius_alone")),
            "uniform_radius": _float(radius),
            "uniform_size": float("nan") if radius is None else _uniform_size(r, float(radius)),
            "seconds": _float(line.get("seconds")), "layers": int(eps.size),
            "layers_proven": int(np.count_nonzero(eps > 0)),
            "layers_refuted": sum(1 for m in checks if m.get("refuted_eps") is not None),
            "layers_certified": sum(1 for m in checks if m.get("certified")),
            "delta": _float(r.get("delta")), "k": int(r.get("k") or 0),
        })
    return rows


def layer_rows(run: Run) -> list[dict[str, Any]]:
    """One dict per layer of every finished image of ``run`` (the columns of :data:`LAYER_COLUMNS`)."""
    rows = []
    for line in run.lines:
        r = line["result"]
        eps = r.get("epsilons") or []
        counts = r.get("layer_counts") or [None] * len(eps)
        checks = {int(m["layer"]): m for m in r.get("maximality") or []}
        target, label = int(line.get("target", r.get("target"))), _object_label(line)
        for d, (e, n) in enumerate(zip(eps, counts)):
            m = checks.get(d, {})
            rows.append({"run": run.name, "image": line["id"], "target": target, "object_label": label, "layer": d,
                         "pixels": None if n is None else int(n), "eps": float(e),
                         "refuted_eps": _float(m.get("refuted_eps")), "status": m.get("status", "unchecked"),
                         "certified": bool(m.get("certified", False))})
    return rows


def image_table(runs: list[Run]) -> Table:
    """One row per run and finished image."""
    return Table.from_rows([row for run in runs for row in image_rows(run)], IMAGE_COLUMNS)


def layer_table(runs: list[Run]) -> Table:
    """One row per run, finished image and layer (layer = Chebyshev distance to the object; 0 = the object)."""
    return Table.from_rows([row for run in runs for row in layer_rows(run)], LAYER_COLUMNS)
