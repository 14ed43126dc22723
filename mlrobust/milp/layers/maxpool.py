"""MaxPool as in MIPVerify: prune window inputs that cannot be the maximum, one binary per remaining candidate.

In a window with inputs ``x_i ∈ [l_i, u_i]`` let ``l* = max_i l_i`` (reached by input ``j*``). An input with
``u_i <= l*`` (``i != j*``) never exceeds ``x_{j*}``, so it is dropped. One candidate left: the output is that
input's form (no column). Otherwise the output ``y ∈ [l*, max u]`` gets binaries ``a_i`` (``Σ a_i = 1``) and::

    y >= x_i,   y <= x_i + (U_{-i} - l_i)(1 - a_i)      with U_{-i} = max_{j != i} u_j over the candidates

``a_i = 1`` forces ``y = x_i``; with ``a_i = 0`` the row is slack because ``y`` is some other candidate,
``y <= U_{-i}`` and ``x_i >= l_i``. Padded positions hold -inf and are never candidates.

ReLU followed by MaxPool (the reference architecture) is encoded as one ``y = max(0, x_1, ..., x_n)`` over the
*pre-activations* (``relu_first``): ``max_i relu(x_i) = max(0, max_i x_i)``, so the constant 0 joins each window as one
more candidate with bounds [0, 0]. The ReLUs then need no binaries of their own, and pruning with the
pre-activation bounds drops every input that cannot exceed 0 or the window's best lower bound.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mlrobust.ir.ops import MaxPool2d
from mlrobust.milp.encoding import INF, AffineForm, Encoding, unit_rows


@dataclass
class PoolColumns:
    """Windows with several candidates: their output column, and per candidate its window, input and binary."""

    windows: np.ndarray  # output index of each multi-candidate window
    y: np.ndarray
    cand_window: np.ndarray  # position (into ``windows``) of each candidate
    cand_input: np.ndarray  # flat input index of each candidate (== number of inputs: the constant 0)
    a: np.ndarray
    relu_first: bool = False

    def assign(self, v: np.ndarray, pre: np.ndarray, out: np.ndarray) -> None:
        """Write the values real input/output tensors ``pre``/``out`` (flattened) imply into ``v``."""
        v[self.y] = out[self.windows]
        if self.relu_first:
            pre = np.append(pre, 0.0)
        vals = pre[self.cand_input]
        best = out[self.windows][self.cand_window]
        hit = np.flatnonzero(vals >= best)
        # one binary per window: the first candidate that attains the maximum
        _, first_pos = np.unique(self.cand_window[hit], return_index=True)
        chosen = np.zeros(vals.size)
        chosen[hit[first_pos]] = 1.0
        v[self.a] = chosen


_WINDOWS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def pool_windows(op: MaxPool2d, in_shape: tuple[int, int, int]) -> np.ndarray:
    """(n_out, kh*kw) flattened input index of every window position, -1 where the window covers padding."""
    per_op = _WINDOWS.setdefault(op, {})
    key = tuple(in_shape)
    if key not in per_op:
        c, h, w = in_shape
        ho, wo = op.output_hw(h, w)
        kh, kw = op.kernel
        ch = np.arange(c)[:, None, None, None, None]
        oh = np.arange(ho)[None, :, None, None, None]
        ow = np.arange(wo)[None, None, :, None, None]
        ih = oh * op.stride[0] - op.padding[0] + np.arange(kh)[None, None, None, :, None]
        iw = ow * op.stride[1] - op.padding[1] + np.arange(kw)[None, None, None, None, :]
        shape = (c, ho, wo, kh, kw)
        valid = np.broadcast_to((ih >= 0) & (ih < h) & (iw >= 0) & (iw < w), shape)
        idx = np.where(valid, (ch * h + ih) * w + iw, -1)
        per_op[key] = np.ascontiguousarray(idx.reshape(c * ho * wo, kh * kw))
    return per_op[key]


def encode_maxpool(enc: Encoding, x: AffineForm, lower: np.ndarray, upper: np.ndarray, op: MaxPool2d,
                   in_shape: tuple[int, int, int], relu_first: bool = False) -> tuple[AffineForm, dict, PoolColumns]:
    """Encode a MaxPool node given bounds on its input; returns the output form, counts and columns.

    With ``relu_first``, ``x``/``lower``/``upper`` are the pre-activations of a ReLU whose output feeds the pool,
    and the encoded output is ``max(0, window)``.
    """
    lower, upper = lower.reshape(-1).astype(np.float64), upper.reshape(-1).astype(np.float64)
    win = pool_windows(op, in_shape)
    n_in = x.size
    if relu_first:  # the constant 0 as candidate number n_in of every window
        win = np.concatenate([win, np.full((win.shape[0], 1), n_in)], axis=1)
        x = AffineForm(sp.vstack([x.widen(enc.ncols), sp.csr_matrix((1, enc.ncols))], format="csr"),
                       np.append(x.c, 0.0))
        lower, upper = np.append(lower, 0.0), np.append(upper, 0.0)
    n_out, K = win.shape
    valid = win >= 0
    safe = np.where(valid, win, 0)
    lo = np.where(valid, lower[safe], -INF)
    hi = np.where(valid, upper[safe], -INF)
    jstar = np.argmax(lo, axis=1)
    lstar = lo[np.arange(n_out), jstar]
    cand = valid & (hi > lstar[:, None])
    cand[np.arange(n_out), jstar] = True
    ncand = cand.sum(axis=1)

    single = ncand == 1
    multi = np.flatnonzero(~single)
    # Windows with one candidate: the output is that input.
    first = np.argmax(cand, axis=1)
    src_single = win[np.arange(n_out), first]

    # Windows with several candidates: a column y per window, a binary per candidate.
    nm = multi.size
    umax = np.max(np.where(cand, hi, -INF), axis=1)
    y = enc.add_columns(lstar[multi], umax[multi], False, "maxpool")
    cm = cand[multi]
    win_of, pos = np.nonzero(cm)  # candidate list, grouped by window
    ncand_total = win_of.size
    a = enc.add_binaries(ncand_total, "maxpool_binary")
    ncols = enc.ncols
    src = win[multi[win_of], pos]
    if nm:
        hi_m = np.where(cm, hi[multi], -INF)
        # U_{-i}: the largest upper bound among the other candidates (top-2 per window).
        top2 = -np.partition(-hi_m, 1, axis=1)[:, :2] if K > 1 else np.stack([hi_m[:, 0], hi_m[:, 0]], 1)
        first_max, second_max = top2.max(axis=1), top2.min(axis=1)
        hi_i = upper[src]
        u_other = np.where(hi_i >= first_max[win_of], second_max[win_of], first_max[win_of])
        big_m = np.maximum(u_other - lower[src], 0.0)
        xi = x.rows(src, ncols)
        ey = unit_rows(y[win_of], ncols)
        enc.add_rows(ey - xi.A, xi.c, INF, "maxpool_lower")
        enc.add_rows(ey - xi.A + unit_rows(a, ncols, big_m), -INF, xi.c + big_m, "maxpool_upper")
        S = sp.csr_matrix((np.ones(ncand_total), (win_of, a)), shape=(nm, ncols))
        enc.add_rows(S, 1.0, 1.0, "maxpool_choice")

    # Output form.
    sidx = np.flatnonzero(single)
    P = sp.csr_matrix((np.ones(sidx.size), (sidx, src_single[sidx])), shape=(n_out, x.size))
    A = P @ x.widen(ncols)
    c = P @ x.c
    if nm:
        A = A + sp.csr_matrix((np.ones(nm), (multi, y)), shape=(n_out, ncols))
    A = sp.csr_matrix(A)
    stats = {"windows": int(n_out), "multi": int(nm), "binaries": int(ncand_total),
             "pruned": int(valid.sum() - cand.sum()), "relu_first": bool(relu_first)}
    return AffineForm(A, c), stats, PoolColumns(multi, y, win_of, src, a, relu_first)
