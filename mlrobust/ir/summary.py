"""A readable summary of a :class:`Network`: its nodes, shapes, sizes and what the importer folded or stripped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mlrobust.ir.graph import Network, Node
from mlrobust.ops.base import shape_text as _shape


@dataclass
class NodeSummary:
    """One node: its op kind, IR name, input tensors, per-sample output shape, parameter count and op details."""

    name: str
    op: str
    inputs: list[str]
    output: str
    output_shape: list[int]
    params: int
    detail: str


@dataclass
class NetworkSummary:
    """Everything ``mlrobust inspect`` prints; ``to_dict`` gives the JSON form."""

    source: str
    input_name: str
    input_shape: list[int]
    output_name: str
    output_shape: list[int]
    num_classes: int
    nodes: list[NodeSummary]
    neurons: int  # entries of every computed tensor except reshapes (which only relabel their input)
    relus: int  # ReLU neurons (each a potential binary variable of the MILP)
    relu_layers: int
    maxpools: int
    params: int
    op_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def describe(node: Node, network: Network) -> str:
    """A one-line description of the node's op parameters."""
    return node.op.describe(node, network)


def summarize(network: Network) -> NetworkSummary:
    """Summary of ``network`` (see :class:`NetworkSummary`)."""
    nodes = [NodeSummary(name=n.name, op=n.kind, inputs=list(n.inputs), output=n.output,
                         output_shape=[int(s) for s in n.out_shape], params=int(n.op.num_params),
                         detail=describe(n, network)) for n in network.nodes]
    counts: dict[str, int] = {}
    for n in network.nodes:
        counts[n.kind] = counts.get(n.kind, 0) + 1
    return NetworkSummary(
        source=network.source, input_name=network.input_name, input_shape=[int(s) for s in network.input_shape],
        output_name=network.output_name, output_shape=[int(s) for s in network.output_shape],
        num_classes=network.num_classes, nodes=nodes,
        neurons=int(sum(n.size for n in network.nodes if n.kind != "Reshape")),
        relus=int(network.num_relus), relu_layers=network.count("Relu"), maxpools=network.count("MaxPool2d"),
        params=int(network.num_params), op_counts=counts, notes=list(network.notes))


def render(summary: NetworkSummary, console) -> None:
    """Print ``summary`` with rich: a header, one table row per node, the totals and the importer's notes."""
    from rich.table import Table

    title = summary.source or "network"
    console.print(f"[bold]{title}[/]")
    console.print(f"input  [cyan]{summary.input_name}[/] shape {tuple(summary.input_shape)} "
                  f"(per sample {_shape(summary.input_shape[1:])})", highlight=False)
    console.print(f"output [cyan]{summary.output_name}[/] shape {_shape(summary.output_shape)} "
                  f"({summary.num_classes} classes)", highlight=False)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col, justify in (("#", "right"), ("op", "left"), ("name", "left"), ("output shape", "left"),
                         ("params", "right"), ("details", "left")):
        table.add_column(col, justify=justify)
    for i, n in enumerate(summary.nodes):
        table.add_row(str(i), n.op, n.name, _shape(n.output_shape), f"{n.params:,}" if n.params else "",
                      n.detail)
    console.print(table)
    console.print(f"neurons {summary.neurons:,} · ReLUs {summary.relus:,} in {summary.relu_layers} layer(s) · "
                  f"max-pools {summary.maxpools} · parameters {summary.params:,}", highlight=False)
    if summary.notes:
        console.print("[bold]import notes[/]")
        for note in summary.notes:
            console.print(f"  • {note}", highlight=False, markup=False)
