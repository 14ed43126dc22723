"""One module per op kind of the intermediate graph, each holding every rule of that kind, and their registry.

An op kind's module defines its IR dataclass (a subclass of :class:`OpRules`) with its traits and its rules: numpy
and torch forward, interval image (IBP), CROWN relaxation and backward steps (dense and patch), α-CROWN backward
step and MILP encoding. To add an op kind: write its module and add its class to :data:`OP_CLASSES` (or call
:func:`register`); the ONNX importer maps ONNX nodes onto these classes in :mod:`mlrobust.ir.onnx_import`.
"""

from __future__ import annotations

from mlrobust.ops.add import Add
from mlrobust.ops.avgpool2d import AvgPool2d
from mlrobust.ops.base import FP_REL, OpRules
from mlrobust.ops.concat import Concat
from mlrobust.ops.conv2d import Conv2d
from mlrobust.ops.conv_transpose import ConvTranspose2d
from mlrobust.ops.dense import Dense
from mlrobust.ops.maxpool2d import MaxPool2d
from mlrobust.ops.pad import Pad
from mlrobust.ops.reduce import ReduceSum
from mlrobust.ops.relu import Relu
from mlrobust.ops.reshape import Reshape
from mlrobust.ops.scale import Scale
from mlrobust.ops.slice import Slice
from mlrobust.ops.smooth import Sigmoid, Tanh
from mlrobust.ops.transpose import Transpose

#: Every op kind, by name.
OP_CLASSES: dict[str, type[OpRules]] = {}


def register(cls: type[OpRules]) -> type[OpRules]:
    """Add an op class to the registry (usable as a class decorator); its ``kind`` must be new."""
    if not (isinstance(cls, type) and issubclass(cls, OpRules)):
        raise TypeError(f"{cls!r} is not an OpRules subclass")
    if cls.kind in OP_CLASSES and OP_CLASSES[cls.kind] is not cls:
        raise ValueError(f"op kind {cls.kind} is already registered")
    OP_CLASSES[cls.kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Remove an op kind from the registry (for tests that add a temporary one)."""
    OP_CLASSES.pop(kind, None)


for _cls in (Dense, Conv2d, Relu, MaxPool2d, AvgPool2d, Reshape, Scale, Add, Pad, Slice, Transpose, Concat,
             ReduceSum, ConvTranspose2d, Sigmoid, Tanh):
    register(_cls)


def affine_kinds() -> frozenset[str]:
    """Names of the registered op kinds that are affine maps of their inputs."""
    return frozenset(k for k, c in OP_CLASSES.items() if c.affine)


__all__ = ["FP_REL", "OP_CLASSES", "OpRules", "Add", "AvgPool2d", "Concat", "Conv2d", "ConvTranspose2d", "Dense",
           "MaxPool2d", "Pad", "ReduceSum", "Relu", "Reshape", "Scale", "Sigmoid", "Slice", "Tanh", "Transpose",
           "affine_kinds", "register", "unregister"]
