"""AvgPool2d: 2-D average pooling, a fixed linear map, and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules, out_size, pool_text, windows

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class AvgPool2d(OpRules):
    """2-D average pooling (a fixed linear map)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = False
    kind = "AvgPool2d"
    affine = True
    mixing = True
    pooling = True

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        return (out_size(h, self.kernel[0], self.stride[0], top, bottom),
                out_size(w, self.kernel[1], self.stride[1], left, right))

    def divisor(self, h: int, w: int) -> np.ndarray:
        """(Ho, Wo) number of averaged entries per output position."""
        if self.count_include_pad or not any(self.padding):
            ho, wo = self.output_hw(h, w)
            return np.full((ho, wo), float(self.kernel[0] * self.kernel[1]))
        ones = np.ones((1, 1, h, w))
        return windows(ones, self.kernel, self.stride, self.padding, (1, 1), 0.0).sum(axis=(-2, -1))[0, 0]

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        win = windows(x, self.kernel, self.stride, self.padding, (1, 1), 0.0)
        return win.sum(axis=(-2, -1)) / self.divisor(x.shape[2], x.shape[3])

    num_params = 0

    def describe(self, node: Node, network: Network) -> str:
        return pool_text(self) + (" (pads counted)" if self.count_include_pad else "")

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        return {"divisor": self.divisor(*network.shape_of(node.inputs[0])[1:])}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch.nn.functional as F

        from mlrobust.ir.torch_exec import pad2d

        summed = F.avg_pool2d(pad2d(args[0], self.padding, 0.0), self.kernel, self.stride) * (
            self.kernel[0] * self.kernel[1])
        return summed / buf("divisor")

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = lows[0], ups[0]  # monotone; the sum and the division round
        mag = self.forward(np.maximum(np.abs(lo), np.abs(hi))[None])[0]
        return self.forward(lo[None])[0] - FP_REL * mag, self.forward(hi[None])[0] + FP_REL * mag

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        import torch

        from mlrobust.ops.coeffs import conv_adjoint, t64

        c, h, w = engine.network.shape_of(node.inputs[0])
        scaled = a / t64(self.divisor(h, w))
        ones = torch.ones((c, 1, *self.kernel), dtype=torch.float64)
        return [(node.inputs[0], conv_adjoint(scaled, ones, self.stride, self.padding, (1, 1), c, (h, w)))], None, None

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        import torch
        import torch.nn.functional as F

        from mlrobust.ops.coeffs import Patch, fit, gather, t64

        shape = engine.network.shape_of(node.inputs[0])
        c, h, w = shape
        a = p.a / gather(t64(self.divisor(h, w))[None], p)
        weight = torch.ones((c, 1, *self.kernel), dtype=torch.float64)
        a_in = F.conv_transpose2d(a, weight, stride=self.stride, dilation=(1, 1), groups=c)
        q = Patch(a_in, p.oy * self.stride[0] - self.padding[0], p.ox * self.stride[1] - self.padding[1])
        return [(node.inputs[0], fit(q, shape))], None, None

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        import torch

        from mlrobust.ops.coeffs import AlphaStep, conv_adjoint

        d, s = a.shape[:2]
        c, h, w = ctx.network.shape_of(node.inputs[0])
        scaled = (a / torch.as_tensor(self.divisor(h, w)).to(a.dtype)).reshape(d * s, *a.shape[2:])
        ones = torch.ones((c, 1, *self.kernel), dtype=a.dtype)
        a_in = conv_adjoint(scaled, ones, self.stride, self.padding, (1, 1), c, (h, w))
        return AlphaStep([(node.inputs[0], a_in.reshape(d, s, c, h, w))])

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.affine import encode_linear

        return encode_linear(node, inputs[0], shapes[0], builder.enc.ncols)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        from mlrobust.milp.layers.affine import avgpool_matrix

        return avgpool_matrix(self, in_shape), np.zeros(node.size)
