"""α-CROWN with β-CROWN split constraints: linear bounds whose relaxation parameters are optimised on the bound.

CROWN (:mod:`mlrobust.bounds.crown`) picks one linear lower line per unstable ReLU (``x`` or ``0``) and one lower line
per MaxPool window (its input with the largest lower bound). Any line in a family is sound, so the parameters can be
optimised by projected gradient ascent (Adam, torch autograd, float64) on the bound itself:

* ReLU, unstable (``l < 0 < u``): lower line ``α x``, ``α ∈ [0, 1]`` (``max(x, 0) >= α x`` for every ``x``);
  the upper line stays CROWN's chord.
* MaxPool window: lower line ``Σ_i λ_i x_i`` with ``λ`` in the probability simplex over the window's real inputs
  (``max_i x_i >= Σ λ_i x_i`` for every ``x``). Upper line: ``max_i x_i <= τ + Σ_i relu(x_i - τ)`` for any ``τ``,
  each ``relu(x_i - τ)`` replaced by its chord over ``[l_i, u_i]``; CROWN's chord is one choice of ``τ``. ``τ`` can
  be optimised too (``lr_tau``), but on the shipped models it never helped (CROWN's ``τ`` sits at a kink that
  gradient steps only leave for worse), so it is off by default.
* Split constraints (branch and bound): a ReLU split active (``z >= 0``) or inactive (``z <= 0``) has its
  pre-activation bounds clamped (``l := max(l, 0)`` / ``u := min(u, 0)``), which makes it linear, and the constraint
  ``s z >= 0`` (``s = ±1``) enters the objective with a Lagrange multiplier ``β >= 0``: on the sub-domain
  ``f >= f - β s z``, so a lower bound of the right-hand side over the relaxation is a lower bound of ``f``
  (β-CROWN). A domain whose clamped bounds cross (``l > u``) is empty; its bound is ``+inf``.

Parameters are kept per domain and per specification row (each row's bound is a separate optimisation), so the sum
of the bounds is the loss and rows never trade against each other. Every iteration's bound is sound for its
parameters; the best parameters per row are kept, and the reported bound is one more evaluation with those
parameters, widened outward by ``FP_REL`` times the magnitude of its terms like CROWN, and never below plain CROWN's
(same intermediate bounds, CROWN's default parameters, ``β = 0``), which is evaluated in the same way.

Intermediate bounds come from the caller (CROWN's by default, or a parent domain's: sound for a sub-domain). With
``AlphaOptions.optimize_intermediate`` the last ReLU pre-activation layer that CROWN refines is re-bounded first with
its own optimised parameters (one row per unstable neuron and direction, in chunks), and interval propagation then
carries the tighter bounds to the later pre-activations.

Coefficients are dense ``(D, S, *tensor_shape)`` torch tensors (D domains, S rows); one backward rule per op kind
lives in the ``_BACKWARD`` table.

API::

    AlphaOptions(iterations=20, lr_alpha=0.1, lr_beta=0.05, time_limit=None, optimize_intermediate=False,
                 early_stop=None, intermediate_chunk=256, threads=1, lr_pool=0.3, lr_tau=0.0)
    AlphaState                     # opaque warm start; .select(idx), .domains, .rows
    DomainBatch(lower, upper, pre_lower, pre_upper, splits)   # .size, .select(idx)
    AlphaResult(lower, crown_lower, state, iterations, seconds, domains, relu_coeffs, infeasible)
    initial_domain(network, lower, upper, intermediate=None) -> DomainBatch
    alpha_bounds(network, domains, coeffs, *, options=AlphaOptions(), warm=None) -> AlphaResult
    alpha_margin_bounds(network, lower, upper, target, *, options=AlphaOptions(), warm=None, intermediate=None)
        -> (margin_lower, margin_upper, state)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np
import torch

from mlrobust.bounds.crown import (
    _conv_adjoint,
    _needs_crown,
    _unbroadcast,
    crown,
    pool_index,
    torch_threads,
)
from mlrobust.bounds.ibp import FP_REL, interval_affine
from mlrobust.bounds.result import Bounds, check_box
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import (
    Add,
    AvgPool2d,
    Conv2d,
    Dense,
    MaxPool2d,
    Relu,
    Reshape,
    Scale,
)

Tensor = torch.Tensor
_F64 = torch.float64


# --- public data types ------------------------------------------------------------------------------------------
@dataclass
class AlphaOptions:
    """Budget and settings of one optimisation.

    ``iterations``: gradient steps (0 gives plain CROWN). ``time_limit``: seconds for the whole call (checked between
    steps). ``early_stop``: stop once every row's bound exceeds it (e.g. 0 for a proof). ``optimize_intermediate``:
    also optimise the bounds of the last refined ReLU pre-activation layer (costly: one row per unstable neuron and
    direction, ``intermediate_chunk`` rows at a time). ``threads``: torch intra-op threads (None: leave as is).
    Learning rates (Adam) per kind: ReLU slopes ``lr_alpha``, MaxPool lower-line weights ``lr_pool``, MaxPool
    upper-line thresholds ``lr_tau`` (0: fixed at CROWN's), split multipliers ``lr_beta``.
    """

    iterations: int = 20
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    time_limit: float | None = None
    optimize_intermediate: bool = False
    early_stop: float | None = None
    intermediate_chunk: int = 256
    threads: int | None = 1
    lr_pool: float = 0.3
    lr_tau: float = 0.0


@dataclass
class AlphaState:
    """Optimised parameters per node, each ``(D, S, ...)``: ReLU slopes ``alpha``, MaxPool lower-line weights
    ``pool`` and upper-line thresholds ``tau`` (as a fraction of the range ``[max l, max u]`` of the window),
    split multipliers ``beta``. Any values are sound; they only speed up
    a later call on a similar box or on sub-domains.
    """

    alpha: dict[str, Tensor] = field(default_factory=dict)
    pool: dict[str, Tensor] = field(default_factory=dict)
    beta: dict[str, Tensor] = field(default_factory=dict)
    tau: dict[str, Tensor] = field(default_factory=dict)

    def groups(self) -> tuple[dict[str, Tensor], ...]:
        return (self.alpha, self.pool, self.beta, self.tau)

    def _first(self) -> Tensor | None:
        for group in self.groups():
            for v in group.values():
                return v
        return None

    @property
    def domains(self) -> int:
        v = self._first()
        return 0 if v is None else int(v.shape[0])

    @property
    def rows(self) -> int:
        v = self._first()
        return 0 if v is None else int(v.shape[1])

    def map(self, fn: Callable[[Tensor], Tensor]) -> AlphaState:
        return AlphaState(*({k: fn(v) for k, v in g.items()} for g in self.groups()))

    def select(self, idx: np.ndarray | list[int]) -> AlphaState:
        """The state of domains ``idx`` (repeats allowed: two children of one parent both start from it)."""
        i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return self.map(lambda v: v[i])


@dataclass
class DomainBatch:
    """D sub-domains: input boxes ``(D, *input_shape)``, bounds of every ReLU/MaxPool input tensor ``(D, *shape)``
    (keyed by tensor name) and the split of every ReLU node's neurons ``(D, *shape)`` int8 in {-1, 0, +1}
    (keyed by node name; -1 inactive ``z <= 0``, +1 active ``z >= 0``; a missing node has no splits).
    """

    lower: np.ndarray
    upper: np.ndarray
    pre_lower: dict[str, np.ndarray]
    pre_upper: dict[str, np.ndarray]
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.lower.shape[0])

    def select(self, idx: np.ndarray | list[int]) -> DomainBatch:
        i = np.asarray(idx, dtype=np.int64)
        return DomainBatch(self.lower[i], self.upper[i], {k: v[i] for k, v in self.pre_lower.items()},
                           {k: v[i] for k, v in self.pre_upper.items()}, {k: v[i] for k, v in self.splits.items()})


@dataclass
class AlphaResult:
    """Sound lower bounds ``(D, S)`` of ``coeffs[s] @ y`` per domain, and what branching needs.

    ``domains``: the bounds actually used (splits clamped; tighter where ``optimize_intermediate`` improved them).
    ``relu_coeffs``: per ReLU node, the coefficient ``(D, S, *shape)`` of its *output* in the final back-substitution
    (its sign says which relaxation line was used; the BaBSR score is built from it). ``infeasible``: ``(D,)`` domains
    whose split constraints contradict their bounds (bound ``+inf``).
    """

    lower: np.ndarray
    crown_lower: np.ndarray
    state: AlphaState
    iterations: int
    seconds: float
    domains: DomainBatch | None = None
    relu_coeffs: dict[str, np.ndarray] = field(default_factory=dict)
    infeasible: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    @property
    def improvement(self) -> np.ndarray:
        """How much higher (tighter) than plain CROWN each bound is, ``(D, S)``."""
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(self.lower), self.lower - self.crown_lower, 0.0)


# --- relaxations built from the domains' bounds ---------------------------------------------------------------
@dataclass
class _ReluRelax:
    """One ReLU node over D domains; tensors ``(D, 1, *shape)`` (the row axis broadcasts)."""

    active: Tensor
    unstable: Tensor
    up_slope: Tensor
    up_icpt: Tensor
    default_alpha: Tensor
    sign: Tensor | None  # split sign as float, None when no neuron of this node is split


@dataclass
class _PoolRelax:
    """One MaxPool node over D domains: P windows of K entries.

    Lower line ``Σ λ_i x_i`` (weights ``(D, S, P, K)``); upper line, for a threshold ``τ`` per window,
    ``max_i x_i <= τ + Σ_i relu(x_i - τ)`` with each ``relu(x_i - τ)`` over ``[l_i, u_i]`` replaced by ``x_i - τ``
    (``l_i >= τ``), ``0`` (``u_i <= τ``) or its chord. Sound for every ``τ``; CROWN's chord is ``τ`` = the
    second-largest upper bound (``τ = l_j`` for a dominated window, where the line is exactly ``x_j``).
    """

    win_idx: Tensor  # (P*K,) flat input index per window entry; padding points at the dummy slot n_in
    valid: Tensor  # (P, K) real (non-padding) entries
    n_in: int
    l_win: Tensor  # (D, 1, P, K) bounds per window entry (padding: 0, masked by ``valid``)
    u_win: Tensor
    tau_lo: Tensor  # (D, 1, P) largest lower bound: τ = tau_lo + θ (tau_hi - tau_lo), θ ∈ [0, 1] (scale-free)
    tau_hi: Tensor  # (D, 1, P) largest upper bound
    default_lam: Tensor  # (D, 1, P, K) one-hot on CROWN's choice
    default_tau: Tensor  # (D, 1, P) θ of CROWN's τ


def _relu_relax(lo: np.ndarray, hi: np.ndarray, split: np.ndarray | None) -> _ReluRelax:
    """Relaxation of a ReLU from ``(D, *shape)`` bounds already clamped by the splits."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    width = np.where(unstable, hi - lo, 1.0)
    slope = np.where(active, 1.0, np.where(unstable, hi / width, 0.0))
    icpt = np.where(unstable, -slope * lo, 0.0)
    alpha = np.where(active | (unstable & (hi >= -lo)), 1.0, 0.0)

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a))[:, None]

    sign = None if split is None or not split.any() else t(split.astype(np.float64))
    return _ReluRelax(t(active), t(unstable), t(slope), t(icpt), t(alpha), sign)


def _pool_relax(idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> _PoolRelax:
    """CROWN's MaxPool relaxation (see :mod:`mlrobust.bounds.crown`) for ``(D, C, H, W)`` bounds, batched over D."""
    if np.any((idx < 0).all(axis=-1)):
        raise InputError("a MaxPool window lies entirely in the padding; its output would be -inf")
    d = lo.shape[0]
    k = idx.shape[-1]
    flat_idx = idx.reshape(-1, k)  # (P, K)
    valid = flat_idx >= 0
    safe = np.where(valid, flat_idx, 0)
    l_win = np.where(valid, lo.reshape(d, -1)[:, safe], -np.inf)  # (D, P, K)
    u_win = np.where(valid, hi.reshape(d, -1)[:, safe], -np.inf)
    k_lo = np.argmax(l_win, axis=-1)[..., None]
    k_up = np.argmax(u_win, axis=-1)[..., None]
    u_top = np.take_along_axis(u_win, k_up, -1)[..., 0]
    l_top = np.take_along_axis(l_win, k_up, -1)[..., 0]
    others = u_win.copy()
    np.put_along_axis(others, k_up, -np.inf, -1)
    u_second = others.max(axis=-1)
    dominated = l_top >= u_second
    tau = np.where(dominated, l_top, u_second)
    tau_lo = l_win.max(-1)
    span = u_top - tau_lo
    theta = np.where(span > 0, (tau - tau_lo) / np.where(span > 0, span, 1.0), 0.0).clip(0.0, 1.0)
    k_default = np.where(dominated[..., None], k_up, k_lo)
    lam = np.zeros(l_win.shape)
    np.put_along_axis(lam, k_default, 1.0, -1)
    n_in = int(lo[0].size)
    win = np.where(valid, flat_idx, n_in).reshape(-1)

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a))[:, None]

    return _PoolRelax(torch.as_tensor(win), torch.as_tensor(valid), n_in, t(np.where(valid, l_win, 0.0)),
                      t(np.where(valid, u_win, 0.0)), t(tau_lo), t(u_top), t(lam), t(theta))


def _project_simplex(v: Tensor, valid: Tensor) -> Tensor:
    """Euclidean projection of the last axis onto the probability simplex over the ``valid`` entries (others 0)."""
    v = torch.where(valid, v, torch.full_like(v, -1e30))
    srt, _ = torch.sort(v, dim=-1, descending=True)
    css = srt.cumsum(-1) - 1.0
    ks = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    cond = (srt - css / ks) > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    tau = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.where(valid, (v - tau).clamp(min=0.0), torch.zeros_like(v))


@dataclass
class _Context:
    """Everything one backward pass reads: the network, the relaxations and the current parameters."""

    network: Network
    relu: dict[str, _ReluRelax]
    pool: dict[str, _PoolRelax]
    in_lower: Tensor  # (D, 1, *input_shape)
    in_upper: Tensor
    params: AlphaState
    capture: dict[str, Tensor] | None = None


@dataclass
class _Step:
    terms: list[tuple[str, Tensor]]
    bias: Tensor | None = None  # (D, S)
    mag: Tensor | None = None  # (D, S) magnitude of the constant's terms (for the widening)


def _rows(x: Tensor) -> Tensor:
    """Sum over everything but the leading (D, S) axes."""
    return x.reshape(x.shape[0], x.shape[1], -1).sum(-1)


def _shape(ctx: _Context, tensor: str) -> tuple[int, ...]:
    return ctx.network.shape_of(tensor)


# --- one backward rule per op kind: substitute a · node.output by a lower bound linear in the node's inputs --------
def _back_dense(ctx: _Context, node: Node, a: Tensor) -> _Step:
    op = cast(Dense, node.op)
    d, s = a.shape[:2]
    a2 = a.reshape(d, s, -1)
    w, b = torch.as_tensor(op.weight), torch.as_tensor(op.bias)
    return _Step([(node.inputs[0], (a2 @ w).reshape(d, s, *_shape(ctx, node.inputs[0])))], a2 @ b, a2.abs() @ b.abs())


def _back_conv(ctx: _Context, node: Node, a: Tensor) -> _Step:
    op = cast(Conv2d, node.op)
    d, s = a.shape[:2]
    in_shape = _shape(ctx, node.inputs[0])
    flat = a.reshape(d * s, *a.shape[2:])
    a_in = _conv_adjoint(flat, torch.as_tensor(op.weight), op.stride, op.padding, op.dilation, op.groups,
                         (in_shape[1], in_shape[2]))
    per_channel = a.sum(dim=(3, 4))
    b = torch.as_tensor(op.bias)
    return _Step([(node.inputs[0], a_in.reshape(d, s, *in_shape))], per_channel @ b, a.abs().sum(dim=(3, 4)) @ b.abs())


def _back_avgpool(ctx: _Context, node: Node, a: Tensor) -> _Step:
    op = cast(AvgPool2d, node.op)
    d, s = a.shape[:2]
    c, h, w = _shape(ctx, node.inputs[0])
    scaled = (a / torch.as_tensor(op.divisor(h, w))).reshape(d * s, *a.shape[2:])
    ones = torch.ones((c, 1, *op.kernel), dtype=_F64)
    a_in = _conv_adjoint(scaled, ones, op.stride, op.padding, (1, 1), c, (h, w))
    return _Step([(node.inputs[0], a_in.reshape(d, s, c, h, w))])


def _unbroadcast2(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    d, s = a.shape[:2]
    return _unbroadcast(a.reshape(d * s, *a.shape[2:]), shape).reshape(d, s, *shape)


def _back_reshape(ctx: _Context, node: Node, a: Tensor) -> _Step:
    return _Step([(node.inputs[0], a.reshape(*a.shape[:2], *_shape(ctx, node.inputs[0])))])


def _back_scale(ctx: _Context, node: Node, a: Tensor) -> _Step:
    op = cast(Scale, node.op)
    mul, add = torch.as_tensor(np.asarray(op.mul, dtype=np.float64)), torch.as_tensor(np.asarray(op.add, np.float64))
    return _Step([(node.inputs[0], _unbroadcast2(a * mul, _shape(ctx, node.inputs[0])))], _rows(a * add),
                 _rows(a.abs() * add.abs()))


def _back_add(ctx: _Context, node: Node, a: Tensor) -> _Step:
    op = cast(Add, node.op)
    return _Step([(node.inputs[0], _unbroadcast2(a, _shape(ctx, node.inputs[0]))),
                  (node.inputs[1], _unbroadcast2(op.coeff * a, _shape(ctx, node.inputs[1])))])


def _back_relu(ctx: _Context, node: Node, a: Tensor) -> _Step:
    r = ctx.relu[node.name]
    if ctx.capture is not None:
        ctx.capture[node.name] = a.detach()
    alpha = ctx.params.alpha.get(node.name, r.default_alpha)
    lower_slope = torch.where(r.active, 1.0, torch.where(r.unstable, alpha, 0.0))
    pos, neg = a.clamp(min=0.0), a.clamp(max=0.0)
    a_in = pos * lower_slope + neg * r.up_slope
    beta = ctx.params.beta.get(node.name)
    if beta is not None and r.sign is not None:
        a_in = a_in - beta * r.sign  # the Lagrangian term -β s z of the split constraints s z >= 0
    return _Step([(node.inputs[0], a_in)], _rows(neg * r.up_icpt), _rows(neg.abs() * r.up_icpt.abs()))


def _back_maxpool(ctx: _Context, node: Node, a: Tensor) -> _Step:
    r = ctx.pool[node.name]
    d, s = a.shape[:2]
    lam = ctx.params.pool.get(node.name, r.default_lam)
    theta = ctx.params.tau.get(node.name, r.default_tau)
    tau = (r.tau_lo + theta * (r.tau_hi - r.tau_lo))[..., None]  # (D, S or 1, P, 1)
    a2 = a.reshape(d, s, -1)
    pos, neg = a2.clamp(min=0.0), a2.clamp(max=0.0)
    p, k = r.valid.shape
    # upper line per window entry: slope and the constant it subtracts (x_i - τ, chord, or nothing)
    linear = r.valid & (r.l_win >= tau)
    chord = r.valid & ~linear & (r.u_win > tau)
    width = torch.where(chord, r.u_win - r.l_win, 1.0)
    up_slope = torch.where(linear, 1.0, torch.where(chord, (r.u_win - tau) / width, 0.0))
    up_off = torch.where(linear, tau, torch.where(chord, up_slope * r.l_win, 0.0))
    src = pos[..., None] * lam + neg[..., None] * up_slope
    index = r.win_idx.expand(d, s, p * k)
    a_in = torch.zeros((d, s, r.n_in + 1), dtype=a.dtype).scatter_add(2, index, src.reshape(d, s, p * k))
    in_shape = _shape(ctx, node.inputs[0])
    icpt = tau[..., 0] - up_off.sum(-1)
    mag = tau[..., 0].abs() + up_off.abs().sum(-1)
    return _Step([(node.inputs[0], a_in[..., : r.n_in].reshape(d, s, *in_shape))], (neg * icpt).sum(-1),
                 (neg.abs() * mag).sum(-1))


_BACKWARD: dict[type, Callable[[_Context, Node, Tensor], _Step]] = {
    Dense: _back_dense, Conv2d: _back_conv, AvgPool2d: _back_avgpool, Reshape: _back_reshape, Scale: _back_scale,
    Add: _back_add, Relu: _back_relu, MaxPool2d: _back_maxpool,
}


def _plan(network: Network, start: str) -> list[Node]:
    """Nodes ``start`` depends on, in reverse topological order."""
    needed = {start}
    nodes = []
    for node in reversed(network.nodes):
        if node.output in needed:
            nodes.append(node)
            needed.update(node.inputs)
    return nodes


def _backward(ctx: _Context, plan: list[Node], start: str, a0: Tensor) -> tuple[Tensor, Tensor]:
    """Lower bound (unwidened) and term magnitude, both ``(D, S)``, of ``a0 · start`` over each domain."""
    d, s = ctx.in_lower.shape[0], a0.shape[1]
    acc: dict[str, Tensor] = {start: a0.expand(d, *a0.shape[1:])}
    bias = torch.zeros((d, s), dtype=_F64)
    mag = torch.zeros((d, s), dtype=_F64)
    for node in plan:
        a = acc.pop(node.output, None)
        if a is None:
            continue
        rule = _BACKWARD.get(type(node.op))
        if rule is None:
            raise TypeError(f"α-CROWN has no rule for op {node.kind} (node {node.name})")
        step = rule(ctx, node, a)
        if step.bias is not None and step.mag is not None:
            bias = bias + step.bias
            mag = mag + step.mag
        for tensor, a_in in step.terms:
            acc[tensor] = acc[tensor] + a_in if tensor in acc else a_in
    a_x = acc.pop(ctx.network.input_name, None)
    if a_x is not None:
        lo, hi = ctx.in_lower, ctx.in_upper
        bias = bias + _rows(a_x * lo) + _rows(a_x.clamp(max=0.0) * (hi - lo))
        mag = mag + _rows(a_x.abs() * torch.maximum(lo.abs(), hi.abs()))
    return bias, mag


# --- optimisation -----------------------------------------------------------------------------------------------
def _default_params(ctx: _Context, plan: list[Node], d: int, s: int) -> AlphaState:
    """CROWN's parameters, one copy per (domain, row), β = 0 on split nodes."""
    st = AlphaState()
    for node in plan:
        if isinstance(node.op, Relu):
            r = ctx.relu[node.name]
            st.alpha[node.name] = r.default_alpha.expand(d, s, *r.default_alpha.shape[2:]).clone()
            if r.sign is not None:
                st.beta[node.name] = torch.zeros_like(st.alpha[node.name])
        elif isinstance(node.op, MaxPool2d):
            r2 = ctx.pool[node.name]
            st.pool[node.name] = r2.default_lam.expand(d, s, *r2.default_lam.shape[2:]).clone()
            st.tau[node.name] = r2.default_tau.expand(d, s, *r2.default_tau.shape[2:]).clone()
    return st


def _adopt(init: AlphaState, warm: AlphaState | None, ctx: _Context) -> AlphaState:
    """Start from ``warm`` where its shapes fit (a one-domain state broadcasts), else from ``init``; projected."""
    if warm is None:
        return init

    def take(mine: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
        for k, v in mine.items():
            w = theirs.get(k)
            if w is None or w.shape[1:] != v.shape[1:] or w.shape[0] not in (1, v.shape[0]):
                continue
            mine[k] = w.to(_F64).expand_as(v).clone()

    for mine, theirs in zip(init.groups(), warm.groups()):
        take(mine, theirs)
    _project(init, ctx)
    return init


@torch.no_grad()
def _project(st: AlphaState, ctx: _Context) -> None:
    for v in st.alpha.values():
        v.clamp_(0.0, 1.0)
    for k, v in st.pool.items():
        v.copy_(_project_simplex(v, ctx.pool[k].valid))
    for v in st.beta.values():
        v.clamp_(min=0.0)
    for v in st.tau.values():
        v.clamp_(0.0, 1.0)


def _param_groups(st: AlphaState, options: AlphaOptions) -> list[dict]:
    """Adam parameter groups: one learning rate per kind of parameter (groups with lr 0 stay fixed)."""
    groups = []
    for values, lr in ((st.alpha, options.lr_alpha), (st.pool, options.lr_pool), (st.tau, options.lr_tau),
                       (st.beta, options.lr_beta)):
        if values and lr > 0:
            groups.append({"params": list(values.values()), "lr": lr})
    return groups


@dataclass
class _Optimised:
    lower: Tensor  # (D, S) sound (widened)
    crown_lower: Tensor  # (D, S) sound (widened)
    state: AlphaState
    iterations: int


def _sound(bound: Tensor, mag: Tensor) -> Tensor:
    return bound - FP_REL * mag


def _optimise(ctx: _Context, plan: list[Node], start: str, a0: Tensor, options: AlphaOptions,
              warm: AlphaState | None, deadline: float | None, capture: dict[str, Tensor] | None = None
              ) -> _Optimised:
    """Projected gradient ascent on the bounds of the rows of ``a0`` (``(D or 1, S, *shape of start)``)."""
    d, s = ctx.in_lower.shape[0], a0.shape[1]
    init = _default_params(ctx, plan, d, s)
    ctx.params = init
    with torch.no_grad():
        crown_lower = _sound(*_backward(ctx, plan, start, a0))
    params = _adopt(_default_params(ctx, plan, d, s), warm, ctx)
    best = crown_lower.clone() if warm is None else torch.full((d, s), -torch.inf, dtype=_F64)
    best_state = params.map(lambda v: v.clone())
    groups = _param_groups(params, options)
    iterations = 0
    if options.iterations > 0 and groups:
        for g in groups:
            for v in g["params"]:
                v.requires_grad_(True)
        opt = torch.optim.Adam(groups)
        ctx.params = params
        for it in range(options.iterations + 1):
            bound, mag = _backward(ctx, plan, start, a0)
            with torch.no_grad():
                value = _sound(bound, mag)
                better = value > best
                best = torch.where(better, value, best)
                for mine, kept in zip(params.groups(), best_state.groups()):
                    for k, v in mine.items():
                        mask = better.reshape(d, s, *([1] * (v.dim() - 2)))
                        kept[k] = torch.where(mask, v.detach(), kept[k])
            if it == options.iterations:
                break
            if options.early_stop is not None and bool((best > options.early_stop).all()):
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
            opt.zero_grad()
            (-bound.sum()).backward()
            opt.step()
            _project(params, ctx)
            iterations += 1
    ctx.params = best_state
    ctx.capture = capture
    with torch.no_grad():
        final = _sound(*_backward(ctx, plan, start, a0))
    ctx.capture = None
    lower = torch.maximum(final, crown_lower)
    return _Optimised(lower, crown_lower, best_state, iterations)


# --- domains ----------------------------------------------------------------------------------------------------
def _pre_tensors(network: Network) -> list[str]:
    """Tensors whose bounds a relaxation needs: the inputs of ReLU and MaxPool nodes, in order."""
    out: list[str] = []
    for node in network.nodes:
        if isinstance(node.op, (Relu, MaxPool2d)) and node.inputs[0] not in out:
            out.append(node.inputs[0])
    return out


def _covers(bounds: Bounds, network: Network, lower: np.ndarray, upper: np.ndarray) -> None:
    if bounds.network is not network and bounds.network.tensors != network.tensors:
        raise InputError("the given bounds belong to a different network")
    if np.any(bounds.input_lower > lower) or np.any(bounds.input_upper < upper):
        raise InputError("the given bounds were computed for a box that does not contain this box")


def initial_domain(network: Network, lower: np.ndarray, upper: np.ndarray,
                   intermediate: Bounds | None = None) -> DomainBatch:
    """One domain (D = 1): the box, CROWN's pre-activation bounds (or ``intermediate``'s, which must cover the box)
    and no splits."""
    lower, upper = check_box(network, lower, upper)
    if intermediate is None:
        intermediate = crown(network, lower, upper)
    else:
        _covers(intermediate, network, lower, upper)
    pre = _pre_tensors(network)
    splits = {n.name: np.zeros((1, *n.out_shape), dtype=np.int8) for n in network.nodes if isinstance(n.op, Relu)}
    return DomainBatch(lower[None].copy(), upper[None].copy(), {t: intermediate.lower[t][None].copy() for t in pre},
                       {t: intermediate.upper[t][None].copy() for t in pre}, splits)


def _check_domains(network: Network, domains: DomainBatch) -> None:
    d = domains.size
    shape = (d, *network.sample_shape)
    if domains.lower.shape != shape or domains.upper.shape != shape:
        raise InputError(f"domain boxes have shape {domains.lower.shape}; expected {shape}")
    if np.any(domains.lower > domains.upper):
        raise InputError("a domain's input box is empty")
    for t in _pre_tensors(network):
        if t not in domains.pre_lower or t not in domains.pre_upper:
            raise InputError(f"the domains carry no bounds for the pre-activation tensor {t!r}")
        want = (d, *network.shape_of(t))
        if domains.pre_lower[t].shape != want or domains.pre_upper[t].shape != want:
            raise InputError(f"bounds of {t!r} have shape {domains.pre_lower[t].shape}; expected {want}")
    names = {n.name: n for n in network.nodes if isinstance(n.op, Relu)}
    for k, v in domains.splits.items():
        if k not in names:
            raise InputError(f"splits name {k!r}, which is not a ReLU node")
        if v.shape != (d, *names[k].out_shape):
            raise InputError(f"splits of {k!r} have shape {v.shape}; expected {(d, *names[k].out_shape)}")


def _clamped(network: Network, domains: DomainBatch) -> tuple[DomainBatch, np.ndarray]:
    """The domains with split neurons' bounds clamped, and which domains are empty (clamped bounds cross)."""
    lo = {k: v.astype(np.float64, copy=True) for k, v in domains.pre_lower.items()}
    hi = {k: v.astype(np.float64, copy=True) for k, v in domains.pre_upper.items()}
    for node in network.nodes:
        split = domains.splits.get(node.name)
        if split is None or not isinstance(node.op, Relu):
            continue
        t = node.inputs[0]
        lo[t] = np.where(split > 0, np.maximum(lo[t], 0.0), lo[t])
        hi[t] = np.where(split < 0, np.minimum(hi[t], 0.0), hi[t])
    empty = np.zeros(domains.size, dtype=bool)
    for t, v in lo.items():
        empty |= (v > hi[t]).reshape(domains.size, -1).any(axis=1)
    for t, v in lo.items():  # an empty domain's numbers only need to be harmless: its bound is replaced by +inf
        lo[t] = np.where(empty.reshape(-1, *[1] * (v.ndim - 1)), np.minimum(v, hi[t]), v)
    return DomainBatch(domains.lower, domains.upper, lo, hi, dict(domains.splits)), empty


def _context(network: Network, domains: DomainBatch) -> _Context:
    relu: dict[str, _ReluRelax] = {}
    pool: dict[str, _PoolRelax] = {}
    for node in network.nodes:
        t = node.inputs[0]
        if isinstance(node.op, Relu):
            relu[node.name] = _relu_relax(domains.pre_lower[t], domains.pre_upper[t], domains.splits.get(node.name))
        elif isinstance(node.op, MaxPool2d):
            idx = pool_index(node.op, network.shape_of(t))
            pool[node.name] = _pool_relax(idx, domains.pre_lower[t], domains.pre_upper[t])
    return _Context(network, relu, pool, torch.as_tensor(domains.lower, dtype=_F64)[:, None],
                    torch.as_tensor(domains.upper, dtype=_F64)[:, None], AlphaState())


def _propagate_intervals(network: Network, domains: DomainBatch, after: str) -> DomainBatch:
    """Intersect the pre-activation bounds that come after tensor ``after`` with interval propagation, per domain."""
    lo_out = {k: v.copy() for k, v in domains.pre_lower.items()}
    hi_out = {k: v.copy() for k, v in domains.pre_upper.items()}
    order = network.tensors
    start = order.index(after)
    for i in range(domains.size):
        lows = {network.input_name: domains.lower[i]}
        ups = {network.input_name: domains.upper[i]}
        for node in network.nodes:
            lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
            t = node.output
            if t in lo_out:
                if order.index(t) > start:
                    lo_out[t][i] = np.maximum(lo_out[t][i], lo)
                    hi_out[t][i] = np.minimum(hi_out[t][i], hi)
                lo, hi = lo_out[t][i], hi_out[t][i]
            lows[t], ups[t] = lo, hi
    return DomainBatch(domains.lower, domains.upper, lo_out, hi_out, domains.splits)


def _last_refined_relu_input(network: Network) -> str | None:
    producer = {n.output: n for n in network.nodes}
    found = None
    for node in network.nodes:
        if isinstance(node.op, Relu) and _needs_crown(network, producer, node.inputs[0]):
            found = node.inputs[0]
    return found


def _optimise_intermediate(network: Network, domains: DomainBatch, options: AlphaOptions,
                           deadline: float | None) -> tuple[DomainBatch, int]:
    """Tighter bounds for the unstable neurons of the last refined ReLU pre-activation; returns them and the rows."""
    t = _last_refined_relu_input(network)
    if t is None:
        return domains, 0
    lo, hi = domains.pre_lower[t], domains.pre_upper[t]
    d = domains.size
    unstable = ((lo < 0) & (hi > 0)).reshape(d, -1)
    idx = np.flatnonzero(unstable.any(axis=0))
    if idx.size == 0:
        return domains, 0
    ctx = _context(network, domains)
    plan = _plan(network, t)
    n = int(np.prod(network.shape_of(t)))
    new_lo, new_hi = lo.reshape(d, -1).copy(), hi.reshape(d, -1).copy()
    per = max(1, options.intermediate_chunk // 2)
    done = 0
    for k in range(0, idx.size, per):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        sel = idx[k:k + per]
        r = sel.size
        a0 = torch.zeros((1, 2 * r, n), dtype=_F64)
        a0[0, torch.arange(r), torch.as_tensor(sel)] = 1.0
        a0[0, r + torch.arange(r), torch.as_tensor(sel)] = -1.0
        a0 = a0.reshape(1, 2 * r, *network.shape_of(t))
        res = _optimise(ctx, plan, t, a0, replace(options, early_stop=None), None, deadline)
        val = res.lower.numpy()
        new_lo[:, sel] = np.maximum(new_lo[:, sel], val[:, :r])
        new_hi[:, sel] = np.minimum(new_hi[:, sel], -val[:, r:])
        done += 2 * r
    # Both bounds are sound; a crossing could only come from rounding: keep the old ones there.
    ok = new_lo <= new_hi
    new_lo = np.where(ok, new_lo, lo.reshape(d, -1))
    new_hi = np.where(ok, new_hi, hi.reshape(d, -1))
    pre_lo, pre_hi = dict(domains.pre_lower), dict(domains.pre_upper)
    pre_lo[t], pre_hi[t] = new_lo.reshape(lo.shape), new_hi.reshape(hi.shape)
    tightened = DomainBatch(domains.lower, domains.upper, pre_lo, pre_hi, domains.splits)
    return _propagate_intervals(network, tightened, t), done


# --- public entry points ----------------------------------------------------------------------------------------
def alpha_bounds(network: Network, domains: DomainBatch, coeffs: np.ndarray, *, options: AlphaOptions | None = None,
                 warm: AlphaState | None = None) -> AlphaResult:
    """Sound lower bounds of ``coeffs[s] @ y`` (``y`` the flattened output) over each domain, α/β-optimised.

    ``coeffs``: ``(S, C)`` for every domain or ``(D, S, C)`` per domain. ``warm``: parameters of an earlier call
    (same S; D equal or 1), e.g. ``result.state.select(parent_of_each_child)``. Never looser than plain CROWN on
    the same intermediate bounds (``crown_lower``).
    """
    options = options or AlphaOptions()
    start_time = time.perf_counter()
    deadline = None if options.time_limit is None else start_time + float(options.time_limit)
    _check_domains(network, domains)
    d = domains.size
    coeffs = np.asarray(coeffs, dtype=np.float64)
    if coeffs.ndim == 2:
        coeffs = coeffs[None]
    c = network.num_classes
    if coeffs.ndim != 3 or coeffs.shape[2] != c or coeffs.shape[0] not in (1, d):
        raise InputError(f"coeffs must have shape (S, {c}) or ({d}, S, {c}); got {coeffs.shape}")
    with torch_threads(options.threads):
        used, empty = _clamped(network, domains)
        rows_intermediate = 0
        if options.optimize_intermediate:
            used, rows_intermediate = _optimise_intermediate(network, used, options, deadline)
        ctx = _context(network, used)
        out = network.output_name
        plan = _plan(network, out)
        a0 = torch.as_tensor(coeffs).reshape(coeffs.shape[0], coeffs.shape[1], *network.shape_of(out))
        capture: dict[str, Tensor] = {}
        res = _optimise(ctx, plan, out, a0, options, warm, deadline, capture)
    lower = res.lower.numpy().copy()
    crown_lower = res.crown_lower.numpy().copy()
    lower[empty] = np.inf
    crown_lower[empty] = np.inf
    seconds = time.perf_counter() - start_time
    return AlphaResult(lower, crown_lower, res.state, res.iterations, seconds, used,
                       {k: v.numpy() for k, v in capture.items()}, empty,
                       {"intermediate_rows": rows_intermediate})


def margin_coeffs(num_classes: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``e_c - e_target`` for every class ``c != target`` and those classes."""
    classes = np.delete(np.arange(num_classes), target)
    rows = np.zeros((classes.size, num_classes))
    rows[np.arange(classes.size), classes] = 1.0
    rows[:, target] -= 1.0
    return rows, classes


def alpha_margin_bounds(network: Network, lower: np.ndarray, upper: np.ndarray, target: int, *,
                        options: AlphaOptions | None = None, warm: AlphaState | None = None,
                        intermediate: Bounds | None = None) -> tuple[np.ndarray, np.ndarray, AlphaState]:
    """Lower and upper bounds ``(C,)`` of the margins ``y_c - y_target`` over the box, α-optimised (entry ``target``
    is 0), and the state to warm-start the next call. Never looser than CROWN's margin bounds on the same
    intermediate bounds (``intermediate``, which must cover the box; CROWN's when None).
    """
    n = network.num_classes
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < n:
        raise InputError(f"target {target!r} is not a class index of this model (0 .. {n - 1})")
    target = int(target)
    domains = initial_domain(network, lower, upper, intermediate)
    rows, classes = margin_coeffs(n, target)
    res = alpha_bounds(network, domains, np.concatenate([rows, -rows]), options=options, warm=warm)
    lo = np.zeros(n)
    hi = np.zeros(n)
    m = classes.size
    lo[classes] = res.lower[0, :m]
    hi[classes] = -res.lower[0, m:]
    return lo, hi, res.state
