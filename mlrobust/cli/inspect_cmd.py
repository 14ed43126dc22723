"""``mlrobust inspect``: load an ONNX model into the intermediate graph and print what mlrobust sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mlrobust.cli import app
from mlrobust.cli.files import input_file


@app.command("inspect")
def inspect(
    model: Path = typer.Argument(..., help="ONNX model file to load."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
    output: Optional[str] = typer.Option(None, "--output", help="Read the network up to this tensor (or node) "
                                         "instead of the graph's output, e.g. the scores in front of an ArgMax tail."),
) -> None:
    """Show the network as mlrobust reads it: nodes, shapes, neurons, ReLUs, and what the import folded or stripped."""
    input_file(model, "model file")
    from mlrobust.cli.outputs import answer_console
    from mlrobust.ir.onnx_import import load_onnx
    from mlrobust.ir.summary import render, summarize

    summary = summarize(load_onnx(model, output=output))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        render(summary, answer_console())
