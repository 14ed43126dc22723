"""What a search or a single check returns: dataclasses with everything needed to re-check the result, and JSON.

The JSON carries the epsilons (layer 0 = the object), weights, size, k, target, the object mask (as rows of 0/1),
per-layer maximality with counterexamples, verdict statistics by tier, MILP calls, timings, and hashes of the model
and the image with the versions of the tools, so a reader can rebuild the box and verify it independently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.jsonvalues import jsonable
from mlrobust.search.maximality import LayerMaximality
from mlrobust.search.problem import QueryStats

SCHEMA = "mlrobust.search/1"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_array(arr: np.ndarray) -> str:
    """Hash of an array's dtype, shape and bytes (float64, C order)."""
    a = np.ascontiguousarray(np.asarray(arr, dtype=np.float64))
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def network_hash(network: Any) -> str:
    """Hash of everything that defines a network's function (for networks not read from a file): its input, and
    for every node in order its inputs, output, shape, op kind and *every* op attribute — arrays by dtype, shape and
    bytes (float64), other values by ``repr`` (strides, paddings, groups, an Add's coefficient, ...). Two networks
    that compute different functions never share a hash through a forgotten attribute."""
    h = hashlib.sha256()
    h.update(f"input:{network.input_name}:{tuple(network.input_shape)}:output:{network.output_name}".encode())
    for node in network.nodes:
        h.update(f"|{node.name}:{node.op.kind}:{tuple(node.inputs)}:{node.output}:{tuple(node.out_shape)}".encode())
        for f in dataclasses.fields(node.op):
            value = getattr(node.op, f.name)
            if isinstance(value, np.ndarray):
                h.update(f";{f.name}=array".encode())
                h.update(sha256_array(value).encode())
            else:
                h.update(f";{f.name}={value!r}".encode())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of mlrobust and the libraries a result depends on (missing ones are left out)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("mlrobust", "numpy", "scipy", "torch", "pyomo", "highspy", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class Provenance:
    """Where the model and the image came from (path if any) and their hashes."""

    model_path: str | None
    model_sha256: str
    image_path: str | None
    image_sha256: str
    image_array_sha256: str
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict:
        return {"model": {"path": self.model_path, "sha256": self.model_sha256},
                "image": {"path": self.image_path, "sha256": self.image_sha256,
                          "array_sha256": self.image_array_sha256},
                "versions": self.versions}


@dataclass
class SearchResult:
    """The maximal robust layered neighborhood found for one image, target and object."""

    method: str
    cutting: str | None
    target: int
    k: int
    epsilons: np.ndarray
    weights: np.ndarray
    layer_counts: np.ndarray
    saturation: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    verified: bool
    proof_tier: str
    maximality: list[LayerMaximality]
    stats: QueryStats
    timings: dict[str, float]
    stop_reason: str
    delta: float
    clean_margin: float
    clean_topk: list[int]
    object_source: str = ""
    object_label: int | None = None
    verifier: str = ""
    iterations: int = 0
    trace: list[tuple[float, float]] = field(default_factory=list)
    provenance: Provenance | None = None
    details: dict = field(default_factory=dict)
    interrupted: bool = False  # stopped by Ctrl-C: the largest vector proven so far, not a finished search
    object_radius: float | None = None  # the object's own robust radius (layer 0 alone), where the search found it
    never_tried: list[str] = field(default_factory=list)  # parts of the search the time limit cut off, in words

    @property
    def size(self) -> float:
        """``w . eps*``."""
        return float(np.asarray(self.weights) @ np.asarray(self.epsilons))

    @property
    def eps0(self) -> float:
        """The object's epsilon (layer 0): the answer to the question the user asks first."""
        return float(self.epsilons[0])

    @property
    def nothing_proven(self) -> bool:
        """Whether no layer got an epsilon above 0: the search proved nothing but the clean image (a time limit
        too short for it, or a network too large for its verifier). Such a result is *unknown*, not robust."""
        return not bool(np.any(np.asarray(self.epsilons) > 0))

    @property
    def uniform_size(self) -> float | None:
        """``w . eps`` of one epsilon for every layer, at the uniform robust radius the search proved first (on its
        cheap tiers, without the object's floor), or None where it did not: the simplest baseline, for comparison."""
        radius = self.details.get("delta_auto", {}).get("uniform_radius")
        if radius is None:
            return None
        return float(np.asarray(self.weights) @ np.minimum(float(radius), np.asarray(self.saturation)))

    @property
    def refuted_layers(self) -> int:
        """Layers with a known refuted epsilon (a confirmed counterexample above their epsilon)."""
        return sum(1 for m in self.maximality if m.refuted_eps is not None)

    @property
    def saturated_layers(self) -> int:
        """Layers whose epsilon already spans the whole pixel range."""
        return sum(1 for m in self.maximality if m.status == "saturated")

    @property
    def upper_bounded_layers(self) -> int:
        """Layers with a known refuted epsilon (or saturated: nothing above to find)."""
        return sum(1 for m in self.maximality if m.refuted_eps is not None or m.status == "saturated")

    @property
    def median_gap(self) -> float | None:
        """Median of ``refuted_eps - eps*`` over the layers with an upper bound (saturated ones count 0)."""
        gaps = [0.0 if m.status == "saturated" or m.gap is None else float(m.gap) for m in self.maximality
                if m.status == "saturated" or m.gap is not None]
        return float(np.median(gaps)) if gaps else None

    @property
    def median_gap_ratio(self) -> float | None:
        """Median of ``eps*_d / refuted_eps_d`` over the layers with an upper bound (1 = at the boundary)."""
        ratios = [1.0 if m.status == "saturated" else (m.eps / m.refuted_eps if m.refuted_eps else 0.0)
                  for m in self.maximality if m.status == "saturated" or m.refuted_eps is not None]
        return float(np.median(ratios)) if ratios else None

    def summary(self) -> dict:
        """The headline numbers: size, the object's epsilon, certified layers, layers by status, upper bounds
        (``refuted_layers``: with a counterexample; ``upper_bounded_layers`` counts the saturated ones too) and
        gaps, whether anything was proven, and what the time limit cut off."""
        return {"size": self.size, "eps0": self.eps0, "object_radius_alone": self.object_radius,
                "certified_layers": self.certified_layers, "layers": self.num_layers,
                "upper_bounded_layers": self.upper_bounded_layers, "refuted_layers": self.refuted_layers,
                "saturated_layers": self.saturated_layers, "statuses": self.maximality_counts(),
                "median_gap": self.median_gap, "median_gap_ratio": self.median_gap_ratio,
                "nothing_proven": self.nothing_proven, "never_tried": list(self.never_tried),
                "object_floor": self.details.get("object", {}).get("floor"), "uniform_size": self.uniform_size,
                "interrupted": self.interrupted}

    @property
    def num_layers(self) -> int:
        return int(len(self.epsilons))

    @property
    def certified_layers(self) -> int:
        """Layers proven unable to grow by ``delta`` (refuted or saturated)."""
        return sum(1 for m in self.maximality if m.certified)

    @property
    def eps_map(self) -> np.ndarray:
        """Per-pixel epsilon (H, W)."""
        from mlrobust.neighborhood.layers import layer_index

        return np.asarray(self.epsilons)[layer_index(self.mask)]

    def maximality_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.maximality:
            out[m.status] = out.get(m.status, 0) + 1
        return out

    def to_json(self, with_counterexamples: bool = True, arrays: dict[str, np.ndarray] | None = None) -> dict:
        """The result as plain JSON data. With ``arrays`` (a dict to fill), the object mask, the per-pixel epsilons
        and the counterexamples go there instead, each replaced by ``{"array": key}`` (see :mod:`outputs`)."""
        mask: Any = self.mask.astype(np.uint8)
        if arrays is not None:
            arrays["object_mask"] = np.asarray(self.mask, dtype=bool)
            arrays["eps_map"] = self.eps_map
            mask = {"array": "object_mask"}
        data = {
            "schema": SCHEMA,
            "method": self.method,
            "cutting": self.cutting,
            "target": self.target,
            "k": self.k,
            "epsilons": self.epsilons,
            "weights": self.weights,
            "size": self.size,
            "layer_counts": self.layer_counts,
            "saturation": self.saturation,
            "delta": self.delta,
            "verified": self.verified,
            "proof_tier": self.proof_tier,
            "clean": {"margin": self.clean_margin, "top_k": self.clean_topk},
            "interrupted": self.interrupted,
            "summary": self.summary(),
            "object": {"source": self.object_source, "label": self.object_label, "eps": self.eps0,
                       "radius_alone": self.object_radius,
                       "refuted_alone": self.details.get("object", {}).get("refuted_alone"),
                       "mask": mask, "pixels": int(np.count_nonzero(self.mask))},
            "maximality": [m.to_dict(with_counterexamples, arrays) for m in self.maximality],
            "certified_layers": self.certified_layers,
            "statistics": self.stats.to_dict(),
            "timings": self.timings,
            "stop_reason": self.stop_reason,
            "iterations": self.iterations,
            "verifier": self.verifier,
            "trace": [{"seconds": t, "size": s} for t, s in self.trace],
            "details": self.details,
        }
        if self.provenance is not None:
            data.update(self.provenance.to_dict())
        return jsonable(data)

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON and its ``.npz`` side file (the arrays); returns the side file's path."""
        from mlrobust.search.outputs import json_with_side_file, side_file_path

        Path(path).write_text(json.dumps(json_with_side_file(self, path), indent=1))
        return side_file_path(path)


@dataclass
class CheckResult:
    """The verdict on one given neighborhood (``mlrobust.check``)."""

    status: str  # "robust", "not_robust", "unknown"
    tier: str
    target: int
    k: int
    epsilons: np.ndarray
    weights: np.ndarray
    layer_counts: np.ndarray
    mask: np.ndarray
    size: float
    seconds: dict[str, float]
    bound: float | None = None
    counterexample: np.ndarray | None = None
    margin: float | None = None
    reason: str = ""
    clean_margin: float = float("nan")
    clean_topk: list[int] = field(default_factory=list)
    verifier: str = ""
    verdict: Any = None
    provenance: Provenance | None = None
    image: np.ndarray | None = None
    object_source: str = ""  # how the perturbed object was chosen (mask, box, auto, ...)
    object_label: int | None = None  # the label the automatically chosen object was picked for

    @property
    def robust(self) -> bool:
        return self.status == "robust"

    def to_json(self, arrays: dict[str, np.ndarray] | None = None) -> dict:
        """The verdict as plain JSON data; with ``arrays`` the mask and the counterexample go there (see
        :meth:`SearchResult.to_json`)."""
        mask: Any = self.mask.astype(np.uint8)
        counterexample: Any = self.counterexample
        if arrays is not None:
            arrays["mask"] = np.asarray(self.mask, dtype=bool)
            mask = {"array": "mask"}
            if self.counterexample is not None:
                arrays["counterexample"] = np.asarray(self.counterexample)
                counterexample = {"array": "counterexample"}
        data = {"schema": "mlrobust.check/1", "status": self.status, "tier": self.tier, "target": self.target,
                "k": self.k, "epsilons": self.epsilons, "weights": self.weights, "size": self.size,
                "layer_counts": self.layer_counts, "mask": mask, "seconds": self.seconds,
                "bound": self.bound, "margin": self.margin, "reason": self.reason,
                "counterexample": counterexample, "clean": {"margin": self.clean_margin,
                                                                 "top_k": self.clean_topk},
                "verifier": self.verifier,
                "object": {"source": self.object_source, "label": self.object_label,
                           "pixels": int(np.count_nonzero(self.mask))}}
        if self.provenance is not None:
            data.update(self.provenance.to_dict())
        return jsonable(data)

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON and its ``.npz`` side file (the arrays); returns the side file's path."""
        from mlrobust.search.outputs import json_with_side_file, side_file_path

        Path(path).write_text(json.dumps(json_with_side_file(self, path), indent=1))
        return side_file_path(path)
