"""The result of a search as a reader sees it: a table of the layers and a summary in plain words.

- Compact by default: consecutive layers treated alike (the same status, decided by the same verifier tier) share
  one row, with the range of their values; ``full=True`` gives one row per layer.
- Never cut: numbers are printed in full, whatever the width (outside a terminal there is no width limit at all).
- Three formats: ``table`` (rich, for a terminal), ``text`` (plain aligned columns, for logs) and ``json`` (one
  JSON object per row and one for the summary, for scripts).
- Only the standard library at import (the command line's rule: errors come back before numpy is loaded).
- The margin column says what it means: "open by 0.03" (the best bound left the target's margin 0.03 short of a
  proof at the tried ε); the counts are those of the JSON's ``summary``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("auto", "table", "text", "json")

#: What each status means for the reader, in the table's words.
STATUS_WORDS = {"refuted": "maximal", "saturated": "full range", "unknown": "open", "not_maximal": "can grow",
                "unchecked": "not checked"}
STATUS_STYLE = {"refuted": "green", "saturated": "green", "unknown": "yellow", "not_maximal": "red",
                "unchecked": "dim"}

#: The search's phase names and stop reasons (as the JSON's ``stop_reason`` holds them), in plain words.
PHASE_WORDS = {"explore": "growth on the bounds", "optimize": "optimizer", "refine": "refinement with the full verifier",
               "push": "pushing each layer to its boundary", "scale": "scaling the whole vector with the MILP"}
REASON_WORDS = (
    (re.compile(r"converged \(step below delta = [^)]*\)"), "converged (no step of δ or more was proven)"),
    (re.compile(r"converged \(trust radius below [^)]*\)"), "converged (no step of δ or more was proven)"),
    (re.compile(r"the push's deadline"), "its share of the time limit ran out"),
    (re.compile(r"cheap tiers exhausted"), "the bounds and branch and bound decided all they could"),
    (re.compile(r"step below [0-9.e-]+"), "converged"),
)


@dataclass
class Row:
    """One row of the table: the layers ``first..last`` and their values (ranges where the layers differ)."""

    first: int
    last: int
    pixels: int
    eps: tuple[float, float]
    refuted: tuple[float, float] | None
    status: str
    tried: tuple[float, float] | None
    margin: tuple[float, float] | None
    tier: str
    full_range: bool

    def to_dict(self) -> dict:
        return {"layers": [self.first, self.last], "pixels": self.pixels, "eps": list(self.eps),
                "refuted_eps": None if self.refuted is None else list(self.refuted),
                "status": self.status, "tried_eps": None if self.tried is None else list(self.tried),
                "open_by": None if self.margin is None else list(self.margin), "decided_by": self.tier or None,
                "full_range": self.full_range}


def _span(values: list[float | None]) -> tuple[float, float] | None:
    known = [v for v in values if v is not None]
    return None if not known else (float(min(known)), float(max(known)))


def table_rows(result: Any, full: bool = False) -> list[Row]:
    """The table's rows: one per layer with ``full``, else one per run of consecutive layers with the same status
    and the same deciding tier."""
    import numpy as np

    n = len(result.epsilons)
    keys = []
    for m in result.maximality:
        # a margin is shown only beside the ε it was found at: without a tried ε it says nothing
        keys.append((m.status, m.tier if m.tried is not None else ""))
    rows: list[Row] = []
    start = 0
    for d in range(1, n + 1):
        if d < n and not full and keys[d] == keys[start]:
            continue
        ms = result.maximality[start:d]
        tried = [m.tried for m in ms]
        rows.append(Row(
            first=start, last=d - 1, pixels=int(np.sum(result.layer_counts[start:d])),
            eps=(float(np.min(result.epsilons[start:d])), float(np.max(result.epsilons[start:d]))),
            refuted=_span([m.refuted_eps for m in ms]), status=keys[start][0], tried=_span(tried),
            margin=_span([m.open_by if m.tried is not None and m.status == "unknown" else None for m in ms]),
            tier=keys[start][1],
            full_range=bool(np.all(result.epsilons[start:d] >= result.saturation[start:d]))))
        start = d
    return rows


def number(span: tuple[float, float] | None, digits: int = 4) -> str:
    """``0.0123`` or ``0.0038-0.0623`` (a range), or empty."""
    if span is None:
        return ""
    lo, hi = span
    text = f"{lo:.{digits}f}"
    return text if f"{hi:.{digits}f}" == text else f"{text}–{hi:.{digits}f}"


def open_by(span: tuple[float, float] | None) -> str:
    """The margin column: the proven upper bound on the target's margin at the tried ε, which a proof needs below
    0 ("open by 0.03": 0.03 short of a proof)."""
    if span is None:
        return ""
    # a bound at or just below 0 that still did not prove (it must clear a rounding tolerance) reads as 0
    lo, hi = (max(v, 0.0) for v in span)
    text = f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}–{hi:.3g}"
    return f"open by {text}"


def layers_label(row: Row) -> str:
    return str(row.first) if row.first == row.last else f"{row.first}–{row.last}"


COLUMNS = ("layers", "pixels", "proven ε", "refuted ε", "status", "tried ε", "bound at tried ε", "by")
#: Right-aligned columns (numbers).
NUMERIC = {0, 1, 2, 3, 5}


def row_cells(row: Row) -> list[str]:
    star = "*" if row.full_range else ""
    return [layers_label(row), str(row.pixels), number(row.eps) + star, number(row.refuted),
            STATUS_WORDS.get(row.status, row.status), number(row.tried), open_by(row.margin), row.tier]


def plain_stop_reason(text: str) -> str:
    """The search's stop line (``"explore: converged (step below delta = 0.0038); push: the push's deadline"``) in
    plain words."""
    parts = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        phase, sep, reason = part.partition(": ")
        if not sep:
            phase, reason = "", part
        for pattern, words in REASON_WORDS:
            reason = pattern.sub(words, reason)
        name = PHASE_WORDS.get(phase, phase)
        parts.append(f"{name}: {reason}" if name else reason)
    return "; ".join(parts)


def summary_lines(result: Any) -> list[tuple[str, str]]:
    """The summary under the table as (label, text) pairs, in plain words; its counts are the JSON summary's."""
    import numpy as np

    s = result.summary()
    lines: list[tuple[str, str]] = []
    if s["nothing_proven"]:
        lines.append(("answer", "unknown: nothing proven within the time limit (no layer got an ε above 0)"))
    else:
        lines.append(("answer", f"proven robust: size w·ε = {result.size:.4f} (proof by {result.proof_tier})"))
    obj = f"{result.eps0:.4f}"
    alone = s.get("object_radius_alone")
    refuted_alone = result.details.get("object", {}).get("refuted_alone")
    if alone is not None:
        obj += f"; the object alone (other layers at 0) is proven robust to at least {alone:.4f}"
        if refuted_alone is not None:
            obj += f" and refuted at {refuted_alone:.4f}"
    lines.append(("object ε₀", obj))
    floor, uniform = s.get("object_floor"), s.get("uniform_size")
    radius = result.details.get("delta_auto", {}).get("uniform_radius")
    if uniform is not None and uniform > result.size + 1e-9:
        # the simplest baseline did better: say why (the object's floor is a choice with a price), or that it did
        if floor and radius is not None and radius < floor:
            lines.append(("trade", f"one ε for every layer ({radius:.4f}) was proven up to w·ε = {uniform:.4f}, "
                                   f"larger, but below the object's floor ε₀ ≥ {floor:.4f} (--object-share); "
                                   f"--object-share 0 lets size alone decide"))
        else:
            lines.append(("baseline", f"one ε for every layer ({radius:.4f}) was proven up to w·ε = {uniform:.4f}, "
                                      "larger than this search reached within its time limit"))
    lines.append(("method", result.method + (f", {result.cutting} cutting weights" if result.cutting else "")
                  + f", δ = {result.delta:.3g}" + (" (automatic)" if "delta_auto" in result.details else "")))
    counts = s["statuses"]
    parts = [f"{counts.get(k, 0)} {STATUS_WORDS[k]}" for k in ("refuted", "saturated", "unknown", "unchecked",
                                                                  "not_maximal") if counts.get(k, 0)]
    lines.append(("layers", f"{s['layers']} layers: " + ", ".join(parts)
                  + f" ({s['certified_layers']} certified maximal within δ)"))
    gap = s["median_gap"]
    lines.append(("refuted", f"{s['refuted_layers']}/{s['layers']} layers have a counterexample above their ε"
                  + ("" if gap is None else f" (median distance {gap:.4g})")
                  + (f"; {s['saturated_layers']} span the full range" if s["saturated_layers"] else "")))
    if s["never_tried"]:
        lines.append(("not tried", "; ".join(s["never_tried"])))
    st = result.stats
    lines.append(("queries", f"{st.total} (" + ", ".join(f"{t} {n}" for t, n in sorted(st.calls.items()))
                  + f"), {st.verifier_calls} reached the verifier ({result.verifier}), {st.milp_calls} MILP"))
    tm = result.timings
    lines.append(("time", f"{tm['total']:.1f} s (search {tm['search']:.1f} s, then bounds, push and checks "
                  f"{tm['maximality']:.1f} s)"))
    lines.append(("stopped", plain_stop_reason(result.stop_reason)))
    lines.append(("object", f"{int(np.count_nonzero(result.mask))} pixels ({result.object_source}"
                  + (f", label {result.object_label}" if result.object_label is not None else "") + ")"))
    if result.interrupted:
        lines.append(("interrupted", "the search was interrupted: the largest vector proven so far"))
    return lines


TITLE = "Robust layered neighborhood of label {target} (top-{k})"
FOOTNOTES = ("status: maximal = a counterexample lies within δ above the proven ε; open = the verifier could not "
             "decide the next step; not checked = the time ran out first. 'open by m': at the tried ε the best "
             "bound left the target's margin m short of a proof (0: within the rounding tolerance of one).")
STAR_NOTE = "* the layer spans the whole pixel range [0, 1]"


def render_text(result: Any, full: bool = False) -> str:
    """The table and the summary as plain text: aligned columns, no colours, no width limit."""
    rows = table_rows(result, full)
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i in NUMERIC else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [TITLE.format(target=result.target, k=result.k), line(cells[0]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells[1:]]
    if any(r.full_range for r in rows):
        out.append(STAR_NOTE)
    out.append(FOOTNOTES)
    labels = summary_lines(result)
    pad = max(len(k) for k, _ in labels)
    out += [f"{k.ljust(pad)}  {v}" for k, v in labels]
    return "\n".join(out)


def render_json_lines(result: Any, full: bool = False) -> str:
    """One JSON object per table row, then one with the summary (the JSON result's ``summary``, plus the plain
    lines)."""
    lines = [json.dumps({"row": r.to_dict()}) for r in table_rows(result, full)]
    summary = {k: v for k, v in result.summary().items()}
    summary["lines"] = {k: v for k, v in summary_lines(result)}
    lines.append(json.dumps({"summary": summary}, default=float))
    return "\n".join(lines)


def render_table(result: Any, console: Any, full: bool = False) -> None:
    """The table and the summary with rich, on ``console`` (columns never cut: a number that does not fit wraps)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = table_rows(result, full)
    table = Table(title=TITLE.format(target=result.target, k=result.k), title_justify="left",
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption=(STAR_NOTE + "\n" if any(r.full_range for r in rows) else "") + FOOTNOTES)
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="right" if i in NUMERIC else "left", overflow="fold")
    for r in rows:
        cells = [escape(c) for c in row_cells(r)]
        style = STATUS_STYLE.get(r.status, "")
        if style:
            cells[4] = f"[{style}]{cells[4]}[/]"
        table.add_row(*cells)
    console.print(table)
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    for label, text in summary_lines(result):
        summary.add_row(label, escape(text))
    console.print(summary)
