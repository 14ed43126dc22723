"""The intermediate graph: a DAG of typed ops in topological order, and its numpy forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mlrobust.errors import InputError
from mlrobust.ir.ops import Op


@dataclass(eq=False)
class Node:
    """One op application: ``output = op(*inputs)``; ``out_shape`` is the per-sample shape (no batch axis)."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str
    out_shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def size(self) -> int:
        return int(np.prod(self.out_shape, dtype=np.int64))


@dataclass(eq=False)
class Network:
    """A feed-forward network over one input tensor, nodes in topological order, one output tensor.

    ``input_shape`` is the full ONNX input shape with its batch axis (e.g. ``(1, 1, 64, 64)`` or ``(1, 784, 1)``);
    every tensor carries a leading batch axis at run time. ``notes`` records what the importer folded or stripped.
    """

    input_name: str
    input_shape: tuple[int, ...]
    nodes: list[Node]
    output_name: str
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        self._shapes: dict[str, tuple[int, ...]] = {self.input_name: tuple(self.input_shape[1:])}
        for node in self.nodes:
            missing = [t for t in node.inputs if t not in self._shapes]
            if missing:
                raise ValueError(f"node {node.name!r} reads {missing} before they are computed (not topological)")
            self._shapes[node.output] = tuple(node.out_shape)
        if self.output_name not in self._shapes:
            raise ValueError(f"output {self.output_name!r} is not computed by any node")

    # --- shapes -------------------------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Per-sample input shape (the ONNX input shape without its batch axis)."""
        return tuple(self.input_shape[1:])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._shapes[self.output_name]

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.output_shape, dtype=np.int64))

    def shape_of(self, tensor: str) -> tuple[int, ...]:
        return self._shapes[tensor]

    @property
    def tensors(self) -> list[str]:
        """Every tensor name: the input first, then each node's output in order."""
        return [self.input_name] + [n.output for n in self.nodes]

    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if node.output == tensor:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def count(self, kind: str) -> int:
        return sum(1 for n in self.nodes if n.kind == kind)

    @property
    def num_relus(self) -> int:
        return sum(n.size for n in self.nodes if n.kind == "Relu")

    @property
    def num_params(self) -> int:
        return int(sum(n.op.num_params for n in self.nodes))

    # --- evaluation ---------------------------------------------------------------------------------------
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Return ``x`` as a float array with a batch axis, or raise InputError naming the expected shape."""
        x = np.asarray(x)
        if x.shape[1:] != self.sample_shape or x.ndim != len(self.input_shape):
            if x.shape == self.sample_shape:
                hint = " (add a batch axis: x[None])"
            else:
                hint = ""
            raise InputError(
                f"input of shape {x.shape} does not fit the model's input {self.input_name!r} of shape "
                f"(N, {', '.join(map(str, self.sample_shape))}){hint}"
            )
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        return x

    def forward(self, x: np.ndarray, return_all: bool = False) -> np.ndarray | dict[str, np.ndarray]:
        """Evaluate the network in numpy on a batch ``x`` of shape ``(N, *sample_shape)``.

        Returns the output ``(N, *output_shape)``, or with ``return_all`` every tensor by name.
        """
        x = self.check_input(x)
        values: dict[str, np.ndarray] = {self.input_name: x}
        for node in self.nodes:
            args = [values[t] for t in node.inputs]
            values[node.output] = node.op.forward(*args, out_shape=node.out_shape)
        return values if return_all else values[self.output_name]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Flattened outputs ``(N, num_classes)`` for a batch."""
        out = self.forward(x)
        return out.reshape(out.shape[0], -1)
