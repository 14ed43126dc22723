"""The heatmap of a layered neighborhood: the image in grey, epsilon per pixel as a colour map with a colour bar,
the refuted epsilons beside it, and the perturbed object outlined — the figure the reference work shows per model,
with a legend that says what each mark means.

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


#: The outline of the perturbed object on every panel.
OUTLINE_COLOUR = "#00e5ff"
#: Layers with no counterexample known (refuted panel): a colour no colour map here uses, not a grey that an image
#: drawn on top could look like.
NONE_COLOUR = "#2f6f9f"
#: Layers whose epsilon spans the whole pixel range [0, 1] (above the colour scale, which stops below them).
FULL_RANGE_COLOUR = "#7cfc00"


def panel_scale(values: np.ndarray, full: np.ndarray | None = None) -> tuple[float, bool]:
    """The top of one panel's colour scale: its largest finite value, not counting the full-range pixels (``full``),
    which are drawn in their own colour above the scale (else a single full-range layer, epsilon 1, would leave every
    other epsilon black). Returns (top, whether any full-range pixel is there)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    above = np.zeros(v.shape, bool) if full is None else (np.asarray(full, bool) & ok)
    rest = v[ok & ~above]
    top = float(rest.max()) if rest.size else (float(v[ok].max()) if np.any(ok) else 0.0)
    return max(top, 1e-6), bool(np.any(above))


def heatmap_figure(image: np.ndarray, mask: np.ndarray, eps_map: np.ndarray, title: str = "",
                   vmax: float | None = None, cmap: str = "inferno", refuted_map: np.ndarray | None = None,
                   full_map: np.ndarray | None = None, target_note: str = "") -> Any:
    """A figure of equal panels: the image with the object outlined, the proven epsilon per pixel, and with
    ``refuted_map`` (per pixel, the refuted epsilon of its layer, NaN where none is known) the refuted epsilons.

    Each epsilon panel has its own colour bar on a square-root scale from 0 to its own largest value (stated on the
    bar): proven epsilons are often a tenth of the refuted ones, and far rings a tenth of the object's, so a shared
    or linear scale leaves them black. ``full_map`` marks the pixels whose layer spans the whole range [0, 1]: they get
    their own colour above the scale. A legend under the panels says what the outline, the colours and
    ``target_note`` (the label that must stay) mean. ``vmax`` fixes the proven panel's top instead."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.collections import LineCollection
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.patheffects import withStroke

    stroke_edge = withStroke(linewidth=1.8, foreground="black")  # white lines stay visible on light colours too

    grey = _grey(image)
    mask = np.asarray(mask, dtype=bool)
    eps_map = np.asarray(eps_map, dtype=np.float64)
    if grey.shape != mask.shape or eps_map.shape != mask.shape:
        raise InputError(f"image {grey.shape}, mask {mask.shape} and epsilon map {eps_map.shape} differ in size")
    if refuted_map is not None:
        refuted_map = np.asarray(refuted_map, dtype=np.float64)
        if refuted_map.shape != mask.shape:
            raise InputError(f"refuted map {refuted_map.shape} and mask {mask.shape} differ in size")
    full = None if full_map is None else np.asarray(full_map, dtype=bool)
    panels = 2 if refuted_map is None else 3
    fig = Figure(figsize=(4.6 * panels, 5.0), dpi=110)
    axes = list(fig.subplots(1, panels))
    ax_img = axes[0]
    ax_img.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_img.set_title("image")
    colours = matplotlib.colormaps[cmap].with_extremes(bad=NONE_COLOUR, over=FULL_RANGE_COLOUR)
    maps = [("proven ε per pixel", eps_map, full)]
    if refuted_map is not None:
        maps.append(("refuted ε of the pixel's layer", refuted_map, None))
    has_full = False
    for ax, (name, values, above) in zip(axes[1:], maps):
        top, any_full = panel_scale(values, above)
        if vmax is not None and values is eps_map:
            top = float(vmax)
        has_full = has_full or any_full
        # full-range pixels above the scale's top (the colour map's "over" colour), unknown ones masked ("bad")
        shown_values = np.ma.masked_invalid(values if above is None else np.where(above, 2.0 * top + 1.0, values))
        shown = ax.imshow(shown_values, cmap=colours, norm=PowerNorm(0.5, vmin=0.0, vmax=top, clip=False),
                          interpolation="nearest")
        # the image's strokes as thin contour lines: they show where the digits are without tinting the colours
        if float(grey.max()) > float(grey.min()):
            strokes = ax.contour(grey, levels=[0.5 * (float(grey.max()) + float(grey.min()))], colors="white",
                                 linewidths=0.7)
            strokes.set(path_effects=[stroke_edge])
        ax.set_title(name)
        # the colour bar in the panel's own inset: every panel keeps the same size
        cax = ax.inset_axes((1.03, 0.0, 0.05, 1.0))
        bar = fig.colorbar(shown, cax=cax, extend="max" if any_full else "neither")
        bar.set_label(f"ε, square-root scale, 0 to {top:.3g}")
    segments = outline_segments(mask)
    for ax in axes:
        ax.add_collection(LineCollection(list(segments), colors=OUTLINE_COLOUR, linewidths=1.5))
        ax.set_xlim(-0.5, mask.shape[1] - 0.5)
        ax.set_ylim(mask.shape[0] - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    handles: list[Any] = [Line2D([], [], color=OUTLINE_COLOUR, lw=1.5, label="outline: the perturbed object "
                                                                                "(layer 0)"),
                          Line2D([], [], color="white", lw=0.7, path_effects=[stroke_edge],
                                 label="white lines: the image's strokes")]
    if refuted_map is not None and bool(np.any(~np.isfinite(refuted_map))):
        handles.append(Patch(color=NONE_COLOUR, label="no counterexample known for the layer"))
    if has_full:
        handles.append(Patch(color=FULL_RANGE_COLOUR, label="the layer spans the whole range [0, 1]"))
    if target_note:
        handles.append(Line2D([], [], lw=0, label=target_note))
    legend = fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    legend.set_in_layout(True)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.93, top=0.86, bottom=0.16, wspace=0.3)
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
        method = getattr(result, "method", "")
        title = (f"the largest neighborhood proven: size w\u00b7\u03b5 = {result.size:.3f} over {len(eps)} layers"
                 + (f" ({method} search)" if method else ""))
    refuted_map = None
    maximality = getattr(result, "maximality", None)
    if maximality:
        refuted = np.array([np.nan if m.refuted_eps is None else m.refuted_eps for m in maximality])
        if np.any(np.isfinite(refuted)):
            refuted_map = refuted[layer_index(mask)]
    saturation = getattr(result, "saturation", None)
    full_map = None if saturation is None else (eps >= np.asarray(saturation))[layer_index(mask)]
    note = f"target: label {result.target} stays among the top-{result.k} in the whole neighborhood"
    fig = heatmap_figure(image, mask, eps_map, title, vmax=vmax, refuted_map=refuted_map, full_map=full_map,
                         target_note=note)
    path = Path(path)
    fig.savefig(path)
    return path
