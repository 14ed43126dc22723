"""Conv2d: 2-D convolution (cross-correlation) with bias, strides, pads, dilations and groups, and all its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules, out_size, windows

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


def conv_text(op: Any, in_channels: int, out_channels: int, output_padding: tuple[int, ...] = ()) -> str:
    """``inspect``'s summary of a convolution or transposed convolution: channels, kernel, stride, and the padding,
    output padding, dilation and groups where they are not the defaults."""
    parts = [f"{in_channels} → {out_channels}", f"k{op.kernel[0]}×{op.kernel[1]}",
             f"stride {op.stride[0]},{op.stride[1]}"]
    if any(op.padding):
        parts.append("pad " + ",".join(map(str, op.padding)))
    if any(output_padding):
        parts.append("output pad " + ",".join(map(str, output_padding)))
    if op.dilation != (1, 1):
        parts.append(f"dilation {op.dilation[0]},{op.dilation[1]}")
    if op.groups != 1:
        parts.append(f"groups {op.groups}")
    return " ".join(parts)

@dataclass(eq=False)
class Conv2d(OpRules):
    """2-D convolution (cross-correlation) with bias, strides, pads (top, left, bottom, right), dilations, groups."""

    weight: np.ndarray  # (C_out, C_in / groups, kh, kw)
    bias: np.ndarray  # (C_out,)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    kind = "Conv2d"
    affine = True
    mixing = True

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.kernel
        top, left, bottom, right = self.padding
        return (out_size(h, kh, self.stride[0], top, bottom, self.dilation[0]),
                out_size(w, kw, self.stride[1], left, right, self.dilation[1]))

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        n, c = x.shape[:2]
        win = windows(x, self.kernel, self.stride, self.padding, self.dilation, 0.0)
        g = self.groups
        ho, wo = win.shape[2], win.shape[3]
        win = win.reshape(n, g, c // g, ho, wo, *self.kernel)
        w = self.weight.reshape(g, self.weight.shape[0] // g, *self.weight.shape[1:])
        y = np.einsum("ngchwij,gocij->ngohw", win, w, optimize=True).reshape(n, -1, ho, wo)
        return y + self.bias[None, :, None, None]

    @property
    def num_params(self) -> int:
        return self.weight.size + self.bias.size

    def describe(self, node: Node, network: Network) -> str:
        return conv_text(self, self.weight.shape[1] * self.groups, self.weight.shape[0])

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch.nn.functional as F

        from mlrobust.ir.torch_exec import pad2d

        return F.conv2d(pad2d(args[0], self.padding, 0.0), buf("weight"), buf("bias"),
                        stride=self.stride, dilation=self.dilation, groups=self.groups)

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = lows[0], ups[0]
        mid, rad = (lo + hi) / 2.0, (hi - lo) / 2.0
        y_mid = self.forward(mid[None])[0]
        abs_op = Conv2d(np.abs(self.weight), np.zeros_like(self.bias), self.stride, self.padding, self.dilation,
                        self.groups)
        y_rad = abs_op.forward(rad[None])[0]
        mag = abs_op.forward(np.abs(mid)[None])[0] + y_rad + np.abs(self.bias)[:, None, None]
        # mid/rad themselves are rounded: the widening (relative to |W|(|mid|+rad)) also covers that.
        y_rad = y_rad + FP_REL * mag
        return y_mid - y_rad, y_mid + y_rad

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        from mlrobust.ops.coeffs import conv_adjoint, t64

        in_shape = engine.network.shape_of(node.inputs[0])
        a_in = conv_adjoint(a, t64(self.weight), self.stride, self.padding, self.dilation, self.groups, in_shape[1:])
        per_channel = a.sum(dim=(2, 3))
        bias = t64(self.bias)
        return [(node.inputs[0], a_in)], per_channel @ bias, a.abs().sum(dim=(2, 3)) @ bias.abs()

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        import torch.nn.functional as F

        from mlrobust.ops.coeffs import Patch, fit, t64

        bias = t64(self.bias)
        d_bias, d_mag = p.a.sum(dim=(2, 3)) @ bias, p.a.abs().sum(dim=(2, 3)) @ bias.abs()
        a_in = F.conv_transpose2d(p.a, t64(self.weight), stride=self.stride, dilation=self.dilation,
                                  groups=self.groups)
        q = Patch(a_in, p.oy * self.stride[0] - self.padding[0], p.ox * self.stride[1] - self.padding[1])
        return [(node.inputs[0], fit(q, engine.network.shape_of(node.inputs[0])))], d_bias, d_mag

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:

        from mlrobust.ops.coeffs import AlphaStep, conv_adjoint

        d, s = a.shape[:2]
        in_shape = ctx.network.shape_of(node.inputs[0])
        flat = a.reshape(d * s, *a.shape[2:])
        a_in = conv_adjoint(flat, ctx.const(self.weight), self.stride, self.padding, self.dilation,
                            self.groups, (in_shape[1], in_shape[2]))
        per_channel = a.sum(dim=(3, 4))
        b = ctx.const(self.bias)
        return AlphaStep([(node.inputs[0], a_in.reshape(d, s, *in_shape))], per_channel @ b,
                         a.abs().sum(dim=(3, 4)) @ b.abs())

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.affine import encode_linear

        return encode_linear(node, inputs[0], shapes[0], builder.enc.ncols)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        from mlrobust.milp.layers.affine import conv_matrix

        return conv_matrix(self, in_shape), np.repeat(np.asarray(self.bias, dtype=np.float64),
                                                      node.size // self.weight.shape[0])
