"""The summary of a results file: how many images, what was proven, sizes, times, maximality per layer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchSummary:
    """Aggregates over the lines of one run's jobs (finished earlier or now)."""

    images: int
    done: int
    errors: int
    verified: int  # eps* proven robust
    nonzero: int  # proven robust with a positive size
    sizes: np.ndarray  # w . eps* of the done lines
    seconds: np.ndarray  # per-image wall time of the done lines
    layers: int
    layers_certified: int
    maximality: Counter = field(default_factory=Counter)
    queries: Counter = field(default_factory=Counter)  # by the tier that answered
    verifier_calls: int = 0
    milp_calls: int = 0
    error_types: Counter = field(default_factory=Counter)

    def stat(self, values: np.ndarray) -> dict[str, float | None]:
        if values.size == 0:
            return {"min": None, "median": None, "mean": None, "max": None}
        return {"min": float(values.min()), "median": float(np.median(values)), "mean": float(values.mean()),
                "max": float(values.max())}

    def to_dict(self) -> dict:
        return {"images": self.images, "done": self.done, "errors": self.errors, "verified": self.verified,
                "nonzero": self.nonzero, "size": self.stat(self.sizes), "seconds": self.stat(self.seconds),
                "total_seconds": float(self.seconds.sum()), "layers": self.layers,
                "layers_certified": self.layers_certified, "maximality": dict(sorted(self.maximality.items())),
                "queries_by_tier": dict(sorted(self.queries.items())), "verifier_calls": self.verifier_calls,
                "milp_calls": self.milp_calls, "error_types": dict(sorted(self.error_types.items()))}


def summarize(lines: list[dict]) -> BatchSummary:
    """Summary of batch lines (status ``done`` or ``error``)."""
    done = [line for line in lines if line.get("status") == "done"]
    errors = [line for line in lines if line.get("status") == "error"]
    results = [line["result"] for line in done]
    maximality: Counter = Counter()
    queries: Counter = Counter()
    for r in results:
        maximality.update(m["status"] for m in r.get("maximality", []))
        queries.update(r.get("statistics", {}).get("by_tier", {}))
    return BatchSummary(
        images=len(lines),
        done=len(done),
        errors=len(errors),
        verified=sum(1 for r in results if r.get("verified")),
        nonzero=sum(1 for r in results if r.get("verified") and (r.get("size") or 0) > 0),
        sizes=np.array([float(r.get("size") or 0.0) for r in results]),
        seconds=np.array([float(line.get("seconds") or 0.0) for line in done]),
        layers=sum(len(r.get("epsilons", [])) for r in results),
        layers_certified=sum(int(r.get("certified_layers") or 0) for r in results),
        maximality=maximality,
        queries=queries,
        verifier_calls=sum(int(r.get("statistics", {}).get("verifier_calls", 0)) for r in results),
        milp_calls=sum(int(r.get("statistics", {}).get("milp_calls", 0)) for r in results),
        error_types=Counter(line.get("error", {}).get("type", "?") for line in errors),
    )


def render_summary(summary: BatchSummary, run, console) -> None:
    """The end-of-run table (rich)."""
    from rich.table import Table

    table = Table(title=f"Batch summary: {run.out}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", f"{run.total} in the data set: {run.skipped} already finished, {run.written} run now"
                  + (" (interrupted)" if run.interrupted else ""))
    table.add_row("results", f"{summary.done} searched, {summary.errors} errors"
                  + (" (" + ", ".join(f"{k} {v}" for k, v in summary.error_types.items()) + ")"
                     if summary.errors else ""))
    table.add_row("verdicts", f"{summary.verified} neighborhoods proven robust ({summary.nonzero} of positive size), "
                  f"{summary.done - summary.verified} not proven")
    s = summary.stat(summary.sizes)
    if s["median"] is not None:
        table.add_row("size w\u00b7\u03b5", f"min {s['min']:.4f}  median {s['median']:.4f}  mean {s['mean']:.4f}  "
                      f"max {s['max']:.4f}")
        t = summary.stat(summary.seconds)
        table.add_row("time per image", f"median {t['median']:.1f} s  max {t['max']:.1f} s  "
                      f"(sum {summary.seconds.sum():.1f} s)")
    table.add_row("wall time", f"{run.wall_seconds:.1f} s on {run.executor}")
    if summary.layers:
        table.add_row("maximality", f"{summary.layers_certified}/{summary.layers} layers certified maximal  "
                      + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(summary.maximality.items())))
        table.add_row("queries", ", ".join(f"{k} {v}" for k, v in sorted(summary.queries.items()))
                      + f"  (verifier calls {summary.verifier_calls}, MILP calls {summary.milp_calls})")
    if run.truncated_bytes or run.unreadable:
        table.add_row("repaired", f"cut an unfinished last line ({run.truncated_bytes} bytes); "
                      f"{run.unreadable} unreadable line(s) ignored")
    console.print(table)
