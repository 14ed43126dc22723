"""Dense (Gemm, MatMul, MatMul+Add): ``y = W · flatten(x) + b`` and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class Dense(OpRules):
    """``y = W · flatten(x) + b``, reshaped to the node's output shape (Gemm, MatMul, MatMul+Add)."""

    weight: np.ndarray  # (out_features, in_features)
    bias: np.ndarray  # (out_features,)
    kind = "Dense"
    affine = True
    mixing = True
    weight_rows = True

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        return (flat @ self.weight.T + self.bias).reshape((x.shape[0], *out_shape))

    @property
    def num_params(self) -> int:
        return self.weight.size + self.bias.size

    def output_rows(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.weight[sel], self.bias[sel]

    def describe(self, node: Node, network: Network) -> str:
        return f"{self.weight.shape[1]} → {self.weight.shape[0]}"

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch.nn.functional as F

        x = args[0]
        y = F.linear(x.reshape(x.shape[0], -1), buf("weight"), buf("bias"))
        return y.reshape(x.shape[0], *node.out_shape)

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = lows[0], ups[0]
        mid, rad = (lo + hi) / 2.0, (hi - lo) / 2.0
        abs_w = np.abs(self.weight)
        y_mid = self.weight @ mid.reshape(-1) + self.bias
        y_rad = abs_w @ rad.reshape(-1)
        mag = abs_w @ np.abs(mid).reshape(-1) + y_rad + np.abs(self.bias)
        y_mid, y_rad, mag = (v.reshape(node.out_shape) for v in (y_mid, y_rad, mag))
        # mid/rad themselves are rounded: the widening (relative to |W|(|mid|+rad)) also covers that.
        y_rad = y_rad + FP_REL * mag
        return y_mid - y_rad, y_mid + y_rad

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        from mlrobust.ops.coeffs import t64

        s = a.shape[0]
        a2 = a.reshape(s, -1)
        bias = t64(self.bias)
        return ([(node.inputs[0], (a2 @ t64(self.weight)).reshape(s, *engine.network.shape_of(node.inputs[0])))],
                a2 @ bias, a2.abs() @ bias.abs())

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:

        from mlrobust.ops.coeffs import AlphaStep

        d, s = a.shape[:2]
        a2 = a.reshape(d, s, -1)
        w, b = ctx.const(self.weight), ctx.const(self.bias)
        return AlphaStep([(node.inputs[0], (a2 @ w).reshape(d, s, *ctx.network.shape_of(node.inputs[0])))], a2 @ b,
                         a2.abs() @ b.abs())

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.affine import encode_linear

        return encode_linear(node, inputs[0], shapes[0], builder.enc.ncols)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        """``(M, b)`` with ``flatten(out) = M @ flatten(in) + b`` (scipy sparse ``M``)."""
        import scipy.sparse as sp

        return sp.csr_matrix(self.weight), np.asarray(self.bias, dtype=np.float64).reshape(-1)
