"""The operations of the intermediate graph and their reference numpy semantics.

Every op acts on per-sample tensors with a leading batch axis (shape ``(N, *per_sample_shape)``).
Parameters are float64 numpy arrays, converted exactly from the ONNX float32 initializers, so bounds and
MILP encodings see the same numbers the forward pass uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
             dilation: tuple[int, int], pad_value: float) -> np.ndarray:
    """(N, C, H, W) -> (N, C, Ho, Wo, kh, kw) view of the (padded) sliding windows."""
    top, left, bottom, right = padding
    if any(padding):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    kh, kw = kernel
    dh, dw = dilation
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(x, (eff_h, eff_w), axis=(2, 3))
    return win[:, :, :: stride[0], :: stride[1], ::dh, ::dw]


@dataclass(eq=False)
class Dense:
    """``y = W · flatten(x) + b``, reshaped to the node's output shape (Gemm, MatMul, MatMul+Add)."""

    weight: np.ndarray  # (out_features, in_features)
    bias: np.ndarray  # (out_features,)
    kind = "Dense"

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        return (flat @ self.weight.T + self.bias).reshape((x.shape[0], *out_shape))

    @property
    def num_params(self) -> int:
        return self.weight.size + self.bias.size


@dataclass(eq=False)
class Conv2d:
    """2-D convolution (cross-correlation) with bias, strides, pads (top, left, bottom, right), dilations, groups."""

    weight: np.ndarray  # (C_out, C_in / groups, kh, kw)
    bias: np.ndarray  # (C_out,)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    kind = "Conv2d"

    @property
    def kernel(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.kernel
        top, left, bottom, right = self.padding
        return (_out_size(h, kh, self.stride[0], top, bottom, self.dilation[0]),
                _out_size(w, kw, self.stride[1], left, right, self.dilation[1]))

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        n, c = x.shape[:2]
        win = _windows(x, self.kernel, self.stride, self.padding, self.dilation, 0.0)
        g = self.groups
        ho, wo = win.shape[2], win.shape[3]
        win = win.reshape(n, g, c // g, ho, wo, *self.kernel)
        w = self.weight.reshape(g, self.weight.shape[0] // g, *self.weight.shape[1:])
        y = np.einsum("ngchwij,gocij->ngohw", win, w, optimize=True).reshape(n, -1, ho, wo)
        return y + self.bias[None, :, None, None]

    @property
    def num_params(self) -> int:
        return self.weight.size + self.bias.size


@dataclass(eq=False)
class Relu:
    """``y = max(x, 0)`` elementwise."""

    kind = "Relu"

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return np.maximum(x, 0.0)

    num_params = 0


@dataclass(eq=False)
class MaxPool2d:
    """2-D max pooling; padded positions never win (they hold -inf, as ONNX specifies)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    kind = "MaxPool2d"

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        return (_out_size(h, self.kernel[0], self.stride[0], top, bottom),
                _out_size(w, self.kernel[1], self.stride[1], left, right))

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        win = _windows(x, self.kernel, self.stride, self.padding, (1, 1), -np.inf)
        return win.max(axis=(-2, -1))

    num_params = 0


@dataclass(eq=False)
class AvgPool2d:
    """2-D average pooling (a fixed linear map)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = False
    kind = "AvgPool2d"

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        return (_out_size(h, self.kernel[0], self.stride[0], top, bottom),
                _out_size(w, self.kernel[1], self.stride[1], left, right))

    def divisor(self, h: int, w: int) -> np.ndarray:
        """(Ho, Wo) number of averaged entries per output position."""
        if self.count_include_pad or not any(self.padding):
            ho, wo = self.output_hw(h, w)
            return np.full((ho, wo), float(self.kernel[0] * self.kernel[1]))
        ones = np.ones((1, 1, h, w))
        return _windows(ones, self.kernel, self.stride, self.padding, (1, 1), 0.0).sum(axis=(-2, -1))[0, 0]

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        win = _windows(x, self.kernel, self.stride, self.padding, (1, 1), 0.0)
        return win.sum(axis=(-2, -1)) / self.divisor(x.shape[2], x.shape[3])

    num_params = 0


@dataclass(eq=False)
class Reshape:
    """Reshape of the per-sample tensor (ONNX Reshape and Flatten); the batch axis is kept."""

    shape: tuple[int, ...]
    kind = "Reshape"

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return x.reshape((x.shape[0], *self.shape))

    num_params = 0


@dataclass(eq=False)
class Scale:
    """Elementwise affine map ``y = x * mul + add`` with per-sample-shaped constants (normalisation, unfolded BN)."""

    mul: np.ndarray  # broadcastable to the per-sample shape
    add: np.ndarray
    kind = "Scale"

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return x * self.mul + self.add

    @property
    def num_params(self) -> int:
        return self.mul.size + self.add.size


@dataclass(eq=False)
class Add:
    """Sum of two tensors ``y = a + coeff * b`` (residual connections; ``coeff = -1`` is Sub)."""

    coeff: float = 1.0
    kind = "Add"

    def forward(self, a: np.ndarray, b: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return a + self.coeff * b

    num_params = 0


Op = Union[Dense, Conv2d, Relu, MaxPool2d, AvgPool2d, Reshape, Scale, Add]

#: Ops that are affine maps of their (single or summed) inputs; bounds and MILP treat them alike.
AFFINE_KINDS = frozenset({"Dense", "Conv2d", "AvgPool2d", "Reshape", "Scale", "Add"})
