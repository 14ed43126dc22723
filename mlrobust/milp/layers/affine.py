"""Affine ops (Dense, Conv2d, AvgPool2d, Scale, Reshape, Add) as sparse matrices acting on flattened tensors.

An affine op adds no column and no row: its output form is ``M @ A_in`` and ``M @ c_in + b``. The sparse matrix
``M`` of an op depends only on the op and its input shape, so it is cached per op and reused by every query that
builds a model of the same network (a search makes tens of them per image).
"""

from __future__ import annotations

import weakref

import numpy as np
import scipy.sparse as sp

from mlrobust.ir.graph import Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale
from mlrobust.milp.encoding import AffineForm

_CACHE: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _conv_matrix(op: Conv2d, in_shape: tuple[int, int, int]) -> sp.csr_matrix:
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


def _avgpool_matrix(op: AvgPool2d, in_shape: tuple[int, int, int]) -> sp.csr_matrix:
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


def affine_matrix(node: Node, in_shape: tuple[int, ...]) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(M, b)`` with ``flatten(out) = M @ flatten(in) + b`` for a single-input affine op (cached per op)."""
    op = node.op
    per_op = _CACHE.setdefault(op, {})
    key = tuple(in_shape)
    if key in per_op:
        return per_op[key]
    n_in = int(np.prod(in_shape, dtype=np.int64))
    n_out = node.size
    if isinstance(op, Dense):
        M = sp.csr_matrix(op.weight)
        b = np.asarray(op.bias, dtype=np.float64).reshape(-1)
    elif isinstance(op, Conv2d):
        M = _conv_matrix(op, in_shape)  # type: ignore[arg-type]
        b = np.repeat(np.asarray(op.bias, dtype=np.float64), n_out // op.weight.shape[0])
    elif isinstance(op, AvgPool2d):
        M = _avgpool_matrix(op, in_shape)  # type: ignore[arg-type]
        b = np.zeros(n_out)
    elif isinstance(op, Reshape):
        M = sp.identity(n_in, format="csr")
        b = np.zeros(n_out)
    elif isinstance(op, Scale):
        mul = np.broadcast_to(np.asarray(op.mul, dtype=np.float64), in_shape).reshape(-1)
        M = sp.diags(mul, format="csr")
        b = np.broadcast_to(np.asarray(op.add, dtype=np.float64), in_shape).reshape(-1).copy()
    else:
        raise TypeError(f"{op.kind} is not a single-input affine op (node {node.name})")
    if M.shape != (n_out, n_in):
        raise ValueError(f"affine matrix of node {node.name} has shape {M.shape}, expected {(n_out, n_in)}")
    per_op[key] = (M, b)
    return M, b


def encode_affine(node: Node, inputs: list[AffineForm], in_shapes: list[tuple[int, ...]], ncols: int) -> AffineForm:
    """Output form of an affine node: no columns, no rows."""
    op = node.op
    if isinstance(op, Add):
        a, b = inputs
        return AffineForm((a.widen(ncols) + op.coeff * b.widen(ncols)).tocsr(), a.c + op.coeff * b.c)
    if isinstance(op, (Relu, MaxPool2d)):
        raise TypeError(f"{op.kind} is not affine (node {node.name})")
    M, bias = affine_matrix(node, in_shapes[0])
    x = inputs[0]
    if isinstance(op, Reshape):
        return x
    A = (M @ x.widen(ncols)).tocsr()
    A.eliminate_zeros()
    return AffineForm(A, M @ x.c + bias)
