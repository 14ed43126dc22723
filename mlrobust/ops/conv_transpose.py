"""ConvTranspose2d: 2-D transposed convolution (U-Net decoders), a fixed linear map, and all its rules.

A transposed convolution is the adjoint of a convolution with the same weight, strides and dilations: every rule
here goes through that convolution (:meth:`ConvTranspose2d.adjoint`). Its backward (CROWN) step is the convolution
itself, its MILP matrix is the transpose of the convolution's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.ops.base import FP_REL, CrownStep, OpRules
from mlrobust.ops.conv2d import Conv2d, conv_text

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass(eq=False)
class ConvTranspose2d(OpRules):
    """2-D transposed convolution with bias, strides, pads (top, left, bottom, right), output padding, dilations,
    groups; ``weight`` has ONNX's layout ``(C_in, C_out / groups, kh, kw)``."""

    weight: np.ndarray
    bias: np.ndarray  # (C_out,)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    kind = "ConvTranspose2d"
    affine = True
    mixing = True

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        return ((h - 1) * sh + self.output_padding[0] + dh * (kh - 1) + 1 - top - bottom,
                (w - 1) * sw + self.output_padding[1] + dw * (kw - 1) + 1 - left - right)

    @property
    def adjoint_padding(self) -> tuple[int, int, int, int]:
        """Pads of the adjoint convolution: the output padding is a strip no input reaches, so the end pads shrink
        by it (possibly below zero, which crops)."""
        top, left, bottom, right = self.padding
        return (top, left, bottom - self.output_padding[0], right - self.output_padding[1])

    def adjoint(self) -> Conv2d:
        """The bias-free convolution ``(C_out, Ho, Wo) -> (C_in, H, W)`` whose transpose this op is."""
        return Conv2d(weight=self.weight, bias=np.zeros(self.weight.shape[0]), stride=self.stride,
                      padding=self.adjoint_padding, dilation=self.dilation, groups=self.groups)

    def matrix(self, in_shape: tuple[int, ...]) -> Any:
        """Sparse ``M`` with ``flatten(y) = M @ flatten(x) + bias`` (cached per input shape)."""
        from mlrobust.milp.layers.affine import conv_matrix

        cache: dict[tuple, Any] = self.__dict__.setdefault("_matrix_cache", {})
        key = tuple(int(d) for d in in_shape)
        if key not in cache:
            c, h, w = key
            out = (self.out_channels, *self.output_hw(h, w))
            cache[key] = conv_matrix(self.adjoint(), out).T.tocsr()
        return cache[key]

    def _bias_flat(self, out_shape: tuple[int, ...]) -> np.ndarray:
        return np.repeat(np.asarray(self.bias, dtype=np.float64), out_shape[1] * out_shape[2])

    def _out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
        return (self.out_channels, *self.output_hw(in_shape[1], in_shape[2]))

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        n = x.shape[0]
        shape = self._out_shape(x.shape[1:])
        y = (self.matrix(x.shape[1:]) @ x.reshape(n, -1).T).T
        return y.reshape(n, *shape) + self.bias[None, :, None, None]

    @property
    def num_params(self) -> int:
        return self.weight.size + self.bias.size

    def describe(self, node: Node, network: Network) -> str:
        return conv_text(self, self.weight.shape[0], self.out_channels, self.output_padding)

    def torch_buffers(self, network: Network, node: Node) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch.nn.functional as F

        top, left, bottom, right = self.padding
        full = F.conv_transpose2d(args[0], buf("weight"), stride=self.stride, dilation=self.dilation,
                                  groups=self.groups)
        # F.pad crops with negative amounts: the ONNX pads come off the full output, the output padding is added
        y = F.pad(full, (-left, self.output_padding[1] - right, -top, self.output_padding[0] - bottom))
        return y + buf("bias")[None, :, None, None]

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = lows[0], ups[0]
        M = self.matrix(lo.shape)
        abs_m = abs(M)
        mid, rad = ((lo + hi) / 2.0).reshape(-1), ((hi - lo) / 2.0).reshape(-1)
        bias = self._bias_flat(node.out_shape)
        y_mid, y_rad = M @ mid + bias, abs_m @ rad
        # mid/rad themselves are rounded: the widening (relative to |M|(|mid|+rad)) also covers that.
        y_rad = y_rad + FP_REL * (abs_m @ np.abs(mid) + y_rad + np.abs(bias))
        return (y_mid - y_rad).reshape(node.out_shape), (y_mid + y_rad).reshape(node.out_shape)

    def _backward(self, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``(R, C_out, Ho, Wo) -> (R, C_in, H, W)``: the adjoint convolution on coefficient rows."""
        import torch.nn.functional as F

        top, left, bottom, right = self.adjoint_padding
        padded = F.pad(a, (left, right, top, bottom))  # a negative end pad crops (the output padding's strip)
        return F.conv2d(padded, weight, stride=self.stride, dilation=self.dilation, groups=self.groups)

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        from mlrobust.ops.coeffs import t64

        a_in = self._backward(a, t64(self.weight))
        bias = t64(self.bias)
        return [(node.inputs[0], a_in)], a.sum(dim=(2, 3)) @ bias, a.abs().sum(dim=(2, 3)) @ bias.abs()

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        from mlrobust.ops.coeffs import AlphaStep

        d, s = a.shape[:2]
        in_shape = ctx.network.shape_of(node.inputs[0])
        a_in = self._backward(a.reshape(d * s, *a.shape[2:]), ctx.const(self.weight))
        b = ctx.const(self.bias)
        return AlphaStep([(node.inputs[0], a_in.reshape(d, s, *in_shape))], a.sum(dim=(3, 4)) @ b,
                         a.abs().sum(dim=(3, 4)) @ b.abs())

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.affine import encode_linear

        return encode_linear(node, inputs[0], shapes[0], builder.enc.ncols)

    def milp_matrix(self, node: Node, in_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        return self.matrix(in_shape), self._bias_flat(node.out_shape)
