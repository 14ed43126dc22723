"""α/β parameters of α-CROWN: the state that holds them and the one protocol through which the op kinds own them.

Every op kind with optimisable relaxation parameters declares its families in its module of :mod:`mlrobust.ops`
(``alpha_families``, each a :class:`~mlrobust.ops.base.ParamFamily`: where the values are kept and which learning
rate steps them), gives CROWN's values (``alpha_init``) and projects values back onto the set where its lines are
sound (``alpha_project``). This module asks the ops for them and never names an op kind, so a new activation with
parameters of its own is written in its op module alone. The one family that belongs to no op is the row mixture's
weights (:data:`MIX`, the specification's, :class:`mlrobust.bounds.alpha_crown.RowMix`).

API::

    AlphaState(families, support={})   # .family(name), .put(name, node, value), .groups(), .domains, .rows,
                            # .map(fn), .select(idx), .select_rows(idx), .concat_rows(states), .stack(states)
    relayout(value, theirs, like, mine) -> values of one node's family in another support's layout (NaN: none)
    default_params(ctx, plan, d, s) -> AlphaState      # CROWN's values of every family of every node in plan
    adopt(init, warm, ctx, fixed=()) -> AlphaState     # warm values where they fit, projected
    project(state, ctx)                                 # every value onto its feasible set, in place
    learning_rates(network, options) -> {family: {node: lr}}
    param_groups(state, network, options) -> [(tensors, lr)]   # Adam groups (lr 0: fixed)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mlrobust.ir.graph import Network, Node
from mlrobust.ops.coeffs import project_simplex, support_columns

Tensor = torch.Tensor

#: The row mixture's weights ``(D, S, R)``, under the key "rows" (a specification's parameters, not an op's).
MIX = "mix"
#: Families listed first and always present in :meth:`AlphaState.groups`, in this order (the others follow by name).
STANDARD_FAMILIES = ("alpha", "pool", "beta", "tau", MIX)


@dataclass
class AlphaState:
    """Optimised parameters ``(D, S, ...)`` per family and node (ReLU slopes and Sigmoid/Tanh tangent points
    ``alpha``, MaxPool lower-line weights ``pool`` and upper-line thresholds ``tau``, split multipliers ``beta``,
    row-mixture weights ``mix["rows"]``, and whatever families other op kinds declare). Any values are sound; they
    only speed up a later call on a similar box or on sub-domains.

    ``support``: per node kept compact, the sorted flat indices of the units (neurons, windows) its families hold
    values for, ``(D, S, m, ...)`` (see :meth:`mlrobust.ops.base.OpRules.alpha_support`); a node not in it is dense
    ``(D, S, *units, ...)``.
    """

    families: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    support: dict[str, Tensor] = field(default_factory=dict)

    def family(self, name: str) -> dict[str, Tensor]:
        """The values of family ``name`` by node (an empty dict, not stored, when the state has none)."""
        return self.families.get(name, {})

    def put(self, name: str, key: str, value: Tensor) -> None:
        self.families.setdefault(name, {})[key] = value

    @property
    def alpha(self) -> dict[str, Tensor]:
        return self.families.setdefault("alpha", {})

    @property
    def pool(self) -> dict[str, Tensor]:
        return self.families.setdefault("pool", {})

    @property
    def beta(self) -> dict[str, Tensor]:
        return self.families.setdefault("beta", {})

    @property
    def tau(self) -> dict[str, Tensor]:
        return self.families.setdefault("tau", {})

    @property
    def mix(self) -> dict[str, Tensor]:
        return self.families.setdefault(MIX, {})

    def names(self) -> list[str]:
        """The standard families, then the others that hold values, by name."""
        extra = sorted(k for k, v in self.families.items() if k not in STANDARD_FAMILIES and v)
        return [*STANDARD_FAMILIES, *extra]

    def groups(self) -> tuple[dict[str, Tensor], ...]:
        """The families' dicts (stored, so writing into them writes into the state), in :meth:`names` order."""
        return tuple(self.families.setdefault(name, {}) for name in self.names())

    def items(self) -> Iterator[tuple[str, str, Tensor]]:
        """Every value as ``(family, node, tensor)``."""
        for name, values in self.families.items():
            for key, v in values.items():
                yield name, key, v

    def _first(self) -> Tensor | None:
        return next((v for _, _, v in self.items()), None)

    @property
    def domains(self) -> int:
        v = self._first()
        return 0 if v is None else int(v.shape[0])

    @property
    def rows(self) -> int:
        v = self._first()
        return 0 if v is None else int(v.shape[1])

    def map(self, fn: Callable[[Tensor], Tensor]) -> AlphaState:
        return AlphaState({name: {k: fn(v) for k, v in values.items()} for name, values in self.families.items()},
                          dict(self.support))

    def select(self, idx: np.ndarray | list[int]) -> AlphaState:
        """The state of domains ``idx`` (repeats allowed: two children of one parent both start from it)."""
        i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return self.map(lambda v: v[i])

    def select_rows(self, idx: np.ndarray | list[int]) -> AlphaState:
        """The state of specification rows ``idx`` (all domains)."""
        i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return self.map(lambda v: v[:, i])

    def _keys(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in self.families.items() if values}

    @staticmethod
    def concat_rows(states: list[AlphaState | None]) -> AlphaState | None:
        """Rows of several states side by side (same domains); a None stands for one row of CROWN's defaults (NaN).
        None when no state is given or their families and nodes differ."""
        known = [s for s in states if s is not None]
        if not known:
            return None
        like = known[0]
        parts = [s if s is not None else like.select_rows([0]).map(lambda v: torch.full_like(v, float("nan")))
                 for s in states]
        keys = like._keys()
        if any(p._keys() != keys or not _same_support(p.support, like.support) for p in parts):
            return None
        return AlphaState({name: {k: torch.cat([p.families[name][k] for p in parts], dim=1) for k in ks}
                           for name, ks in keys.items()}, dict(like.support))

    @staticmethod
    def stack(states: Iterable[object | None]) -> AlphaState | None:
        """One state for a batch of domains from the domains' own ones, one after the other along the domain axis,
        in float64: every family, and in each the nodes that every state holds with the same shape past the domain
        axis (a node left out starts from CROWN's values: sound, only slower). None unless every entry is an
        :class:`AlphaState`."""
        states = list(states)
        if not states or any(not isinstance(s, AlphaState) for s in states):
            return None
        typed = [s for s in states if isinstance(s, AlphaState)]
        out = AlphaState(support=dict(typed[0].support))
        for name in typed[0].families:
            keys = set(typed[0].family(name))
            for s in typed[1:]:
                keys &= set(s.family(name))
                # a node kept over another support (or dense in one, compact in another) has no common layout
                keys = {k for k in keys if _same_units(s.support.get(k), typed[0].support.get(k))}
            for k in sorted(keys):
                parts = [s.families[name][k] for s in typed]
                if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
                    continue
                out.put(name, k, torch.cat(parts).double())
        return out


def _same_units(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether two supports of one node are the same layout (None: dense)."""
    if a is None or b is None:
        return a is None and b is None
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b.to(a.device))))


def _same_support(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(_same_units(a[k], b[k]) for k in a)


def relayout(value: Tensor, theirs: Tensor | None, like: Tensor, mine: Tensor | None) -> Tensor | None:
    """``value`` (one node's family, ``(D', S, ...)`` over the support ``theirs``; None: dense) in the layout of
    ``like`` (``(D, S, ...)`` over ``mine``), NaN where ``value`` holds nothing (a unit off ``theirs``); None where
    the shapes do not fit. Only the layout changes: each unit keeps its own value."""
    if _same_units(theirs, mine):
        return value if value.shape[1:] == like.shape[1:] else None
    if value.shape[1] != like.shape[1]:
        return None
    # the axes past the units (a pool window's inputs): the compact side has one unit axis
    rest = like.shape[3:] if theirs is None else value.shape[3:]
    dense = value if theirs is None else like
    if mine is not None and theirs is not None and value.shape[3:] != like.shape[3:]:
        return None
    if rest and tuple(dense.shape[-len(rest):]) != tuple(rest):
        return None
    units = int(np.prod(dense.shape[2:dense.dim() - len(rest)])) if mine is None or theirs is None else -1
    if theirs is None:  # dense -> compact
        assert mine is not None
        if mine.numel() and int(mine.max()) >= units:
            return None
        return value.reshape(*value.shape[:2], units, *rest).index_select(2, mine.to(value.device))
    theirs = theirs.to(value.device)
    if mine is None:  # compact -> dense
        if theirs.numel() and int(theirs.max()) >= units:
            return None
        out = torch.full((value.shape[0], value.shape[1], units, *rest), float("nan"), dtype=value.dtype,
                         device=value.device)
        out[:, :, theirs] = value
        return out.reshape(value.shape[0], *like.shape[1:])
    # compact -> another compact: each unit of ``mine`` looked up among ``theirs``
    mine = mine.to(value.device)
    out = torch.full((value.shape[0], value.shape[1], mine.numel(), *rest), float("nan"), dtype=value.dtype,
                     device=value.device)
    found, at = support_columns(theirs, mine)
    out[:, :, found] = value[:, :, at[found]]
    return out


# --- the protocol: the ops' families ------------------------------------------------------------------------------
def _owners(network: Network) -> Iterator[Node]:
    """The nodes whose op kinds own parameter families."""
    return (node for node in network.nodes if node.op.alpha_families)


def default_params(ctx: Any, plan: list[Node], d: int, s: int) -> AlphaState:
    """CROWN's values of every family of every node of ``plan``, one copy per (domain, row); the row mixture's
    initial weights where ``ctx`` has one."""
    st = AlphaState(support={node.name: ctx.support[node.name] for node in plan if node.name in ctx.support})
    for node in plan:
        declared = {f.name for f in node.op.alpha_families}
        for name, value in node.op.alpha_init(ctx, node, d, s).items():
            if name not in declared:
                raise TypeError(f"op {node.op.kind} gave α parameters of family {name!r}, which it does not declare "
                                f"in alpha_families")
            st.put(name, node.name, value)
    if ctx.mix_base is not None and ctx.mix_init is not None:
        st.put(MIX, "rows", ctx.mix_init.to(torch.float64).expand(d, -1, -1).clone())
    return st


def adopt(init: AlphaState, warm: AlphaState | None, ctx: Any, fixed: Iterable[str] = ()) -> AlphaState:
    """Start from ``warm`` where its shapes fit (a one-domain state broadcasts; NaN entries mean "CROWN's default"),
    else from ``init``; projected. Families named in ``fixed`` (learning rate 0) keep ``init``'s values: a family
    that is not optimised follows CROWN's choice on the current bounds, not the one of the box it was warmed on."""
    if warm is None:
        return init
    skip = set(fixed)
    for name, mine in init.families.items():
        if name in skip:
            continue
        theirs = warm.family(name)
        for k, v in mine.items():
            w = theirs.get(k)
            if w is not None:  # the warm start over the units this call keeps (NaN where it has none: CROWN's)
                w = relayout(w, warm.support.get(k), v, init.support.get(k))
            if w is None or w.shape[1:] != v.shape[1:] or w.shape[0] not in (1, v.shape[0]):
                continue
            w = w.to(torch.float64).expand_as(v)
            mine[k] = torch.where(torch.isnan(w), v, w)
    project(init, ctx)
    return init


@torch.no_grad()
def project(st: AlphaState, ctx: Any) -> None:
    """Every value of ``st`` onto its feasible set, in place: each node's families by its op's ``alpha_project``,
    the row mixture's weights onto the simplex over each row's group."""
    for node in _owners(ctx.network):
        for fam in node.op.alpha_families:
            value = st.family(fam.name).get(node.name)
            if value is not None:
                node.op.alpha_project(ctx, node, fam.name, value)
    w = st.family(MIX).get("rows")
    if w is not None and ctx.mix_valid is not None:
        w.copy_(project_simplex(w, ctx.mix_valid.expand_as(w)))


def learning_rates(network: Network, options: Any) -> dict[str, dict[str, float]]:
    """The learning rate of every (family, node) of ``network`` from ``options`` (an ``AlphaOptions``), and of the
    row mixture (``mix``/``rows``)."""
    rates: dict[str, dict[str, float]] = {MIX: {"rows": float(options.lr_mix)}}
    for node in _owners(network):
        for fam in node.op.alpha_families:
            if not hasattr(options, fam.lr):
                raise TypeError(f"op {node.op.kind} names the learning rate {fam.lr!r}, which AlphaOptions lacks")
            rates.setdefault(fam.name, {})[node.name] = float(getattr(options, fam.lr))
    return rates


def fixed_families(network: Network, options: Any) -> set[str]:
    """Families whose every node has learning rate 0 (not optimised)."""
    return {name for name, per_node in learning_rates(network, options).items()
            if per_node and all(lr <= 0 for lr in per_node.values())}


def param_groups(st: AlphaState, network: Network, options: Any) -> list[tuple[list[Tensor], float]]:
    """Adam parameter groups, one per learning rate; values with learning rate 0 are left out (they stay fixed)."""
    rates = learning_rates(network, options)
    by_rate: dict[float, list[Tensor]] = {}
    for name, key, value in st.items():
        lr = rates.get(name, {}).get(key, 0.0)
        if lr > 0:
            by_rate.setdefault(lr, []).append(value)
    return [(values, lr) for lr, values in by_rate.items()]
