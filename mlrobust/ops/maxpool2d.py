"""MaxPool2d: 2-D max pooling, and all its rules (relaxed by CROWN, encoded with binaries as in MIPVerify).

A branch and bound may restrict a window to a subset ``S`` of its inputs ("the window's maximum is attained in
``S``"); the α relaxation then leaves the other inputs out of its upper line, per domain (``excluded`` of
:func:`alpha_pool_relax`; :class:`AlphaPoolRelax` says why that is sound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlrobust.errors import InputError
from mlrobust.ops.base import CrownStep, OpRules, ParamFamily, out_size, pool_index, pool_text, windows

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node


@dataclass
class PoolRelax:
    """CROWN's relaxation of one MaxPool node, per window (``P`` windows)."""

    idx_lower: torch.Tensor  # (P,) flat input index of the lower-bounding input per window
    idx_upper: torch.Tensor  # (P,) flat input index of the chord's input per window
    upper_slope: torch.Tensor  # (P,)
    upper_icpt: torch.Tensor  # (P,)


def window_bounds(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  batched: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper bounds of every window entry; padded entries get -inf (they never win a max). ``batched``:
    ``lo``/``hi`` are ``(D, *input)``, one row per domain, and the result has a leading ``D`` axis."""
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    if batched:
        d = lo.shape[0]
        return (np.where(valid, lo.reshape(d, -1)[:, safe], -np.inf),
                np.where(valid, hi.reshape(d, -1)[:, safe], -np.inf))
    return (np.where(valid, lo.reshape(-1)[safe], -np.inf), np.where(valid, hi.reshape(-1)[safe], -np.inf))


def maxpool_candidates(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Flat indices of MaxPool inputs that can win a window no single input dominates (their bounds matter)."""
    l_win, u_win = window_bounds(idx, lo, hi)
    best_lower = l_win.max(axis=-1, keepdims=True)
    cand = (u_win >= best_lower) & (idx >= 0)
    undecided = cand.sum(axis=-1, keepdims=True) > 1
    return np.unique(idx[cand & undecided])


def window_live(l_win: np.ndarray, u_win: np.ndarray, valid: np.ndarray,
                excluded: np.ndarray | None) -> np.ndarray:
    """Per window entry (last axis), whether it may still be the window's maximum on a domain whose window is
    restricted to the entries not ``excluded``: real, not excluded, and ``u_i >= max_j l_j`` over every real entry
    (the maximum is at least every input's lower bound, so an input below that never attains it). A window where no
    entry passes (only on an empty domain) keeps its entries that are not excluded, so that the relaxation stays
    finite."""
    allowed = valid if excluded is None else valid & ~excluded
    floor = np.where(valid, l_win, -np.inf).max(axis=-1, keepdims=True)
    live = allowed & (u_win >= floor)
    return np.where(live.any(axis=-1, keepdims=True), live, allowed)


def restricted_lower(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Lower bounds ``(D, *input)`` of a MaxPool's input raised where a window is restricted to one input ``j``
    (``excluded`` ``(D, P, K)``, see :func:`window_live`): there ``x_j`` is the window's maximum, so
    ``x_j >= max_i l_i`` over the window's real inputs (a window split's child "the maximum is at ``j``" knows
    more than its parent's bounds say)."""
    d, k = lo.shape[0], idx.shape[-1]
    flat_idx = idx.reshape(-1, k)
    valid = flat_idx >= 0
    l_win, u_win = window_bounds(flat_idx, lo, hi, batched=True)
    live = window_live(l_win, u_win, valid, excluded)
    single = live.sum(-1) == 1  # (D, P)
    out = lo.reshape(d, -1).copy()
    if single.any():
        dom, win = np.nonzero(single)
        j = flat_idx[win, np.argmax(live[dom, win], axis=-1)]  # a live entry is real: never padding
        np.maximum.at(out, (dom, j), l_win[dom, win].max(-1))
    return out.reshape(lo.shape)


def _window_winners(l_win: np.ndarray, u_win: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per window (last axis): the entry with the largest lower bound ``k_lo``, the one with the largest upper bound
    ``k_up`` (both with a trailing axis, for ``take_along_axis``), that entry's bounds ``u_top``/``l_top``, the
    largest upper bound of the others ``u_second`` (-inf for a one-input window) and whether ``k_up`` dominates."""
    k_lo = np.argmax(l_win, axis=-1)[..., None]
    k_up = np.argmax(u_win, axis=-1)[..., None]
    u_top = np.take_along_axis(u_win, k_up, -1)[..., 0]
    l_top = np.take_along_axis(l_win, k_up, -1)[..., 0]
    others = u_win.copy()
    np.put_along_axis(others, k_up, -np.inf, -1)
    u_second = others.max(axis=-1)
    return k_lo, k_up, u_top, l_top, u_second, l_top >= u_second


def pool_relax(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> PoolRelax:
    """Lower line ``x_i`` for the input with the largest lower bound; upper line the chord of
    ``max(x_j, U')`` on ``[l_j, u_j]`` (``j``: largest upper bound, ``U'``: the others' largest), or exactly ``x_j``
    when ``l_j >= U'`` (see :mod:`mlrobust.bounds.crown`)."""
    import torch

    from mlrobust.ops.coeffs import t64

    if np.any((idx < 0).all(axis=-1)):
        raise InputError("a MaxPool window lies entirely in the padding; its output would be -inf")
    l_win, u_win = window_bounds(idx, lo, hi)
    k_lo, k_up, u_top, l_top, u_second, dominated = _window_winners(l_win, u_win)
    u2 = np.where(dominated, 0.0, u_second)  # finite stand-ins where dominated (avoids inf - inf)
    lt = np.where(dominated, 0.0, l_top)
    slope = np.where(dominated, 1.0, (u_top - u2) / np.where(dominated, 1.0, u_top - lt))
    icpt = np.where(dominated, 0.0, u2 - slope * lt)
    idx_up = np.take_along_axis(idx, k_up, -1)[..., 0]
    idx_lo = np.where(dominated, idx_up, np.take_along_axis(idx, k_lo, -1)[..., 0])
    return PoolRelax(torch.as_tensor(idx_lo.reshape(-1)), torch.as_tensor(idx_up.reshape(-1)),
                     t64(slope.reshape(-1)), t64(icpt.reshape(-1)))


@dataclass
class AlphaPoolRelax:
    """One MaxPool node over D domains: P windows of K entries.

    Lower line ``Σ λ_i x_i`` (weights ``(D, S, P, K)``); upper line, for a threshold ``τ`` per window,
    ``max_i x_i <= τ + Σ_i relu(x_i - τ)`` with each ``relu(x_i - τ)`` over ``[l_i, u_i]`` replaced by ``x_i - τ``
    (``l_i >= τ``), ``0`` (``u_i <= τ``) or its chord. Sound for every ``τ``; CROWN's chord is ``τ`` = the
    second-largest upper bound (``τ = l_j`` for a dominated window, where the line is exactly ``x_j``).

    ``upper_valid`` ``(D, 1, P, K)`` (None: ``valid``): the entries the upper line sums over, per domain, where a
    branch and bound's window splits restricted a window to a subset ``S`` of its inputs (the domain holds only
    points where the window's maximum is attained in ``S``). Sound: on every point of such a domain
    ``max_i x_i = max_{i∈S} x_i``, so the upper line ``τ + Σ_{i∈S} relu(x_i - τ)`` (valid for the maximum over
    ``S``, for every ``τ``) bounds the window's output; the lower line ``Σ λ_i x_i`` stays valid for any simplex
    weights over *all* real entries (the maximum is at least every ``x_i``). With ``S = {j}`` the upper line is
    exactly ``x_j``. The children of a window split cover their parent (a point whose maximum is attained in ``S``
    has it attained in ``S_1`` or in ``S ∖ S_1``; ties may lie in both): a cover, which is all the branch and bound
    needs. Entries of ``S`` whose upper bound is below some entry's lower bound never attain the maximum and are
    left out too (:func:`window_live`); ``tau_lo``/``tau_hi``/``default_*`` are then over the entries kept.
    """

    win_idx: torch.Tensor  # (P*K,) flat input index per window entry; padding points at the dummy slot n_in
    valid: torch.Tensor  # (P, K) real (non-padding) entries
    n_in: int
    l_win: torch.Tensor  # (D, 1, P, K) bounds per window entry (padding: 0, masked by ``valid``)
    u_win: torch.Tensor
    tau_lo: torch.Tensor  # (D, 1, P) largest lower bound: τ = tau_lo + θ (tau_hi - tau_lo), θ ∈ [0, 1] (scale-free)
    tau_hi: torch.Tensor  # (D, 1, P) largest upper bound
    default_lam: torch.Tensor  # (D, 1, P, K) one-hot on CROWN's choice
    default_tau: torch.Tensor  # (D, 1, P) θ of CROWN's τ
    upper_valid: torch.Tensor | None = None  # (D, 1, P, K) entries of the upper line (None: ``valid``)

    def cast(self, dtype: torch.dtype) -> AlphaPoolRelax:
        """The same relaxation with its floating-point tensors in ``dtype``."""
        return AlphaPoolRelax(self.win_idx, self.valid, self.n_in, self.l_win.to(dtype), self.u_win.to(dtype),
                              self.tau_lo.to(dtype), self.tau_hi.to(dtype), self.default_lam.to(dtype),
                              self.default_tau.to(dtype), self.upper_valid)


def alpha_pool_relax(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     excluded: np.ndarray | None = None) -> AlphaPoolRelax:
    """CROWN's MaxPool relaxation (see :mod:`mlrobust.bounds.crown`) for ``(D, C, H, W)`` bounds, batched over D.

    ``excluded`` ``(D, P, K)`` (None: nothing excluded): window entries that a domain's window splits ruled out of
    attaining the maximum; the upper line and CROWN's choices are then those of the maximum over the entries that
    may still attain it (:func:`window_live`), while the lower line may still weigh every real entry (see
    :class:`AlphaPoolRelax`)."""
    import torch

    if np.any((idx < 0).all(axis=-1)):
        raise InputError("a MaxPool window lies entirely in the padding; its output would be -inf")
    k = idx.shape[-1]
    flat_idx = idx.reshape(-1, k)  # (P, K)
    valid = flat_idx >= 0
    l_all, u_all = window_bounds(flat_idx, lo, hi, batched=True)  # (D, P, K)
    upper_valid = None
    l_win, u_win = l_all, u_all
    if excluded is not None:
        # the upper line's entries: those that may still attain the maximum; -inf stand-ins elsewhere, as for
        # padding, so that they never win the window's choices below
        upper_valid = window_live(l_all, u_all, valid, excluded)
        l_win, u_win = np.where(upper_valid, l_all, -np.inf), np.where(upper_valid, u_all, -np.inf)
    k_lo, k_up, u_top, l_top, u_second, dominated = _window_winners(l_win, u_win)
    if excluded is not None:
        k_lo = np.argmax(l_all, axis=-1)[..., None]  # the lower line may use any real entry (max >= every x_i)
    tau = np.where(dominated, l_top, u_second)
    tau_lo = l_win.max(-1)
    span = u_top - tau_lo
    theta = np.where(span > 0, (tau - tau_lo) / np.where(span > 0, span, 1.0), 0.0).clip(0.0, 1.0)
    k_default = np.where(dominated[..., None], k_up, k_lo)
    lam = np.zeros(l_win.shape)
    np.put_along_axis(lam, k_default, 1.0, -1)
    n_in = int(lo[0].size)
    win = np.where(valid, flat_idx, n_in).reshape(-1)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a))[:, None]

    return AlphaPoolRelax(torch.as_tensor(win), torch.as_tensor(valid), n_in, t(np.where(valid, l_all, 0.0)),
                          t(np.where(valid, u_all, 0.0)), t(tau_lo), t(u_top), t(lam), t(theta),
                          None if upper_valid is None else t(upper_valid))


#: Lower-line weights ``λ`` of every window, in the probability simplex over its real inputs.
POOL_WEIGHTS = ParamFamily("pool", "lr_pool")
#: Upper-line thresholds, as ``θ ∈ [0, 1]`` of the range ``[max l, max u]`` of the window (off by default: CROWN's
#: ``τ`` sits at a kink that gradient steps only leave for worse on the shipped models).
POOL_THRESHOLDS = ParamFamily("tau", "lr_tau")


@dataclass(eq=False)
class MaxPool2d(OpRules):
    """2-D max pooling; padded positions never win (they hold -inf, as ONNX specifies)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    kind = "MaxPool2d"
    activation = True
    pooling = True
    absorbs_relu = True
    alpha_families = (POOL_WEIGHTS, POOL_THRESHOLDS)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        top, left, bottom, right = self.padding
        return (out_size(h, self.kernel[0], self.stride[0], top, bottom),
                out_size(w, self.kernel[1], self.stride[1], left, right))

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        win = windows(x, self.kernel, self.stride, self.padding, (1, 1), -np.inf)
        return win.max(axis=(-2, -1))

    num_params = 0

    def describe(self, node: Node, network: Network) -> str:
        return pool_text(self)

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        import torch.nn.functional as F

        from mlrobust.ir.torch_exec import pad2d

        return F.max_pool2d(pad2d(args[0], self.padding, float("-inf")), self.kernel, self.stride)

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # monotone and exact in floating point: no widening
        return self.forward(lows[0][None], node.out_shape)[0], self.forward(ups[0][None], node.out_shape)[0]

    def crown_relax(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> PoolRelax:
        return pool_relax(engine.pool_index(node), lo, hi)

    def refine_index(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return maxpool_candidates(engine.pool_index(node), lo, hi)

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        import torch

        s = a.shape[0]
        in_shape = engine.network.shape_of(node.inputs[0])
        r = engine._relaxation(node)
        a2 = a.reshape(s, -1)
        neg = a2.clamp(max=0.0)
        a_in = torch.zeros((s, int(np.prod(in_shape))), dtype=torch.float64)
        a_in.index_add_(1, torch.cat([r.idx_lower, r.idx_upper]),
                        torch.cat([a2.clamp(min=0.0), neg * r.upper_slope], dim=1))
        return [(node.inputs[0], a_in.reshape(s, *in_shape))], neg @ r.upper_icpt, neg.abs() @ r.upper_icpt.abs()

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        import torch

        from mlrobust.ops.coeffs import Patch, fit, gather

        s = p.a.shape[0]
        in_shape = engine.network.shape_of(node.inputs[0])
        r = engine._relaxation(node)
        c, h, w = in_shape
        _, ho, wo = node.out_shape
        ph, pw = p.a.shape[2:]
        big_h, big_w = (ph - 1) * self.stride[0] + self.kernel[0], (pw - 1) * self.stride[1] + self.kernel[1]
        oy, ox = p.oy * self.stride[0] - self.padding[0], p.ox * self.stride[1] - self.padding[1]
        rows = (torch.arange(s)[:, None, None, None] * c + torch.arange(c)[None, :, None, None]) * big_h

        def local(idx: torch.Tensor) -> torch.Tensor:
            # window winner (global flat index) -> flat index into the input patch of each row
            g = gather(idx.reshape(c, ho, wo), p)
            ly = ((g % (h * w)) // w - oy[:, None, None, None]).clamp(0, big_h - 1)
            lx = (g % w - ox[:, None, None, None]).clamp(0, big_w - 1)
            return ((rows + ly) * big_w + lx).reshape(-1)

        neg = p.a.clamp(max=0.0)
        slope, icpt = (gather(v.reshape(c, ho, wo), p) for v in (r.upper_slope, r.upper_icpt))
        a_in = torch.zeros(s * c * big_h * big_w, dtype=torch.float64)
        a_in.index_add_(0, torch.cat([local(r.idx_lower), local(r.idx_upper)]),
                        torch.cat([p.a.clamp(min=0.0).reshape(-1), (neg * slope).reshape(-1)]))
        q = Patch(a_in.reshape(s, c, big_h, big_w), oy, ox)
        return ([(node.inputs[0], fit(q, in_shape))], (neg * icpt).sum(dim=(1, 2, 3)),
                (neg.abs() * icpt.abs()).sum(dim=(1, 2, 3)))

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        import torch

        from mlrobust.ops.coeffs import AlphaStep, expand_units

        r = ctx.relax[node.name]
        d, s = a.shape[:2]
        if ctx.capture is not None:
            ctx.capture[node.name] = a.detach()  # the coefficients on the window outputs: window splits' scores
        lam = ctx.params.family(POOL_WEIGHTS.name).get(node.name)
        theta = ctx.params.family(POOL_THRESHOLDS.name).get(node.name)
        idx = ctx.support.get(node.name)  # compact parameters: scattered over CROWN's choice of the other windows
        lam = r.default_lam if lam is None else expand_units(r.default_lam, lam, 1, idx)
        theta = r.default_tau if theta is None else expand_units(r.default_tau, theta, 1, idx)
        tau = (r.tau_lo + theta * (r.tau_hi - r.tau_lo))[..., None]  # (D, S or 1, P, 1)
        a2 = a.reshape(d, s, -1)
        pos, neg = a2.clamp(min=0.0), a2.clamp(max=0.0)
        p, k = r.valid.shape
        # upper line per window entry: slope and the constant it subtracts (x_i - τ, chord, or nothing)
        upper = r.valid if r.upper_valid is None else r.upper_valid
        linear = upper & (r.l_win >= tau)
        chord = upper & ~linear & (r.u_win > tau)
        width = torch.where(chord, r.u_win - r.l_win, 1.0)
        up_slope = torch.where(linear, 1.0, torch.where(chord, (r.u_win - tau) / width, 0.0))
        up_off = torch.where(linear, tau, torch.where(chord, up_slope * r.l_win, 0.0))
        src = pos[..., None] * lam + neg[..., None] * up_slope
        index = r.win_idx.expand(d, s, p * k)
        a_in = torch.zeros((d, s, r.n_in + 1), dtype=a.dtype).scatter_add(2, index, src.reshape(d, s, p * k))
        in_shape = ctx.network.shape_of(node.inputs[0])
        icpt = tau[..., 0] - up_off.sum(-1)
        mag = tau[..., 0].abs() + up_off.abs().sum(-1)
        return AlphaStep([(node.inputs[0], a_in[..., : r.n_in].reshape(d, s, *in_shape))], (neg * icpt).sum(-1),
                         (neg.abs() * mag).sum(-1))

    def restricted_lower(self, network: Network, node: Node, lo: np.ndarray, hi: np.ndarray,
                         excluded: np.ndarray) -> np.ndarray:
        """Lower bounds ``(D, *input)`` of the input raised where a domain restricts a window to one input (see
        :func:`restricted_lower`)."""
        return restricted_lower(pool_index(self, network.shape_of(node.inputs[0])), lo, hi, excluded)

    def alpha_relax(self, network: Network, node: Node, domains: Any) -> AlphaPoolRelax:
        t = node.inputs[0]
        idx = pool_index(self, network.shape_of(t))
        return alpha_pool_relax(idx, domains.pre_lower[t], domains.pre_upper[t],
                                domains.pool_excluded.get(node.name))

    def alpha_support(self, ctx: Any, node: Node) -> torch.Tensor:
        """The windows that no single input dominates in some domain of ``ctx``: only there are CROWN's lines not
        exact (a sub-domain inheriting these bounds keeps a dominated window dominated). A dominated window keeps
        CROWN's exact lines (its winner); the dense layout also lets the optimiser move its weights off the winner,
        a looser line locally that can still move the final bound either way, so the compact layout optimises
        fewer parameters, not the same ones (every choice is sound)."""
        import torch

        r = ctx.relax[node.name]
        neg_inf = torch.tensor(float("-inf"), dtype=r.u_win.dtype)
        u_m = torch.where(r.valid, r.u_win, neg_inf)
        u_top, k_up = u_m.max(-1)
        l_top = r.l_win.gather(-1, k_up[..., None])[..., 0]
        u_second = u_m.scatter(-1, k_up[..., None], float("-inf")).max(-1).values
        open_windows = ~(l_top >= u_second)  # (D, 1, P)
        return torch.nonzero(open_windows.reshape(open_windows.shape[0], -1).any(dim=0)).reshape(-1)

    def alpha_init(self, ctx: Any, node: Node, d: int, s: int) -> dict[str, torch.Tensor]:
        from mlrobust.ops.coeffs import on_units

        r = ctx.relax[node.name]
        idx = ctx.support.get(node.name)
        lam, theta = on_units(r.default_lam, 1, idx), on_units(r.default_tau, 1, idx)
        return {POOL_WEIGHTS.name: lam.expand(d, s, *lam.shape[2:]).clone(),
                POOL_THRESHOLDS.name: theta.expand(d, s, *theta.shape[2:]).clone()}

    def alpha_project(self, ctx: Any, node: Node, family: str, value: torch.Tensor) -> None:
        from mlrobust.ops.coeffs import project_simplex

        if family == POOL_WEIGHTS.name:
            valid = ctx.relax[node.name].valid
            idx = ctx.support.get(node.name)
            value.copy_(project_simplex(value, valid if idx is None else valid.index_select(0, idx)))
        else:
            value.clamp_(0.0, 1.0)

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        from mlrobust.milp.layers.maxpool import encode_maxpool

        t = node.inputs[0]
        relu_first = t in builder.fused  # max(relu(x)) encoded as max(0, x): see mlrobust.milp.layers.maxpool
        if relu_first:
            t = builder.fused[t]
            inputs = [builder.forms[t]]
        builder.set_bounds(t, *builder.form_interval(t))
        out, stats, cols = encode_maxpool(builder.enc, inputs[0], builder.lower[t], builder.upper[t], self,
                                          shapes[0], relu_first)  # type: ignore[arg-type]
        builder.layer_stats[node.name] = {"kind": node.kind, **stats}
        builder.columns[node.name] = cols
        return out


__all__ = ["AlphaPoolRelax", "MaxPool2d", "POOL_THRESHOLDS", "POOL_WEIGHTS", "PoolRelax", "alpha_pool_relax", "maxpool_candidates", "pool_index", "pool_relax", "window_bounds",
           "window_live"]
