"""The result of bound propagation: an interval for every tensor of the network over an input box."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlrobust.errors import InputError
from mlrobust.ir.graph import Network


def check_box(network: Network, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The input box as float64 arrays of the per-sample input shape, or InputError naming what is wrong.

    A leading batch axis of 1 is accepted and dropped; the box must be finite and non-empty.
    """
    boxes = []
    for what, arr in (("lower", lower), ("upper", upper)):
        arr = np.asarray(arr, dtype=np.float64)
        if arr.shape == tuple(network.input_shape) and arr.shape[:1] == (1,):
            arr = arr[0]
        if arr.shape != network.sample_shape:
            raise InputError(f"{what} bound has shape {arr.shape}; the model expects {network.sample_shape}")
        boxes.append(arr)
    lower, upper = boxes
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise InputError("input box bounds must be finite numbers")
    if np.any(lower > upper):
        raise InputError("input box is empty: some lower bound exceeds its upper bound")
    return lower, upper


@dataclass
class Bounds:
    """Per-tensor elementwise bounds (per-sample shapes, no batch axis) valid for every input in the box.

    ``lower[t] <= value of tensor t <= upper[t]`` holds for every input ``x`` with ``input_lower <= x <= input_upper``.
    The input of a ReLU or MaxPool node is its pre-activation; ``pre_activation(node)`` returns it.
    """

    network: Network
    lower: dict[str, np.ndarray]
    upper: dict[str, np.ndarray]
    method: str
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def input_lower(self) -> np.ndarray:
        return self.lower[self.network.input_name]

    @property
    def input_upper(self) -> np.ndarray:
        return self.upper[self.network.input_name]

    @property
    def output_lower(self) -> np.ndarray:
        """Lower bounds of the flattened network output, shape ``(num_classes,)``."""
        return self.lower[self.network.output_name].reshape(-1)

    @property
    def output_upper(self) -> np.ndarray:
        return self.upper[self.network.output_name].reshape(-1)

    def pre_activation(self, node_name: str) -> tuple[np.ndarray, np.ndarray]:
        node = next(n for n in self.network.nodes if n.name == node_name)
        t = node.inputs[0]
        return self.lower[t], self.upper[t]

    def relu_status(self) -> dict[str, dict[str, int]]:
        """Per ReLU node: how many neurons are stably inactive, stably active and unstable."""
        out = {}
        for node in self.network.nodes:
            if node.kind != "Relu":
                continue
            lo, hi = self.lower[node.inputs[0]], self.upper[node.inputs[0]]
            out[node.name] = {
                "inactive": int(np.sum(hi <= 0)),
                "active": int(np.sum(lo >= 0)),
                "unstable": int(np.sum((lo < 0) & (hi > 0))),
            }
        return out

    @property
    def num_unstable(self) -> int:
        return sum(s["unstable"] for s in self.relu_status().values())
