"""Coefficient tensors of the backward (CROWN / α-CROWN) rules: dense and patch forms and the linear maps on them.

Shared by the per-op rules in :mod:`mlrobust.ops` and the engines in :mod:`mlrobust.bounds`; all in torch float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def t64(a: np.ndarray) -> torch.Tensor:
    """float64 torch view of a numpy array (no copy when it already is float64 and contiguous)."""
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64))


@dataclass
class Patch:
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


def gather(full: torch.Tensor, p: Patch) -> torch.Tensor:
    """Values of a ``(C', H, W)`` tensor at each row's patch positions -> ``(S, C', ph, pw)``.

    Positions outside the tensor read a clamped neighbour; the patch coefficient there is zero, so it never counts.
    """
    h, w = full.shape[1:]
    ys, xs = p.grid()
    vals = full[:, ys.clamp(0, h - 1)[:, :, None], xs.clamp(0, w - 1)[:, None, :]]
    return vals.permute(1, 0, 2, 3)


def masked(p: Patch, h: int, w: int) -> Patch:
    """Zero the entries outside an ``h × w`` tensor (they multiply a conv's zero padding)."""
    ys, xs = p.grid()
    ok = ((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[:, None, None, :]
    return Patch(torch.where(ok, p.a, 0.0), p.oy, p.ox)


def patch_to_dense(p: Patch, shape: tuple[int, ...]) -> torch.Tensor:
    c, h, w = shape
    s = p.a.shape[0]
    ys, xs = p.grid()
    flat = (((torch.arange(s)[:, None, None, None] * c + torch.arange(c)[None, :, None, None]) * h
             + ys.clamp(0, h - 1)[:, None, :, None]) * w + xs.clamp(0, w - 1)[:, None, None, :])
    out = torch.zeros(s * c * h * w, dtype=torch.float64)
    out.index_add_(0, flat.reshape(-1), p.a.reshape(-1))  # out-of-range entries are zero: they add nothing
    return out.reshape(s, c, h, w)


def patch_sum(x: Patch, y: Patch) -> Patch | None:
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
    return Patch(ax + ay, x.oy + top, x.ox + left)


def unbroadcast(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
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


def conv_adjoint(a: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int, int, int],
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



@dataclass
class AlphaStep:
    """What an α-CROWN backward rule returns: coefficients per input, the constant per (domain, row) and its
    magnitude (for the widening); constants are None when the step adds none."""

    terms: list[tuple[str, torch.Tensor]]
    bias: torch.Tensor | None = None  # (D, S)
    mag: torch.Tensor | None = None  # (D, S) magnitude of the constant's terms (for the widening)


def rows(x: torch.Tensor) -> torch.Tensor:
    """Sum over everything but the leading (D, S) axes."""
    return x.reshape(x.shape[0], x.shape[1], -1).sum(-1)


def unbroadcast2(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """:func:`unbroadcast` for ``(D, S, *broadcast_shape)`` coefficients."""
    d, s = a.shape[:2]
    return unbroadcast(a.reshape(d * s, *a.shape[2:]), shape).reshape(d, s, *shape)


def fit(p: Patch, shape: tuple[int, ...]) -> Patch | torch.Tensor:
    """Mask a fresh patch to its tensor; go dense once the window covers as much as the tensor itself."""
    c, h, w = shape
    if p.a.shape[2] * p.a.shape[3] >= h * w:
        return patch_to_dense(masked(p, h, w), shape)
    return masked(p, h, w)


def project_simplex(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of the last axis onto the probability simplex over the ``valid`` entries (others 0)."""
    v = torch.where(valid, v, torch.full_like(v, -1e30))
    srt, _ = torch.sort(v, dim=-1, descending=True)
    css = srt.cumsum(-1) - 1.0
    ks = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    cond = (srt - css / ks) > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    tau = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.where(valid, (v - tau).clamp(min=0.0), torch.zeros_like(v))


# --- compact parameter layouts ------------------------------------------------------------------------------------
# An op's α/β parameters may be kept only for the units whose relaxation depends on them (a node's "support": the
# sorted flat indices of its neurons or windows), ``(D, S, m, *rest)`` instead of ``(D, S, *units, *rest)``; the
# gradients, the optimiser's moments, the projections and the branch and bound's store then hold ``m`` of them.
def on_units(x: torch.Tensor, units: int, idx: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``(D, S, *unit_shape, *rest)`` (``units``: how many axes ``unit_shape`` has) at the units ``idx`` of
    its flattened unit axes: ``(D, S, len(idx), *rest)`` (``x`` itself when ``idx`` is None)."""
    if idx is None:
        return x
    rest = x.shape[2 + units:]
    return x.reshape(*x.shape[:2], -1, *rest).index_select(2, idx)


def support_columns(support: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of ``units`` (flat unit indices) sits in a compact layout over the sorted ``support``: whether it
    is held there, and its column (meaningful only where held)."""
    if support.numel() == 0:
        return torch.zeros(units.shape, dtype=torch.bool, device=units.device), torch.zeros_like(units)
    col = torch.searchsorted(support, units).clamp(max=support.numel() - 1)
    return support[col] == units, col


def support_mask(size: int, idx: torch.Tensor) -> torch.Tensor:
    """``(size,)`` bool, true at ``idx``."""
    mask = torch.zeros(size, dtype=torch.bool, device=idx.device)
    mask[idx] = True
    return mask


def expand_units(base: torch.Tensor, values: torch.Tensor, units: int, idx: torch.Tensor | None) -> torch.Tensor:
    """The dense ``(D, S, *unit_shape, *rest)`` parameters that are ``values`` ``(D, S, m, *rest)`` at the units
    ``idx`` and ``base`` ``(D or 1, 1 or S, *unit_shape, *rest)`` elsewhere (``values`` itself when ``idx`` is None).
    Differentiable in ``values``: the gradient comes back compact."""
    if idx is None:
        return values
    d, s = values.shape[:2]
    full = base.expand(d, s, *base.shape[2:]).clone(memory_format=torch.contiguous_format)
    flat = full.reshape(d, s, -1, *base.shape[2 + units:])
    return flat.index_copy(2, idx, values.to(flat.dtype)).reshape(full.shape)
