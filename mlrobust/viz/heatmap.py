"""The heatmap of a layered neighborhood: the image in grey, epsilon per pixel as a colour map with a colour bar,
and the perturbed object outlined — the figure the reference work shows per model.

Matplotlib runs on its non-interactive Agg backend (no display needed); figures are closed after saving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.errors import InputError


def _grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) in [0, 1] -> (H, W) grey (channel mean)."""
    arr = np.asarray(image, dtype=np.float64)
    return arr.mean(axis=0) if arr.ndim == 3 else arr


def outline_segments(mask: np.ndarray) -> np.ndarray:
    """The boundary of ``mask`` along pixel edges, as segments ``(n, 2, 2)`` of (x, y) points in imshow's pixel
    coordinates (pixel (r, c) spans x in [c - 0.5, c + 0.5], y in [r - 0.5, r + 0.5])."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inner = m[1:-1, 1:-1]
    segs = []
    # an edge is drawn where an object pixel meets a non-object neighbour (or the image border)
    for dr, dc, (a, b) in ((-1, 0, ((-0.5, -0.5), (0.5, -0.5))), (1, 0, ((-0.5, 0.5), (0.5, 0.5))),
                           (0, -1, ((-0.5, -0.5), (-0.5, 0.5))), (0, 1, ((0.5, -0.5), (0.5, 0.5)))):
        nb = m[1 + dr: m.shape[0] - 1 + dr, 1 + dc: m.shape[1] - 1 + dc]
        r, c = np.nonzero(inner & ~nb)
        start = np.stack([c + a[0], r + a[1]], axis=1)
        end = np.stack([c + b[0], r + b[1]], axis=1)
        segs.append(np.stack([start, end], axis=1))
    return np.concatenate(segs) if segs else np.zeros((0, 2, 2))


def heatmap_figure(image: np.ndarray, mask: np.ndarray, eps_map: np.ndarray, title: str = "",
                   vmax: float | None = None, cmap: str = "inferno") -> Any:
    """A figure of two panels: the image with the object outlined, and the epsilon map over the image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    grey = _grey(image)
    mask = np.asarray(mask, dtype=bool)
    eps_map = np.asarray(eps_map, dtype=np.float64)
    if grey.shape != mask.shape or eps_map.shape != mask.shape:
        raise InputError(f"image {grey.shape}, mask {mask.shape} and epsilon map {eps_map.shape} differ in size")
    top = float(vmax) if vmax is not None else max(float(eps_map.max()), 1e-6)
    fig = Figure(figsize=(9.0, 4.4), dpi=110)
    ax_img, ax_eps = fig.subplots(1, 2)
    from matplotlib.collections import LineCollection

    ax_img.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_img.set_title("image and perturbed object")
    shown = ax_eps.imshow(eps_map, cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
    # the image on top as white ink whose opacity is the pixel's brightness: strokes stay visible, and where the
    # image is dark the colour of epsilon shows unmixed
    ink = np.zeros((*grey.shape, 4))
    ink[..., :3] = 1.0
    ink[..., 3] = 0.55 * np.clip(grey, 0.0, 1.0)
    ax_eps.imshow(ink, interpolation="nearest")
    ax_eps.set_title("epsilon per pixel")
    segments = outline_segments(mask)
    for ax in (ax_img, ax_eps):
        ax.add_collection(LineCollection(segments, colors="#00e5ff", linewidths=1.5))
        ax.set_xlim(-0.5, mask.shape[1] - 0.5)
        ax.set_ylim(mask.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=ax_eps, fraction=0.046, pad=0.04)
    bar.set_label("epsilon (max. change of a pixel in [0, 1])")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def save_heatmap(result: Any, path: str | Path, title: str | None = None, vmax: float | None = None) -> Path:
    """Write the heatmap of a :class:`~mlrobust.search.result.SearchResult` (or a CheckResult) to ``path`` (PNG,
    or any format matplotlib writes)."""
    from mlrobust.neighborhood.layers import layer_index

    mask = np.asarray(result.mask, dtype=bool)
    eps = np.asarray(result.epsilons, dtype=np.float64)
    eps_map = eps[layer_index(mask)]
    image = getattr(result, "image", None)
    if image is None:
        raise InputError("the result carries no image to draw")
    if title is None:
        method = getattr(result, "method", "check")
        if getattr(result, "cutting", None):
            method += f", {result.cutting} cuts"
        title = (f"target {result.target} in top-{result.k}: size w\u00b7\u03b5 = {result.size:.3f} "
                 f"({len(eps)} layers, {method})")
    fig = heatmap_figure(image, mask, eps_map, title, vmax=vmax)
    path = Path(path)
    fig.savefig(path)
    return path
