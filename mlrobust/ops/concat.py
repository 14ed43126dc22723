"""Concat: two or more tensors joined along a per-sample axis (skip connections, feature groups), an exact index map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlrobust.ops.base import shape_text
from mlrobust.ops.gather import GatherOp

if TYPE_CHECKING:
    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Concat(GatherOp):
    """``y = concatenate(inputs, axis)`` with ``axis`` a per-sample axis (0 is the first axis after the batch)."""

    axis: int
    kind = "Concat"
    arity = 2  # two or more inputs; each output coordinate is one coordinate of one input

    def out_shape_for(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        shape = list(in_shapes[0])
        shape[self.axis] = sum(int(s[self.axis]) for s in in_shapes)
        return tuple(shape)

    def index_map(self, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
        blocks, start = [], 0
        for shape in in_shapes:
            size = int(np.prod(shape, dtype=np.int64))
            blocks.append(np.arange(start, start + size).reshape(shape))
            start += size
        return np.concatenate(blocks, axis=self.axis)

    def describe(self, node: Node, network: Network) -> str:
        sizes = " + ".join(shape_text(network.shape_of(t)) for t in node.inputs)
        return f"axis {self.axis}: {sizes}"
