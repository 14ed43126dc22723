"""The "Data-set report" section of docs/results.md: the headline numbers of the committed report
(``docs/report/summary.csv``, written by ``mlrobust report``), quoted as the CSV writes them, with a link to the page
and the commands that made it."""

from __future__ import annotations

import csv
from pathlib import Path

#: How docs/report was made (models, data, limits), and on what machine; the raw lines are committed in
#: benchmarks/results/report/.
MACHINE = "a 2-core machine shared with other jobs (load average 8 to 14 during the runs)"
COMMANDS = """\
mlrobust data double-mnist --mnist-dir data/mnist --out build/dm.npz --n-train 0 --n-test 100
for m in mnist2_nodefense mnist2_l0 mnist2_pgd; do
  OPENBLAS_NUM_THREADS=1 mlrobust batch examples/models/$m.onnx build/dm.npz --out benchmarks/results/report/$m.jsonl \\
    --limit 28 --time-limit 30 --quiet
done
mlrobust report benchmarks/results/report/mnist2_{nodefense,l0,pgd}.jsonl --out docs/report --dataset build/dm.npz"""


def _rows(summary_csv: Path) -> list[dict[str, str]]:
    with open(summary_csv, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _value(rows: list[dict[str, str]], section: str, run: str, metric: str, statistic: str, versus: str = "") -> str:
    for r in rows:
        if (r["section"], r["run"], r["metric"], r["statistic"], r["versus"]) == (section, run, metric, statistic,
                                                                                    versus) \
                and not (r["target"] or r["object_label"] or r["distance"]):
            return r["value"] or "–"
    return "–"


def report_section(summary_csv: Path, link: str) -> str:
    """The section's Markdown ("" where there is no committed report)."""
    if not summary_csv.is_file():
        return ""
    rows = _rows(summary_csv)
    runs = list(dict.fromkeys(r["run"] for r in rows if r["section"] == "run"))
    lines = ["## Data-set report", "",
             f"[The report]({link}) (`mlrobust report`, a static page with figures, and its numbers in "
             f"[summary.csv]({link.rsplit('/', 1)[0]}/summary.csv)) shows the three models on the same Double-MNIST "
             "test images: distributions of w·ε and ε₀ against the uniform baseline, ε by distance from the object "
             "(proven and refuted), the target × perturbed-object label matrices, the most and least robust images, "
             "and paired comparisons. Its headline numbers:", "",
             "| model | images | median w·ε | median uniform w·ε | median ε₀ | median s / image | % layers proven ε>0 "
             "| % layers refuted | % layers certified maximal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        cells = [_value(rows, "run", run, m, s) for m, s in (
            ("images", "count"), ("size", "median"), ("uniform_size", "median"), ("eps0", "median"),
            ("seconds", "median"), ("layers_proven", "percent"), ("layers_refuted", "percent"),
            ("layers_certified", "percent"))]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    pairs = [(r["run"], r["versus"]) for r in rows if r["section"] == "comparison" and r["metric"] == "size"
             and r["statistic"] == "mean_difference"]
    if pairs:
        lines += ["", "Paired differences of w·ε on the same images (a − b; 95% percentile bootstrap interval of the "
                  "mean, Wilcoxon signed-rank p):", "",
                  "| a | b | images | mean a − b | interval | p | a larger / b larger |", "|---|---|---|---|---|---|---|"]
        for a, b in pairs:
            n = next(r["n"] for r in rows if r["section"] == "comparison" and (r["run"], r["versus"]) == (a, b))
            g = {s: _value(rows, "comparison", a, "size", s, b) for s in (
                "mean_difference", "ci_low", "ci_high", "p_value", "wins", "losses")}
            lines.append(f"| {a} | {b} | {n} | {g['mean_difference']} | [{g['ci_low']}, {g['ci_high']}] | "
                         f"{g['p_value']} | {g['wins']} / {g['losses']} |")
    counts = [(int(_value(rows, "run", run, "errors", "count")), int(_value(rows, "run", run, "images", "count")))
              for run in runs]
    low, high = min(e for e, _ in counts), max(e for e, _ in counts)
    errors = f"{low if low == high else f'{low} to {high}'} of the {counts[0][0] + counts[0][1]}"
    lines += ["", "Made with the commands below: 30 s per image, one process per model, the models one after the other, "
              f"on {MACHINE}, so the searches had less CPU than 30 s and their sizes are lower than on an idle "
              "machine; every search ran to its time limit. Images whose target the model does not rank among its "
              f"top-2 are error lines and left out ({errors} per model); the comparisons pair the images finished "
              "under both models.", "",
              "```bash", COMMANDS, "```", ""]
    return "\n".join(lines)
