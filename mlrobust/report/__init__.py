"""Data-set robustness reports from the results files of ``mlrobust batch``: what the layered neighborhoods say
about one model or several side by side, across images, labels and objects.

- :mod:`~mlrobust.report.load`: JSON lines → runs → tables (one row per image, or per image and layer);
- :mod:`~mlrobust.report.aggregate`: the summary table (distributions, profile, label matrix, paired comparisons);
- :mod:`~mlrobust.report.plot`: the figures; :mod:`~mlrobust.report.pictures`: images and masks for thumbnails;
- :mod:`~mlrobust.report.render`: the HTML page; :mod:`~mlrobust.report.build`: all of it into one folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mlrobust.errors import InputError
from mlrobust.report.build import Report, ReportFiles, build, write_report
from mlrobust.report.table import Table

TABLES = ("images", "layers", "summary")


def load(paths: Sequence[str | Path] | str | Path, table: str = "images") -> Table:
    """The results files ``paths`` (several: several models on the same images) as a table: ``images`` (one row per
    model and image: size w·ε, ε₀, uniform baseline, seconds, layer counts, ...), ``layers`` (one row per model,
    image and layer: proven ε, refuted ε, maximality status) or ``summary`` (the rows of the report's
    ``summary.csv``). ``table.to_pandas()`` gives a DataFrame where pandas is installed."""
    if table not in TABLES:
        raise InputError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    report = build(paths)
    return {"images": report.images, "layers": report.layers, "summary": report.summary}[table]


__all__ = ["load", "build", "write_report", "Report", "ReportFiles", "Table", "TABLES"]
