"""Pad: constant padding (and cropping, for negative pads) of the per-sample tensor, an exact index map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlrobust.ops.gather import GatherOp, axis_index

if TYPE_CHECKING:
    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Pad(GatherOp):
    """Constant padding: ``pads[k] = (begin, end)`` entries of ``value`` added along per-sample axis ``k``.

    A negative amount crops, as in ONNX. Only the constant mode is representable exactly as a selection of input
    coordinates plus a constant; the importer refuses reflect, edge and wrap.
    """

    pads: tuple[tuple[int, int], ...]
    value: float = 0.0
    kind = "Pad"
    elementwise = True  # every output coordinate is one input coordinate or a constant: a box stays a box

    @property
    def fill(self) -> float:
        return float(self.value)

    def out_shape_for(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        return tuple(int(s) + b + e for s, (b, e) in zip(in_shapes[0], self.pads))

    def index_map(self, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
        shape = in_shapes[0]
        out = self.out_shape_for(in_shapes)
        return axis_index(shape, [np.arange(n) - b for n, (b, _) in zip(out, self.pads)])

    def describe(self, node: Node, network: Network) -> str:
        pads = ",".join(f"{b}/{e}" for b, e in self.pads)
        return f"pads {pads} (begin/end per axis) value {self.value:g}"
