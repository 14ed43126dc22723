"""Slice: a strided window of the per-sample tensor (ONNX Slice, and each output of Split), an exact index map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlrobust.ops.gather import GatherOp, axis_index

if TYPE_CHECKING:
    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Slice(GatherOp):
    """``y = x[ranges]``: along per-sample axis ``k`` the input coordinates ``range(*ranges[k])``.

    ``ranges`` holds resolved ``(start, stop, step)`` triples (the importer clamps ONNX's starts and ends and resolves
    negative values), so ``range`` gives exactly the coordinates numpy's slicing gives.
    """

    ranges: tuple[tuple[int, int, int], ...]
    kind = "Slice"
    elementwise = True  # a selection of coordinates: a box stays a box

    def out_shape_for(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        return tuple(len(range(*r)) for r in self.ranges)

    def index_map(self, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
        return axis_index(in_shapes[0], [np.arange(*r) for r in self.ranges])

    def describe(self, node: Node, network: Network) -> str:
        shape = network.shape_of(node.inputs[0])
        parts = []
        for (start, stop, step), n in zip(self.ranges, shape):
            if (start, stop, step) == (0, n, 1):
                parts.append(":")
            else:
                parts.append(f"{start}:{stop}" + (f":{step}" if step != 1 else ""))
        return "[" + ", ".join(parts) + "]"
