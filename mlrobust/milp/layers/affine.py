"""Affine ops (Dense, Conv2d, AvgPool2d, Scale, Reshape, Add) as sparse matrices acting on flattened tensors.

An affine op adds no column and no row: its output form is ``M @ A_in`` and ``M @ c_in + b``. The sparse matrix
``M`` of an op depends only on the op and its input shape, so it is cached per op (:func:`mlrobust.ops.base.affine_matrix`)
and reused by every query that builds a model of the same network (a search makes tens of them per image).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mlrobust.ir.graph import Node
from mlrobust.ir.ops import AvgPool2d, Conv2d
from mlrobust.milp.encoding import AffineForm
from mlrobust.ops.base import affine_matrix

__all__ = ["affine_matrix", "avgpool_matrix", "conv_matrix", "encode_affine", "encode_linear"]


def conv_matrix(op: Conv2d, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    cin, h, w = in_shape
    cout, cin_g, kh, kw = op.weight.shape
    ho, wo = op.output_hw(h, w)
    g = op.groups
    cout_g = cout // g
    top, left = op.padding[0], op.padding[1]
    # Broadcast over (co, ho, wo, ci_in_group, i, j).
    co = np.arange(cout)[:, None, None, None, None, None]
    oh = np.arange(ho)[None, :, None, None, None, None]
    ow = np.arange(wo)[None, None, :, None, None, None]
    ci_local = np.arange(cin_g)[None, None, None, :, None, None]
    ki = np.arange(kh)[None, None, None, None, :, None]
    kj = np.arange(kw)[None, None, None, None, None, :]
    ih = oh * op.stride[0] - top + ki * op.dilation[0]
    iw = ow * op.stride[1] - left + kj * op.dilation[1]
    ci = (co // cout_g) * cin_g + ci_local
    shape = (cout, ho, wo, cin_g, kh, kw)
    valid = np.broadcast_to((ih >= 0) & (ih < h) & (iw >= 0) & (iw < w), shape)
    rows = np.broadcast_to((co * ho + oh) * wo + ow, shape)[valid]
    cols = np.broadcast_to((ci * h + ih) * w + iw, shape)[valid]
    vals = np.broadcast_to(op.weight[:, None, None, :, :, :], shape)[valid]
    keep = vals != 0
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(cout * ho * wo, cin * h * w))


def avgpool_matrix(op: AvgPool2d, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    c, h, w = in_shape
    ho, wo = op.output_hw(h, w)
    div = op.divisor(h, w)
    top, left = op.padding[0], op.padding[1]
    ch = np.arange(c)[:, None, None, None, None]
    oh = np.arange(ho)[None, :, None, None, None]
    ow = np.arange(wo)[None, None, :, None, None]
    ki = np.arange(op.kernel[0])[None, None, None, :, None]
    kj = np.arange(op.kernel[1])[None, None, None, None, :]
    ih = oh * op.stride[0] - top + ki
    iw = ow * op.stride[1] - left + kj
    shape = (c, ho, wo, op.kernel[0], op.kernel[1])
    valid = np.broadcast_to((ih >= 0) & (ih < h) & (iw >= 0) & (iw < w), shape)
    rows = np.broadcast_to((ch * ho + oh) * wo + ow, shape)[valid]
    cols = np.broadcast_to((ch * h + ih) * w + iw, shape)[valid]
    vals = np.broadcast_to(1.0 / div[None, :, :, None, None], shape)[valid]
    return sp.csr_matrix((vals, (rows, cols)), shape=(c * ho * wo, c * h * w))


def encode_linear(node: Node, x: AffineForm, in_shape: tuple[int, ...], ncols: int) -> AffineForm:
    """Output form ``M @ x + b`` of a single-input affine node (its ``milp_matrix``): no columns, no rows."""
    M, bias = affine_matrix(node, in_shape)
    A = (M @ x.widen(ncols)).tocsr()
    A.eliminate_zeros()
    return AffineForm(A, M @ x.c + bias)


def encode_affine(node: Node, inputs: list[AffineForm], in_shapes: list[tuple[int, ...]], ncols: int) -> AffineForm:
    """Output form of an affine node (the op's own MILP rule): no columns, no rows."""
    if not node.op.affine:
        raise TypeError(f"{node.op.kind} is not affine (node {node.name})")
    return node.op.encode_milp(_NoBuilder(ncols), node, inputs, in_shapes)


class _NoBuilder:
    """The part of a MILP builder an affine op's encoding reads (the column count): for :func:`encode_affine`."""

    def __init__(self, ncols: int):
        self.enc = self
        self.ncols = ncols
