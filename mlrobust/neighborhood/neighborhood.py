"""Layered neighborhoods: an epsilon per layer around a perturbed object, turned into the verifier's input box.

Every pixel of layer ``d`` (Chebyshev distance ``d`` to the object, in every channel) may change by at most
``eps[d]``; the box is clipped to the valid pixel range [0, 1]. The size of a neighborhood is ``w . eps``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from mlrobust.errors import InputError
from mlrobust.neighborhood.layers import (
    as_mask,
    layer_counts,
    layer_index,
    layer_masks,
    num_layers,
    per_layer_mean,
    per_layer_sum,
    per_layer_sum_batch,
)
from mlrobust.neighborhood.layout import ImageLayout, as_chw
from mlrobust.verify.spec import Box

PIXEL_RANGE = (0.0, 1.0)
# Pixel values a hair outside [0, 1] come from float round-off in image conversions; anything beyond is an error.
_RANGE_TOLERANCE = 1e-6

WEIGHT_KINDS = ("uniform", "count")
WeightSpec = Union[str, Path, Sequence[float], np.ndarray, None]


# --- pure functions over arrays ----------------------------------------------------------------------------------
def eps_vector(eps: float | Sequence[float] | np.ndarray, n_layers: int) -> np.ndarray:
    """``eps`` as a checked float64 vector of length ``n_layers`` (a scalar means the same epsilon everywhere)."""
    arr = np.asarray(eps, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_layers, float(arr))
    if arr.ndim != 1 or arr.shape[0] != n_layers:
        raise InputError(f"expected {n_layers} epsilons (one per layer 0..{n_layers - 1}), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("epsilons must be finite numbers")
    if np.any(arr < 0):
        raise InputError(f"epsilons must be >= 0; layer {int(np.argmin(arr))} has {arr.min():g}")
    return arr


def eps_map(layers: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Per-pixel epsilon (H, W): ``eps[layers]``."""
    return eps_vector(eps, num_layers(layers))[np.asarray(layers)]


def layered_bounds(image_chw: np.ndarray, layers: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper pixel bounds (C, H, W) of the layered neighborhood, clipped to [0, 1]."""
    radius = eps_map(layers, eps)[None, :, :]
    lo = np.clip(image_chw - radius, *PIXEL_RANGE)
    hi = np.clip(image_chw + radius, *PIXEL_RANGE)
    return lo, hi


def neighborhood_size(eps: np.ndarray, weights: np.ndarray) -> float:
    """``w . eps``."""
    eps = np.asarray(eps, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if eps.shape != weights.shape:
        raise InputError(f"{weights.shape[0] if weights.ndim else 1} weights for {eps.shape[0]} epsilons")
    return float(weights @ eps)


def _read_weight_file(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        text = path.read_text()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read weight file {path}: {exc}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"weight file {path} is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            if "weights" not in data:
                raise InputError(f"weight file {path}: a JSON object must have a 'weights' list")
            data = data["weights"]
        try:
            return np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"weight file {path}: weights must be a list of numbers") from None
    # Plain text: numbers separated by whitespace or commas, '#' starts a comment.
    tokens = " ".join(line.split("#", 1)[0] for line in text.splitlines()).replace(",", " ").split()
    try:
        return np.asarray([float(t) for t in tokens], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"weight file {path}: {exc}") from None


def layer_weights(spec: WeightSpec, counts: np.ndarray) -> np.ndarray:
    """The weight vector of a neighborhood with per-layer pixel ``counts``.

    ``spec`` is ``"uniform"`` (all ones, the default), ``"count"`` (each layer's pixel count, so the size counts
    pixel-epsilons), a file (``.json`` list or ``{"weights": [...]}``, ``.npy``, or text of numbers), or a vector.
    """
    counts = np.asarray(counts)
    n = counts.shape[0]
    if spec is None or (isinstance(spec, str) and spec == "uniform"):
        return np.ones(n)
    if isinstance(spec, str) and spec in ("count", "pixels"):
        return counts.astype(np.float64)
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"weights {str(spec)!r} are neither one of {', '.join(WEIGHT_KINDS)} nor a readable file")
        weights = _read_weight_file(path)
        source = f"weight file {path}"
    else:
        try:
            weights = np.asarray(spec, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("weights must be a vector of numbers") from None
        source = "weights"
    weights = np.ravel(weights) if weights.ndim == 2 and 1 in weights.shape else weights
    if weights.ndim != 1 or weights.shape[0] != n:
        raise InputError(f"{source} give {weights.size} values, but the neighborhood has {n} layers (0..{n - 1})")
    if not np.isfinite(weights).all() or np.any(weights < 0):
        raise InputError(f"{source} must be finite and >= 0")
    if not np.any(weights > 0):
        raise InputError(f"{source} are all zero: every neighborhood would have size 0")
    return weights.astype(np.float64)


def check_pixel_range(image: np.ndarray, what: str = "image") -> np.ndarray:
    """``image`` clipped to [0, 1] after checking it lies there (up to float round-off)."""
    image = np.asarray(image, dtype=np.float64)
    if not np.isfinite(image).all():
        raise InputError(f"{what} has non-finite pixel values")
    lo, hi = float(image.min()), float(image.max())
    if lo < PIXEL_RANGE[0] - _RANGE_TOLERANCE or hi > PIXEL_RANGE[1] + _RANGE_TOLERANCE:
        raise InputError(f"{what} pixel values must lie in [0, 1]; found [{lo:g}, {hi:g}]")
    return np.clip(image, *PIXEL_RANGE)


# --- the neighborhood object ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LayeredNeighborhood:
    """An image, its perturbed object and the layers around it; builds boxes for epsilon vectors.

    ``image`` is (C, H, W) in [0, 1]; ``mask`` (H, W) marks the object in every channel; ``layout`` says how the
    image sits in the model input, so :meth:`box` returns a :class:`Box` of the model's per-sample shape.
    """

    image: np.ndarray
    mask: np.ndarray
    layout: ImageLayout
    layers: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        image = check_pixel_range(as_chw(self.image))
        mask = as_mask(self.mask).copy()  # our own copy: it is frozen below
        if image.shape != self.layout.chw:
            raise InputError(f"image of shape {image.shape} does not match the model's (C, H, W) {self.layout.chw}")
        if mask.shape != image.shape[1:]:
            raise InputError(f"object mask is {mask.shape[0]}x{mask.shape[1]} but the image is "
                             f"{image.shape[1]}x{image.shape[2]} (H x W)")
        layers = layer_index(mask)
        for name, value in (("image", image), ("mask", mask), ("layers", layers), ("counts", layer_counts(layers))):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def build(
        cls,
        image: np.ndarray,
        mask: np.ndarray | Sequence[np.ndarray],
        sample_shape: tuple[int, ...] | None = None,
    ) -> "LayeredNeighborhood":
        """Neighborhood of ``image`` ((H, W) or (C, H, W), or the model's per-sample shape when ``sample_shape`` is
        given) around ``mask``: one (H, W) mask or a list of masks of several objects (their union is perturbed)."""
        if isinstance(mask, (list, tuple)):
            if not mask:
                raise InputError("no object mask given")
            masks = [as_mask(m) for m in mask]
            if len({m.shape for m in masks}) != 1:
                raise InputError(f"object masks have different shapes: {sorted({m.shape for m in masks})}")
            mask = np.logical_or.reduce(masks)
        mask = as_mask(np.asarray(mask))
        if sample_shape is None:
            chw = as_chw(image)
            layout = ImageLayout(chw.shape, *chw.shape)
        else:
            layout = ImageLayout.infer(tuple(sample_shape), image_hw=mask.shape)
            arr = np.asarray(image, dtype=np.float64)
            chw = layout.to_chw(arr) if arr.shape == layout.sample_shape else as_chw(arr)
        return cls(chw, mask, layout)

    # --- layers ---------------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """r + 1: layers 0 (the object) .. r (the farthest pixels)."""
        return int(self.counts.shape[0])

    @property
    def radius(self) -> int:
        """r, the largest Chebyshev distance of a pixel to the object."""
        return self.num_layers - 1

    def layer_masks(self) -> np.ndarray:
        """(r + 1, H, W) boolean masks, one per layer."""
        return layer_masks(self.layers, self.num_layers)

    @property
    def x(self) -> np.ndarray:
        """The image in the model's per-sample shape (the neighborhood's centre)."""
        return self.layout.to_sample(self.image)

    # --- epsilons -------------------------------------------------------------------------------------------------
    def eps_vector(self, eps: float | Sequence[float] | np.ndarray) -> np.ndarray:
        return eps_vector(eps, self.num_layers)

    def eps_map(self, eps: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Per-pixel epsilon (H, W)."""
        return eps_map(self.layers, self.eps_vector(eps))

    def bounds_chw(self, eps: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return layered_bounds(self.image, self.layers, self.eps_vector(eps))

    def box(self, eps: float | Sequence[float] | np.ndarray) -> Box:
        """The verifier's input box for ``eps`` in the model's per-sample shape, clipped to [0, 1]."""
        lo, hi = self.bounds_chw(eps)
        return Box(self.layout.to_sample(lo), self.layout.to_sample(hi))

    def contains(self, x: np.ndarray, eps: float | Sequence[float] | np.ndarray, atol: float = 0.0) -> bool:
        """Whether ``x`` (the model's per-sample shape) lies in the neighborhood of ``eps``."""
        return self.box(eps).contains(x, atol=atol)

    def weights(self, spec: WeightSpec = "uniform") -> np.ndarray:
        return layer_weights(spec, self.counts)

    def size(self, eps: float | Sequence[float] | np.ndarray, weights: WeightSpec = "uniform") -> float:
        """``w . eps`` with ``weights`` as in :func:`layer_weights`."""
        return neighborhood_size(self.eps_vector(eps), self.weights(weights))

    # --- gradients ------------------------------------------------------------------------------------------------
    def per_layer_sum(self, values: np.ndarray) -> np.ndarray:
        """Per-layer sums of per-pixel ``values`` given in the model's per-sample shape -> (r + 1,), or for a batch
        (N, *sample_shape) -> (N, r + 1). Channels are summed: each layer's epsilon moves all of them."""
        arr = np.asarray(values, dtype=np.float64)
        chw = self.layout.to_chw(arr)
        if chw.ndim == 4:
            return per_layer_sum_batch(chw, self.layers, self.num_layers)
        return per_layer_sum(chw, self.layers, self.num_layers)

    def per_layer_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of per-pixel ``values`` (the model's per-sample shape) over each layer, channels included -> (r + 1,).
        A per-layer sensitivity from a saliency map, for instance."""
        chw = self.layout.to_chw(np.asarray(values, dtype=np.float64))
        return per_layer_mean(chw, self.layers, self.num_layers)
