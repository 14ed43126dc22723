"""The operations of the intermediate graph (re-exported from :mod:`mlrobust.ops`, one module per op kind).

Every op acts on per-sample tensors with a leading batch axis (shape ``(N, *per_sample_shape)``).
Parameters are float64 numpy arrays, converted exactly from the ONNX float32 initializers, so bounds and
MILP encodings see the same numbers the forward pass uses.
"""

from __future__ import annotations

from mlrobust.ops import (
    OP_CLASSES,
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dense,
    MaxPool2d,
    OpRules,
    Pad,
    ReduceSum,
    Relu,
    Reshape,
    Scale,
    Sigmoid,
    Slice,
    Tanh,
    Transpose,
)

#: The type of a node's op: any op kind (its rules and traits are on :class:`OpRules`).
Op = OpRules

#: Ops that are affine maps of their (single or summed) inputs; bounds and MILP treat them alike.
AFFINE_KINDS = frozenset(k for k, c in OP_CLASSES.items() if c.affine)

__all__ = ["AFFINE_KINDS", "Add", "AvgPool2d", "Concat", "Conv2d", "ConvTranspose2d", "Dense", "MaxPool2d", "Op",
           "OpRules", "Pad", "ReduceSum", "Relu", "Reshape", "Scale", "Sigmoid", "Slice", "Tanh", "Transpose"]
