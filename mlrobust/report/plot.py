"""The report's figures (matplotlib, Agg backend, no display): distributions per run, time and layer shares, the ε
profile by distance, the label matrices, thumbnails with heatmaps, and paired comparisons.

Every figure draws numbers the summary table holds (medians, quartiles, shares, differences) or the per-image values
they summarise; each function returns a matplotlib Figure and the caller saves it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mlrobust.report.aggregate import lookup
from mlrobust.report.table import Table

#: One colour per run, in the order the runs are given.
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
PROVEN, REFUTED, UNIFORM = "#1f77b4", "#d62728", "#9e9e9e"


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _strip(ax: Any, position: float, values: np.ndarray, colour: str, seed: int = 0) -> None:
    """A box (median, quartiles) with every value beside it as a dot (spread sideways so none hides another)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    ax.boxplot([v], positions=[position], widths=0.5, showfliers=False, patch_artist=True,
               boxprops={"facecolor": colour, "alpha": 0.25, "edgecolor": colour},
               medianprops={"color": colour, "linewidth": 2}, whiskerprops={"color": colour},
               capprops={"color": colour})
    jitter = np.random.default_rng(seed).uniform(-0.15, 0.15, v.size)
    ax.scatter(position + jitter, v, s=12, color=colour, alpha=0.8, zorder=3, linewidths=0)


def distributions(images: Table, runs: Sequence[str]) -> Any:
    """w·ε per run (with the uniform baseline's w·ε beside it where the lines have it) and the object's ε₀."""
    fig = _figure(4.0 + 2.2 * len(runs), 3.8)
    ax_size, ax_eps0 = fig.subplots(1, 2)
    ticks, labels = [], []
    for i, run in enumerate(runs):
        im = images.where(images["run"] == run)
        _strip(ax_size, 2.0 * i, im["size"], color(i), seed=i)
        ticks.append(2.0 * i)
        labels.append(run)
        if np.any(np.isfinite(im["uniform_size"])):
            _strip(ax_size, 2.0 * i + 0.8, im["uniform_size"], UNIFORM, seed=i + 100)
            ticks.append(2.0 * i + 0.8)
            labels.append("uniform")
        _strip(ax_eps0, float(i), im["eps0"], color(i), seed=i)
    ax_size.set_xticks(ticks, labels, rotation=20, ha="right", fontsize=8)
    ax_size.set_ylabel("w·ε (size of the neighborhood)")
    ax_size.set_title("size w·ε per image")
    ax_eps0.set_xticks(range(len(runs)), list(runs), rotation=20, ha="right", fontsize=8)
    ax_eps0.set_ylabel("ε₀ (the perturbed object's ε)")
    ax_eps0.set_title("the object's own ε₀ per image")
    for ax in (ax_size, ax_eps0):
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    return fig


def time_and_layers(images: Table, summary: Table, runs: Sequence[str]) -> Any:
    """Seconds per image per run, and the shares of layers with a proven ε > 0, a refuted ε, certified maximal."""
    fig = _figure(4.0 + 2.0 * len(runs), 3.6)
    ax_time, ax_share = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        _strip(ax_time, float(i), images["seconds"][images["run"] == run], color(i), seed=i)
    ax_time.set_xticks(range(len(runs)), list(runs), rotation=20, ha="right", fontsize=8)
    ax_time.set_ylabel("seconds")
    ax_time.set_title("time per image")
    ax_time.set_ylim(bottom=0)
    kinds = (("layers_proven", "proven ε > 0", PROVEN), ("layers_refuted", "refuted ε known", REFUTED),
             ("layers_certified", "certified maximal", "#2ca02c"))
    width = 0.8 / len(kinds)
    for j, (metric, label, colour) in enumerate(kinds):
        shares = [(lookup(summary, "run", run, metric, "percent") or 0.0) / 100 for run in runs]
        xs = np.arange(len(runs)) + (j - (len(kinds) - 1) / 2) * width
        bars = ax_share.bar(xs, shares, width, color=colour, label=label)
        ax_share.bar_label(bars, [f"{s:.0%}" for s in shares], fontsize=7)
    ax_share.set_xticks(range(len(runs)), list(runs), rotation=20, ha="right", fontsize=8)
    ax_share.set_ylim(0, 1.3)  # room for the legend above the bars
    ax_share.set_ylabel("share of all layers")
    ax_share.set_title("layers: proven, refuted, certified")
    ax_share.legend(fontsize=7, loc="upper left", ncols=3)
    for ax in (ax_time, ax_share):
        ax.grid(axis="y", alpha=0.3)
    return fig


def _profile_series(summary: Table, run: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distance, median, q25, q75 of ``metric`` in the summary's profile rows of ``run``."""
    rows = summary.where((summary["section"] == "profile") & (summary["run"] == run) & (summary["metric"] == metric))
    dist = np.array(sorted({int(d) for d in rows["distance"]}), dtype=np.int64)
    out = []
    for stat in ("median", "q25", "q75"):
        at = rows["statistic"] == stat
        values = dict(zip((int(d) for d in rows["distance"][at]), rows["value"][at]))
        out.append(np.array([values.get(int(d), np.nan) for d in dist], dtype=np.float64))
    return dist, out[0], out[1], out[2]


def profile(summary: Table, runs: Sequence[str]) -> Any:
    """Per run: ε by distance from the object — the proven ε (median and quartile band) below, the smallest
    refuted ε above; the layer's true boundary lies between. Square-root scale, as the heatmaps."""
    fig = _figure(1.0 + 4.2 * len(runs), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharey=True))
    for ax, run in zip(axes, runs):
        for metric, label, colour in (("eps", "proven ε", PROVEN), ("refuted_eps", "refuted ε", REFUTED)):
            d, med, q25, q75 = _profile_series(summary, run, metric)
            if d.size == 0:
                continue
            ax.fill_between(d, q25, q75, color=colour, alpha=0.2, linewidth=0, step="mid")
            ax.step(d, med, where="mid", color=colour, label=f"{label}: median, quartiles")
        ax.set_yscale("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), lambda x: np.square(x)))
        ax.set_ylim(0, 1.0)
        ax.set_title(run, fontsize=10)
        ax.set_xlabel("distance from the object (layer; 0 = the object)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ε (square-root scale)")
    axes[0].legend(fontsize=7, loc="upper right")
    return fig


def label_matrix(summary: Table, run: str, labels: Sequence[int] | None = None) -> Any:
    """Target label × perturbed-object label: the median ε₀ and the median w·ε, each cell with its count. The labels
    are 0..9 (Double-MNIST's digits) or, where others occur, every label that does."""
    fig = _figure(9.0, 4.2)
    axes = fig.subplots(1, 2)
    rows = summary.where((summary["section"] == "labels") & (summary["run"] == run))
    if labels is None:
        seen = {int(v) for v in (*rows["target"], *rows["object_label"]) if v is not None}
        labels = list(range(10)) if seen <= set(range(10)) else sorted(seen)
    index = {int(label): i for i, label in enumerate(labels)}
    for ax, metric, title in zip(axes, ("eps0", "size"), ("median ε₀ (the object's ε)", "median w·ε")):
        grid = np.full((len(labels), len(labels)), np.nan)
        counts = np.zeros_like(grid, dtype=np.int64)
        at = rows.where(rows["metric"] == metric)
        for t, o, v, n in zip(at["target"], at["object_label"], at["value"], at["n"]):
            if int(t) in index and int(o) in index:
                grid[index[int(t)], index[int(o)]] = v
                counts[index[int(t)], index[int(o)]] = n
        shown = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", origin="upper")
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2g}\nn={counts[r, c]}", ha="center", va="center", fontsize=7,
                        color="white" if v < np.nanmean(grid) else "black")
        ax.set_xticks(range(len(labels)), [str(label) for label in labels], fontsize=8)
        ax.set_yticks(range(len(labels)), [str(label) for label in labels], fontsize=8)
        ax.set_xlabel("perturbed-object label")
        ax.set_ylabel("target label")
        ax.set_title(title, fontsize=10)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"{run}: which object's change threatens which label (empty: no image)", fontsize=10)
    return fig


def thumbnail(image: np.ndarray, mask: np.ndarray, epsilons: np.ndarray, refuted: np.ndarray | None,
              title: str) -> Any:
    """The heatmap of one image (:func:`mlrobust.viz.heatmap.heatmap_figure`: the image, the proven ε and, where
    known, the refuted ε per pixel)."""
    from mlrobust.neighborhood.layers import layer_index
    from mlrobust.viz.heatmap import heatmap_figure

    layers = layer_index(mask)
    eps = np.asarray(epsilons, dtype=np.float64)
    refuted_map = None
    if refuted is not None and np.any(np.isfinite(refuted)):
        refuted_map = np.asarray(refuted, dtype=np.float64)[layers]
    return heatmap_figure(image, mask, eps[layers], title, refuted_map=refuted_map)


def comparison(images: Table, summary: Table, a: str, b: str, ia: int, ib: int) -> Any:
    """Two runs on the same images: w·ε and ε₀ of one against the other (above the diagonal: ``b`` is larger), and
    the per-image differences ``a − b`` of w·ε, sorted, with their mean and its bootstrap interval."""
    from mlrobust.report.aggregate import paired

    fig = _figure(12.0, 3.8)
    ax_size, ax_eps0, ax_diff = fig.subplots(1, 3)
    for ax, metric, label in ((ax_size, "size", "w·ε"), (ax_eps0, "eps0", "ε₀")):
        _, va, vb = paired(images, a, b, metric)
        top = float(np.nanmax(np.concatenate([va, vb, [1e-6]]))) * 1.05
        ax.plot([0, top], [0, top], color="#777777", linewidth=1, linestyle="--")
        ax.scatter(va, vb, s=16, color=color(ib), alpha=0.8, linewidths=0)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"{label}: {a}")
        ax.set_ylabel(f"{label}: {b}")
        ax.set_title(f"{label} per image (above the line: {b} larger)", fontsize=9)
        ax.grid(alpha=0.3)
    _, va, vb = paired(images, a, b, "size")
    diff = np.sort(va - vb)
    ax_diff.bar(np.arange(diff.size), diff, color=np.where(diff > 0, color(ia), color(ib)))
    mean = lookup(summary, "comparison", a, "size", "mean_difference", versus=b)
    low = lookup(summary, "comparison", a, "size", "ci_low", versus=b)
    high = lookup(summary, "comparison", a, "size", "ci_high", versus=b)
    if mean is not None:
        ax_diff.axhline(mean, color="black", linewidth=1, label=f"mean {mean:.3g}")
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        ax_diff.axhspan(low, high, color="black", alpha=0.12, label=f"95% bootstrap interval [{low:.3g}, {high:.3g}]")
    ax_diff.axhline(0, color="#777777", linewidth=0.8)
    ax_diff.set_xlabel("images, sorted by the difference")
    ax_diff.set_ylabel(f"w·ε: {a} − {b}")
    ax_diff.set_title(f"per image: above 0, {a} larger", fontsize=9)
    ax_diff.legend(fontsize=7, loc="best")
    ax_diff.grid(axis="y", alpha=0.3)
    return fig
