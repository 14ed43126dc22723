"""The report's numbers: from the per-image and per-layer tables to one long summary table — the rows of
``summary.csv``, of the page's tables, and of :func:`mlrobust.report.load` with ``table="summary"``.

Each row is one number: ``section`` (``run``, ``profile``, ``labels``, ``comparison``, ``comparison_by_target``),
the run it is about, the run it is compared with (``versus``), the group (``target``, ``object_label``,
``distance``), ``metric`` and ``statistic``, the ``value`` and ``n`` (how many values it summarises). Values carry
:data:`SIGNIFICANT` significant digits, so the page, the CSV and the API show the very same numbers.

Paired comparisons (several runs of the same images) give the mean and median of the per-image difference
``run − versus``, a bootstrap percentile interval of the mean difference (:data:`BOOTSTRAP` resamples, a fixed
seed, so a report is reproducible) and the p-value of Wilcoxon's signed-rank test (scipy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlrobust.report.table import Table

SUMMARY_COLUMNS = ("section", "run", "versus", "target", "object_label", "distance", "metric", "statistic", "value",
                   "n")
SIGNIFICANT = 4
BOOTSTRAP = 10000
CONFIDENCE = 0.95
SEED = 0
#: Differences this small count as ties (the sizes are sums of float epsilons).
TIE = 1e-12


def rounded(value: float) -> float:
    """``value`` to :data:`SIGNIFICANT` significant digits (NaN stays NaN)."""
    v = float(value)
    return v if not np.isfinite(v) else float(f"{v:.{SIGNIFICANT}g}")


def _row(section: str, run: str, metric: str, statistic: str, value: float, n: int, **group: Any) -> dict:
    return {"section": section, "run": run, "metric": metric, "statistic": statistic, "value": rounded(value),
            "n": int(n), **group}


def describe(values: np.ndarray) -> dict[str, float]:
    """Median, quartiles, mean, min and max of the finite values (NaN for none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return dict.fromkeys(("median", "q25", "q75", "mean", "min", "max"), float("nan"))
    q25, median, q75 = np.percentile(v, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(v.mean()),
            "min": float(v.min()), "max": float(v.max())}


def bootstrap_mean_interval(diff: np.ndarray, resamples: int = BOOTSTRAP, confidence: float = CONFIDENCE,
                            seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diff`` (NaN for fewer than two values)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def signed_rank_p(diff: np.ndarray) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test that the differences are centred on 0 (1 when every
    difference is 0; NaN without differences)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size == 0:
        return float("nan")
    if np.all(np.abs(d) <= TIE):
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(d).pvalue)


def run_rows(images: Table, layers: Table, run: str, errors: int) -> list[dict]:
    """Section ``run``: sizes, the object's ε, the uniform baseline, time, and the shares of layers (in percent of
    all layers of all images)."""
    im = images.where(images["run"] == run)
    ly = layers.where(layers["run"] == run)
    rows = [_row("run", run, "images", "count", len(im), len(im)), _row("run", run, "errors", "count", errors, errors),
            _row("run", run, "verified", "count", int(np.count_nonzero(im["verified"])), len(im))]
    for metric in ("size", "eps0", "uniform_size", "seconds"):
        values = im[metric]
        n = int(np.count_nonzero(np.isfinite(values)))
        if n == 0:
            continue
        stats = describe(values)
        keep = ("median", "q25", "q75", "mean", "min", "max") if metric != "seconds" else ("median", "max")
        rows += [_row("run", run, metric, s, stats[s], n) for s in keep]
        if metric == "seconds":
            rows.append(_row("run", run, metric, "sum", float(np.nansum(values)), n))
    paired = np.isfinite(im["uniform_size"]) & (im["uniform_size"] > 0)
    if np.any(paired):
        ratio = im["size"][paired] / im["uniform_size"][paired]
        rows.append(_row("run", run, "size_over_uniform", "median", describe(ratio)["median"], int(paired.sum())))
    total = len(ly)
    if total:
        rows += [
            _row("run", run, "layers_proven", "percent", 100 * np.count_nonzero(ly["eps"] > 0) / total, total),
            _row("run", run, "layers_refuted", "percent",
                 100 * np.count_nonzero(np.isfinite(ly["refuted_eps"])) / total, total),
            _row("run", run, "layers_certified", "percent", 100 * np.count_nonzero(ly["certified"]) / total, total),
        ]
    return rows


def profile_rows(layers: Table, run: str) -> list[dict]:
    """Section ``profile``: per distance from the object, the proven ε and the refuted ε (median, quartiles)."""
    ly = layers.where(layers["run"] == run)
    rows: list[dict] = []
    if not len(ly):
        return rows
    for d in np.unique(ly["layer"]):
        at = ly["layer"] == d
        for metric in ("eps", "refuted_eps"):
            values = ly[metric][at]
            n = int(np.count_nonzero(np.isfinite(values)))
            if n == 0:
                continue
            stats = describe(values)
            rows += [_row("profile", run, metric, s, stats[s], n, distance=int(d)) for s in ("median", "q25", "q75")]
    return rows


def label_rows(images: Table, run: str) -> list[dict]:
    """Section ``labels``: per target label and perturbed-object label, the median ε₀ and w·ε, with counts."""
    im = images.where(images["run"] == run)
    rows: list[dict] = []
    # a label column with a missing label is an object column (ints and None): NaN stands for the missing ones
    labels = np.array([np.nan if v is None else float(v) for v in im["object_label"]], dtype=np.float64)
    for t in np.unique(im["target"]):
        for o in np.unique(labels[np.isfinite(labels)]):
            at = (im["target"] == t) & (labels == o)
            n = int(at.sum())
            if n == 0:
                continue
            for metric in ("eps0", "size"):
                rows.append(_row("labels", run, metric, "median", describe(im[metric][at])["median"], n,
                                 target=int(t), object_label=int(o)))
    return rows


def paired(images: Table, a: str, b: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images finished in both runs (ids, in ``a``'s order) with the metric in ``a`` and in ``b``."""
    ia, ib = images.where(images["run"] == a), images.where(images["run"] == b)
    where_b = {img: i for i, img in enumerate(ib["image"])}
    keep = [i for i, img in enumerate(ia["image"]) if img in where_b]
    ids = ia["image"][keep]
    va = ia[metric][keep].astype(np.float64)
    vb = ib[metric][[where_b[img] for img in ids]].astype(np.float64)
    return ids, va, vb


def comparison_rows(images: Table, a: str, b: str) -> list[dict]:
    """Sections ``comparison`` and ``comparison_by_target``: ``a − b`` per image, for the size and the object's ε."""
    rows: list[dict] = []
    for metric in ("size", "eps0"):
        ids, va, vb = paired(images, a, b, metric)
        diff = va - vb
        n = diff.size
        if n == 0:
            continue
        low, high = bootstrap_mean_interval(diff)
        stats = {"mean_difference": diff.mean(), "median_difference": float(np.median(diff)), "ci_low": low,
                 "ci_high": high, "p_value": signed_rank_p(diff), "wins": int(np.count_nonzero(diff > TIE)),
                 "losses": int(np.count_nonzero(diff < -TIE)), "ties": int(np.count_nonzero(np.abs(diff) <= TIE))}
        rows += [_row("comparison", a, metric, s, v, n, versus=b) for s, v in stats.items()]
        if metric == "size":
            targets = images["target"][images["run"] == a]
            by_id = dict(zip(images["image"][images["run"] == a], targets))
            t_of = np.array([by_id[i] for i in ids])
            for t in np.unique(t_of):
                at = t_of == t
                rows.append(_row("comparison_by_target", a, metric, "mean_difference", diff[at].mean(),
                                 int(at.sum()), versus=b, target=int(t)))
    return rows


def summarize_tables(images: Table, layers: Table, runs: list[str], errors: dict[str, int] | None = None) -> Table:
    """The summary table of the report (see the module's docstring) for the runs in order; every pair of runs is
    compared (the earlier one as ``run``, the later as ``versus``)."""
    errors = errors or {}
    rows: list[dict] = []
    for run in runs:
        rows += run_rows(images, layers, run, errors.get(run, 0))
    for run in runs:
        rows += profile_rows(layers, run)
    for run in runs:
        rows += label_rows(images, run)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            rows += comparison_rows(images, a, b)
    return Table.from_rows(rows, SUMMARY_COLUMNS)


def lookup(summary: Table, section: str, run: str, metric: str, statistic: str, **group: Any) -> float | None:
    """The one value of the summary with these keys (None where the summary has no such row)."""
    mask = ((summary["section"] == section) & (summary["run"] == run) & (summary["metric"] == metric)
            & (summary["statistic"] == statistic))
    for key in ("versus", "target", "object_label", "distance"):
        col = summary[key]
        want = group.get(key)
        if want is None:
            mask &= np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in col], dtype=bool)
        else:
            mask &= np.array([v == want for v in col], dtype=bool)
    hits = np.flatnonzero(mask)
    if hits.size == 0:
        return None
    return float(summary["value"][hits[0]])
