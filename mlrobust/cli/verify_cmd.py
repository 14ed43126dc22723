"""``mlrobust verify``: search the maximal robust layered neighborhood of a target label (or check one given
neighborhood), with a live progress display, a result table, JSON and a heatmap."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from mlrobust.cli import app
from mlrobust.errors import InputError

_STATUS_STYLE = {"refuted": "green", "saturated": "green", "unknown": "yellow", "not_maximal": "red",
                 "unchecked": "dim", "robust": "green", "not_robust": "red"}


def parse_eps_layers(text: str) -> list[float]:
    """``"0.1,0.05,0"`` -> [0.1, 0.05, 0.0] (commas or spaces)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"--eps-layers {text!r} must be numbers separated by commas (e0,e1,...)") from None
    if not values:
        raise InputError("--eps-layers needs at least one epsilon")
    return values


def parse_delta(text: str) -> float | None:
    """``"auto"`` -> None (the automatic tolerance), else the number (its range is checked by the search options)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--delta {text!r} must be a number or 'auto'") from None
    return value


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


def render_result(result, console) -> None:
    """The result table (one row per layer) and a summary."""
    from rich.table import Table

    table = Table(title=f"Robust layered neighborhood of label {result.target} (top-{result.k})",
                  title_justify="left", caption="* the layer spans the whole pixel range [0, 1]",
                  caption_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("pixels", justify="right")
    table.add_column("\u03b5", justify="right")
    table.add_column("refuted \u03b5", justify="right")
    table.add_column("maximal?")
    table.add_column("tried \u03b5", justify="right")
    table.add_column("margin", justify="right")
    table.add_column("by")
    for d, m in enumerate(result.maximality):
        eps = result.epsilons[d]
        full = "*" if eps >= result.saturation[d] else " "
        style = _STATUS_STYLE.get(m.status, "")
        status = m.status.replace("_", " ")
        table.add_row(str(d), str(int(result.layer_counts[d])), f"{eps:.4f}{full}",
                      "" if m.refuted_eps is None else f"{m.refuted_eps:.4f}",
                      f"[{style}]{status}[/]" if style else status,
                      "" if m.tried is None else f"{m.tried:.4f}",
                      "" if m.margin is None else f"{m.margin:+.3g}", m.tier)
    console.print(table)
    st = result.stats
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    proof = f"proven robust ({result.proof_tier})" if result.verified else "[red]not proven[/]"
    summary.add_row("size w\u00b7\u03b5", f"{result.size:.4f}  {proof}")
    alone = "" if result.object_radius is None else f" (object alone: {result.object_radius:.4f})"
    summary.add_row("object \u03b5\u2080", f"{result.eps0:.4f}{alone}")
    if result.interrupted:
        summary.add_row("interrupted", "[yellow]the search was interrupted: the largest vector proven so far[/]")
    summary.add_row("method", result.method + (f", {result.cutting} cutting weights" if result.cutting else "")
                    + f", \u03b4 = {result.delta:.3g}" + (" (auto)" if "delta_auto" in result.details else ""))
    counts = result.maximality_counts()
    summary.add_row("maximality", f"{result.certified_layers}/{result.num_layers} layers certified maximal "
                    + _tiers({k.replace('_', ' '): v for k, v in counts.items()}))
    gap = result.median_gap
    summary.add_row("upper bounds", f"{result.upper_bounded_layers}/{result.num_layers} layers refuted above \u03b5*"
                    + ("" if gap is None else f", median gap {gap:.4g}"))
    summary.add_row("queries", f"{st.total} {_tiers(dict(st.calls))}")
    summary.add_row("verifier calls", f"{st.verifier_calls} ({result.verifier}), MILP calls {st.milp_calls}")
    tm = result.timings
    summary.add_row("time", f"{tm['total']:.1f} s (search {tm['search']:.1f} s, maximality {tm['maximality']:.1f} s)")
    summary.add_row("stopped", result.stop_reason)
    summary.add_row("object", f"{int(np.count_nonzero(result.mask))} pixels ({result.object_source}"
                    + (f", label {result.object_label}" if result.object_label is not None else "") + ")")
    console.print(summary)


def render_check(res, console) -> None:
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


@app.command("verify")
def verify(
    model: Path = typer.Argument(..., help="ONNX model file."),
    image: Path = typer.Argument(..., help="Image file (PNG, ... or .npy) with the model's input size."),
    target: int = typer.Option(..., "--target", "-t", help="The label that must stay among the top-k."),
    object_mask: Optional[Path] = typer.Option(None, "--object-mask", help="Mask image of the perturbed object "
                                               "(non-zero = object)."),
    object_box: Optional[str] = typer.Option(None, "--object-box", help="The perturbed object as a box "
                                             "x0,y0,x1,y1 (x1, y1 exclusive)."),
    object_label: Optional[int] = typer.Option(None, "--object-label", help="With neither mask nor box: pick the "
                                               "object whose removal lowers this label most."),
    k: int = typer.Option(2, "--k", help="The target must stay among the top-k labels."),
    weights: str = typer.Option("uniform", "--weights", help="Layer weights: uniform, count, or a file."),
    cutting: str = typer.Option("fixed", "--cutting", help="CEGIS cutting weights: fixed or sensitivity."),
    method: str = typer.Option("optimize", "--method", help="optimize, certificate, layer-search or uniform."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver: highs, cbc, scip, gurobi, pyomo:NAME."),
    verifier: str = typer.Option("cascade", "--verifier", help="cascade, milp, bounds or attack."),
    time_limit: float = typer.Option(300.0, "--time-limit", help="Seconds for the whole search (or the check)."),
    query_time_limit: float = typer.Option(30.0, "--query-time-limit", help="Seconds per verifier call."),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", help="Verifier calls at most."),
    delta: str = typer.Option("auto", "--delta", help="Tolerance of steps and of the maximality check: a number, "
                              "or auto (an eighth of the uniform robust radius, within [1e-4, 1e-2])."),
    eps: Optional[float] = typer.Option(None, "--eps", help="Check this one epsilon for all layers (no search)."),
    eps_layers: Optional[str] = typer.Option(None, "--eps-layers", help="Check these epsilons e0,e1,... "
                                             "(layer 0 = the object; no search)."),
    no_certify: bool = typer.Option(False, "--no-certify", help="Skip the per-layer maximality check."),
    object_share: float = typer.Option(0.5, "--object-share", help="The object's epsilon keeps at least this "
                                       "share of the object's own robust radius (0: the weights alone decide)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON here."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write the epsilon heatmap (PNG) here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; print a one-line summary."),
) -> None:
    """Find the largest layered neighborhood around the perturbed object in which TARGET stays among the top-k
    labels (or, with --eps / --eps-layers, check one neighborhood)."""
    from rich.console import Console

    from mlrobust import api

    console = Console()
    err_console = Console(stderr=True)
    delta_value = parse_delta(delta)
    if eps is not None and eps_layers is not None:
        raise InputError("give either --eps or --eps-layers, not both")
    common = dict(object_mask=object_mask, object_box=object_box, object_label=object_label, k=k, weights=weights,
                  verifier=verifier, solver=solver)
    if eps is not None or eps_layers is not None:
        given = eps if eps is not None else parse_eps_layers(eps_layers or "")
        res = api.check(model, image, target, given, time_limit=time_limit, **common)
        if json_path:
            res.write_json(json_path)
        if heatmap:
            from mlrobust.viz.heatmap import save_heatmap

            save_heatmap(res, heatmap, title=f"target {target}: {res.status.replace('_', ' ')} "
                                             f"(size {res.size:.3f})")
        if quiet:
            console.print(f"{res.status} tier={res.tier} size={res.size:.4f}")
        else:
            render_check(res, console)
        return
    if quiet:
        result = api.maximize(model, image, target, method=method, cutting=cutting, time_limit=time_limit,
                              query_time_limit=query_time_limit, max_queries=max_queries, delta=delta_value,
                              certify=not no_certify, object_share=object_share, **common)
    else:
        with LiveProgress(err_console) as live:
            result = api.maximize(model, image, target, method=method, cutting=cutting, time_limit=time_limit,
                                  query_time_limit=query_time_limit, max_queries=max_queries, delta=delta_value,
                                  certify=not no_certify, object_share=object_share, progress=live, **common)
    if json_path:
        result.write_json(json_path)
    if heatmap:
        from mlrobust.viz.heatmap import save_heatmap

        save_heatmap(result, heatmap)
    if quiet:
        gap = "none" if result.median_gap is None else f"{result.median_gap:.4g}"
        console.print(f"size={result.size:.4f} eps0={result.eps0:.4f} verified={result.verified} "
                      f"certified={result.certified_layers}/{result.num_layers} median_gap={gap} "
                      f"queries={result.stats.total} milp={result.stats.milp_calls} "
                      f"seconds={result.timings['total']:.1f}" + (" interrupted" if result.interrupted else ""),
                      soft_wrap=True)  # one line for scripts, whatever the terminal's width
    else:
        render_result(result, console)
        for path, what in ((json_path, "JSON"), (heatmap, "heatmap")):
            if path:
                console.print(f"{what} written to {path}")
    if result.interrupted:
        raise typer.Exit(130)  # the result is written; the exit code still says the search did not finish
