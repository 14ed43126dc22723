"""A torch executor of the intermediate graph: the module that attacks and gradients run.

Built from the IR itself (not converted again from ONNX), so the MILP and the gradients always see one network.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node

#: Devices the bound engines' tensors can live on.
DEVICES = ("cpu", "cuda")


def check_device(name: str) -> str:
    """``name`` if torch can put tensors there, else a clear :class:`InputError` (a GPU asked for where torch sees
    none is an input error, not a failure deep inside the first bound)."""
    if name not in DEVICES:
        raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda asked for, but torch sees no GPU (torch.cuda.is_available() is False); "
                         "use --device cpu")
    return name


@contextmanager
def torch_device(name: str) -> Iterator[None]:
    """Create the tensors made inside on device ``name``. On the CPU nothing is installed: a device mode sends every
    torch call through Python dispatch, which the many small ops of a bound pass would pay for."""
    if name == "cpu":
        yield
        return
    with torch.device(check_device(name)):
        yield


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads (None: leave torch's setting), restoring it afterwards.

    The networks here are small: on a busy 2-core machine torch's thread pool made CROWN, PGD and the evaluation of a
    few points 10-30x slower than one thread (threads waiting on each other; measured: PGD 2.9 s vs 0.08 s, eight
    points of the reference CNN 93 ms vs 8 ms), so every torch computation of the verifier and the search runs on one.
    """
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def pad2d(x: torch.Tensor, padding: tuple[int, int, int, int], value: float) -> torch.Tensor:
    """Pad the two trailing axes by (top, left, bottom, right) with ``value``."""
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
            tensors = node.op.torch_buffers(network, node)
            for key, value in tensors.items():
                self.register_buffer(f"n{i}_{key}", torch.as_tensor(np.asarray(value), dtype=dtype))
        self.to(dtype)

    def _buf(self, i: int, key: str) -> torch.Tensor:
        return getattr(self, f"n{i}_{key}")

    def run_node(self, i: int, node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        return node.op.forward_torch(node, args, lambda key: self._buf(i, key))

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
