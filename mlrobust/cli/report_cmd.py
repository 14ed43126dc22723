"""``mlrobust report``: a static robustness report (HTML page, figures, CSV) from the results files of ``mlrobust
batch`` — one model, or several side by side on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mlrobust.cli import EXIT_OK, app
from mlrobust.cli.files import input_file
from mlrobust.errors import InputError


@app.command("report", epilog="Exit codes: 0 the report is written, 2 usage or input error (a missing, empty or "
             "unreadable results file; results files of different images), 130 interrupted.")
def report(
    results: List[Path] = typer.Argument(..., help="Results files of 'mlrobust batch' (JSON lines); several: "
                                         "several models on the same images, compared side by side."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write index.html, its figures, summary.csv and "
                             "images.csv into (created if need be)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="The data set of the runs (npz or a folder "
                                           "with a manifest), if not where the lines say: for the thumbnails."),
    thumbnails: int = typer.Option(3, "--thumbnails", help="Most and least robust images shown per model, each "
                                   "(0: none)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title of the page."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the path of the page."),
) -> int:
    """Write a robustness report of RESULTS into --out: distributions of w·ε and ε₀, time per image, shares of
    layers proven / refuted / certified maximal, ε by distance from the object, the target × object label matrix,
    the most and least robust images, and paired comparisons of several models."""
    for path in results:
        input_file(path, "results file")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a folder")
    if thumbnails < 0:
        raise InputError(f"--thumbnails must be >= 0, not {thumbnails}")
    if dataset is not None and not dataset.exists():
        raise InputError(f"--dataset {str(dataset)!r} does not exist")

    from mlrobust.report import write_report
    from mlrobust.report.aggregate import lookup
    from mlrobust.report.table import cell_text

    files = write_report(results, out, dataset=dataset, thumbnails=thumbnails, title=title)
    if quiet:
        print(files.index)
        return EXIT_OK
    summary = files.report.summary
    for run in files.report.names:
        def g(metric: str, stat: str) -> str:
            return cell_text(lookup(summary, "run", run, metric, stat)) or "-"

        # one line per model, the CSV's own text of each number
        print(f"{run}: images={g('images', 'count')} median_size={g('size', 'median')} "
              f"median_eps0={g('eps0', 'median')} median_seconds={g('seconds', 'median')} "
              f"certified_percent={g('layers_certified', 'percent')}")
    if files.missing_pictures:
        print(f"note: {files.missing_pictures} thumbnail(s) left out: their images were not found (give --dataset)")
    print(f"wrote {files.index} ({len(files.figures)} figures), {files.summary_csv.name}, {files.images_csv.name}")
    return EXIT_OK
