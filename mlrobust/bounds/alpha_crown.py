"""α-CROWN with β-CROWN split constraints: linear bounds whose relaxation parameters are optimised on the bound.

CROWN (:mod:`mlrobust.bounds.crown`) picks one linear lower line per unstable ReLU (``x`` or ``0``) and one lower line
per MaxPool window (its input with the largest lower bound). Any line in a family is sound, so the parameters can be
optimised by projected gradient ascent (Adam, torch autograd; steps in float32 by default, every reported bound in
float64) on the bound itself:

* ReLU, unstable (``l < 0 < u``): lower line ``α x``, ``α ∈ [0, 1]`` (``max(x, 0) >= α x`` for every ``x``);
  the upper line stays CROWN's chord.
* MaxPool window: lower line ``Σ_i λ_i x_i`` with ``λ`` in the probability simplex over the window's real inputs
  (``max_i x_i >= Σ λ_i x_i`` for every ``x``). Upper line: ``max_i x_i <= τ + Σ_i relu(x_i - τ)`` for any ``τ``,
  each ``relu(x_i - τ)`` replaced by its chord over ``[l_i, u_i]``; CROWN's chord is one choice of ``τ``. ``τ`` can
  be optimised too (``lr_tau``), but on the shipped models it never helped (CROWN's ``τ`` sits at a kink that
  gradient steps only leave for worse), so it is off by default.
* Sigmoid/Tanh: the tangent points of the lines, one ``t ∈ [0, 1]`` per neuron and line mapped onto the range
  where the tangent stays sound (:mod:`mlrobust.ops.smooth`); ``alpha[node]`` is ``(D, S, 2, *shape)``.
* Split constraints (branch and bound): a ReLU split active (``z >= 0``) or inactive (``z <= 0``) has its
  pre-activation bounds clamped (``l := max(l, 0)`` / ``u := min(u, 0)``), which makes it linear, and the constraint
  ``s z >= 0`` (``s = ±1``) enters the objective with a Lagrange multiplier ``β >= 0``: on the sub-domain
  ``f >= f - β s z``, so a lower bound of the right-hand side over the relaxation is a lower bound of ``f``
  (β-CROWN). A domain whose clamped bounds cross (``l > u``) is empty; its bound is ``+inf``.

* Row mixtures (:class:`RowMix`): a specification row may be a convex combination ``Σ_r w_r b_r`` of base rows
  whose weights ``w`` (on the simplex over the row's group) are optimised with the rest. A lower bound of ``-Σ w_r m_r``
  below ``tolerance`` for some ``w >= 0`` proves ``min_r m_r < 0`` over the domain (``min_r m_r <= Σ w_r m_r / Σ w_r``),
  so every weight vector in the simplex is a valid certificate; the top-k property for k = 2 is such a minimum over
  pairs of margins (:mod:`mlrobust.bounds.alpha_margin`, :mod:`mlrobust.verify.bab`).

Parameters are kept per domain and per specification row (each row's bound is a separate optimisation), so the sum
of the bounds is the loss and rows never trade against each other. Every iteration's bound is sound for its
parameters; the best parameters per row are kept, and the reported bound is one more evaluation with those
parameters in float64, widened outward by ``FP_REL`` times the magnitude of its terms like CROWN, and never below
plain CROWN's (same intermediate bounds, CROWN's default parameters, ``β = 0``), which is evaluated in the same way.
Warm starts (a state from an earlier call: a similar box, or a parent domain for its children) are sound whatever
they hold; rows whose warm start is worse than CROWN's start from CROWN's.

Intermediate bounds come from the caller (CROWN's by default, or a parent domain's: sound for a sub-domain). With
``AlphaOptions.joint_intermediate`` ("on", or "auto" below a work cap) the last ReLU pre-activation layer that CROWN
refines is re-derived at every step of the same optimisation with slopes of its own, driven by the output objective
(:mod:`mlrobust.bounds.alpha_joint`; one domain). With ``AlphaOptions.optimize_intermediate`` that layer is instead
re-bounded first, separately, with its own optimised parameters (one row per unstable neuron and direction, in
chunks), and interval propagation then carries the tighter bounds to the later pre-activations.

Coefficients are dense ``(D, S, *tensor_shape)`` torch tensors (D domains, S rows); each op kind's backward rule is its
``alpha_step`` (in its module of :mod:`mlrobust.ops`), which reads the relaxations and parameters of ``_Context``.
The parameters themselves belong to the op kinds too: each declares its families (initialisation from CROWN's
choice, projection, learning rate) in its module, and :mod:`mlrobust.bounds.alpha_params` asks for them. A family
whose learning rate is 0 (the MaxPool thresholds by default) stays at CROWN's choice on the current bounds: an
optimisation does not take it from a warm start (the result's state still holds the values its bound was evaluated
at, so :func:`bounds_at` reproduces that bound).

API::

    AlphaOptions(iterations=20, lr_alpha=0.1, lr_beta=0.05, time_limit=None, optimize_intermediate=False,
                 early_stop=None, intermediate_chunk=256, threads=1, lr_pool=0.3, lr_tau=0.0,
                 loop_dtype="float32", lr_mix=0.1, joint_intermediate="off", device="cpu",
                 final_seconds=None)
    AlphaState(families)   # warm start (mlrobust.bounds.alpha_params); .family(name), .select(idx),
                           # .select_rows(idx), .concat_rows(states), .stack(states), .domains, .rows
    DomainBatch(lower, upper, pre_lower, pre_upper, splits)   # .size, .select(idx)
    AlphaResult(lower, crown_lower, state, iterations, seconds, domains, relu_coeffs, infeasible, stats,
                input_coeffs)
    initial_domain(network, lower, upper, intermediate=None) -> DomainBatch
    tighten_intermediate(network, bounds, options=None) -> (Bounds, rows)
    RowMix(base, groups, init=None)   # rows as optimised convex combinations of base rows
    alpha_bounds(network, domains, coeffs, *, options=AlphaOptions(), warm=None, stop=None, mix=None,
                 support=None) -> AlphaResult
    bounds_at(network, domains, coeffs, state, *, device="cpu", support=None) -> (D, S) lower bounds at given
        parameters (one pass)
    alpha_margin_bounds(network, lower, upper, target, *, options=AlphaOptions(), warm=None, intermediate=None)
        -> (margin_lower, margin_upper, state)
    margin_coeffs(num_classes, target) -> (rows e_c - e_target, classes)
    alpha_memory(network, domains, options=None, mix=None, support=None) -> AlphaMemory(per_domain, per_row)
        # bytes a domain adds to an alpha_bounds call (estimated from a probe's tensors); .per_child(rows)
    parameter_support(network, domains) -> {node: units}   # the units whose relaxation has parameters to choose

The top-k use of these bounds (only the margins a proof needs, pairs of margins for k = 2, warm starts across a
search) is :mod:`mlrobust.bounds.alpha_margin`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mlrobust.bounds.alpha_joint import JointLayer, joint_layer, pool_relax_of, relu_relax_of
from mlrobust.bounds.alpha_params import (
    MIX,
    AlphaState,
    adopt,
    default_params,
    fixed_families,
    param_groups,
    project,
    relayout,
)
from mlrobust.bounds.crown import (
    _needs_crown,
    crown,
)
from mlrobust.bounds.ibp import FP_REL, intersect_intervals, propagate_intervals
from mlrobust.bounds.margin import _interval_linear
from mlrobust.bounds.result import Bounds, check_box
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.torch_exec import check_device, torch_device, torch_threads
from mlrobust.ops.base import BETA
from mlrobust.ops.coeffs import rows as _rows
from mlrobust.ops.maxpool2d import POOL_THRESHOLDS
from mlrobust.ops.maxpool2d import AlphaPoolRelax as _PoolRelax
from mlrobust.ops.relu import AlphaReluRelax as _ReluRelax

Tensor = torch.Tensor
_F64 = torch.float64

JOINT_CHOICES = ("off", "on", "auto")
#: "auto" never runs a joint pass holding more than this many coefficients per step: a guard on memory and time per
#: step (on the shipped models the pass holds ~0.1 M; far larger rows would outgrow the 1 s per query). Whether a
#: pass below it runs is the caller's choice: the bound tier's JointPolicy (mlrobust.bounds.joint_policy) decides
#: it by measured gain per second on a sequence of queries, a lone call runs it.
JOINT_MAX_WORK = 1 << 22


# --- public data types ------------------------------------------------------------------------------------------
@dataclass
class AlphaOptions:
    """Budget and settings of one optimisation.

    ``iterations``: gradient steps (0 gives plain CROWN). ``time_limit``: seconds for the whole call (planned
    between steps: a step is not taken unless it, the pass that evaluates it and the final evaluation, each as long
    as the longest of its kind so far in the call, end before it; CROWN's pass and the final evaluation always
    run). ``early_stop``: stop once every row's bound exceeds it (e.g. 0 for a proof). ``optimize_intermediate``:
    also optimise the bounds of the last refined ReLU pre-activation layer (costly: one row per unstable neuron and
    direction, ``intermediate_chunk`` rows at a time). ``threads``: torch intra-op threads (None: leave as is).
    Learning rates (Adam) per kind: ReLU slopes ``lr_alpha``, MaxPool lower-line weights ``lr_pool``, MaxPool
    upper-line thresholds ``lr_tau`` (0: fixed at CROWN's), split multipliers ``lr_beta``, row-mixture weights
    ``lr_mix`` (:class:`RowMix`). ``joint_intermediate`` ("off", "on", "auto"): re-derive the bounds of the last
    refined ReLU pre-activation at every step of the same optimisation, with slopes of their own driven by the output
    objective (:mod:`mlrobust.bounds.alpha_joint`; one domain only); "auto" does so unless their pass
    holds more than ``JOINT_MAX_WORK`` coefficients (the bound tier decides "auto" per call with a
    :class:`~mlrobust.bounds.joint_policy.JointPolicy` where it has one). ``loop_dtype``
    ("float64" or "float32"): precision of the optimisation steps; CROWN's bound and the reported one are always
    evaluated in float64 with the outward widening. ``device`` ("cpu" or "cuda"): where the tensors of the passes
    live (results come back as numpy arrays either way; the optimised state stays on the device).
    ``seed_split_beta``: with a warm start, also try it with the multipliers of the splits it has none for (NaN,
    or no β for the node: the splits made since it was computed) seeded so that the split neuron keeps its warm
    start's lower line (:func:`mlrobust.ops.relu.seed_split_multipliers`), one more backward pass; each row keeps
    the better start.
    ``final_seconds``: what the call is expected to take after its last step (the final float64 evaluation, which
    also records the coefficients branching reads, and the results' conversion), kept back from ``time_limit``,
    e.g. as a caller measured it on earlier calls (the result's ``stats["after_steps_seconds"]``); never less than
    this call's CROWN pass (None: that pass).
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
    loop_dtype: str = "float32"
    lr_mix: float = 0.1
    joint_intermediate: str = "off"
    device: str = "cpu"
    seed_split_beta: bool = True
    final_seconds: float | None = None


@dataclass
class RowMix:
    """Specification rows as convex combinations of base rows, with optimised weights.

    ``base``: ``(R, C)`` coefficient rows; ``groups``: ``(S, R)`` bool, the base rows each specification row may
    mix; ``init``: ``(S, R)`` starting weights (default: uniform over each group). Row ``s``'s coefficients are
    ``Σ_r w[s, r] base[r]`` with ``w[s]`` in the simplex over ``groups[s]``; the final weights are the result's
    ``state.mix["rows"]`` ``(D, S, R)``, and :meth:`coefficients` turns weights into rows.
    """

    base: np.ndarray
    groups: np.ndarray
    init: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.base = np.atleast_2d(np.asarray(self.base, dtype=np.float64))
        self.groups = np.atleast_2d(np.asarray(self.groups, dtype=bool))
        if self.groups.shape[1] != self.base.shape[0] or not self.groups.any(axis=1).all():
            raise InputError(f"row mixture groups {self.groups.shape} must pick at least one of "
                             f"{self.base.shape[0]} base rows per row")
        if self.init is None:
            self.init = self.groups / self.groups.sum(axis=1, keepdims=True)
        self.init = np.where(self.groups, np.asarray(self.init, dtype=np.float64), 0.0)

    @property
    def rows(self) -> int:
        return int(self.groups.shape[0])

    def coefficients(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Rows ``(..., S, C)`` for weights ``(..., S, R)`` (default: the initial weights)."""
        w = self.init if weights is None else np.asarray(weights, dtype=np.float64)
        return w @ self.base

    def select(self, rows: np.ndarray) -> RowMix:
        """The mixture of specification rows ``rows`` only (same base rows)."""
        return RowMix(self.base, self.groups[rows], None if self.init is None else self.init[rows])


@dataclass
class DomainBatch:
    """D sub-domains: input boxes ``(D, *input_shape)``, bounds of every ReLU/MaxPool input tensor ``(D, *shape)``
    (keyed by tensor name) and the split of every ReLU node's neurons ``(D, *shape)`` int8 in {-1, 0, +1}
    (keyed by node name; -1 inactive ``z <= 0``, +1 active ``z >= 0``; a missing node has no splits), and per
    MaxPool node the window entries ``(D, P, K)`` a window split ruled out of attaining the window's maximum
    (``pool_excluded``, keyed by node name; a missing node has none: see
    :class:`~mlrobust.ops.maxpool2d.AlphaPoolRelax`).
    """

    lower: np.ndarray
    upper: np.ndarray
    pre_lower: dict[str, np.ndarray]
    pre_upper: dict[str, np.ndarray]
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    pool_excluded: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.lower.shape[0])

    def select(self, idx: np.ndarray | list[int]) -> DomainBatch:
        i = np.asarray(idx, dtype=np.int64)
        return DomainBatch(self.lower[i], self.upper[i], {k: v[i] for k, v in self.pre_lower.items()},
                           {k: v[i] for k, v in self.pre_upper.items()}, {k: v[i] for k, v in self.splits.items()},
                           {k: v[i] for k, v in self.pool_excluded.items()})


@dataclass
class AlphaResult:
    """Sound lower bounds ``(D, S)`` of ``coeffs[s] @ y`` per domain, and what branching needs.

    ``domains``: the bounds actually used (splits clamped; tighter where ``optimize_intermediate`` improved them).
    ``relu_coeffs``: per ReLU node (and MaxPool node), the coefficient ``(D, S, *shape)`` of its *output* in the
    final back-substitution (its sign says which relaxation line was used; the BaBSR score is built from it).
    ``infeasible``: ``(D,)`` domains whose split constraints contradict their bounds (bound ``+inf``).
    ``input_coeffs``: the coefficient of the input in the final bound (``lower = input_coeffs · x* + const`` at the box corner ``x*`` it picks; the
    per-dimension contribution ``|coeff| (u - l)`` ranks input splits).
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
    input_coeffs: np.ndarray | None = None  # (D, S, *input_shape): the final bound's linear function of the input

    @property
    def improvement(self) -> np.ndarray:
        """How much higher (tighter) than plain CROWN each bound is, ``(D, S)``."""
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(self.lower), self.lower - self.crown_lower, 0.0)


# --- relaxations built from the domains' bounds ---------------------------------------------------------------
@dataclass
class _Context:
    """Everything one backward pass reads: the network, the relaxations and the current parameters."""

    network: Network
    relax: dict[str, Any]  # per node with α parameters: its op's relaxation (``alpha_relax``)
    in_lower: Tensor  # (D, 1, *input_shape)
    in_upper: Tensor
    params: AlphaState
    capture: dict[str, Tensor] | None = None
    dtype: torch.dtype = _F64
    mix_base: Tensor | None = None  # (R, *shape of the bounded tensor): base rows of a RowMix
    mix_valid: Tensor | None = None  # (1, S, R) bool
    mix_init: Tensor | None = None  # (1, S, R)
    #: a backward pass that seeds the multipliers of new splits from the coefficients it meets (see
    #: ``ops.relu.seed_split_multipliers``), writing them into ``params``
    seed_beta: bool = False
    #: per node, the split neurons that pass may seed (None: every split neuron of the node); see ``_new_splits``
    seed_new: dict[str, Tensor | None] = field(default_factory=dict)
    #: per node whose parameters are kept compact, the units they are kept for (``OpRules.alpha_support``)
    support: dict[str, Tensor] = field(default_factory=dict)
    _consts: dict[int, tuple[object, Tensor]] = field(default_factory=dict)

    def const(self, arr: np.ndarray) -> Tensor:
        """A network constant as a tensor of this context's dtype (converted once per context)."""
        hit = self._consts.get(id(arr))
        if hit is not None and hit[0] is arr:
            return hit[1]
        value = torch.as_tensor(np.asarray(arr, dtype=np.float64)).to(self.dtype)
        self._consts[id(arr)] = (arr, value)  # the array is kept so that its id stays unique
        return value

    def cast(self, dtype: torch.dtype) -> _Context:
        """The same context with every floating-point tensor in ``dtype`` (the optimisation loop's precision)."""
        def c(x: Tensor) -> Tensor:
            return x.to(dtype) if x.is_floating_point() else x

        relax = {k: r.cast(dtype) for k, r in self.relax.items()}
        return _Context(self.network, relax, c(self.in_lower), c(self.in_upper), AlphaState(), None, dtype,
                        mix_base=None if self.mix_base is None else c(self.mix_base), mix_valid=self.mix_valid,
                        mix_init=self.mix_init, support=self.support)


def _plan(network: Network, start: str) -> list[Node]:
    """Nodes ``start`` depends on, in reverse topological order."""
    needed = {start}
    nodes = []
    for node in reversed(network.nodes):
        if node.output in needed:
            nodes.append(node)
            needed.update(node.inputs)
    return nodes


def _objective(ctx: _Context, a0: Tensor) -> Tensor:
    """The rows being bounded: ``a0``, or with a row mixture its current weights times the base rows."""
    w = ctx.params.family(MIX).get("rows")
    if ctx.mix_base is None or w is None:
        return a0
    base = ctx.mix_base
    return (w.to(base.dtype) @ base.reshape(base.shape[0], -1)).reshape(*w.shape[:2], *base.shape[1:])


def _backward(ctx: _Context, plan: list[Node], start: str, a0: Tensor) -> tuple[Tensor, Tensor]:
    """Lower bound (unwidened) and term magnitude, both ``(D, S)``, of ``a0 · start`` over each domain (``a0``
    replaced by the row mixture's current rows where there is one)."""
    a0 = _objective(ctx, a0)
    d, s = ctx.in_lower.shape[0], a0.shape[1]
    acc: dict[str, Tensor] = {start: a0.expand(d, *a0.shape[1:])}
    bias = torch.zeros((d, s), dtype=ctx.dtype)
    mag = torch.zeros((d, s), dtype=ctx.dtype)
    for node in plan:
        a = acc.pop(node.output, None)
        if a is None:
            continue
        step = node.op.alpha_step(ctx, node, a)
        if step.bias is not None and step.mag is not None:
            bias = bias + step.bias
            mag = mag + step.mag
        for tensor, a_in in step.terms:
            acc[tensor] = acc[tensor] + a_in if tensor in acc else a_in
    a_x = acc.pop(ctx.network.input_name, None)
    if a_x is not None and ctx.capture is not None:
        ctx.capture[ctx.network.input_name] = a_x.detach()
    if a_x is not None:
        lo, hi = ctx.in_lower, ctx.in_upper
        bias = bias + _rows(a_x * lo) + _rows(a_x.clamp(max=0.0) * (hi - lo))
        mag = mag + _rows(a_x.abs() * torch.maximum(lo.abs(), hi.abs()))
    return bias, mag


# --- optimisation -----------------------------------------------------------------------------------------------
class _Adam:
    """Adam on a loss to minimise, in a few lines (torch.optim's first use imports its compiler stack: ~1.5 s)."""

    def __init__(self, groups: list[tuple[list[Tensor], float]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = [p for ps, _ in groups for p in ps]
        self.lrs = [lr for ps, lr in groups for _ in ps]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0

    def step(self, loss: Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params)
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        with torch.no_grad():
            for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lrs):
                m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)


@dataclass
class _Optimised:
    lower: Tensor  # (D, S) sound (widened)
    crown_lower: Tensor  # (D, S) sound (widened)
    state: AlphaState
    iterations: int
    joint: str = "off"  # whether the intermediate bounds were optimised jointly ("on", "off" or why skipped)
    loop_seconds: float = 0.0  # seconds of the optimisation steps (the rest of the call is its fixed passes)
    final_seconds: float = 0.0  # seconds of the final evaluation (its first pass)
    fixed_passes: int = 2  # passes besides the steps': CROWN's, the warm start's, the final one and its repeat
    loop_end: float = 0.0  # time.perf_counter() when the steps ended


def _new_splits(params: AlphaState, warm: AlphaState) -> dict[str, Tensor | None]:
    """Per ReLU node with multipliers, where the warm start has none (NaN, or no β for the node at all: None),
    i.e. the splits made since it was computed: those get seeded multipliers (``ops.relu.seed_split_multipliers``);
    an older split keeps the multiplier its optimisation chose, 0 included."""
    theirs = warm.family(BETA.name)
    out: dict[str, Tensor | None] = {}
    for name, v in params.family(BETA.name).items():
        w = theirs.get(name)
        if w is not None:
            w = relayout(w, warm.support.get(name), v, params.support.get(name))
        out[name] = None if w is None or w.shape[1:] != v.shape[1:] else torch.isnan(w).expand_as(v)
    return out


def _take_rows(state: AlphaState, other: AlphaState, rows: Tensor) -> None:
    """``state`` takes ``other``'s parameters on the (domain, row) pairs where ``rows`` ``(D, S)`` is true, in place."""
    for mine, theirs in zip(state.groups(), other.groups()):
        for k, v in mine.items():
            mine[k] = torch.where(rows.reshape(*rows.shape, *([1] * (v.dim() - 2))), theirs[k], v)


def _sound(bound: Tensor, mag: Tensor) -> Tensor:
    return bound - FP_REL * mag


def _install_joint(ctx: _Context, joint: JointLayer, lo: Tensor, hi: Tensor, lr_tau: float) -> None:
    """Rebuild the relaxations that read the jointly optimised bounds (``lo``/``hi`` of ``joint.tensor``, flat) in
    ``ctx``; with a fixed MaxPool threshold (``lr_tau`` 0) the threshold follows CROWN's chord on the new bounds."""
    carried = joint.carried(lo, hi)
    for node in ctx.network.nodes:
        x = node.inputs[0] if node.inputs else None
        old = ctx.relax.get(node.name)
        if old is None or x not in carried:
            continue
        lo_x, hi_x = carried[x]
        # the joint pass follows ReLU and Reshape only (alpha_joint), so only these relaxations read its bounds
        if isinstance(old, _ReluRelax):
            ctx.relax[node.name] = relu_relax_of(lo_x, hi_x, old, ctx.dtype)
        elif isinstance(old, _PoolRelax):
            ctx.relax[node.name], theta = pool_relax_of(lo_x, hi_x, old, ctx.dtype)
            kept = ctx.params.family(POOL_THRESHOLDS.name).get(node.name)
            if lr_tau <= 0 and kept is not None:
                ctx.params.put(POOL_THRESHOLDS.name, node.name, theta.to(kept.dtype).expand_as(kept).contiguous())


def _optimise(ctx: _Context, plan: list[Node], start: str, a0: Tensor, options: AlphaOptions,
              warm: AlphaState | None, deadline: float | None, capture: dict[str, Tensor] | None = None,
              stop: Callable[[np.ndarray], bool] | None = None, joint: JointLayer | None = None) -> _Optimised:
    """Projected gradient ascent on the bounds of the rows of ``a0`` (``(D or 1, S, *shape of start)``); with
    ``joint`` the bounds of its tensor are re-derived at every step (:mod:`mlrobust.bounds.alpha_joint`)."""
    d, s = ctx.in_lower.shape[0], a0.shape[1]
    init = default_params(ctx, plan, d, s)
    ctx.params = init
    pass_start = time.perf_counter()
    with torch.no_grad():
        crown_lower = _sound(*_backward(ctx, plan, start, a0))
    # the final evaluation below is a pass like this one (float64, no gradient; it also records coefficients, which
    # the caller may know to cost more): it is owed whenever the steps stop
    final_seconds = max(time.perf_counter() - pass_start, options.final_seconds or 0.0)
    fixed = fixed_families(ctx.network, options)
    params = adopt(default_params(ctx, plan, d, s), warm, ctx, fixed)
    best = crown_lower.clone()
    seeded_pass = False
    if warm is not None:
        # A warm start from another box can be worse than CROWN's parameters: start such rows from CROWN's.
        ctx.params = params
        pass_start = time.perf_counter()
        with torch.no_grad():
            warm_lower = _sound(*_backward(ctx, plan, start, a0))
        final_seconds = max(final_seconds, time.perf_counter() - pass_start)
        seeded_pass = options.seed_split_beta and bool(params.family(BETA.name))
        if seeded_pass:
            # the same warm start with the new splits' multipliers seeded from the pass's coefficients (the
            # parent's line for the split neuron): kept per row where it bounds better
            seeded = params.map(lambda v: v.clone())
            ctx.params, ctx.seed_beta = seeded, True
            ctx.seed_new = _new_splits(params, warm)
            pass_start = time.perf_counter()
            with torch.no_grad():
                seeded_lower = _sound(*_backward(ctx, plan, start, a0))
            ctx.seed_beta, ctx.seed_new = False, {}
            _take_rows(params, seeded, seeded_lower > warm_lower)
            warm_lower = torch.maximum(warm_lower, seeded_lower)
            final_seconds = max(final_seconds, time.perf_counter() - pass_start)
            del seeded  # a copy of every parameter: not kept alive through the steps (see alpha_memory)
        _take_rows(params, init, warm_lower < crown_lower)
        best = torch.maximum(best, warm_lower)
    # CROWN's, the warm start's (and its seeded variant's), the final evaluation
    fixed_passes = 2 if warm is None else 3 + int(seeded_pass)
    start_state, start_best = params.map(lambda v: v.clone()), best.clone()  # float64, evaluated soundly
    best_state = params.map(lambda v: v.clone())
    loop = ctx
    if options.loop_dtype != "float64" and options.iterations > 0:
        loop = ctx.cast(getattr(torch, options.loop_dtype))
        params = params.map(lambda v: v.to(loop.dtype))
    a_loop = a0.to(loop.dtype)
    groups = param_groups(params, ctx.network, options)
    joint_note = "off" if joint is None else "on"
    if joint is not None and options.joint_intermediate == "auto" and joint.work > JOINT_MAX_WORK:
        joint_note = f"skipped: {joint.work} coefficients per step"
        joint = None
    if joint is not None and options.iterations > 0:
        joint.param_dtype = loop.dtype
        joint.bounds()  # creates the intermediate pass's slopes (CROWN's) before the optimiser takes them
        if options.lr_alpha > 0 and joint.parameters():
            groups.append((joint.parameters(), float(options.lr_alpha)))
    iterations = 0
    loop_start = time.perf_counter()
    if options.iterations > 0 and groups:
        for ps, _ in groups:
            for v in ps:
                v.requires_grad_(True)
        opt = _Adam(groups)
        loop.params = params
        joint_best, joint_snapshot = float("-inf"), None
        # A step is worth taking only with the pass that evaluates its parameters after it, and the final float64
        # evaluation is owed whenever the loop stops: a step is not taken unless the step, that pass and the final
        # evaluation, each as long as the longest of its kind so far in this call, end before the deadline. Before
        # the first step is measured it is taken as two passes (reverse-mode differentiation of a pass costs about
        # two of it); before the first pass, as long as CROWN's.
        pass_seconds, step_seconds = final_seconds, None
        for it in range(options.iterations + 1):
            if deadline is not None and it == 0 and (
                    time.perf_counter() + 4.0 * pass_seconds + final_seconds > deadline):
                break  # no step could follow this pass: CROWN's (or the warm start's) parameters are the best
            if joint is not None:
                _install_joint(loop, joint, *joint.bounds(loop.dtype), options.lr_tau)
            pass_start = time.perf_counter()
            bound, mag = _backward(loop, plan, start, a_loop)
            pass_seconds = (time.perf_counter() - pass_start) if it == 0 else max(
                pass_seconds, time.perf_counter() - pass_start)
            with torch.no_grad():
                value = _sound(bound, mag)
                if joint is not None and float(value.sum()) > joint_best:
                    joint_best, joint_snapshot = float(value.sum()), joint.snapshot()
                better = value > best
                best = torch.where(better, value, best)
                _take_rows(best_state, params, better)  # no graph kept: under no_grad
            if it == options.iterations:
                break
            if options.early_stop is not None and bool((best > options.early_stop).all()):
                break
            if stop is not None and stop(best.cpu().numpy()):
                break
            step_estimate = 2.0 * pass_seconds if step_seconds is None else step_seconds
            if deadline is not None and (
                    time.perf_counter() + step_estimate + pass_seconds + final_seconds > deadline):
                break
            step_start = time.perf_counter()
            opt.step(-bound.sum())
            project(params, ctx)
            if joint is not None:
                joint.project()
            iterations += 1
            took = time.perf_counter() - step_start
            step_seconds = took if step_seconds is None else max(step_seconds, took)
        if joint is not None:
            with torch.no_grad():  # the sound (float64) bounds of the last and of the best step's slopes are kept
                joint.bounds()
                if joint_snapshot is not None:
                    joint.restore(joint_snapshot)
                    joint.bounds()
    loop_end = time.perf_counter()
    loop_seconds = loop_end - loop_start
    best_state = best_state.map(lambda v: v.to(_F64))
    # Parameters chosen in float32 sit in their ranges only up to float32 rounding (a pool weight vector may sum to
    # 1 + 1e-7, a slope to 1 + 6e-8), and a lower line outside its family is not sound: project again in float64.
    project(best_state, ctx)
    ctx.params = best_state
    ctx.capture = capture
    with torch.no_grad():
        if joint is not None and joint.best_lo is not None and joint.best_hi is not None:
            # the certificate: the kept (elementwise best, each sound) intermediate bounds, evaluated in float64
            _install_joint(ctx, joint, joint.best_lo, joint.best_hi, options.lr_tau)
        pass_start = time.perf_counter()
        final = _sound(*_backward(ctx, plan, start, a0))
        final_took = time.perf_counter() - pass_start
        final_seconds = max(final_seconds, final_took)
        # Steps in float32 pick the best parameters by float32 values: where that choice is worse in float64 than
        # the start, keep the start (evaluated above) and evaluate once more, so the result never drops below it.
        worse = final < start_best
        if bool(worse.any()):
            _take_rows(best_state, start_state, worse)
            if deadline is None or time.perf_counter() + final_seconds <= deadline:
                final = _sound(*_backward(ctx, plan, start, a0))
                fixed_passes += 1
            else:
                # no time for that evaluation: those rows take the start's bound, evaluated soundly above at the
                # parameters they now hold (only the captured coefficients, a branching hint, are the steps')
                final = torch.where(worse, start_best, final)
    ctx.capture = None
    lower = torch.maximum(final, crown_lower)
    if joint is not None:  # the start's bound (frozen intermediate bounds) was evaluated soundly too
        lower = torch.maximum(lower, start_best)
    return _Optimised(lower, crown_lower, best_state, iterations, joint_note, loop_seconds, final_took,
                      fixed_passes, loop_end)


# --- domains ----------------------------------------------------------------------------------------------------
def _pre_tensors(network: Network) -> list[str]:
    """Tensors whose bounds a relaxation needs: the inputs of ReLU and MaxPool nodes, in order."""
    out: list[str] = []
    for node in network.nodes:
        if node.op.activation and node.inputs[0] not in out:
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
    splits = {n.name: np.zeros((1, *n.out_shape), dtype=np.int8) for n in network.nodes if n.op.splittable}
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
    names = {n.name: n for n in network.nodes if n.op.splittable}
    for k, v in domains.splits.items():
        if k not in names:
            raise InputError(f"splits name {k!r}, which is not a ReLU node")
        if v.shape != (d, *names[k].out_shape):
            raise InputError(f"splits of {k!r} have shape {v.shape}; expected {(d, *names[k].out_shape)}")


def _clamped(network: Network, domains: DomainBatch) -> tuple[DomainBatch, np.ndarray]:
    """The domains with split neurons' bounds clamped, and which domains are empty (clamped bounds cross).

    Where a split activation's output is itself a relaxed tensor (the input of a MaxPool), its bounds are
    intersected with the activation's interval image of the clamped input: an inactive ReLU's output is exactly 0, and
    a pool window relaxed with the parent's ``[0, u]`` for it keeps the parent's looseness whatever the split (on the
    reference CNNs half the gap of the worst open domain; α,β-CROWN likewise derives ReLU outputs' bounds by
    interval propagation from the split pre-activation bounds)."""
    lo = {k: v.astype(np.float64, copy=True) for k, v in domains.pre_lower.items()}
    hi = {k: v.astype(np.float64, copy=True) for k, v in domains.pre_upper.items()}
    for node in network.nodes:
        split = domains.splits.get(node.name)
        if split is None or not node.op.splittable:
            continue
        t = node.inputs[0]
        lo[t] = np.where(split > 0, np.maximum(lo[t], 0.0), lo[t])
        hi[t] = np.where(split < 0, np.minimum(hi[t], 0.0), hi[t])
        out = node.output
        if out in lo and node.op.elementwise and bool(split.any()):
            # the activation's interval rule is elementwise, so it takes the whole (D, *shape) batch at once
            img_lo, img_hi = node.op.interval(node, [lo[t]], [hi[t]])
            lo[out] = np.maximum(lo[out], img_lo)
            hi[out] = np.minimum(hi[out], img_hi)
    _restricted_windows(network, domains, lo, hi)
    empty = np.zeros(domains.size, dtype=bool)
    for t, v in lo.items():
        empty |= (v > hi[t]).reshape(domains.size, -1).any(axis=1)
    for t, v in lo.items():  # an empty domain's numbers only need to be harmless: its bound is replaced by +inf
        lo[t] = np.where(empty.reshape(-1, *[1] * (v.ndim - 1)), np.minimum(v, hi[t]), v)
    return replace(domains, pre_lower=lo, pre_upper=hi, splits=dict(domains.splits)), empty


def _restricted_windows(network: Network, domains: DomainBatch, lo: dict[str, np.ndarray],
                        hi: dict[str, np.ndarray]) -> None:
    """Raise, in place, the lower bound of a MaxPool input that a domain's window split made its window's maximum
    (:meth:`~mlrobust.ops.maxpool2d.MaxPool2d.restricted_lower`) and, where that input is a ReLU's output, of the
    ReLU's input as well (``relu(z) >= c > 0`` gives ``z >= c``: the neuron is active on the domain)."""
    producer = {n.output: n for n in network.nodes}
    for node in network.nodes:
        excluded = domains.pool_excluded.get(node.name)
        t = node.inputs[0] if node.inputs else None
        if excluded is None or t not in lo:
            continue
        lo[t] = node.op.restricted_lower(network, node, lo[t], hi[t], excluded)
        relu = producer.get(t)
        if relu is not None and relu.kind == "Relu" and relu.inputs[0] in lo:
            z = relu.inputs[0]
            lo[z] = np.where(lo[t] > 0, np.maximum(lo[z], lo[t]), lo[z])


def _context(network: Network, domains: DomainBatch) -> _Context:
    relax = {node.name: node.op.alpha_relax(network, node, domains) for node in network.nodes
             if node.op.alpha_families}
    return _Context(network, relax, torch.as_tensor(domains.lower, dtype=_F64)[:, None],
                    torch.as_tensor(domains.upper, dtype=_F64)[:, None], AlphaState())


def parameter_support(network: Network, domains: DomainBatch) -> dict[str, Tensor]:
    """Per node whose op keeps its α/β parameters compact, the units its relaxation depends on in some domain of
    ``domains`` (:meth:`~mlrobust.ops.base.OpRules.alpha_support`; from the bounds as given, before any split
    clamps them, so a split neuron is among them with its multiplier), on the CPU.

    For the branch and bound, taken at the root: its sub-domains inherit the root's intermediate bounds (tightened
    at most), so their unstable neurons, split ones included, and their open pool windows are among these. A unit
    off the support that a domain does find unstable is sound either way: it takes CROWN's line, not an optimised
    one (and a split off it, β = 0)."""
    ctx = _context(network, domains)
    out: dict[str, Tensor] = {}
    for node in network.nodes:
        if node.op.alpha_families:
            idx = node.op.alpha_support(ctx, node)
            if idx is not None:
                out[node.name] = idx.to(torch.int64).cpu()
    return out


def _on_device(support: dict[str, Tensor]) -> dict[str, Tensor]:
    """``support``'s index tensors on the current default device (the passes' tensors are there)."""
    where = torch.empty(0).device
    return {k: v.to(where) for k, v in support.items()}


def _propagate_intervals(network: Network, domains: DomainBatch, after: str) -> DomainBatch:
    """Intersect the pre-activation bounds that come after tensor ``after`` with interval propagation, per domain."""
    order = network.tensors
    later = [t for t in domains.pre_lower if order.index(t) > order.index(after)]
    lo_out = {k: v.copy() for k, v in domains.pre_lower.items()}
    hi_out = {k: v.copy() for k, v in domains.pre_upper.items()}
    for i in range(domains.size):  # the ops' interval rules take one sample's box
        lows = {network.input_name: domains.lower[i]}
        ups = {network.input_name: domains.upper[i]}
        propagate_intervals(network, lows, ups, {t: v[i] for t, v in domains.pre_lower.items()},
                            {t: v[i] for t, v in domains.pre_upper.items()})
        for t in later:
            lo_out[t][i], hi_out[t][i] = lows[t], ups[t]
    return replace(domains, pre_lower=lo_out, pre_upper=hi_out)


def _last_refined_relu_input(network: Network) -> str | None:
    producer = {n.output: n for n in network.nodes}
    found = None
    for node in network.nodes:
        if node.op.splittable and _needs_crown(network, producer, node.inputs[0]):
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
        val = res.lower.cpu().numpy()
        new_lo[:, sel] = np.maximum(new_lo[:, sel], val[:, :r])
        new_hi[:, sel] = np.minimum(new_hi[:, sel], -val[:, r:])
        done += 2 * r
    # Both bounds are sound; a crossing could only come from rounding: keep the old ones there.
    ok = new_lo <= new_hi
    new_lo = np.where(ok, new_lo, lo.reshape(d, -1))
    new_hi = np.where(ok, new_hi, hi.reshape(d, -1))
    pre_lo, pre_hi = dict(domains.pre_lower), dict(domains.pre_upper)
    pre_lo[t], pre_hi[t] = new_lo.reshape(lo.shape), new_hi.reshape(hi.shape)
    tightened = replace(domains, pre_lower=pre_lo, pre_upper=pre_hi)
    return _propagate_intervals(network, tightened, t), done


# --- public entry points ----------------------------------------------------------------------------------------
def _output_rows(network: Network, coeffs: np.ndarray, d: int) -> Tensor:
    """``coeffs`` (``(S, C)`` for every domain or ``(D, S, C)`` per domain) checked and shaped as the backward
    pass's starting coefficients on the output, ``(1 or D, S, *output shape)``."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    if coeffs.ndim == 2:
        coeffs = coeffs[None]
    c = network.num_classes
    if coeffs.ndim != 3 or coeffs.shape[2] != c or coeffs.shape[0] not in (1, d):
        raise InputError(f"coeffs must have shape (S, {c}) or ({d}, S, {c}); got {coeffs.shape}")
    return torch.as_tensor(coeffs).reshape(coeffs.shape[0], coeffs.shape[1], *network.shape_of(network.output_name))


def alpha_bounds(network: Network, domains: DomainBatch, coeffs: np.ndarray, *, options: AlphaOptions | None = None,
                 warm: AlphaState | None = None, stop: Callable[[np.ndarray], bool] | None = None,
                 mix: RowMix | None = None, support: dict[str, Tensor] | None = None) -> AlphaResult:
    """Sound lower bounds of ``coeffs[s] @ y`` (``y`` the flattened output) over each domain, α/β-optimised.

    With ``mix`` the rows are its convex combinations, weights optimised per domain (``coeffs`` is then ignored and
    may be None; the weights behind each bound are ``result.state.mix["rows"]``).
    ``coeffs``: ``(S, C)`` for every domain or ``(D, S, C)`` per domain. ``warm``: parameters of an earlier call
    (same S; D equal or 1), e.g. ``result.state.select(parent_of_each_child)``. Never looser than plain CROWN on
    the same intermediate bounds (``crown_lower``). ``stop(best)`` is asked after every step with the best sound
    bounds so far ``(D, S)`` and ends the optimisation when it returns True (e.g. once a property is proven).
    ``support``: keep the parameters of those nodes compact over those units (:func:`parameter_support`; the
    result's state is in that layout, a warm start in another one is carried over unit by unit); the bounds are
    those of the dense layout whose other units hold CROWN's values. Ignored with a joint intermediate
    optimisation (which rebuilds the relaxations its support was taken from).
    """
    options = options or AlphaOptions()
    start_time = time.perf_counter()
    deadline = None if options.time_limit is None else start_time + float(options.time_limit)
    if options.loop_dtype not in ("float64", "float32"):
        raise InputError(f"loop_dtype must be float64 or float32, not {options.loop_dtype!r}")
    if options.joint_intermediate not in JOINT_CHOICES:
        raise InputError(f"joint_intermediate must be one of {', '.join(JOINT_CHOICES)}, not "
                         f"{options.joint_intermediate!r}")
    check_device(options.device)
    _check_domains(network, domains)
    d = domains.size
    if mix is not None:
        if mix.base.shape[1] != network.num_classes:
            raise InputError(f"row mixture base rows must have {network.num_classes} columns; got {mix.base.shape}")
        coeffs = mix.coefficients()
    a0 = _output_rows(network, coeffs, d)
    with torch_threads(options.threads), torch_device(options.device):
        used, empty = _clamped(network, domains)
        rows_intermediate = 0
        if options.optimize_intermediate:
            used, rows_intermediate = _optimise_intermediate(network, used, options, deadline)
        ctx = _context(network, used)
        out = network.output_name
        if mix is not None:
            ctx.mix_base = torch.as_tensor(mix.base).reshape(mix.base.shape[0], *network.shape_of(out))
            ctx.mix_valid = torch.as_tensor(mix.groups)[None]
            ctx.mix_init = torch.as_tensor(mix.init)[None]
        plan = _plan(network, out)
        capture: dict[str, Tensor] = {}
        joint = (joint_layer(network, used) if options.joint_intermediate != "off" and options.iterations > 0
                 else None)
        if support and joint is None:
            ctx.support = _on_device(support)
        res = _optimise(ctx, plan, out, a0, options, warm, deadline, capture, stop, joint)
        stats: dict = {"intermediate_rows": rows_intermediate, "joint": res.joint, "loop_seconds": res.loop_seconds,
                       "final_seconds": res.final_seconds, "fixed_passes": res.fixed_passes}
        if joint is not None and res.joint == "on":
            stats.update(joint_rows=joint.rows, joint_shared=joint.shared, joint_steps=joint.steps)
            used = _with_joint_bounds(used, joint)
    lower = res.lower.cpu().numpy().copy()
    crown_lower = res.crown_lower.cpu().numpy().copy()
    lower[empty] = np.inf
    crown_lower[empty] = np.inf
    end_time = time.perf_counter()
    seconds = end_time - start_time
    # what the call took after its last step (the final evaluation, results to numpy): owed whenever steps stop
    stats["after_steps_seconds"] = end_time - res.loop_end
    a_x = capture.pop(network.input_name, None)
    return AlphaResult(lower, crown_lower, res.state, res.iterations, seconds, used,
                       {k: v.cpu().numpy() for k, v in capture.items()}, empty, stats,
                       None if a_x is None else a_x.cpu().numpy())


def _with_joint_bounds(domains: DomainBatch, joint: JointLayer) -> DomainBatch:
    """The (one) domain with the joint optimisation's kept bounds for its tensor and the tensors carried from it."""
    if joint.best_lo is None or joint.best_hi is None:
        return domains
    pre_lo, pre_hi = dict(domains.pre_lower), dict(domains.pre_upper)
    with torch.no_grad():
        for t, (lo, hi) in joint.carried(joint.best_lo, joint.best_hi).items():
            if t in pre_lo:
                pre_lo[t], pre_hi[t] = lo.cpu().numpy()[None].copy(), hi.cpu().numpy()[None].copy()
    return replace(domains, pre_lower=pre_lo, pre_upper=pre_hi)


def bounds_at(network: Network, domains: DomainBatch, coeffs: np.ndarray, state: AlphaState | None, *,
              device: str = "cpu", support: dict[str, Tensor] | None = None) -> np.ndarray:
    """Sound lower bounds ``(D, S)`` of ``coeffs`` (``(S, C)`` or ``(D, S, C)``) at given parameters (projected into
    range; missing ones are CROWN's): one backward pass, no optimisation and no comparison with CROWN — the cheap
    estimate branching heuristics need (``+inf`` for an empty domain). ``device``: as ``AlphaOptions.device``;
    ``support``: as :func:`alpha_bounds`'s (the same bounds either way)."""
    check_device(device)
    _check_domains(network, domains)
    a0 = _output_rows(network, coeffs, domains.size)
    with torch_threads(1), torch_device(device), torch.no_grad():
        used, empty = _clamped(network, domains)
        ctx = _context(network, used)
        ctx.support = _on_device(support or {})
        out = network.output_name
        plan = _plan(network, out)
        ctx.params = adopt(default_params(ctx, plan, domains.size, a0.shape[1]), state, ctx)
        lower = _sound(*_backward(ctx, plan, out, a0)).cpu().numpy().copy()
    lower[empty] = np.inf
    return lower


def tighten_intermediate(network: Network, bounds: Bounds, options: AlphaOptions | None = None) -> tuple[Bounds, int]:
    """``bounds`` with the last refined ReLU pre-activation layer re-bounded by α-CROWN and interval propagation
    carrying that to every later tensor (all intersected with ``bounds``); and the rows optimised."""
    options = options or AlphaOptions()
    deadline = None if options.time_limit is None else time.perf_counter() + float(options.time_limit)
    start = time.perf_counter()
    dom = initial_domain(network, bounds.input_lower, bounds.input_upper, bounds)
    check_device(options.device)
    with torch_threads(options.threads), torch_device(options.device):
        dom, rows = _optimise_intermediate(network, dom, options, deadline)
    lows, ups = dict(bounds.lower), dict(bounds.upper)
    for t in dom.pre_lower:
        lows[t] = np.maximum(lows[t], dom.pre_lower[t][0])
        ups[t] = np.minimum(ups[t], dom.pre_upper[t][0])
    lows, ups = intersect_intervals(network, lows, ups)  # every later tensor gains from the tightened layer
    info = dict(bounds.info, alpha_intermediate_rows=rows)
    return Bounds(network, lows, ups, bounds.method + "+alpha", bounds.seconds + time.perf_counter() - start,
                  info), rows


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
    lower, upper = check_box(network, lower, upper)
    if intermediate is None:
        intermediate = crown(network, lower, upper)
    domains = initial_domain(network, lower, upper, intermediate)
    rows, classes = margin_coeffs(n, target)
    res = alpha_bounds(network, domains, np.concatenate([rows, -rows]), options=options, warm=warm)
    m = classes.size
    # also never looser than the interval of the margins from the output bounds (as margin_bounds intersects)
    out = network.output_name
    i_lo, i_hi = _interval_linear(rows, intermediate.lower[out].reshape(-1), intermediate.upper[out].reshape(-1))
    lo = np.zeros(n)
    hi = np.zeros(n)
    lo[classes] = np.maximum(res.lower[0, :m], i_lo)
    hi[classes] = np.minimum(-res.lower[0, m:], i_hi)
    return lo, hi, res.state


# --- memory -----------------------------------------------------------------------------------------------------
#: Copies of every α/β parameter one :func:`alpha_bounds` call holds at once, per precision (see :func:`_optimise`):
#: in float64 CROWN's start (``init``), the adopted start, its clone (``start_state``), the best so far
#: (``best_state``) and the stacked warm start; in the loop's dtype the stepped values, Adam's two moments, their
#: gradient and the ``torch.where`` that updates the best.
PARAM_COPIES_F64 = 5
PARAM_COPIES_LOOP = 5


@dataclass(frozen=True)
class AlphaMemory:
    """Estimated bytes one :func:`alpha_bounds` call allocates: ``per_domain`` for each domain of the batch
    (whatever the rows) and ``per_row`` for each (domain, row); :meth:`per_child` for a batch of ``rows`` rows."""

    per_domain: int
    per_row: int

    def per_child(self, rows: int) -> int:
        return self.per_domain + rows * self.per_row


def _tensor_bytes(obj: object) -> int:
    """Bytes of the tensors held as attributes of ``obj`` (a relaxation)."""
    return sum(v.numel() * v.element_size() for v in vars(obj).values() if isinstance(v, Tensor))


def alpha_memory(network: Network, domains: DomainBatch, options: AlphaOptions | None = None,
                 mix: RowMix | None = None, support: dict[str, Tensor] | None = None) -> AlphaMemory:
    """The memory one domain adds to an :func:`alpha_bounds` call over ``domains``, from the tensors the call
    allocates, measured on a probe of one of them.

    Per row: every parameter's numbers (CROWN's values for the probe, the node's slope count again as β for every
    ReLU node split in some domain) times the copies the optimiser keeps (``PARAM_COPIES_*``), plus the tensors
    autograd saves in one backward pass (counted by ``saved_tensors_hooks`` at one and two rows: the difference is
    per row) and twice the largest of them (the gradient flowing back). Per domain: the rest of that pass (the
    relaxations it reads), the relaxations themselves in float64 and the loop's dtype, and the pre-activation
    bounds (the batch, its clamped copy, both float64). An estimate of what is alive together, not an allocator
    count; the joint intermediate optimisation (one domain only) and ``optimize_intermediate`` are not included.
    ``support``: the call's compact layout (:func:`alpha_bounds`); its parameters count only its units.
    """
    options = options or AlphaOptions()
    loop_dtype = getattr(torch, options.loop_dtype)
    loop_bytes = torch.empty((), dtype=loop_dtype).element_size()
    split_nodes = {k for k, v in domains.splits.items() if v.any()}
    # the probe: the domain split on the most nodes, so that its β families stand for the batch's
    counts = np.zeros(domains.size, dtype=np.int64)
    for k in split_nodes:
        counts += domains.splits[k].reshape(domains.size, -1).any(axis=1)
    probe = domains.select([int(np.argmax(counts))])
    out = network.output_name
    with torch_threads(options.threads), torch_device(options.device):
        used, _ = _clamped(network, probe)
        ctx = _context(network, used)
        ctx.support = _on_device(support or {})
        if mix is not None:
            ctx.mix_base = torch.as_tensor(mix.base).reshape(mix.base.shape[0], *network.shape_of(out))
            ctx.mix_valid = torch.as_tensor(mix.groups[:1])[None]
            ctx.mix_init = torch.as_tensor(mix.init[:1])[None]
        plan = _plan(network, out)
        params = default_params(ctx, plan, 1, 1)
        numbers = sum(v.numel() for _, _, v in params.items())
        slopes = params.family("alpha")
        numbers += sum(slopes[k].numel() for k in split_nodes if k in slopes and k not in params.family("beta"))
        loop = ctx.cast(loop_dtype)
        saved: list[int] = []
        largest = 0
        for rows in (1, 2):
            loop.params = default_params(ctx, plan, 1, rows).map(lambda v: v.to(loop_dtype).requires_grad_(True))
            if mix is not None and loop.mix_init is not None:
                loop.mix_valid = ctx.mix_valid.expand(1, rows, -1)
                loop.params.put(MIX, "rows", ctx.mix_init.to(loop_dtype).expand(1, rows, -1).clone()
                                .requires_grad_(True))
            a0 = torch.zeros((1, rows, *network.shape_of(out)), dtype=loop_dtype)
            storages: dict[int, int] = {}

            def pack(t: Tensor, storages: dict[int, int] = storages) -> Tensor:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                _backward(loop, plan, out, a0)
            saved.append(sum(storages.values()))
            largest = max(largest, max(storages.values(), default=0) // rows)
    per_row_graph = max(saved[1] - saved[0], 0)
    per_row = numbers * (8 * PARAM_COPIES_F64 + loop_bytes * PARAM_COPIES_LOOP) + per_row_graph + 2 * largest
    relax = sum(_tensor_bytes(r) for r in ctx.relax.values())
    pre = sum(v[0].size for v in probe.pre_lower.values())
    per_domain = max(saved[0] - per_row_graph, 0) + relax * (1 + loop_bytes / 8) + 4 * 8 * pre
    return AlphaMemory(int(per_domain), int(per_row))
