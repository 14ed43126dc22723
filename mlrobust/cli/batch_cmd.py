"""``mlrobust batch``: the maximal robust neighborhood of every image of a data set, one JSON line per image,
resumable, on local processes or a Dask cluster, with a progress bar and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mlrobust.cli import EXIT_INTERRUPTED, EXIT_OK, app
from mlrobust.cli.files import atomic_write_text, input_file, output_file
from mlrobust.errors import InputError
from mlrobust.memory import DEFAULT_MEMORY_LIMIT_MIB, memory_target_bytes


@app.command("batch", epilog="Exit codes: 0 the batch finished (each image's answer is in its line), 2 usage or "
             "input error, 130 interrupted (run the same command again to resume).")
def batch(
    model: Path = typer.Argument(..., help="ONNX model file."),
    dataset: Path = typer.Argument(..., help="A folder with a manifest.json (the shipped examples, or a split "
                                   "folder of 'mlrobust data double-mnist --format png'), or the .npz it writes."),
    out: Path = typer.Option(..., "--out", "-o", help="Results file (JSON lines); an existing one is resumed."),
    workers: int = typer.Option(1, "--workers", "-j", help="Local worker processes."),
    dask: Optional[str] = typer.Option(None, "--dask", help="Address of a running Dask scheduler "
                                       "(e.g. tcp://10.0.0.5:8786): run the jobs there instead."),
    split: str = typer.Option("test", "--split", help="Split of an npz file or of a data-builder folder."),
    target_side: str = typer.Option("auto", "--target-side", help="Which object is the target: auto, manifest, "
                                    "alternate, both (one job per object), or an object's name (left, right; left, "
                                    "middle, right for Triple-MNIST; obj0..obj3 for RGB objects) or 0-based index."),
    perturbed_side: str = typer.Option("next", "--perturbed-side", help="Which object is perturbed: next (the next "
                                       "object after the target; with two objects the other one), or a name or index."),
    start: int = typer.Option(0, "--start", help="Skip the first N images of the data set."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Take at most N images (after --start)."),
    k: int = typer.Option(2, "--k", help="The target must stay among the top-k labels (an image whose data set "
                          "names its own k, as the RGB objects set and the ladder examples do, keeps it)."),
    method: str = typer.Option("boundary", "--method", help="boundary (default), optimize, certificate, layer-search or uniform."),
    cutting: str = typer.Option("fixed", "--cutting", help="CEGIS cutting weights: fixed or sensitivity."),
    weights: str = typer.Option("uniform", "--weights", help="Layer weights: uniform, count, or a file."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver: highs, cbc, scip, gurobi, pyomo:NAME."),
    verifier: str = typer.Option("cascade", "--verifier", help="cascade, cascade-bab (with branch and bound), bab, milp, bounds or attack."),
    time_limit: float = typer.Option(300.0, "--time-limit", help="Seconds per image (the whole search)."),
    query_time_limit: float = typer.Option(30.0, "--query-time-limit", help="Seconds per verifier call."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Verifier calls per image at most."),
    delta: str = typer.Option("auto", "--delta", help="Tolerance of steps and of the maximality check: a number, "
                              "or auto (an eighth of the uniform robust radius, within [1e-4, 1e-2])."),
    no_certify: bool = typer.Option(False, "--no-certify", help="Skip the per-layer maximality check."),
    memory_limit: float = typer.Option(DEFAULT_MEMORY_LIMIT_MIB, "--memory-limit", help="Resident memory (MiB) "
                                       "each image's search aims to stay within (per worker process): its branch "
                                       "and bound sizes its rounds from what the process holds."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Run again the images whose line is an error."),
    summary_json: Optional[Path] = typer.Option(None, "--summary-json", help="Also write the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; a one-line summary."),
) -> int:
    """Search the maximal robust layered neighborhood of every image of DATASET and append one JSON line per
    image to --out. Running the same command again skips the images already in the file."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mlrobust.cli.verify_cmd import (
        CUTTINGS,
        METHODS,
        VERIFIERS,
        check_choice,
        check_limits,
        check_solver,
        parse_delta,
    )

    input_file(model, "model file")
    if not dataset.exists():
        raise InputError(f"data set {str(dataset)!r} does not exist")
    if weights not in ("uniform", "count", "pixels"):
        input_file(Path(weights), "--weights file")
    check_limits(k=k, time_limit=time_limit, query_time_limit=query_time_limit, max_queries=max_queries)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if start < 0 or (limit is not None and limit < 0):
        raise InputError("--start and --limit must be >= 0")
    check_choice(method, METHODS, "--method")
    check_choice(cutting, CUTTINGS, "--cutting")
    check_choice(verifier, VERIFIERS, "--verifier")
    delta_value = parse_delta(delta)
    check_solver(solver)
    memory_target_bytes(memory_limit, "--memory-limit")
    output_file(out, "--out")
    if summary_json is not None:
        output_file(summary_json, "--summary-json")

    from mlrobust.batch import BatchSettings, load_jobs, render_summary, run_batch, summarize

    console = Console()
    settings = BatchSettings(k=k, method=method, cutting=cutting, weights=weights, solver=solver, verifier=verifier,
                             time_limit=time_limit, query_time_limit=query_time_limit, max_queries=max_queries,
                             delta=delta_value, certify=not no_certify, memory_limit_mib=memory_limit)
    jobs = load_jobs(dataset, split=split, side_rule=target_side, start=start, limit=limit,
                     perturbed_rule=perturbed_side)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[last]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=quiet, transient=False)
    task = {}

    def on_start(total: int, todo: int) -> None:
        task["id"] = progress.add_task("verifying", total=todo, last=f"({total - todo} already done)")

    def on_line(line: dict, n: int, todo: int) -> None:
        if line["status"] == "done":
            r = line["result"]
            last = f"{line['id']}: size {r['size']:.3f} ({line['seconds']:.0f} s)"
        else:
            last = f"{line['id']}: {line['error']['type']}"
        progress.update(task["id"], completed=n, last=last)

    with progress:
        run = run_batch(model, jobs, out, settings, workers=workers, dask_address=dask, retry_errors=retry_errors,
                        on_start=on_start, on_line=on_line)
    summary = summarize(run.lines)
    if summary_json:
        atomic_write_text(summary_json, json.dumps({"out": str(run.out), "written": run.written, "skipped": run.skipped,
                                            "wall_seconds": run.wall_seconds, "executor": run.executor,
                                            **summary.to_dict()}, indent=1))
    if quiet:
        med = summary.stat(summary.sizes)["median"]
        # print, not the rich console: one line for scripts, whatever the terminal width (rich wraps at 80 columns
        # when stdout is not a terminal)
        print(f"images={run.total} skipped={run.skipped} written={run.written} done={summary.done} "
              f"errors={summary.errors} verified={summary.verified} "
              f"median_size={'-' if med is None else f'{med:.4f}'} wall={run.wall_seconds:.1f}s")
    else:
        render_summary(summary, run, console)
    if run.interrupted:
        console.print(f"interrupted: {run.written} line(s) written to {run.out}; run the same command to resume")
        return EXIT_INTERRUPTED
    return EXIT_OK
