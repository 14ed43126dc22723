"""The report page: ``index.html`` from a template of the standard library (:class:`string.Template`), plain HTML
and CSS — no JavaScript, no server; the figures are PNG files beside it.

Every number in the page is a value of the summary table written by :func:`~mlrobust.report.table.cell_text`, the
same text ``summary.csv`` holds.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from string import Template
from typing import Any, Sequence

import numpy as np

from mlrobust.report.aggregate import lookup
from mlrobust.report.table import Table, cell_text

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1250px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .25em .55em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img.fig { max-width: 100%; display: block; margin: .5em 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: .8em; }
.thumbs figure { margin: 0; width: 400px; } .thumbs img { width: 100%; }
figcaption { font-size: .8em; color: #444; }
.note { color: #555; font-size: .9em; } code { background: #f5f5f5; padding: 0 .2em; }
details { margin: .4em 0 1em; } summary { cursor: pointer; color: #1f4e99; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="note">$intro</p>
$body
</body>
</html>
""")


@dataclass
class Figures:
    """File names (relative to the page) of the figures that were drawn; None where a figure was left out."""

    distributions: str | None = None
    time_and_layers: str | None = None
    profile: str | None = None
    labels: dict[str, str] | None = None
    thumbnails: dict[str, list[tuple[str, str]]] | None = None  # run -> [(file, caption)]
    comparisons: dict[tuple[str, str], str] | None = None


def esc(value: Any) -> str:
    return html.escape(str(value))


def num(value: Any) -> str:
    """A number as the CSV writes it (missing: an en dash)."""
    text = cell_text(value)
    return text if text else "–"


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned), the others numbers as the CSV writes them."""
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f'<td class="l">{esc(v)}</td>' if i < left else f"<td>{esc(num(v))}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_html(src: str | None, alt: str) -> str:
    return "" if src is None else f'<img class="fig" src="{esc(src)}" alt="{esc(alt)}">'


OVERVIEW = (("images", "count", "images"), ("errors", "count", "errors"), ("verified", "count", "proven robust"),
            ("size", "median", "w·ε median"), ("size", "q25", "w·ε q25"), ("size", "q75", "w·ε q75"),
            ("uniform_size", "median", "uniform w·ε median"), ("size_over_uniform", "median", "w·ε / uniform median"),
            ("eps0", "median", "ε₀ median"), ("eps0", "q25", "ε₀ q25"), ("eps0", "q75", "ε₀ q75"),
            ("seconds", "median", "s / image median"), ("seconds", "max", "s / image max"),
            ("layers_proven", "percent", "% layers proven ε>0"), ("layers_refuted", "percent", "% layers refuted"),
            ("layers_certified", "percent", "% layers certified maximal"))


def overview(summary: Table, runs: Sequence[str]) -> str:
    rows = []
    for metric, stat, label in OVERVIEW:
        values = [lookup(summary, "run", run, metric, stat) for run in runs]
        if all(v is None for v in values):
            continue
        rows.append([label, *values])
    return table_html(["", *runs], rows)


def run_details(summary: Table, runs: Sequence[str]) -> str:
    """Every number of the section ``run`` of the summary (metric, statistic; one column per run)."""
    at = summary.where(summary["section"] == "run")
    keys = list(dict.fromkeys(zip(at["metric"], at["statistic"])))
    rows = [[metric, stat, *(lookup(summary, "run", run, metric, stat) for run in runs)] for metric, stat in keys]
    return table_html(["metric", "statistic", *runs], rows, left=2)


def headline(summary: Table, run: str) -> str:
    """One sentence of the run's headline numbers (the CSV's text)."""
    def g(metric: str, stat: str) -> str:
        return num(lookup(summary, "run", run, metric, stat))

    text = (f"<b>{esc(run)}</b>: {g('images', 'count')} images, median w·ε {g('size', 'median')} "
            f"(quartiles {g('size', 'q25')}–{g('size', 'q75')}), median ε₀ {g('eps0', 'median')}")
    if lookup(summary, "run", run, "uniform_size", "median") is not None:
        text += f", uniform baseline median w·ε {g('uniform_size', 'median')}"
    text += (f"; median {g('seconds', 'median')} s per image; layers: {g('layers_proven', 'percent')}% proven ε>0, "
             f"{g('layers_refuted', 'percent')}% with a refuted ε, {g('layers_certified', 'percent')}% certified "
             "maximal.")
    return text


def profile_table(summary: Table, run: str) -> str:
    rows = summary.where((summary["section"] == "profile") & (summary["run"] == run))
    distances = sorted({int(d) for d in rows["distance"]})
    out = []
    for d in distances:
        cells: list[Any] = [d]
        for metric in ("eps", "refuted_eps"):
            for stat in ("median", "q25", "q75"):
                cells.append(lookup(summary, "profile", run, metric, stat, distance=d))
            at = rows.where((rows["metric"] == metric) & (rows["statistic"] == "median")
                            & np.array([int(x) == d for x in rows["distance"]], dtype=bool))
            cells.append(int(at["n"][0]) if len(at) else 0)
        out.append(cells)
    return table_html(["distance", "proven ε median", "q25", "q75", "n", "refuted ε median", "q25", "q75", "n"],
                      out)


def label_table(summary: Table, run: str) -> str:
    rows = summary.where((summary["section"] == "labels") & (summary["run"] == run) & (summary["metric"] == "eps0"))
    out = []
    for t, o, n in sorted(zip(rows["target"], rows["object_label"], rows["n"])):
        out.append([int(t), int(o), int(n), lookup(summary, "labels", run, "eps0", "median", target=int(t),
                                                   object_label=int(o)),
                    lookup(summary, "labels", run, "size", "median", target=int(t), object_label=int(o))])
    return table_html(["target", "perturbed object", "images", "median ε₀", "median w·ε"], out, left=0)


COMPARISON_STATS = ("mean_difference", "median_difference", "ci_low", "ci_high", "p_value", "wins", "losses", "ties")


def comparison_text(summary: Table, a: str, b: str) -> str:
    mean = lookup(summary, "comparison", a, "size", "mean_difference", versus=b)
    low = lookup(summary, "comparison", a, "size", "ci_low", versus=b)
    high = lookup(summary, "comparison", a, "size", "ci_high", versus=b)
    p = lookup(summary, "comparison", a, "size", "p_value", versus=b)
    wins = lookup(summary, "comparison", a, "size", "wins", versus=b)
    losses = lookup(summary, "comparison", a, "size", "losses", versus=b)
    if mean is None:
        return ""
    larger = a if mean > 0 else b
    beyond = (low is not None and high is not None and np.isfinite(low) and np.isfinite(high)
              and (low > 0 or high < 0))
    verdict = ("the difference holds beyond noise: the 95% bootstrap interval of the mean excludes 0"
               if beyond else "the difference is within noise: the 95% bootstrap interval of the mean includes 0")
    return (f"w·ε of <b>{esc(a)}</b> − <b>{esc(b)}</b>: mean {num(mean)} (95% bootstrap interval {num(low)} to "
            f"{num(high)}; Wilcoxon signed-rank p = {num(p)}); {esc(a)} is larger on {num(wins)} images, "
            f"{esc(b)} on {num(losses)}. <b>{esc(larger)}</b> has the larger neighborhoods on average; "
            f"{verdict}.")


def comparison_table(summary: Table, a: str, b: str) -> str:
    rows = []
    for metric, label in (("size", "w·ε"), ("eps0", "ε₀")):
        values = [lookup(summary, "comparison", a, metric, s, versus=b) for s in COMPARISON_STATS]
        if all(v is None for v in values):
            continue
        at = summary.where((summary["section"] == "comparison") & (summary["run"] == a)
                           & (summary["metric"] == metric))
        rows.append([label, int(at["n"][0]) if len(at) else 0, *values])
    return table_html(["", "images", "mean a−b", "median a−b", "CI low", "CI high", "p (Wilcoxon)", "a larger",
                       "b larger", "ties"], rows)


def by_target_table(summary: Table, a: str, b: str) -> str:
    rows = summary.where((summary["section"] == "comparison_by_target") & (summary["run"] == a)
                         & np.array([v == b for v in summary["versus"]], dtype=bool))
    out = [[int(t), int(n), v] for t, n, v in sorted(zip(rows["target"], rows["n"], rows["value"]))]
    return table_html(["target label", "images", f"mean w·ε difference ({a} − {b})"], out, left=0)


def page(title: str, intro: str, summary: Table, runs: Sequence[str], figures: Figures,
         run_notes: dict[str, str], files: Sequence[tuple[str, str]]) -> str:
    """The whole page."""
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]
    parts = ["<h2>Headline</h2>", "<ul>" + "".join(f"<li>{headline(summary, r)}</li>" for r in runs)
             + "".join(f"<li>{comparison_text(summary, a, b)}</li>" for a, b in pairs) + "</ul>"]
    parts += ["<h2>1. Per model: sizes, the object's ε, time and layers</h2>",
              "<p>w·ε is the size of the proven neighborhood (the weighted sum of the per-layer ε); ε₀ is the "
              "perturbed object's own ε (layer 0). The grey boxes are the uniform baseline: one ε for every pixel, "
              "the radius the search proved first on the bound tiers, where the lines record it. A layer is "
              "<i>proven</i> where its ε is above 0, <i>refuted</i> where a counterexample bounds its ε from above, "
              "<i>certified maximal</i> where growing it by δ is refuted (or it spans all of [0, 1]).</p>",
              overview(summary, runs),
              f"<details><summary>all the numbers</summary>{run_details(summary, runs)}</details>",
              figure_html(figures.distributions, "w·ε and ε₀ per model"),
              figure_html(figures.time_and_layers, "time per image and shares of layers")]
    for run, note in run_notes.items():
        if note:
            parts.append(f'<p class="note">{esc(run)}: {esc(note)}</p>')
    parts += ["<h2>2. The profile: ε by distance from the object</h2>",
              "<p>Per distance from the perturbed object (layer 0 is the object itself): the proven ε (blue) and the "
              "smallest refuted ε (red), median and quartile band over the images. The layer's true boundary lies "
              "between the two; where the blue line drops to 0, the model's answer depends on those pixels.</p>",
              figure_html(figures.profile, "epsilon by distance")]
    for run in runs:
        parts.append(f"<details><summary>the numbers: {esc(run)}</summary>{profile_table(summary, run)}</details>")
    parts += ["<h2>3. Labels and objects</h2>",
              "<p>Target label (rows) × perturbed-object label (columns): the median ε₀ and w·ε of the images with "
              "that pair, and how many there are. Small values: changing that object threatens that label most.</p>"]
    for run in runs:
        if figures.labels and run in figures.labels:
            parts.append(figure_html(figures.labels[run], f"label matrix of {run}"))
        parts.append(f"<details><summary>the numbers: {esc(run)}</summary>{label_table(summary, run)}</details>")
    if figures.thumbnails:
        parts.append("<h3>Most and least robust images</h3><p>By w·ε; each with the image and the object outlined, "
                     "the proven ε per pixel and, where known, the refuted ε per layer (grey: none known).</p>")
        for run in runs:
            thumbs = figures.thumbnails.get(run, [])
            if not thumbs:
                continue
            parts.append(f"<h4>{esc(run)}</h4><div class=\"thumbs\">")
            for src, caption in thumbs:
                parts.append(f'<figure><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}'
                             "</figcaption></figure>")
            parts.append("</div>")
    if len(runs) > 1:
        parts += ["<h2>4. Models side by side</h2>",
                  "<p>The same images under each pair of models: the per-image difference a − b, its mean with a "
                  "95% percentile bootstrap interval and the p-value of Wilcoxon's signed-rank test.</p>"]
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                parts.append(f"<h3>{esc(a)} (a) vs {esc(b)} (b)</h3>")
                parts.append(f"<p>{comparison_text(summary, a, b)}</p>")
                parts.append(comparison_table(summary, a, b))
                if figures.comparisons and (a, b) in figures.comparisons:
                    parts.append(figure_html(figures.comparisons[(a, b)], f"{a} against {b}"))
                parts.append(f"<details><summary>by target label</summary>{by_target_table(summary, a, b)}"
                             "</details>")
    parts += ["<h2>Files</h2><ul>"
              + "".join(f'<li><a href="{esc(href)}">{esc(href)}</a>: {esc(what)}</li>' for href, what in files)
              + "</ul><p>From Python: <code>mlrobust.report.load(paths)</code> (one row per image and model), "
              "<code>load(paths, table=\"layers\")</code>, <code>load(paths, table=\"summary\")</code> (the rows of "
              "summary.csv).</p>"]
    return PAGE.substitute(title=esc(title), intro=intro, body="\n".join(parts))
