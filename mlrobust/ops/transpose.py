"""Transpose: any permutation of the per-sample axes (e.g. a Keras export's NHWC -> NCHW), an exact index map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlrobust.ops.gather import GatherOp

if TYPE_CHECKING:
    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Transpose(GatherOp):
    """``y = x.transpose(perm)`` on the per-sample axes (the batch axis stays first and is not in ``perm``)."""

    perm: tuple[int, ...]
    kind = "Transpose"
    elementwise = True  # a permutation of coordinates: a box stays a box

    def out_shape_for(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        return tuple(in_shapes[0][p] for p in self.perm)

    def index_map(self, in_shapes: list[tuple[int, ...]]) -> np.ndarray:
        shape = in_shapes[0]
        return np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape).transpose(self.perm)

    def describe(self, node: Node, network: Network) -> str:
        return "perm " + ",".join(str(p) for p in self.perm)
