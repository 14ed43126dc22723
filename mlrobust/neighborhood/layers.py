"""Layers around a perturbed object: the Chebyshev (chessboard) distance of every pixel to the object.

Layer ``d`` is the set of pixels whose L-inf distance to the nearest object pixel is exactly ``d``; layer 0 is the
object itself. The distance map is computed by scipy's chessboard chamfer transform, which is exact for this metric
(two raster passes, no loop over pixel pairs).
"""

from __future__ import annotations

import numpy as np

from mlrobust.errors import InputError


def as_mask(mask: np.ndarray, what: str = "object mask") -> np.ndarray:
    """``mask`` as a 2-D boolean array (non-zero = object); an error if it is not 2-D."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D (H, W) array, got shape {arr.shape}")
    return arr.astype(bool, copy=False) if arr.dtype == bool else arr != 0


def chebyshev_distance(mask: np.ndarray) -> np.ndarray:
    """Chebyshev (L-inf) distance of each pixel to the nearest pixel of ``mask`` (int64, 0 on the object)."""
    mask = as_mask(mask)
    if not mask.any():
        raise InputError("object mask is empty: it selects no pixel")
    from scipy import ndimage  # here, not at the top: scipy.ndimage takes 0.2 s to import (command-line start-up)

    # distance_transform_cdt measures, for every non-zero element, the distance to the nearest zero element; the
    # object's pixels are therefore the zeros of its input.
    dist = ndimage.distance_transform_cdt(~mask, metric="chessboard")
    return dist.astype(np.int64, copy=False)


def layer_index(mask: np.ndarray) -> np.ndarray:
    """The layer of every pixel (H, W): its Chebyshev distance to the object, layer 0 being the object."""
    return chebyshev_distance(mask)


def num_layers(layers: np.ndarray) -> int:
    """r + 1, the number of layers 0..r of a layer map."""
    return int(np.max(layers)) + 1


def layer_counts(layers: np.ndarray, n_layers: int | None = None) -> np.ndarray:
    """Pixel count of each layer (length r + 1, or ``n_layers``); counts are per pixel position, not per channel."""
    n = num_layers(layers) if n_layers is None else n_layers
    return np.bincount(np.asarray(layers).ravel(), minlength=n)[:n].astype(np.int64)


def layer_masks(layers: np.ndarray, n_layers: int | None = None) -> np.ndarray:
    """Boolean masks of the layers, stacked: shape (r + 1, H, W); ``masks[d]`` selects layer ``d``."""
    n = num_layers(layers) if n_layers is None else n_layers
    return np.asarray(layers)[None, :, :] == np.arange(n)[:, None, None]


def per_layer_sum(values: np.ndarray, layers: np.ndarray, n_layers: int | None = None) -> np.ndarray:
    """Sum of ``values`` over the pixels of each layer -> shape (r + 1,).

    ``values`` has shape (H, W) or (..., H, W): every leading axis (channels, a batch of gradients) is summed too.
    This is how a per-pixel gradient of a margin becomes a gradient with respect to each layer's epsilon.
    """
    values = np.asarray(values, dtype=np.float64)
    layers = np.asarray(layers)
    if values.shape[-2:] != layers.shape:
        raise InputError(f"values of shape {values.shape} do not end with the layer map's shape {layers.shape}")
    n = num_layers(layers) if n_layers is None else n_layers
    flat = values.reshape(-1, layers.size).sum(axis=0)
    return np.bincount(layers.ravel(), weights=flat, minlength=n)[:n]


def per_layer_sum_batch(values: np.ndarray, layers: np.ndarray, n_layers: int | None = None) -> np.ndarray:
    """Per-layer sums for a batch: ``values`` of shape (N, ..., H, W) -> (N, r + 1), channels summed."""
    values = np.asarray(values, dtype=np.float64)
    layers = np.asarray(layers)
    if values.ndim < 3 or values.shape[-2:] != layers.shape:
        raise InputError(f"values of shape {values.shape} are not a batch over the layer map's shape {layers.shape}")
    n = num_layers(layers) if n_layers is None else n_layers
    batch = values.shape[0]
    flat = values.reshape(batch, -1, layers.size).sum(axis=1)
    # One bincount over (row, layer) pairs keeps the batch vectorised.
    idx = (np.arange(batch)[:, None] * n + layers.ravel()[None, :]).ravel()
    return np.bincount(idx, weights=flat.ravel(), minlength=batch * n).reshape(batch, n)


def per_layer_mean(values: np.ndarray, layers: np.ndarray, n_layers: int | None = None) -> np.ndarray:
    """Mean of ``values`` over each layer's pixels (channels averaged too); 0 for an empty layer."""
    values = np.asarray(values, dtype=np.float64)
    n = num_layers(layers) if n_layers is None else n_layers
    sums = per_layer_sum(values, layers, n)
    per_pixel = int(np.prod(values.shape[:-2], dtype=np.int64)) if values.ndim > 2 else 1
    counts = layer_counts(layers, n) * per_pixel
    return np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
