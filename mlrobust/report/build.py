"""Put a report together: read the runs, compute the tables, draw the figures and write ``index.html``,
``summary.csv`` and ``images.csv`` into one folder (every file written whole or not at all)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlrobust.errors import InputError
from mlrobust.report.aggregate import summarize_tables
from mlrobust.report.load import Run, image_table, layer_table, read_runs
from mlrobust.report.table import Table

#: Thumbnails are saved at this resolution (the heatmap figure is 13 inches wide: about 650 pixels).
THUMBNAIL_DPI = 50


@dataclass
class Report:
    """The runs of a report and its three tables."""

    runs: list[Run]
    images: Table
    layers: Table
    summary: Table

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote (paths) and what it left out."""

    report: Report
    folder: Path
    index: Path
    summary_csv: Path
    images_csv: Path
    figures: list[Path] = field(default_factory=list)
    missing_pictures: int = 0


def build(paths: Sequence[str | Path] | str | Path) -> Report:
    """The report's runs and tables from results files of ``mlrobust batch`` (several: the same images)."""
    runs = read_runs(paths)
    images, layers = image_table(runs), layer_table(runs)
    summary = summarize_tables(images, layers, [r.name for r in runs], {r.name: r.errors for r in runs})
    return Report(runs, images, layers, summary)


def _save(fig: Any, path: Path, dpi: float | None = None) -> Path:
    from mlrobust.cli.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path


def _thumbnails(report: Report, folder: Path, per_side: int, dataset: str | Path | None,
                written: list[Path]) -> tuple[dict[str, list[tuple[str, str]]], int]:
    """The ``per_side`` most and least robust images of each run (by w·ε) with their heatmaps; how many pictures
    could not be found."""
    from mlrobust.neighborhood.layers import layer_index
    from mlrobust.report.pictures import find_picture
    from mlrobust.report.plot import thumbnail

    out: dict[str, list[tuple[str, str]]] = {}
    missing = 0
    for i, run in enumerate(report.runs):
        order = np.argsort([float(line["result"].get("size") or 0.0) for line in run.lines], kind="stable")
        most = list(order[::-1][:per_side])
        least = [j for j in order[:per_side] if j not in most]
        picks = [("most", rank, j) for rank, j in enumerate(most)] + [("least", rank, j) for rank, j in
                                                                       enumerate(least)]
        for kind, rank, j in picks:
            line = run.lines[j]
            found = find_picture(line, dataset)
            r = line["result"]
            if found is None or int(layer_index(found[1]).max()) + 1 != len(r["epsilons"]):
                missing += 1  # not found, or not the mask the epsilons were computed on
                continue
            refuted = np.array([np.nan if m.get("refuted_eps") is None else m["refuted_eps"]
                                for m in r.get("maximality") or []], dtype=np.float64)
            label = (line.get("source") or {}).get("perturbed_label")
            caption = (f"{kind} robust #{rank + 1}: {line['id']}, target {line['target']}, object {label}; "
                       f"w·ε {r.get('size', 0.0):.4g}, ε₀ {r['epsilons'][0]:.4g}")
            # no title in the picture: at thumbnail size it would cover the panels' own; the caption says it
            fig = thumbnail(found[0], found[1], np.asarray(r["epsilons"]), refuted if refuted.size else None, "")
            name = f"thumb_{i + 1}_{kind}_{rank + 1}.png"
            written.append(_save(fig, folder / name, THUMBNAIL_DPI))
            out.setdefault(run.name, []).append((name, caption))
    return out, missing


def write_report(paths: Sequence[str | Path] | str | Path, out: str | Path, dataset: str | Path | None = None,
                 thumbnails: int = 3, title: str | None = None) -> ReportFiles:
    """Write the report of the results files ``paths`` into the folder ``out``: ``index.html`` with its PNG figures
    beside it, ``summary.csv`` (the summary table) and ``images.csv`` (one row per image and model).

    ``dataset`` is where the images are, if not where the lines say (thumbnails only; without pictures the report
    has none); ``thumbnails`` the number of most and of least robust images shown per model (0: none).
    """
    from mlrobust.cli.files import atomic_write_text
    from mlrobust.report import plot
    from mlrobust.report.render import Figures, page

    if thumbnails < 0:
        raise InputError(f"the number of thumbnails must be >= 0, not {thumbnails}")
    report = build(paths)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"report folder {str(folder)!r} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    names = report.names
    written: list[Path] = []
    figs = Figures()
    figs.distributions = _save(plot.distributions(report.images, names), folder / "distributions.png").name
    figs.time_and_layers = _save(plot.time_and_layers(report.images, report.summary, names),
                                 folder / "time_layers.png").name
    figs.profile = _save(plot.profile(report.summary, names), folder / "profile.png").name
    figs.labels = {}
    for i, run in enumerate(names):
        figs.labels[run] = _save(plot.label_matrix(report.summary, run), folder / f"labels_{i + 1}.png").name
    figs.comparisons = {}
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            figs.comparisons[(a, b)] = _save(plot.comparison(report.images, report.summary, a, b, i, j),
                                             folder / f"compare_{i + 1}_{j + 1}.png").name
    written += [folder / n for n in (figs.distributions, figs.time_and_layers, figs.profile, *figs.labels.values(),
                                     *figs.comparisons.values())]
    missing = 0
    if thumbnails:
        figs.thumbnails, missing = _thumbnails(report, folder, thumbnails, dataset, written)
    notes = {}
    for done in report.runs:
        note = []
        if done.errors:
            note.append(f"{done.errors} image(s) ended in an error and are left out (e.g. {done.error_ids[0]})")
        if done.unfinished_bytes:
            note.append("an unfinished last line (a batch still running?) was ignored")
        notes[done.name] = "; ".join(note)
    if missing:
        notes["pictures"] = (f"{missing} thumbnail(s) left out: their images were not found (give the data set "
                             "with --dataset)")
    summary_csv, images_csv = folder / "summary.csv", folder / "images.csv"
    atomic_write_text(summary_csv, report.summary.to_csv())
    atomic_write_text(images_csv, report.images.to_csv())
    first = report.runs[0].lines[0]["result"]
    files_intro = "; ".join(f"<b>{html.escape(r.name)}</b>: {html.escape(str(r.path))} ({len(r.lines)} images, "
                            f"model {html.escape(r.model)}, method {html.escape(r.method)})" for r in report.runs)
    intro = (f"Results of <code>mlrobust batch</code>: {files_intro}. Target among the top-{first.get('k')} labels; "
             "ε per layer of pixels at the same Chebyshev distance from the perturbed object.")
    text = page(title or "Robustness report: " + ", ".join(names), intro, report.summary, names, figs, notes,
                [("summary.csv", "every number of this page (section, run, versus, group, metric, statistic, "
                  "value, n)"), ("images.csv", "one row per image and model")])
    index = folder / "index.html"
    atomic_write_text(index, text)
    return ReportFiles(report, folder, index, summary_csv, images_csv, written, missing)
