"""A torch executor of the intermediate graph: the module that attacks and gradients run.

Built from the IR itself (not converted again from ONNX), so the MILP and the gradients always see one network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale


def _pad(x: torch.Tensor, padding: tuple[int, int, int, int], value: float) -> torch.Tensor:
    top, left, bottom, right = padding
    if not any(padding):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class TorchNetwork(torch.nn.Module):
    """Runs a :class:`Network` with torch.nn.functional; input ``(N, *sample_shape)``, output ``(N, *output_shape)``."""

    def __init__(self, network: Network, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.network = network
        self._params: dict[str, dict[str, torch.Tensor]] = {}
        for i, node in enumerate(network.nodes):
            op = node.op
            tensors: dict[str, np.ndarray] = {}
            if isinstance(op, (Dense, Conv2d)):
                tensors = {"weight": op.weight, "bias": op.bias}
            elif isinstance(op, Scale):
                tensors = {"mul": np.asarray(op.mul), "add": np.asarray(op.add)}
            elif isinstance(op, AvgPool2d):
                tensors = {"divisor": op.divisor(*network.shape_of(node.inputs[0])[1:])}
            for key, value in tensors.items():
                self.register_buffer(f"n{i}_{key}", torch.as_tensor(np.asarray(value), dtype=dtype))
        self.to(dtype)

    def _buf(self, i: int, key: str) -> torch.Tensor:
        return getattr(self, f"n{i}_{key}")

    def run_node(self, i: int, node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        op = node.op
        x = args[0]
        if isinstance(op, Dense):
            y = F.linear(x.reshape(x.shape[0], -1), self._buf(i, "weight"), self._buf(i, "bias"))
            return y.reshape(x.shape[0], *node.out_shape)
        if isinstance(op, Conv2d):
            return F.conv2d(_pad(x, op.padding, 0.0), self._buf(i, "weight"), self._buf(i, "bias"),
                            stride=op.stride, dilation=op.dilation, groups=op.groups)
        if isinstance(op, Relu):
            return F.relu(x)
        if isinstance(op, MaxPool2d):
            return F.max_pool2d(_pad(x, op.padding, float("-inf")), op.kernel, op.stride)
        if isinstance(op, AvgPool2d):
            summed = F.avg_pool2d(_pad(x, op.padding, 0.0), op.kernel, op.stride) * (op.kernel[0] * op.kernel[1])
            return summed / self._buf(i, "divisor")
        if isinstance(op, Reshape):
            return x.reshape(x.shape[0], *op.shape)
        if isinstance(op, Scale):
            return x * self._buf(i, "mul") + self._buf(i, "add")
        if isinstance(op, Add):
            return x + op.coeff * args[1]
        raise TypeError(f"torch executor has no rule for op {op.kind} (node {node.name})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.network.input_name: x}
        for i, node in enumerate(self.network.nodes):
            values[node.output] = self.run_node(i, node, [values[t] for t in node.inputs])
        return values[self.network.output_name]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened outputs ``(N, num_classes)``."""
        out = self.forward(x)
        return out.reshape(out.shape[0], -1)


def to_torch(network: Network, dtype: torch.dtype = torch.float32) -> TorchNetwork:
    """The torch module of ``network`` (float32 by default, like the ONNX model it came from)."""
    return TorchNetwork(network, dtype=dtype).eval()
