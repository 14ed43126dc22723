"""ReduceSum / ReduceMean over per-sample axes: ``y = scale · Σ_axes x``, a fixed linear map, and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class ReduceSum(OpRules):
    """``y = scale · x.sum(axes)`` over per-sample ``axes`` (``scale`` is 1 for ReduceSum, 1/count for ReduceMean).

    ``keepdims`` keeps the reduced axes with size 1, as ONNX does by default.
    """

    axes: tuple[int, ...]
    keepdims: bool = True
    scale: float = 1.0
    kind = "ReduceSum"
    affine = True
    mixing = True
    num_params = 0

    def _kept(self, x: Any) -> Any:
        """The sum with the reduced axes kept (size 1), for broadcasting back onto the input."""
        return x.sum(tuple(a + 1 for a in self.axes), keepdims=True)

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        y = self._kept(x) * self.scale
        return y.reshape(x.shape[0], *out_shape) if out_shape is not None else self._shape_out(y)

    def _shape_out(self, y: np.ndarray) -> np.ndarray:
        if self.keepdims:
            return y
        return y.squeeze(tuple(a + 1 for a in self.axes))

    def describe(self, node: Node, network: Network) -> str:
        text = "sum" if self.scale == 1.0 else f"{self.scale:.4g} × sum"
        return f"{text} over axes {','.join(map(str, self.axes))}" + ("" if self.keepdims else " (dropped)")

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        x = args[0]
        y = x.sum(dim=tuple(a + 1 for a in self.axes), keepdim=True) * self.scale
        return y.reshape(x.shape[0], *node.out_shape)

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = lows[0][None], ups[0][None]  # monotone; the sum rounds
        mag = self.forward(np.maximum(np.abs(lo), np.abs(hi)), node.out_shape)[0] * (1 + FP_REL)
        return (self.forward(lo, node.out_shape)[0] - FP_REL * mag,
                self.forward(hi, node.out_shape)[0] + FP_REL * mag)

    def _spread(self, a: torch.Tensor, lead: int, in_shape: tuple[int, ...]) -> torch.Tensor:
        """The adjoint: each output coefficient, times ``scale``, on every input coordinate it sums."""
        kept = tuple(1 if k in self.axes else n for k, n in enumerate(in_shape))
        rows = a.shape[:lead]
        return (a.reshape(*rows, *kept) * self.scale).expand(*rows, *in_shape)

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        shape = engine.network.shape_of(node.inputs[0])
        return [(node.inputs[0], self._spread(a, 1, shape))], None, None

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        from mlrobust.ops.coeffs import AlphaStep

        return AlphaStep([(node.inputs[0], self._spread(a, 2, ctx.network.shape_of(node.inputs[0])))])

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.affine import encode_linear

        return encode_linear(node, inputs[0], shapes[0], builder.enc.ncols)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        import scipy.sparse as sp

        kept = tuple(1 if k in self.axes else n for k, n in enumerate(in_shape))
        out_of = np.broadcast_to(np.arange(int(np.prod(kept, dtype=np.int64))).reshape(kept), in_shape).reshape(-1)
        n_in = out_of.size
        M = sp.csr_matrix((np.full(n_in, float(self.scale)), (out_of, np.arange(n_in))), shape=(node.size, n_in))
        return M, np.zeros(node.size)
