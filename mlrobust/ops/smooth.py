"""Sigmoid and Tanh: the S-shaped activations, one family of rules with the two as instances.

Both functions ``f`` are increasing, convex for ``x <= 0`` and concave for ``x >= 0`` (inflection at 0), which is
all the relaxations use. Over a pre-activation interval ``[l, u]`` (auto_LiRPA's construction):

* ``u <= 0`` (convex): upper line the chord through ``(l, f(l))`` and ``(u, f(u))``; lower line the tangent at any
  ``d ∈ [l, u]`` (CROWN: the midpoint).
* ``l >= 0`` (concave): lower line the chord; upper line the tangent at any ``d ∈ [l, u]``.
* ``l < 0 < u`` (crossing), chord slope ``k``: the chord is an upper line iff ``k <= f'(u)``, else the upper line is
  the tangent at any ``d ∈ [d*, u]``, where the tangent at ``d* ∈ [0, u]`` passes through ``(l, f(l))`` (found by
  bisection on the side where it is sound: the tangent's value at ``l`` increases with ``d``). Mirrored for the
  lower line: the chord iff ``k <= f'(l)``, else the tangent at any ``d ∈ [l, d_*]``, ``d_* ∈ [l, 0]`` through
  ``(u, f(u))``. CROWN takes ``d*`` and ``d_*``.

α-CROWN optimises the tangent points: one parameter ``t ∈ [0, 1]`` per line maps onto its sound range
(``d = d0 + t (d1 - d0)``), so every projected value is a sound line. Every line is widened outward by
``FP_REL (1 + (u - l) + f'max · max(|l|, |u|))``, which covers the float64 rounding of ``f``, ``f'`` and the line.

The MILP gets a sound outer approximation (no binaries): a continuous column per neuron, bounded by
``[f(l), f(u)]``, above three tangents of the lower family (or its fixed chord) and below three of the upper one. A MILP bound below zero is then
a proof; a MILP point is only a candidate, which the verifier re-runs through the network before it reports it.
Branch and bound splits a pre-activation at the inflection point 0 (``splittable``): each side is convex or concave,
where the lines are much tighter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlrobust.ops.base import BETA, FP_REL, CrownStep, OpRules, ParamFamily

if TYPE_CHECKING:
    import torch

    from mlrobust.ir.graph import Network, Node

#: Bisection steps for the tangent points of crossing intervals (each halves an interval of at most ``u - l``).
BISECTION_STEPS = 60
#: Widening of function values (interval image, MILP column bounds): float64 ``tanh`` errs by about 1e-16.
VALUE_EPS = 1e-12
#: Tangent points used by the MILP's outer approximation, as fractions of each tangent's sound range.
MILP_TANGENT_POINTS = (0.0, 0.5, 1.0)


# --- the two functions --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # no overflow, unlike 1 / (1 + exp(-x))


def _dsigmoid(x: np.ndarray) -> np.ndarray:
    s = _sigmoid(x)
    return s * (1.0 - s)


def _dtanh(x: np.ndarray) -> np.ndarray:
    t = np.tanh(x)
    return 1.0 - t * t


@dataclass(frozen=True)
class SmoothFunction:
    """An increasing S-shaped function: values, derivative, the range of its values and its largest slope."""

    name: str
    f: Any
    df: Any
    low: float
    high: float
    max_slope: float

    def f_torch(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(x) if self.name == "Sigmoid" else torch.tanh(x)

    def df_torch(self, x: torch.Tensor) -> torch.Tensor:
        y = self.f_torch(x)
        return y * (1.0 - y) if self.name == "Sigmoid" else 1.0 - y * y


SIGMOID = SmoothFunction("Sigmoid", _sigmoid, _dsigmoid, 0.0, 1.0, 0.25)
TANH = SmoothFunction("Tanh", np.tanh, _dtanh, -1.0, 1.0, 1.0)


# --- relaxations ----------------------------------------------------------------------------------------------------
@dataclass
class SmoothLines:
    """Lower and upper lines of every neuron (numpy, the neurons' shape) and their tangent families.

    ``lo_tangent``: the lower line is a tangent with its point in ``[lo_d0, lo_d1]`` (else the fixed line
    ``lo_slope``, ``lo_icpt``); ``lo_t``: CROWN's point as a fraction of that range. Likewise for the upper line.
    ``delta``: the outward widening of every line of the neuron.
    """

    lo_slope: np.ndarray
    lo_icpt: np.ndarray
    up_slope: np.ndarray
    up_icpt: np.ndarray
    lo_tangent: np.ndarray
    lo_d0: np.ndarray
    lo_d1: np.ndarray
    lo_t: np.ndarray
    up_tangent: np.ndarray
    up_d0: np.ndarray
    up_d1: np.ndarray
    up_t: np.ndarray
    delta: np.ndarray


def tangent(fn: SmoothFunction, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept of the tangent of ``fn`` at ``d`` (unwidened)."""
    slope = fn.df(d)
    return slope, fn.f(d) - slope * d


def _bisect(sound: Any, bad: np.ndarray, good: np.ndarray) -> np.ndarray:
    """The end of ``[bad, good]`` (elementwise, either order) where ``sound`` holds, after narrowing the interval
    towards the point where ``sound`` (monotone along it) switches."""
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (bad + good)
        ok = sound(mid)
        good = np.where(ok, mid, good)
        bad = np.where(ok, bad, mid)
    return good


def smooth_lines(fn: SmoothFunction, lo: np.ndarray, hi: np.ndarray) -> SmoothLines:
    """CROWN's sound lines of ``fn`` over ``[lo, hi]`` (see the module docstring) and the families α optimises."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), lo)
    f_lo, f_hi = fn.f(lo), fn.f(hi)
    width = hi - lo
    thin = width <= 1e-9 * (1.0 + np.abs(lo))  # chords lose their digits: use the constant lines f(l), f(u)
    safe_w = np.where(thin, 1.0, width)
    k = np.where(thin, 0.0, (f_hi - f_lo) / safe_w)
    chord_icpt = f_lo - k * lo
    convex, concave = hi <= 0, lo >= 0
    crossing = ~convex & ~concave & ~thin
    # lower line: tangent where convex, or crossing with the chord above f near l
    lo_tangent = ~thin & (convex | (crossing & (k > fn.df(lo))))
    # upper line: tangent where concave, or crossing with the chord below f near u
    up_tangent = ~thin & (concave | (crossing & (k > fn.df(hi))))
    cross_lo, cross_up = crossing & lo_tangent, crossing & up_tangent

    def lower_sound(d: np.ndarray) -> np.ndarray:  # tangent at d (<= 0) stays below f(u) at u
        s, c = tangent(fn, d)
        return s * hi + c <= f_hi

    def upper_sound(d: np.ndarray) -> np.ndarray:  # tangent at d (>= 0) stays above f(l) at l
        s, c = tangent(fn, d)
        return s * lo + c >= f_lo

    zeros = np.zeros_like(lo)
    # bisection between the unsound inflection point and the sound end (entries not crossing are ignored)
    d_lower = _bisect(lower_sound, zeros, lo.copy()) if cross_lo.any() else lo
    d_upper = _bisect(upper_sound, zeros, hi.copy()) if cross_up.any() else hi
    lo_d0, lo_d1 = lo.copy(), np.where(cross_lo, d_lower, hi)
    up_d0, up_d1 = np.where(cross_up, d_upper, lo), hi.copy()
    lo_t = np.where(cross_lo, 1.0, 0.5)
    up_t = np.where(cross_up, 0.0, 0.5)
    lo_s, lo_c = tangent(fn, lo_d0 + lo_t * (lo_d1 - lo_d0))
    up_s, up_c = tangent(fn, up_d0 + up_t * (up_d1 - up_d0))
    delta = FP_REL * (1.0 + width + fn.max_slope * np.maximum(np.abs(lo), np.abs(hi)))
    lo_slope = np.where(lo_tangent, lo_s, np.where(thin, 0.0, k))
    lo_icpt = np.where(lo_tangent, lo_c, np.where(thin, f_lo, chord_icpt)) - delta
    up_slope = np.where(up_tangent, up_s, np.where(thin, 0.0, k))
    up_icpt = np.where(up_tangent, up_c, np.where(thin, f_hi, chord_icpt)) + delta
    return SmoothLines(lo_slope, lo_icpt, up_slope, up_icpt, lo_tangent, lo_d0, lo_d1, lo_t, up_tangent, up_d0, up_d1,
                       up_t, delta)


@dataclass
class SmoothRelax:
    """CROWN's lines of one Sigmoid/Tanh node as float64 torch tensors (the node's shape)."""

    lo_slope: torch.Tensor
    lo_icpt: torch.Tensor
    up_slope: torch.Tensor
    up_icpt: torch.Tensor


@dataclass
class AlphaSmoothRelax:
    """One Sigmoid/Tanh node over D domains, tensors ``(D, 1, *shape)``: the fixed lines, the tangent families and
    CROWN's parameters ``default`` ``(D, 1, 2, *shape)`` (axis 2: lower, upper)."""

    fn: SmoothFunction
    lo_slope: torch.Tensor
    lo_icpt: torch.Tensor
    up_slope: torch.Tensor
    up_icpt: torch.Tensor
    lo_tangent: torch.Tensor
    lo_d0: torch.Tensor
    lo_d1: torch.Tensor
    up_tangent: torch.Tensor
    up_d0: torch.Tensor
    up_d1: torch.Tensor
    delta: torch.Tensor
    default: torch.Tensor
    sign: torch.Tensor | None = None  # split sign as float, None when no neuron of this node is split

    def cast(self, dtype: torch.dtype) -> AlphaSmoothRelax:
        def c(x: torch.Tensor) -> torch.Tensor:
            return x.to(dtype) if x.is_floating_point() else x

        names = ("lo_slope", "lo_icpt", "up_slope", "up_icpt", "lo_tangent", "lo_d0", "lo_d1", "up_tangent", "up_d0",
                 "up_d1", "delta", "default")
        tensors = {name: c(getattr(self, name)) for name in names}
        return AlphaSmoothRelax(self.fn, **tensors, sign=None if self.sign is None else c(self.sign))

    def lines(self, t: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(lower slope, lower intercept, upper slope, upper intercept) at parameters ``t`` ``(D, S, 2, *shape)``
        (None: CROWN's), widened."""
        import torch

        if t is None:
            return self.lo_slope, self.lo_icpt, self.up_slope, self.up_icpt
        out = []
        for side, (tan, d0, d1, slope, icpt, sign) in enumerate((
                (self.lo_tangent, self.lo_d0, self.lo_d1, self.lo_slope, self.lo_icpt, -1.0),
                (self.up_tangent, self.up_d0, self.up_d1, self.up_slope, self.up_icpt, 1.0))):
            d = d0 + t[:, :, side] * (d1 - d0)
            s = self.fn.df_torch(d)
            c = self.fn.f_torch(d) - s * d + sign * self.delta
            out += [torch.where(tan, s, slope), torch.where(tan, c, icpt)]
        return tuple(out)


def alpha_smooth_relax(fn: SmoothFunction, lo: np.ndarray, hi: np.ndarray,
                       split: np.ndarray | None = None) -> AlphaSmoothRelax:
    """The relaxation of a Sigmoid/Tanh node from ``(D, *shape)`` pre-activation bounds (already clamped by the
    splits ``split``, ``(D, *shape)`` in {-1, 0, +1})."""
    import torch

    r = smooth_lines(fn, lo, hi)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a))[:, None]

    default = torch.as_tensor(np.stack([r.lo_t, r.up_t], axis=1))[:, None]
    sign = None if split is None or not split.any() else t(split.astype(np.float64))
    return AlphaSmoothRelax(fn, t(r.lo_slope), t(r.lo_icpt), t(r.up_slope), t(r.up_icpt), t(r.lo_tangent),
                            t(r.lo_d0), t(r.lo_d1), t(r.up_tangent), t(r.up_d0), t(r.up_d1), t(r.delta), default, sign)


# --- MILP -------------------------------------------------------------------------------------------------------------
@dataclass
class SmoothColumns:
    """Where a Sigmoid/Tanh layer lives in the MILP: flat neuron index, pre-activation column and output column of
    every neuron."""

    fn: SmoothFunction
    neurons: np.ndarray
    z: np.ndarray
    y: np.ndarray

    def assign(self, v: np.ndarray, pre: np.ndarray) -> None:
        """Write the values a real pre-activation ``pre`` (flattened) implies into ``v``."""
        v[self.z] = pre[self.neurons]
        v[self.y] = self.fn.f(pre[self.neurons])


def milp_lines(fn: SmoothFunction, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray,
                                                                                                       ...]]:
    """Sound lower and upper lines of every neuron whose output range is not a point, as ``(neuron, slope,
    intercept)`` arrays per side: the tangents at :data:`MILP_TANGENT_POINTS` of a tangent family (CROWN's line is
    one of them), or the one fixed chord. Their intersection with the column bounds ``[f(l), f(u)]`` is the MILP's
    outer approximation; a neuron whose ``f(u) - f(l)`` is below 1e-9 gets no line (its bounds are as tight), and
    no line is written twice (repeated rows only make the LP degenerate)."""
    r = smooth_lines(fn, lo, hi)
    open_range = fn.f(hi) - fn.f(lo) > 1e-9
    sides = []
    for tan, d0, d1, slope, icpt, sign in ((r.lo_tangent, r.lo_d0, r.lo_d1, r.lo_slope, r.lo_icpt, -1.0),
                                           (r.up_tangent, r.up_d0, r.up_d1, r.up_slope, r.up_icpt, 1.0)):
        fixed = np.flatnonzero(open_range & ~tan)
        parts = [(fixed, slope[fixed], icpt[fixed])]
        family = np.flatnonzero(open_range & tan)
        for frac in MILP_TANGENT_POINTS:
            s, c = tangent(fn, d0[family] + frac * (d1[family] - d0[family]))
            parts.append((family, s, c + sign * r.delta[family]))
        sides.append(tuple(np.concatenate([p[i] for p in parts]) for i in range(3)))
    return sides[0], sides[1]


def encode_smooth(enc: Any, fn: SmoothFunction, x: Any, lower: np.ndarray, upper: np.ndarray) -> tuple[Any, dict,
                                                                                                      SmoothColumns]:
    """``y = fn(x)`` as a continuous column per neuron inside the lines of :func:`milp_lines` (an outer
    approximation: every real ``(x, fn(x))`` is feasible).

    The pre-activation gets a column of its own (``z = x``, one row per neuron): the lines then have two nonzeros
    each instead of the whole form of ``x`` (on a 6×200 Sigmoid network 0.26 instead of 1.7 million nonzeros).
    """
    import scipy.sparse as sp

    from mlrobust.milp.encoding import INF, AffineForm, unit_rows

    lower, upper = lower.reshape(-1).astype(np.float64), upper.reshape(-1).astype(np.float64)
    n = lower.size
    neurons = np.arange(n)
    z = enc.add_columns(lower, upper, False, f"{fn.name.lower()}_input")
    y = enc.add_columns(np.maximum(fn.f(lower) - VALUE_EPS, fn.low), np.minimum(fn.f(upper) + VALUE_EPS, fn.high),
                        False, fn.name.lower())
    ncols = enc.ncols
    xf = x.rows(neurons, ncols)
    enc.add_rows(unit_rows(z, ncols) - xf.A, xf.c, xf.c, f"{fn.name.lower()}_input")  # z - A v = c_x
    (lo_n, lo_s, lo_c), (up_n, up_s, up_c) = milp_lines(fn, lower, upper)
    # y >= s z + c  and  y <= s z + c
    enc.add_rows(unit_rows(y[lo_n], ncols) - unit_rows(z[lo_n], ncols, lo_s), lo_c, INF, f"{fn.name.lower()}_lower")
    enc.add_rows(unit_rows(y[up_n], ncols) - unit_rows(z[up_n], ncols, up_s), -INF, up_c, f"{fn.name.lower()}_upper")
    out = AffineForm(sp.csr_matrix((np.ones(n), (neurons, y)), shape=(n, ncols)), np.zeros(n))
    return out, {"neurons": n, "lines": int(lo_n.size + up_n.size)}, SmoothColumns(fn, neurons, z, y)


# --- the op family ------------------------------------------------------------------------------------------------
#: The tangent points ``t ∈ [0, 1]`` of the lower and upper lines, ``(D, S, 2, *shape)`` (kept with the ReLU slopes).
TANGENT_POINTS = ParamFamily("alpha", "lr_alpha")


class SmoothActivation(OpRules):
    """Rules shared by the S-shaped activations; a subclass names its :class:`SmoothFunction` in ``function``."""

    function: ClassVar[SmoothFunction]
    elementwise = True
    activation = True
    splittable = True
    alpha_families = (TANGENT_POINTS, BETA)
    num_params = 0

    def forward(self, x: np.ndarray, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return self.function.f(np.asarray(x, dtype=np.float64))

    def forward_torch(self, node: Node, args: list[torch.Tensor], buf: Any) -> torch.Tensor:
        return self.function.f_torch(args[0])

    def describe(self, node: Node, network: Network) -> str:
        return "tangent/chord lines; MILP outer approximation"

    def interval(self, node: Node, lows: list[np.ndarray], ups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        fn = self.function
        return (np.maximum(fn.f(lows[0]) - VALUE_EPS, fn.low), np.minimum(fn.f(ups[0]) + VALUE_EPS, fn.high))

    def crown_relax(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> SmoothRelax:
        from mlrobust.ops.coeffs import t64

        r = smooth_lines(self.function, lo, hi)
        return SmoothRelax(t64(r.lo_slope), t64(r.lo_icpt), t64(r.up_slope), t64(r.up_icpt))

    def refine_index(self, engine: Any, node: Node, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        # every line depends on both bounds (a point interval needs none)
        return np.flatnonzero(hi > lo)

    def crown_step(self, engine: Any, node: Node, a: torch.Tensor) -> CrownStep:
        s = a.shape[0]
        r = engine._relaxation(node)
        pos, neg = a.clamp(min=0.0), a.clamp(max=0.0)
        a_in = pos * r.lo_slope + neg * r.up_slope
        pos2, neg2 = pos.reshape(s, -1), neg.reshape(s, -1)
        lo_c, up_c = r.lo_icpt.reshape(-1), r.up_icpt.reshape(-1)
        return ([(node.inputs[0], a_in)], pos2 @ lo_c + neg2 @ up_c, pos2 @ lo_c.abs() - neg2 @ up_c.abs())

    def crown_step_patch(self, engine: Any, node: Node, p: Any) -> CrownStep:
        from mlrobust.ops.coeffs import Patch, gather

        r = engine._relaxation(node)
        lo_s, lo_c, up_s, up_c = (gather(v, p) for v in (r.lo_slope, r.lo_icpt, r.up_slope, r.up_icpt))
        pos, neg = p.a.clamp(min=0.0), p.a.clamp(max=0.0)
        dims = (1, 2, 3)
        return ([(node.inputs[0], Patch(pos * lo_s + neg * up_s, p.oy, p.ox))],
                (pos * lo_c + neg * up_c).sum(dim=dims), (pos * lo_c.abs() - neg * up_c.abs()).sum(dim=dims))

    def alpha_step(self, ctx: Any, node: Node, a: torch.Tensor) -> Any:
        from mlrobust.ops.coeffs import AlphaStep, rows

        r = ctx.relax[node.name]
        lo_s, lo_c, up_s, up_c = r.lines(ctx.params.family(TANGENT_POINTS.name).get(node.name))
        if ctx.capture is not None:
            ctx.capture[node.name] = a.detach()
        pos, neg = a.clamp(min=0.0), a.clamp(max=0.0)
        a_in = pos * lo_s + neg * up_s
        beta = ctx.params.family(BETA.name).get(node.name)
        if beta is not None and r.sign is not None:
            # the split constraints s z >= 0 with multipliers β >= 0 (β-CROWN): without them the linear bound is
            # minimised over the whole box, where a clamped relaxation can be looser than the parent's
            a_in = a_in - beta * r.sign
        return AlphaStep([(node.inputs[0], a_in)], rows(pos * lo_c + neg * up_c),
                         rows(pos * lo_c.abs() - neg * up_c.abs()))

    def alpha_relax(self, network: Network, node: Node, domains: Any) -> AlphaSmoothRelax:
        t = node.inputs[0]
        return alpha_smooth_relax(self.function, domains.pre_lower[t], domains.pre_upper[t],
                                  domains.splits.get(node.name))

    def alpha_init(self, ctx: Any, node: Node, d: int, s: int) -> dict[str, torch.Tensor]:
        import torch

        r = ctx.relax[node.name]
        points = r.default.expand(d, s, *r.default.shape[2:]).clone()
        if r.sign is None:
            return {TANGENT_POINTS.name: points}
        return {TANGENT_POINTS.name: points,
                BETA.name: torch.zeros((d, s, *r.default.shape[3:]), dtype=r.default.dtype)}

    def alpha_project(self, ctx: Any, node: Node, family: str, value: torch.Tensor) -> None:
        if family == BETA.name:
            value.clamp_(min=0.0)
        else:
            value.clamp_(0.0, 1.0)

    def encode_milp(self, builder: Any, node: Node, inputs: list[Any], shapes: list[tuple[int, ...]]) -> Any:
        t = node.inputs[0]
        builder.set_bounds(t, *builder.form_interval(t))
        out, stats, cols = encode_smooth(builder.enc, self.function, inputs[0], builder.lower[t], builder.upper[t])
        builder.layer_stats[node.name] = {"kind": node.kind, **stats, "binaries": 0, "unstable": 0}
        builder.columns[node.name] = cols
        return out


@dataclass(eq=False)
class Sigmoid(SmoothActivation):
    """``y = 1 / (1 + exp(-x))`` elementwise."""

    kind = "Sigmoid"
    function = SIGMOID


@dataclass(eq=False)
class Tanh(SmoothActivation):
    """``y = tanh(x)`` elementwise."""

    kind = "Tanh"
    function = TANH
