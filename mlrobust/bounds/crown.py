"""CROWN: sound per-neuron bounds by backward linear relaxation (back-substitution) over the IR's DAG.

A linear function ``c · t`` of a tensor ``t`` is pushed backwards through the network to the input box: affine ops
are substituted exactly (Dense ``A @ W``, Conv2d as a transposed convolution, AvgPool2d, Reshape, Scale, Add), and
each ReLU / MaxPool is replaced by a linear lower or upper relaxation chosen by the sign of its coefficient, built
from bounds of its pre-activation computed earlier in the same forward sweep. On a DAG the coefficients of every
consumer of a tensor are accumulated before it is substituted (nodes are visited in reverse topological order).

Relaxations (``l``, ``u``: pre-activation bounds):

* ReLU, unstable (``l < 0 < u``): upper chord ``u (x - l) / (u - l)``; adaptive lower line ``x`` if ``u >= -l`` else
  ``0``. Stable neurons are linear (identity or zero) and need no relaxation.
* MaxPool window: lower bound ``x_i`` for the input ``i`` with the largest lower bound. Upper bound: with ``j`` the
  input with the largest upper bound and ``U'`` the largest upper bound of the others,
  ``max(x) <= max(x_j, U')``, a convex function of ``x_j`` alone, bounded by its chord on ``[l_j, u_j]``:
  ``U' + (u_j - U') (x_j - l_j) / (u_j - l_j)`` (pointwise at or below the constant ``u_j``). When ``l_j >= U'`` the
  window is dominated by ``j`` and the pool is exactly ``x_j``.

Which tensors get CROWN bounds: every pre-activation (input of a ReLU or MaxPool) and the output, except where
intervals are already as tight as back-substitution can make them: a tensor that is a plain reindexing/scaling of a
ReLU or MaxPool output, or a single affine map of the input box (IBP is exact there). With ``refine="unstable"``
(default) only the neurons whose relaxation depends on their bounds are back-substituted: unstable ReLU inputs and
MaxPool inputs that can win an undecided window; the others keep their (already sound) interval bounds.
Every tensor's final bounds are the intersection with IBP's.

Computation is vectorised in torch float64 (no loop over neurons); the rows of a specification are processed in
chunks so that no coefficient tensor exceeds ``chunk_elements`` numbers (peak memory a few times that, ~0.5 GB by
default). Every bound is widened outward by ``FP_REL`` times the magnitude of its terms (see :mod:`mlrobust.bounds`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mlrobust.bounds.ibp import FP_REL, ibp, interval_affine
from mlrobust.bounds.result import Bounds, check_box
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale

#: Largest coefficient tensor (numbers) of one chunk of specification rows: 2^24 float64 = 128 MiB.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

REFINE_CHOICES = ("unstable", "all")

_MIXING = (Dense, Conv2d, AvgPool2d)  # affine ops that mix coordinates
_ELEMENTWISE = (Scale, Reshape, Relu)  # single-input ops that map a box onto a box, coordinate by coordinate


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads (None: leave torch's setting), restoring it afterwards.

    Back-substitution is many medium-sized tensor ops; on a busy 2-core machine two intra-op threads made the
    reference-architecture bounds ~10x slower than one (threads waiting on each other), so the default is one.
    """
    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _t(a: np.ndarray) -> torch.Tensor:
    """float64 torch view of a numpy array (no copy when it already is float64 and contiguous)."""
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64))


def pool_index(op: MaxPool2d | AvgPool2d, in_shape: tuple[int, ...]) -> np.ndarray:
    """``(C, Ho, Wo, kh*kw)`` flat indices into the ``(C, H, W)`` input of each pooling window; -1 marks padding."""
    c, h, w = in_shape
    flat = np.arange(c * h * w, dtype=np.int64).reshape(c, h, w)
    top, left, bottom, right = op.padding
    flat = np.pad(flat, ((0, 0), (top, bottom), (left, right)), constant_values=-1)
    win = np.lib.stride_tricks.sliding_window_view(flat, op.kernel, axis=(1, 2))
    win = win[:, :: op.stride[0], :: op.stride[1]]
    return np.ascontiguousarray(win).reshape(*win.shape[:3], -1)


def _window_bounds(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper bounds of every window entry; padded entries get -inf (they never win a max)."""
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    return (np.where(valid, lo.reshape(-1)[safe], -np.inf), np.where(valid, hi.reshape(-1)[safe], -np.inf))


def maxpool_candidates(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Flat indices of MaxPool inputs that can win a window no single input dominates (their bounds matter)."""
    l_win, u_win = _window_bounds(idx, lo, hi)
    best_lower = l_win.max(axis=-1, keepdims=True)
    cand = (u_win >= best_lower) & (idx >= 0)
    undecided = cand.sum(axis=-1, keepdims=True) > 1
    return np.unique(idx[cand & undecided])


@dataclass
class _ReluRelax:
    lower_slope: torch.Tensor  # used where the coefficient is >= 0 (lower-bounding pass)
    upper_slope: torch.Tensor  # used where the coefficient is < 0
    upper_icpt: torch.Tensor


@dataclass
class _PoolRelax:
    idx_lower: torch.Tensor  # (P,) flat input index of the lower-bounding input per window
    idx_upper: torch.Tensor  # (P,) flat input index of the chord's input per window
    upper_slope: torch.Tensor  # (P,)
    upper_icpt: torch.Tensor  # (P,)


@dataclass
class _Patch:
    """Coefficients on a window of a ``(C, H, W)`` tensor, one window per row.

    Row ``s`` holds ``a[s]`` at tensor rows ``oy[s] .. oy[s]+ph-1`` and columns ``ox[s] .. ox[s]+pw-1``; entries
    outside the tensor are kept at exactly zero. A one-hot row of a conv tensor stays local through Conv, ReLU,
    Scale and pooling, so a patch holds a few dozen numbers per row where a dense coefficient holds the whole
    tensor (the "patches" idea of auto_LiRPA).
    """

    a: torch.Tensor  # (S, C, ph, pw)
    oy: torch.Tensor  # (S,) int64
    ox: torch.Tensor  # (S,) int64

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        ph, pw = self.a.shape[2:]
        return (self.oy[:, None] + torch.arange(ph)[None, :], self.ox[:, None] + torch.arange(pw)[None, :])


def _gather(full: torch.Tensor, p: _Patch) -> torch.Tensor:
    """Values of a ``(C', H, W)`` tensor at each row's patch positions -> ``(S, C', ph, pw)``.

    Positions outside the tensor read a clamped neighbour; the patch coefficient there is zero, so it never counts.
    """
    h, w = full.shape[1:]
    ys, xs = p.grid()
    vals = full[:, ys.clamp(0, h - 1)[:, :, None], xs.clamp(0, w - 1)[:, None, :]]
    return vals.permute(1, 0, 2, 3)


def _masked(p: _Patch, h: int, w: int) -> _Patch:
    """Zero the entries outside an ``h × w`` tensor (they multiply a conv's zero padding)."""
    ys, xs = p.grid()
    ok = ((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[:, None, None, :]
    return _Patch(torch.where(ok, p.a, 0.0), p.oy, p.ox)


def _patch_to_dense(p: _Patch, shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = shape
    s = p.a.shape[0]
    ys, xs = p.grid()
    flat = (((torch.arange(s)[:, None, None, None] * c + torch.arange(c)[None, :, None, None]) * h
             + ys.clamp(0, h - 1)[:, None, :, None]) * w + xs.clamp(0, w - 1)[:, None, None, :])
    out = torch.zeros(s * c * h * w, dtype=torch.float64)
    out.index_add_(0, flat.reshape(-1), p.a.reshape(-1))  # out-of-range entries are zero: they add nothing
    return out.reshape(s, c, h, w)


def _patch_sum(x: _Patch, y: _Patch) -> _Patch | None:
    """Sum of two patches on one tensor when their windows differ by the same shift in every row, else None."""
    dy, dx = y.oy - x.oy, y.ox - x.ox
    if not (bool((dy == dy[0]).all()) and bool((dx == dx[0]).all())):
        return None
    dy0, dx0 = int(dy[0]), int(dx[0])
    (xh, xw), (yh, yw) = x.a.shape[2:], y.a.shape[2:]
    top, left = min(0, dy0), min(0, dx0)
    hh, ww = max(xh, dy0 + yh) - top, max(xw, dx0 + yw) - left
    ax = F.pad(x.a, (-left, ww - xw + left, -top, hh - xh + top))
    ay = F.pad(y.a, (dx0 - left, ww - yw - dx0 + left, dy0 - top, hh - yh - dy0 + top))
    return _Patch(ax + ay, x.oy + top, x.ox + left)


def _relu_relax(lo: np.ndarray, hi: np.ndarray) -> _ReluRelax:
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    width = np.where(unstable, hi - lo, 1.0)
    s = np.where(active, 1.0, np.where(unstable, hi / width, 0.0))
    icpt = np.where(unstable, -s * lo, 0.0)
    alpha = np.where(active, 1.0, np.where(unstable, (hi >= -lo).astype(np.float64), 0.0))
    return _ReluRelax(_t(alpha), _t(s), _t(icpt))


def _pool_relax(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _PoolRelax:
    if np.any((idx < 0).all(axis=-1)):
        raise InputError("a MaxPool window lies entirely in the padding; its output would be -inf")
    l_win, u_win = _window_bounds(idx, lo, hi)
    k_lo = np.argmax(l_win, axis=-1)[..., None]
    k_up = np.argmax(u_win, axis=-1)[..., None]
    u_top = np.take_along_axis(u_win, k_up, -1)[..., 0]
    l_top = np.take_along_axis(l_win, k_up, -1)[..., 0]
    others = u_win.copy()
    np.put_along_axis(others, k_up, -np.inf, -1)
    u_second = others.max(axis=-1)  # -inf when the window has one real input
    dominated = l_top >= u_second
    u2 = np.where(dominated, 0.0, u_second)  # finite stand-ins where dominated (avoids inf - inf)
    lt = np.where(dominated, 0.0, l_top)
    slope = np.where(dominated, 1.0, (u_top - u2) / np.where(dominated, 1.0, u_top - lt))
    icpt = np.where(dominated, 0.0, u2 - slope * lt)
    idx_up = np.take_along_axis(idx, k_up, -1)[..., 0]
    idx_lo = np.where(dominated, idx_up, np.take_along_axis(idx, k_lo, -1)[..., 0])
    return _PoolRelax(torch.as_tensor(idx_lo.reshape(-1)), torch.as_tensor(idx_up.reshape(-1)),
                      _t(slope.reshape(-1)), _t(icpt.reshape(-1)))


def _unbroadcast(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum a ``(S, *broadcast_shape)`` coefficient back onto a ``(S, *shape)`` operand."""
    if tuple(a.shape[1:]) == tuple(shape):
        return a
    extra = a.dim() - 1 - len(shape)
    if extra > 0:
        a = a.sum(dim=tuple(range(1, 1 + extra)))
    dims = tuple(i + 1 for i, n in enumerate(shape) if n == 1 and a.shape[i + 1] != 1)
    if dims:
        a = a.sum(dim=dims, keepdim=True)
    return a.reshape(a.shape[0], *shape)


def _conv_adjoint(a: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int, int, int],
                  dilation: tuple[int, int], groups: int, in_hw: tuple[int, int]) -> torch.Tensor:
    """Transpose of a (bias-free) convolution: ``(S, C_out, Ho, Wo) -> (S, C_in, H, W)``.

    torch's transposed convolution only pads symmetrically, so it runs unpadded onto the padded input grid and
    the padding rows/columns (which multiply constant zeros) are cropped; a trailing strip that no window
    reaches gets zero coefficients.
    """
    top, left, bottom, right = padding
    out = F.conv_transpose2d(a, weight, stride=stride, dilation=dilation, groups=groups)
    h_pad, w_pad = in_hw[0] + top + bottom, in_hw[1] + left + right
    # F.pad with negative amounts crops; the positive tail amounts restore the unreached strip.
    return F.pad(out, (-left, w_pad - out.shape[3] - right, -top, h_pad - out.shape[2] - bottom))


class BackSubstitution:
    """Lower bounds of linear functions of any tensor over an input box, by CROWN back-substitution.

    ``lower``/``upper`` map tensor names to sound bounds (per-sample shapes) for at least the input (the box) and
    every ReLU/MaxPool pre-activation the substitution passes; the ReLU/MaxPool relaxations are built from them
    lazily, so the dicts may be filled in as a forward sweep goes (a relaxation is only built once every bound it
    needs is final).
    """

    def __init__(self, network: Network, lower: dict[str, np.ndarray], upper: dict[str, np.ndarray],
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
        self.network = network
        self.lower, self.upper = lower, upper
        self.chunk_elements = int(chunk_elements)
        self._producer = {n.output: n for n in network.nodes}
        self._relax: dict[str, _ReluRelax | _PoolRelax] = {}
        self._plans: dict[str, tuple[list[Node], int]] = {}
        self._pool_idx: dict[str, np.ndarray] = {}
        self.rows = 0  # specification rows back-substituted so far (a cost statistic)
        # When a list: every pass appends (input coefficients, bias, magnitude) before concretisation, i.e. the
        # linear bound itself, for callers that concretise it over other (smaller) boxes.
        self.capture: list[tuple[torch.Tensor | _Patch | None, torch.Tensor, torch.Tensor]] | None = None
        self._peak_per_row = 1  # largest coefficient tensor per row seen in the last pass (sizes later chunks)

    # --- planning ----------------------------------------------------------------------------------------
    def _plan(self, start: str) -> tuple[list[Node], int]:
        """Nodes on which ``start`` depends, in reverse topological order, and the largest tensor size among them."""
        if start not in self._plans:
            needed = {start}
            nodes = []
            for node in reversed(self.network.nodes):
                if node.output in needed:
                    nodes.append(node)
                    needed.update(node.inputs)
            sizes = [int(np.prod(self.network.shape_of(t), dtype=np.int64)) for t in needed]
            self._plans[start] = (nodes, max(sizes))
        return self._plans[start]

    def pool_index(self, node: Node) -> np.ndarray:
        if node.name not in self._pool_idx:
            self._pool_idx[node.name] = pool_index(node.op, self.network.shape_of(node.inputs[0]))
        return self._pool_idx[node.name]

    def _relaxation(self, node: Node) -> _ReluRelax | _PoolRelax:
        if node.name not in self._relax:
            x = node.inputs[0]
            lo, hi = self.lower[x], self.upper[x]
            if isinstance(node.op, Relu):
                self._relax[node.name] = _relu_relax(lo, hi)
            else:
                self._relax[node.name] = _pool_relax(self.pool_index(node), lo, hi)
        return self._relax[node.name]

    # --- one backward step -------------------------------------------------------------------------------
    def _step(self, node: Node, a: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor | None,
                                                         torch.Tensor | None]:
        """Substitute ``a · node.output`` by a lower bound linear in the node's inputs.

        Returns the coefficients per input tensor, the constant added (per row) and the magnitude of that constant's
        terms (for the floating-point widening); constants are None when the step adds none.
        """
        op, s = node.op, a.shape[0]
        shapes = [self.network.shape_of(t) for t in node.inputs]
        if isinstance(op, Dense):
            a2 = a.reshape(s, -1)
            bias = _t(op.bias)
            return ([(node.inputs[0], (a2 @ _t(op.weight)).reshape(s, *shapes[0]))], a2 @ bias,
                    a2.abs() @ bias.abs())
        if isinstance(op, Conv2d):
            a_in = _conv_adjoint(a, _t(op.weight), op.stride, op.padding, op.dilation, op.groups, shapes[0][1:])
            per_channel = a.sum(dim=(2, 3))
            bias = _t(op.bias)
            return [(node.inputs[0], a_in)], per_channel @ bias, a.abs().sum(dim=(2, 3)) @ bias.abs()
        if isinstance(op, AvgPool2d):
            c, h, w = shapes[0]
            scaled = a / _t(op.divisor(h, w))
            ones = torch.ones((c, 1, *op.kernel), dtype=torch.float64)
            return [(node.inputs[0], _conv_adjoint(scaled, ones, op.stride, op.padding, (1, 1), c, (h, w)))], None, None
        if isinstance(op, Reshape):
            return [(node.inputs[0], a.reshape(s, *shapes[0]))], None, None
        if isinstance(op, Scale):
            add = _t(op.add)
            a_in = _unbroadcast(a * _t(op.mul), shapes[0])
            return ([(node.inputs[0], a_in)], (a * add).reshape(s, -1).sum(1),
                    (a.abs() * add.abs()).reshape(s, -1).sum(1))
        if isinstance(op, Add):
            return [(node.inputs[0], _unbroadcast(a, shapes[0])),
                    (node.inputs[1], _unbroadcast(op.coeff * a, shapes[1]))], None, None
        if isinstance(op, Relu):
            r = self._relaxation(node)
            neg = a.clamp(max=0.0)
            # a·lower_slope where a >= 0, a·upper_slope where a < 0, in two passes over the (large) coefficients
            a_in = torch.addcmul(a * r.lower_slope, neg, r.upper_slope - r.lower_slope)
            neg2 = neg.reshape(s, -1)
            icpt = r.upper_icpt.reshape(-1)
            return [(node.inputs[0], a_in)], neg2 @ icpt, -(neg2 @ icpt.abs())
        if isinstance(op, MaxPool2d):
            r = self._relaxation(node)
            a2 = a.reshape(s, -1)
            neg = a2.clamp(max=0.0)
            a_in = torch.zeros((s, int(np.prod(shapes[0]))), dtype=torch.float64)
            a_in.index_add_(1, torch.cat([r.idx_lower, r.idx_upper]),
                            torch.cat([a2.clamp(min=0.0), neg * r.upper_slope], dim=1))
            return [(node.inputs[0], a_in.reshape(s, *shapes[0]))], neg @ r.upper_icpt, neg.abs() @ r.upper_icpt.abs()
        raise TypeError(f"CROWN has no rule for op {op.kind} (node {node.name})")

    def _fit(self, p: _Patch, shape: tuple[int, int, int]) -> _Patch | torch.Tensor:
        """Mask a fresh patch to its tensor; go dense once the window covers as much as the tensor itself."""
        c, h, w = shape
        if p.a.shape[2] * p.a.shape[3] >= h * w:
            return _patch_to_dense(_masked(p, h, w), shape)
        return _masked(p, h, w)

    def _step_patch(self, node: Node, p: _Patch) -> tuple[list, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`_step` for a patch; ops that do not keep coefficients local fall back to the dense step."""
        op, s = node.op, p.a.shape[0]
        shapes = [self.network.shape_of(t) for t in node.inputs]
        same = all(sh == node.out_shape for sh in shapes)
        if isinstance(op, (Conv2d, AvgPool2d)):
            c, h, w = shapes[0]
            if isinstance(op, Conv2d):
                a, weight, dilation, groups = p.a, _t(op.weight), op.dilation, op.groups
                bias = _t(op.bias)
                d_bias, d_mag = p.a.sum(dim=(2, 3)) @ bias, p.a.abs().sum(dim=(2, 3)) @ bias.abs()
            else:
                a = p.a / _gather(_t(op.divisor(h, w))[None], p)
                weight, dilation, groups = torch.ones((c, 1, *op.kernel), dtype=torch.float64), (1, 1), c
                d_bias = d_mag = None
            a_in = F.conv_transpose2d(a, weight, stride=op.stride, dilation=dilation, groups=groups)
            q = _Patch(a_in, p.oy * op.stride[0] - op.padding[0], p.ox * op.stride[1] - op.padding[1])
            return [(node.inputs[0], self._fit(q, shapes[0]))], d_bias, d_mag
        if isinstance(op, Relu):
            r = self._relaxation(node)
            lo_s, up_s, icpt = (_gather(v, p) for v in (r.lower_slope, r.upper_slope, r.upper_icpt))
            neg = p.a.clamp(max=0.0)
            a_in = p.a * torch.where(p.a >= 0, lo_s, up_s)
            return ([(node.inputs[0], _Patch(a_in, p.oy, p.ox))], (neg * icpt).sum(dim=(1, 2, 3)),
                    (neg.abs() * icpt.abs()).sum(dim=(1, 2, 3)))
        if isinstance(op, Scale) and same:
            mul = _gather(torch.broadcast_to(_t(op.mul), node.out_shape), p)
            add = _gather(torch.broadcast_to(_t(op.add), node.out_shape), p)
            return ([(node.inputs[0], _Patch(p.a * mul, p.oy, p.ox))], (p.a * add).sum(dim=(1, 2, 3)),
                    (p.a.abs() * add.abs()).sum(dim=(1, 2, 3)))
        if isinstance(op, Add) and same:
            return [(node.inputs[0], p), (node.inputs[1], _Patch(op.coeff * p.a, p.oy, p.ox))], None, None
        if isinstance(op, MaxPool2d):
            r = self._relaxation(node)
            c, h, w = shapes[0]
            _, ho, wo = node.out_shape
            ph, pw = p.a.shape[2:]
            big_h, big_w = (ph - 1) * op.stride[0] + op.kernel[0], (pw - 1) * op.stride[1] + op.kernel[1]
            oy, ox = p.oy * op.stride[0] - op.padding[0], p.ox * op.stride[1] - op.padding[1]
            rows = (torch.arange(s)[:, None, None, None] * c + torch.arange(c)[None, :, None, None]) * big_h

            def local(idx: torch.Tensor) -> torch.Tensor:
                # window winner (global flat index) -> flat index into the input patch of each row
                g = _gather(idx.reshape(c, ho, wo), p)
                ly = ((g % (h * w)) // w - oy[:, None, None, None]).clamp(0, big_h - 1)
                lx = (g % w - ox[:, None, None, None]).clamp(0, big_w - 1)
                return ((rows + ly) * big_w + lx).reshape(-1)

            neg = p.a.clamp(max=0.0)
            slope, icpt = (_gather(v.reshape(c, ho, wo), p) for v in (r.upper_slope, r.upper_icpt))
            a_in = torch.zeros(s * c * big_h * big_w, dtype=torch.float64)
            a_in.index_add_(0, torch.cat([local(r.idx_lower), local(r.idx_upper)]),
                            torch.cat([p.a.clamp(min=0.0).reshape(-1), (neg * slope).reshape(-1)]))
            q = _Patch(a_in.reshape(s, c, big_h, big_w), oy, ox)
            return ([(node.inputs[0], self._fit(q, shapes[0]))], (neg * icpt).sum(dim=(1, 2, 3)),
                    (neg.abs() * icpt.abs()).sum(dim=(1, 2, 3)))
        return self._step(node, _patch_to_dense(p, node.out_shape))

    def _combine(self, tensor: str, x: _Patch | torch.Tensor, y: _Patch | torch.Tensor) -> _Patch | torch.Tensor:
        """Accumulate the coefficients two consumers give one tensor."""
        shape = self.network.shape_of(tensor)
        if isinstance(x, _Patch) and isinstance(y, _Patch):
            z = _patch_sum(x, y)
            if z is not None:
                return self._fit(z, shape)
        if isinstance(x, _Patch):
            x = _patch_to_dense(x, shape)
        if isinstance(y, _Patch):
            y = _patch_to_dense(y, shape)
        return x + y

    def _pass(self, start: str, a: torch.Tensor | _Patch, bias: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """Lower bounds of ``a · start + bias`` over the input box (rows of ``a``), widened outward."""
        acc = {start: a}
        for node in self._plan(start)[0]:
            coeff = acc.pop(node.output, None)
            if coeff is None:
                continue
            if isinstance(coeff, _Patch):
                terms, d_bias, d_mag = self._step_patch(node, coeff)
            else:
                terms, d_bias, d_mag = self._step(node, coeff)
            if d_bias is not None:
                bias, mag = bias + d_bias, mag + d_mag
            for tensor, a_in in terms:
                acc[tensor] = self._combine(tensor, acc[tensor], a_in) if tensor in acc else a_in
                held = acc[tensor].a if isinstance(acc[tensor], _Patch) else acc[tensor]
                self._peak_per_row = max(self._peak_per_row, held.numel() // max(1, held.shape[0]))
        coeff_x = acc.pop(self.network.input_name, None)
        if self.capture is not None:
            self.capture.append((coeff_x, bias.clone(), mag.clone()))
        if coeff_x is not None:
            lo, hi = _t(self.lower[self.network.input_name]), _t(self.upper[self.network.input_name])
            a_x = coeff_x
            if isinstance(coeff_x, _Patch):
                lo, hi, a_x = _gather(lo, coeff_x), _gather(hi, coeff_x), coeff_x.a
            s = a_x.shape[0]
            if isinstance(coeff_x, _Patch):
                bias = bias + (a_x * torch.where(a_x >= 0, lo, hi)).reshape(s, -1).sum(1)
                mag = mag + (a_x.abs() * torch.maximum(lo.abs(), hi.abs())).reshape(s, -1).sum(1)
            else:  # the same sums as matrix-vector products: no temporaries the size of the coefficients
                a2 = a_x.reshape(s, -1)
                lo, hi = lo.reshape(-1), hi.reshape(-1)
                bias = bias + a2 @ lo + a2.clamp(max=0.0) @ (hi - lo)
                mag = mag + a2.abs() @ torch.maximum(lo.abs(), hi.abs())
        self.rows += bias.shape[0]
        return bias - FP_REL * mag

    # --- public ------------------------------------------------------------------------------------------
    def lower_bounds(self, tensor: str, coeffs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Sound lower bounds of ``coeffs[i] · tensor`` for each row ``i`` (``coeffs``: ``(S, *shape)``)."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float64)
        shape = self.network.shape_of(tensor)
        coeffs = coeffs.reshape(coeffs.shape[0], *shape)
        per = max(1, self.chunk_elements // self._plan(tensor)[1])
        out = []
        for k in range(0, coeffs.shape[0], per):
            chunk = coeffs[k:k + per]
            zero = torch.zeros(chunk.shape[0], dtype=torch.float64)
            out.append(self._pass(tensor, chunk, zero, zero))
        return torch.cat(out).numpy() if out else np.zeros(0)

    def neuron_bounds(self, tensor: str, idx: np.ndarray, patches: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Sound lower and upper bounds of the neurons ``idx`` (flat indices) of ``tensor``.

        Rows of a ``(C, H, W)`` tensor start as 1×1 patches (``patches=False`` forces dense coefficients).
        """
        idx = np.asarray(idx, dtype=np.int64)
        node = self._producer.get(tensor)
        shape = self.network.shape_of(tensor)
        start = tensor
        if node is not None and isinstance(node.op, Dense):
            # A one-hot row through Dense is a row of the weight: take it instead of multiplying by an identity
            # (8192 one-hot rows through a dense layer would cost S·m·n).
            start = node.inputs[0]
        dense_per = max(1, self.chunk_elements // (2 * self._plan(start)[1]))
        per = dense_per
        lows, ups = np.empty(idx.size), np.empty(idx.size)
        k = 0
        while k < idx.size:
            sel = idx[k:k + per]
            r = sel.size
            bias = torch.zeros(r, dtype=torch.float64)
            if start != tensor:
                rows = _t(node.op.weight[sel]).reshape(r, *self.network.shape_of(start))
                bias = _t(node.op.bias[sel])
                a = torch.cat([rows, -rows])
            elif len(shape) == 3 and patches:
                ch, y, x = (torch.as_tensor(v) for v in np.unravel_index(sel, shape))
                one = torch.zeros((r, shape[0], 1, 1), dtype=torch.float64)
                one[torch.arange(r), ch] = 1.0
                a = _Patch(torch.cat([one, -one]), torch.cat([y, y]), torch.cat([x, x]))
            else:
                rows = torch.zeros((r, int(np.prod(shape))), dtype=torch.float64)
                rows[torch.arange(r), torch.as_tensor(sel)] = 1.0
                rows = rows.reshape(r, *shape)
                a = torch.cat([rows, -rows])
            self._peak_per_row = 1
            val = self._pass(start, a, torch.cat([bias, -bias]), torch.cat([bias.abs(), bias.abs()]))
            lows[k:k + r], ups[k:k + r] = val[:r].numpy(), -val[r:].numpy()
            k += r
            # The first chunk is sized for dense coefficients; patches stay much smaller, so size the rest by the
            # largest coefficient tensor per row actually held (each tensor is held twice at most in a step).
            per = max(dense_per, min(self.chunk_elements // (4 * self._peak_per_row), 1 << 16))
        return lows, ups


# --- which tensors deserve back-substitution -------------------------------------------------------------------
def _origin(network: Network, producer: dict[str, Node], tensor: str) -> tuple[Node | None, bool]:
    """The first node behind ``tensor`` that is not a single-input Scale/Reshape, and whether any Scale was passed."""
    scaled = False
    node = producer.get(tensor)
    while node is not None and isinstance(node.op, (Scale, Reshape)):
        scaled = scaled or isinstance(node.op, Scale)
        node = producer.get(node.inputs[0])
    return node, scaled


def _interval_is_exact(network: Network, producer: dict[str, Node], tensor: str) -> bool:
    """True when IBP is already exact for ``tensor``: it is one coordinate-mixing affine map of a box.

    A box stays a box under elementwise maps (Scale, Reshape, ReLU), and each coordinate's range under one
    affine map of a box is exactly its interval image; a second mixing map or an Add breaks this.
    """
    mixing = 0
    node = producer.get(tensor)
    while node is not None:
        if isinstance(node.op, _MIXING):
            mixing += 1
        elif not isinstance(node.op, _ELEMENTWISE):
            return False
        if mixing > 1:
            return False
        node = producer.get(node.inputs[0])
    return True


def _needs_crown(network: Network, producer: dict[str, Node], tensor: str) -> bool:
    if tensor == network.input_name:
        return False
    origin, _ = _origin(network, producer, tensor)
    if origin is None or isinstance(origin.op, (Relu, MaxPool2d)):
        # elementwise image of a box of ReLU/MaxPool outputs: back-substitution reproduces those intervals
        return False
    return not _interval_is_exact(network, producer, tensor)


def crown(network: Network, lower: np.ndarray, upper: np.ndarray, *, refine: str = "unstable",
          chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, patches: bool = True, threads: int | None = 1) -> Bounds:
    """Sound CROWN bounds on every tensor of ``network`` over the box ``[lower, upper]``, intersected with IBP's.

    ``refine="unstable"`` back-substitutes only the pre-activation neurons whose relaxation depends on their bounds
    (plus the whole output); ``"all"`` does every neuron of every pre-activation. ``info`` records the IBP time,
    the back-substituted rows per tensor and the number of unstable ReLUs under IBP. ``patches=False`` keeps
    every coefficient dense (same bounds, slower on conv layers; for testing and measurement). ``threads`` sets
    torch's intra-op threads for the call (see :func:`torch_threads`).
    """
    if refine not in REFINE_CHOICES:
        raise InputError(f"unknown refine mode {refine!r}; choose one of {', '.join(REFINE_CHOICES)}")
    lower, upper = check_box(network, lower, upper)
    start = time.perf_counter()
    ibp_lo, ibp_hi = ibp(network, lower, upper)
    ibp_seconds = time.perf_counter() - start
    lows = {network.input_name: lower}
    ups = {network.input_name: upper}
    engine = BackSubstitution(network, lows, ups, chunk_elements)
    with torch_threads(threads):
        refined = _sweep(network, lows, ups, ibp_lo, ibp_hi, engine, refine, patches)
    seconds = time.perf_counter() - start
    ibp_unstable = sum(int(np.sum((ibp_lo[n.inputs[0]] < 0) & (ibp_hi[n.inputs[0]] > 0)))
                       for n in network.nodes if isinstance(n.op, Relu))
    info = {"ibp_seconds": ibp_seconds, "refine": refine, "patches": patches, "rows": engine.rows,
            "refined": refined, "ibp_unstable": ibp_unstable}
    return Bounds(network, lows, ups, "crown", seconds, info)


def _sweep(network: Network, lows: dict[str, np.ndarray], ups: dict[str, np.ndarray], ibp_lo: dict[str, np.ndarray],
           ibp_hi: dict[str, np.ndarray], engine: BackSubstitution, refine: str, patches: bool) -> dict[str, int]:
    """The forward sweep of :func:`crown`: fills ``lows``/``ups`` tensor by tensor; returns rows refined per tensor."""
    producer = {n.output: n for n in network.nodes}
    consumers: dict[str, list[Node]] = {}
    for node in network.nodes:
        for t in set(node.inputs):
            consumers.setdefault(t, []).append(node)
    # Tensors whose every neuron matters: the output, and what it is an elementwise/pooled image of (a network
    # ending in ReLU gets its logits' pre-activation refined in full, not only the unstable neurons).
    full = {network.output_name}
    tail = producer.get(network.output_name)
    while tail is not None and isinstance(tail.op, (Scale, Reshape, Relu, MaxPool2d)):
        full.add(tail.inputs[0])
        tail = producer.get(tail.inputs[0])
    refined: dict[str, int] = {}
    for node in network.nodes:
        out = node.output
        lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
        lo, hi = np.maximum(lo, ibp_lo[out]), np.minimum(hi, ibp_hi[out])
        users = [c for c in consumers.get(out, []) if isinstance(c.op, (Relu, MaxPool2d))]
        if (users or out == network.output_name) and _needs_crown(network, producer, out):
            if refine == "all" or out in full:
                idx = np.arange(lo.size)
            else:
                parts = [np.flatnonzero((lo < 0) & (hi > 0)) if isinstance(u.op, Relu)
                         else maxpool_candidates(engine.pool_index(u), lo, hi) for u in users]
                idx = np.unique(np.concatenate(parts))
            if idx.size:
                c_lo, c_hi = engine.neuron_bounds(out, idx, patches)
                flat_lo, flat_hi = lo.reshape(-1).copy(), hi.reshape(-1).copy()
                new_lo, new_hi = np.maximum(flat_lo[idx], c_lo), np.minimum(flat_hi[idx], c_hi)
                # Both bounds are sound, so they overlap; an empty intersection could only come from rounding.
                ok = new_lo <= new_hi
                flat_lo[idx] = np.where(ok, new_lo, flat_lo[idx])
                flat_hi[idx] = np.where(ok, new_hi, flat_hi[idx])
                lo, hi = flat_lo.reshape(lo.shape), flat_hi.reshape(hi.shape)
                refined[out] = int(idx.size)
        lows[out], ups[out] = lo, hi
    return refined
