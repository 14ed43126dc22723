"""``mlrobust verify``: search the maximal robust layered neighborhood of a target label (or check one given
neighborhood), with a live progress display, a result table, JSON and a heatmap.

Every argument, input file and output path is checked before the model is loaded; the exit code tells the answer
(:data:`mlrobust.cli.EXIT_CODES_HELP`).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from mlrobust.cli import (
    EXIT_CODES_HELP,
    EXIT_COUNTEREXAMPLE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    app,
    check_device_option,
    seconds_since_start,
)
from mlrobust.cli.files import IMAGE_SUFFIXES, atomic_path, atomic_write_text, check_output_path, input_file
from mlrobust.cli.outputs import Outputs, answer_console, prepared_outputs
from mlrobust.cli.summary_table import FORMATS, render_json_lines, render_table, render_text
from mlrobust.errors import InputError
from mlrobust.memory import DEFAULT_MEMORY_LIMIT_MIB

#: Names the options accept (checked before anything is loaded; the API checks them again).
METHODS = ("boundary", "optimize", "certificate", "layer-search", "uniform")
CUTTINGS = ("fixed", "sensitivity")
VERIFIERS = ("cascade", "cascade-bab", "bab", "milp", "bounds", "attack")
#: Exit code of each verdict of a check.
CHECK_EXIT = {"robust": EXIT_OK, "not_robust": EXIT_COUNTEREXAMPLE, "unknown": EXIT_UNKNOWN}

_STATUS_STYLE = {"refuted": "green", "saturated": "green", "unknown": "yellow", "not_maximal": "red",
                 "unchecked": "dim", "robust": "green", "not_robust": "red"}


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, not {value!r}")
    return value


def parse_eps_layers(text: str) -> list[float]:
    """``"0.1,0.05,0"`` -> [0.1, 0.05, 0.0] (commas or spaces)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"--eps-layers {text!r} must be numbers separated by commas (e0,e1,...)") from None
    if not values:
        raise InputError("--eps-layers needs at least one epsilon")
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise InputError(f"--eps-layers: every epsilon must be a finite number >= 0, not {v!r}")
    return values


def parse_delta(text: str) -> float | None:
    """``"auto"`` -> None (the automatic tolerance), else the number, which must lie in (0, 1]."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--delta {text!r} must be a number or 'auto'") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise InputError(f"--delta must be in (0, 1] or 'auto', not {text!r}")
    return value


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return value


def check_limits(*, k: int | None = None, target: int | None = None, time_limit: float | None = None,
                 query_time_limit: float | None = None, max_queries: int | None = None) -> None:
    """The numeric options shared by ``verify`` and ``batch``, checked before anything is loaded."""
    if k is not None and k < 1:
        raise InputError(f"--k must be at least 1, not {k}")
    if target is not None and target < 0:
        raise InputError(f"--target must be a label index >= 0, not {target}")
    for value, option in ((time_limit, "--time-limit"), (query_time_limit, "--query-time-limit")):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{option} must be a positive number of seconds, not {value!r}")
    if max_queries is not None and max_queries < 1:
        raise InputError(f"--max-queries must be at least 1, not {max_queries}")


#: The shipped solver backends (the keys of mlrobust.backends.registry's table; a test keeps them equal). Named
#: here because importing the registry pulls in the MILP stack and torch (seconds).
SHIPPED_SOLVERS = ("highs", "cbc", "scip", "gurobi")


def check_solver(solver: str) -> None:
    """An unknown solver name is an error now, before a model is loaded. A shipped name or ``pyomo:NAME`` costs
    nothing here (whether the solver is installed is checked when the verifier is made); any other name (a plugin,
    or one for Pyomo) is resolved by the registry, which takes a few seconds to import."""
    key = solver.strip().lower()
    if key in SHIPPED_SOLVERS or (key.startswith("pyomo:") and len(key) > len("pyomo:")):
        return
    from mlrobust.backends.registry import get_backend

    get_backend(solver)


def check_model_and_image(model: Path, image: Path, target: int | None = None) -> None:
    """Load the model and read the image against its input size, with the light modules only (numpy, ONNX,
    Pillow; no torch): a broken model, an image of the wrong size or a target the model has no label for is
    reported in a fraction of a second. Warnings (a colour image read as grey) are left to the real load, which
    repeats this one: shown here too, they would print twice."""
    from mlrobust.ir.onnx_import import load_onnx
    from mlrobust.neighborhood.image_io import load_image

    network = load_onnx(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_image(image, network.sample_shape)
    if target is not None and target >= network.num_classes:
        raise InputError(f"--target {target} is not a label of the model: it has {network.num_classes} labels "
                         f"(0 to {network.num_classes - 1})")


#: Seconds of a command's time limit kept back from the search (or check) for what the command does around it:
#: loading the inputs before the search's clock starts, writing the outputs after it stops.
RESERVE_SECONDS = 0.5
#: More seconds kept back per image value when result files are written: coding and deflating the side file's
#: counterexamples (up to its budget, mlrobust.search.outputs) took about 1 s at 3x300x300 on a loaded machine.
OUTPUT_SECONDS_PER_VALUE = 4e-6


def time_left(limit: float, output_values: int = 0) -> float:
    """The time the work may take: ``limit`` less the time the command has run so far (the limit counts from the
    start of the process, see :func:`mlrobust.cli.seconds_since_start`) and less :data:`RESERVE_SECONDS` (and
    :data:`OUTPUT_SECONDS_PER_VALUE` per value of an image whose result files are to be written)."""
    reserve = RESERVE_SECONDS + OUTPUT_SECONDS_PER_VALUE * output_values
    return max(limit - seconds_since_start() - reserve, 0.01)


def _image_values(image: Path) -> int:
    """An upper bound of the values of ``image`` (three channels per pixel), read from its header only."""
    from PIL import Image

    try:
        with Image.open(image) as picture:
            width, height = picture.size
    except OSError:
        return 0
    return 3 * width * height


@contextmanager
def notes() -> Iterator[None]:
    """Show Python warnings raised during the block as one ``note: ...`` line each on stderr (no source lines)."""

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"note: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def plain_zero(value: Any) -> Any:
    """``value`` (plain JSON data) with every ``-0.0`` made ``0.0``: a counterexample pixel reads 0, not -0."""
    if isinstance(value, float):
        return value + 0.0
    if isinstance(value, list):
        return [plain_zero(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_zero(v) for k, v in value.items()}
    return value


def write_json(data: dict, path: Path) -> None:
    import json

    atomic_write_text(path, json.dumps(plain_zero(data), indent=1))


def write_heatmap(result: Any, path: Path, title: str | None = None) -> None:
    from mlrobust.viz.heatmap import save_heatmap

    with atomic_path(path) as tmp:
        save_heatmap(result, tmp, title=title)


class LiveProgress:
    """A rich live panel: phase, iteration, current w.eps, queries by tier, MILP calls, time."""

    def __init__(self, console) -> None:
        from rich.live import Live

        self.console = console
        self.event = None
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=True)
        self._last = 0.0

    def _render(self):
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        ev = self.event
        if ev is None:
            table.add_row("search", "starting ...")
            return table
        from rich.markup import escape

        table.add_row("phase", f"{ev.phase} (iteration {ev.iteration})")
        table.add_row("w \u00b7 \u03b5", f"{ev.best_size:.4f}")
        table.add_row("queries", f"{ev.total_calls} {_tiers(ev.calls)}  MILP calls {ev.milp_calls}")
        table.add_row("time", f"{ev.elapsed:.1f} s")
        if ev.message:
            table.add_row("last", escape(ev.message))
        return table

    def __call__(self, event) -> None:
        self.event = event
        now = time.perf_counter()
        if now - self._last > 0.1 or event.kind != "query":
            self.live.update(self._render())
            self._last = now

    def __enter__(self) -> "LiveProgress":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)


def _tiers(calls: dict) -> str:
    from rich.markup import escape

    return escape("[" + ", ".join(f"{t} {n}" for t, n in sorted(calls.items())) + "]")


def render_check(res, console) -> None:
    import numpy as np

    style = _STATUS_STYLE.get(res.status, "")
    console.print(f"[bold]{res.status.replace('_', ' ')}[/] " if not style else
                  f"[bold {style}]{res.status.replace('_', ' ')}[/]", end="")
    console.print(f" (decided by {res.tier}, {sum(res.seconds.values()):.2f} s)")
    if res.status == "robust" and res.bound is not None and np.isfinite(res.bound):
        console.print(f"proven bound on the top-{res.k} margin of label {res.target}: {res.bound:.4g} < 0")
    if res.status == "not_robust":
        console.print(f"counterexample with margin {res.margin:+.4g} (the target leaves the top-{res.k})")
    if res.reason:
        console.print(f"reason: {res.reason}")
    console.print(f"{len(res.epsilons)} layers, size w\u00b7\u03b5 = {res.size:.4f}")
    console.print(f"object: {int(np.count_nonzero(res.mask))} pixels ({res.object_source}"
                  + (f", label {res.object_label}" if res.object_label is not None else "") + ")")


@app.command("verify", epilog=EXIT_CODES_HELP + " A search exits 0 when it finishes with a proven neighborhood "
             "(its answer is in the table and the JSON), 20 when it proved nothing within the time limit (no layer "
             "got an epsilon above 0), 130 when interrupted (the outputs are still written if the search returned "
             "a result).")
def verify(
    model: Path = typer.Argument(..., help="ONNX model file."),
    image: Path = typer.Argument(..., help="Image file (PNG, ... or .npy) with the model's input size."),
    target: int = typer.Option(..., "--target", "-t", help="The label that must stay among the top-k."),
    object_mask: Optional[Path] = typer.Option(None, "--object-mask", help="Mask image of the perturbed object "
                                               "(non-zero = object)."),
    object_box: Optional[str] = typer.Option(None, "--object-box", help="The perturbed object as a box "
                                             "x0,y0,x1,y1 (x1, y1 exclusive)."),
    object_label: Optional[int] = typer.Option(None, "--object-label", help="With neither mask nor box: pick the "
                                               "object whose removal lowers this label most (a label the model "
                                               "sees in the image)."),
    k: int = typer.Option(2, "--k", help="The target must stay among the top-k labels."),
    weights: str = typer.Option("uniform", "--weights", help="Layer weights: uniform, count, or a file."),
    cutting: str = typer.Option("fixed", "--cutting", help="CEGIS cutting weights: fixed or sensitivity."),
    method: str = typer.Option("boundary", "--method", help="boundary (default), optimize, certificate, layer-search or uniform."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver: highs, cbc, scip, gurobi, pyomo:NAME."),
    verifier: str = typer.Option("cascade", "--verifier", help="cascade, cascade-bab (with branch and bound), bab, "
                                 "milp, bounds or attack."),
    time_limit: float = typer.Option(300.0, "--time-limit", help="Seconds of wall time for the whole command "
                                     "(start-up included): the search, or the check."),
    query_time_limit: float = typer.Option(30.0, "--query-time-limit", help="Seconds per verifier call."),
    device: str = typer.Option("cpu", "--device", help="Where the branch and bound (bab, cascade-bab) runs its "
                                                       "α/β bounds: cpu or cuda (a GPU torch sees)."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Verifier calls at most."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes for the search's "
                                          "independent queries (default: $MLROBUST_WORKERS, else the number of "
                                          "cores; 1: all in this process)."),
    memory_limit: float = typer.Option(DEFAULT_MEMORY_LIMIT_MIB, "--memory-limit", help="Resident memory (MiB) the search aims to "
                                       "stay within: its branch and bound sizes its rounds and its open domains "
                                       "from what the process holds, and gives up a query that would need more."),
    delta: str = typer.Option("auto", "--delta", help="Tolerance of steps and of the maximality check: a number, "
                              "or auto (an eighth of the uniform robust radius, within [1e-4, 1e-2])."),
    eps: Optional[float] = typer.Option(None, "--eps", help="Check this one epsilon for all layers (no search)."),
    eps_layers: Optional[str] = typer.Option(None, "--eps-layers", help="Check these epsilons e0,e1,... "
                                             "(layer 0 = the object; no search)."),
    no_certify: bool = typer.Option(False, "--no-certify", help="Skip the per-layer maximality check."),
    object_share: float = typer.Option(0.5, "--object-share", help="The object's epsilon keeps at least this "
                                       "share of the object's own robust radius (0: the weights alone decide)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON here (its folder "
                                             "is created)."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write the epsilon heatmap here (.png, .pdf, "
                                           ".svg, ...; its folder is created)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; print a one-line summary."),
    full_table: bool = typer.Option(False, "--full-table", help="One table row per layer (default: consecutive "
                                    "layers with the same status share a row)."),
    output_format: str = typer.Option("auto", "--format", help="How the result is printed: table (rich), text "
                                      "(plain columns, never cut: for logs), json (one JSON object per row, then "
                                      "the summary) or auto (table on a terminal, text otherwise)."),
) -> int:
    """Find the largest layered neighborhood around the perturbed object in which TARGET stays among the top-k
    labels (or, with --eps / --eps-layers, check one neighborhood)."""
    # --- everything that can be checked without loading the model, in the order of the command line
    input_file(model, "model file")
    input_file(image, "image file")
    if object_mask is not None:
        input_file(object_mask, "object mask")
    if weights not in ("uniform", "count", "pixels"):
        input_file(Path(weights), "--weights file")
    if object_box is not None:
        from mlrobust.neighborhood.objects import parse_box

        parse_box(object_box)
    check_limits(k=k, target=target, time_limit=time_limit, query_time_limit=query_time_limit,
                 max_queries=max_queries)
    check_choice(method, METHODS, "--method")
    check_choice(cutting, CUTTINGS, "--cutting")
    check_choice(verifier, VERIFIERS, "--verifier")
    check_device_option(device)
    from mlrobust.search.pool import check_workers, default_workers

    n_workers = default_workers() if workers is None else check_workers(workers)
    from mlrobust.memory import memory_target_bytes

    memory_target_bytes(memory_limit, "--memory-limit")
    check_choice(output_format, FORMATS, "--format")
    delta_value = parse_delta(delta)
    if eps is not None and eps_layers is not None:
        raise InputError("give either --eps or --eps-layers, not both")
    if eps is not None and not (math.isfinite(eps) and eps >= 0):
        raise InputError(f"--eps must be a finite number >= 0, not {eps!r}")
    given = eps if eps is not None else (parse_eps_layers(eps_layers) if eps_layers is not None else None)
    if json_path is not None and heatmap is not None and json_path.resolve() == heatmap.resolve():
        raise InputError("--json and --heatmap name the same file")
    if json_path is not None:
        check_output_path(json_path, "--json")
    if heatmap is not None:
        check_output_path(heatmap, "--heatmap", IMAGE_SUFFIXES)
    check_solver(solver)
    check_model_and_image(model, image, target)
    # the outputs' folders are made, and a file written in each, now that the inputs are known good; an input error
    # found later (by the search's own checks) removes the folders again
    common: dict[str, Any] = dict(object_mask=object_mask, object_box=object_box, object_label=object_label, k=k,
                                  weights=weights, verifier=verifier, solver=solver, device=device)
    settings: dict[str, Any] = {"solver": solver, "verifier": verifier, "time_limit": time_limit, "k": k,
                                "weights": weights}
    search_args: dict[str, Any] = dict(method=method, cutting=cutting, query_time_limit=query_time_limit,
                                       max_queries=max_queries, delta=delta_value, certify=not no_certify,
                                       object_share=object_share, workers=n_workers, memory_limit_mib=memory_limit)
    if output_format == "auto":
        output_format = "table" if sys.stdout.isatty() else "text"
    view = View(quiet, full_table, output_format)
    with prepared_outputs([(json_path, "--json"), (heatmap, "--heatmap")]) as outputs:
        if given is not None:
            return _check(outputs, model, image, target, given, common, settings, time_limit, view)
        settings.update(method=method, cutting=cutting, query_time_limit=query_time_limit, max_queries=max_queries,
                        delta=delta, certify=not no_certify, object_share=object_share, workers=n_workers,
                        memory_limit_mib=memory_limit)
        return _search(outputs, model, image, target, {**common, **search_args}, settings, time_limit, view)


@dataclass
class View:
    """How the answer is printed: ``quiet`` (one line), else the table in ``output_format`` (``full``: every
    layer)."""

    quiet: bool
    full: bool
    output_format: str


def _report_failures(outputs: Outputs) -> int | None:
    """The output files that could not be written (each went to a fallback file, which the line names): one
    ``error:`` line each and the exit code of an input error, or None when every output was written."""
    for failure in outputs.failures:
        print(f"error: {failure}", file=sys.stderr)
    return EXIT_USAGE if outputs.failures else None


def _check(outputs: Outputs, model: Path, image: Path, target: int, given: Any, common: dict, settings: dict,
           time_limit: float, view: View) -> int:
    """``verify --eps/--eps-layers``: one neighborhood decided, the answer printed, then the files written."""
    from mlrobust import api
    from mlrobust.search.outputs import json_with_side_file

    with notes():
        res = api.check(model, image, target, given, time_limit=time_left(time_limit), **common)
    if view.quiet:
        print(f"{res.status} tier={res.tier} size={res.size:.4f}")
    else:
        render_check(res, answer_console())
    json_path, heatmap = (dict((w, p) for p, w in outputs.files).get(w) for w in ("--json", "--heatmap"))
    outputs.write(json_path, "--json", lambda p: write_json(json_with_side_file(res, p, {"settings": settings}), p))
    outputs.write(heatmap, "--heatmap", lambda p: write_heatmap(
        res, p, title=f"target {target}: {res.status.replace('_', ' ')} (size {res.size:.3f})"))
    return _report_failures(outputs) or CHECK_EXIT.get(res.status, EXIT_UNKNOWN)


def _search(outputs: Outputs, model: Path, image: Path, target: int, search_args: dict, settings: dict,
            time_limit: float, view: View) -> int:
    """The search: the answer printed first (a failed write must not hide it), then the files written; the exit
    code says whether anything was proven."""
    from rich.console import Console

    from mlrobust import api
    from mlrobust.search.outputs import json_with_side_file

    console = answer_console()
    quiet, full_table, output_format = view.quiet, view.full, view.output_format
    json_path, heatmap = (dict((w, p) for p, w in outputs.files).get(w) for w in ("--json", "--heatmap"))
    writes = json_path is not None or heatmap is not None
    search_args = dict(search_args, time_limit=time_left(time_limit, _image_values(image) if writes else 0))
    with notes():
        if quiet:
            result = api.maximize(model, image, target, **search_args)
        else:
            with LiveProgress(Console(stderr=True)) as live:
                result = api.maximize(model, image, target, progress=live, **search_args)
    # A search stopped by Ctrl-C may still return the best proven neighborhood so far, flagged ``interrupted``:
    # it is written and shown like any result, and the exit code says it was interrupted.
    interrupted = bool(getattr(result, "interrupted", False))
    if quiet:
        gap = "none" if result.median_gap is None else f"{result.median_gap:.4g}"
        answer = "unknown" if result.nothing_proven else "proven"
        print(f"size={result.size:.4f} eps0={result.eps0:.4f} verified={result.verified} "
              f"certified={result.certified_layers}/{result.num_layers} median_gap={gap} "
              f"queries={result.stats.total} milp={result.stats.milp_calls} seconds={result.timings['total']:.1f}"
              f" answer={answer}" + (" interrupted=True" if interrupted else ""))
    elif output_format == "json":
        print(render_json_lines(result, full_table))
    elif output_format == "text":
        print(render_text(result, full_table))
    else:
        render_table(result, console, full_table)
    written = [(outputs.write(json_path, "--json", lambda p: write_json(
        json_with_side_file(result, p, {"settings": settings, "interrupted": interrupted}), p)), "JSON"),
        (outputs.write(heatmap, "--heatmap", lambda p: write_heatmap(result, p)), "heatmap")]
    if not quiet and output_format != "json":
        for path, what in written:
            if path is not None and not outputs.failures:
                console.print(f"{what} written to {path}", soft_wrap=True)
    failed = _report_failures(outputs)
    if interrupted:
        return EXIT_INTERRUPTED
    if failed is not None:
        return failed
    return EXIT_UNKNOWN if result.nothing_proven else EXIT_OK
