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
    ax_img.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_img.set_title("image and perturbed object")
    ax_eps.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    shown = ax_eps.imshow(eps_map, cmap=cmap, vmin=0.0, vmax=top, alpha=0.8, interpolation="nearest")
    ax_eps.set_title("epsilon per pixel")
    for ax in (ax_img, ax_eps):
        # the object's outline: the 0.5 level of its mask, drawn on pixel edges
        ax.contour(mask.astype(float), levels=[0.5], colors=["#00e5ff"], linewidths=1.4)
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
