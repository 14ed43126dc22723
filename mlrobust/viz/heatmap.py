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
                   vmax: float | None = None, cmap: str = "inferno", refuted_map: np.ndarray | None = None) -> Any:
    """A figure of two panels: the image with the object outlined, and the epsilon map over the image; with
    ``refuted_map`` (per pixel, the refuted epsilon of its layer, NaN where none is known) a third panel shows the
    upper bounds on the same colour scale, so the two maps bracket the boundary. That scale is then a square-root
    one: refuted epsilons are often ten times the proven ones, and on a linear scale the proven map would be black."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.colors import Normalize, PowerNorm
    from matplotlib.figure import Figure

    grey = _grey(image)
    mask = np.asarray(mask, dtype=bool)
    eps_map = np.asarray(eps_map, dtype=np.float64)
    if grey.shape != mask.shape or eps_map.shape != mask.shape:
        raise InputError(f"image {grey.shape}, mask {mask.shape} and epsilon map {eps_map.shape} differ in size")
    if refuted_map is not None:
        refuted_map = np.asarray(refuted_map, dtype=np.float64)
        if refuted_map.shape != mask.shape:
            raise InputError(f"refuted map {refuted_map.shape} and mask {mask.shape} differ in size")
    known = [] if refuted_map is None else refuted_map[np.isfinite(refuted_map)].ravel().tolist()
    top = float(vmax) if vmax is not None else max(float(eps_map.max()), *known, 1e-6)
    fig = Figure(figsize=(9.0 if refuted_map is None else 13.0, 4.4), dpi=110)
    axes = list(fig.subplots(1, 2 if refuted_map is None else 3))
    ax_img, ax_eps = axes[0], axes[1]
    from matplotlib.collections import LineCollection

    ax_img.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_img.set_title("image and perturbed object")
    norm = Normalize(0.0, top) if refuted_map is None else PowerNorm(0.5, vmin=0.0, vmax=top)
    shown = ax_eps.imshow(eps_map, cmap=cmap, norm=norm, interpolation="nearest")
    # the image on top as white ink whose opacity is the pixel's brightness: strokes stay visible, and where the
    # image is dark the colour of epsilon shows unmixed
    ink = np.zeros((*grey.shape, 4))
    ink[..., :3] = 1.0
    ink[..., 3] = 0.55 * np.clip(grey, 0.0, 1.0)
    ax_eps.imshow(ink, interpolation="nearest")
    ax_eps.set_title("epsilon per pixel (proven)")
    if refuted_map is not None:
        ax_ref = axes[2]
        bad = matplotlib.colormaps[cmap].with_extremes(bad="#5a5a5a")  # grey: no counterexample known
        ax_ref.imshow(np.ma.masked_invalid(refuted_map), cmap=bad, norm=norm, interpolation="nearest")
        ax_ref.imshow(ink, interpolation="nearest")
        ax_ref.set_title("refuted epsilon per layer (grey: none)")
    segments = outline_segments(mask)
    for ax in axes:
        ax.add_collection(LineCollection(list(segments), colors="#00e5ff", linewidths=1.5))
        ax.set_xlim(-0.5, mask.shape[1] - 0.5)
        ax.set_ylim(mask.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.04)
    bar.set_label("epsilon (max. change of a pixel in [0, 1])" + ("" if refuted_map is None else ", square-root scale"))
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
    refuted_map = None
    maximality = getattr(result, "maximality", None)
    if maximality:
        refuted = np.array([np.nan if m.refuted_eps is None else m.refuted_eps for m in maximality])
        if np.any(np.isfinite(refuted)):
            refuted_map = refuted[layer_index(mask)]
    fig = heatmap_figure(image, mask, eps_map, title, vmax=vmax, refuted_map=refuted_map)
    path = Path(path)
    fig.savefig(path)
    return path
