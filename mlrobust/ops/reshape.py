"""Reshape (ONNX Reshape and Flatten) of the per-sample tensor, and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import CrownStep, OpRules, shape_text

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Reshape(OpRules):
    """Reshape of the per-sample tensor (ONNX Reshape and Flatten); the batch axis is kept."""

    shape: tuple[int, ...]
    kind = "Reshape"
    affine = True
    elementwise = True

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return x.reshape((x.shape[0], *self.shape))

    num_params = 0

    def describe(self, node: Node, network: Network) -> str:
        return f"{shape_text(network.shape_of(node.inputs[0]))} → {shape_text(self.shape)}"

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        x = args[0]
        return x.reshape(x.shape[0], *self.shape)

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # exact in floating point: no widening
        return self.forward(lows[0][None], node.out_shape)[0], self.forward(ups[0][None], node.out_shape)[0]

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        return [(node.inputs[0], a.reshape(a.shape[0], *engine.network.shape_of(node.inputs[0])))], None, None

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        from mlrobust.ops.coeffs import AlphaStep

        return AlphaStep([(node.inputs[0], a.reshape(*a.shape[:2], *ctx.network.shape_of(node.inputs[0])))])

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        return inputs[0]  # the same flattened form

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        import scipy.sparse as sp

        return sp.identity(int(np.prod(in_shape, dtype=np.int64)), format="csr"), np.zeros(node.size)
