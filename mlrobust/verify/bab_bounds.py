"""Bounds on the sub-domains of a branch-and-bound: CROWN under ReLU split constraints and input sub-boxes.

A sub-domain is an input box plus a sign for some ReLU pre-activations (``+1``: ``z >= 0``, ``-1``: ``z <= 0``,
``0``: free). It is bounded soundly by clamping each split neuron's pre-activation bounds to its side and
recomputing the bounds of everything downstream with CROWN over the domain's box: every bound so obtained holds
on the subset of the box where the split signs hold, and the union of two children (``z >= 0`` / ``z <= 0``) is
their parent. A child inherits its parent's bounds as priors (it is a subset, so they stay valid) and only the
tensors downstream of what changed are back-substituted again. When clamping leaves an empty interval the domain
holds no input at all (it is proven vacuously).

The same pass records, for every objective row, its linear coefficients on each ReLU output and on the input: the
branching heuristics score splits from them and the input corner minimising the linear bound is a good attack
start. Stored bounds are rounded outward to float32 (half the memory per queued domain, still sound).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from mlrobust.bounds.alpha_crown import (
    AlphaOptions,
    AlphaResult,
    AlphaState,
    DomainBatch,
    RowMix,
    alpha_bounds,
    alpha_memory,
    bounds_at,
    parameter_support,
)
from mlrobust.bounds.alpha_params import MIX
from mlrobust.bounds.crown import (
    BackSubstitution,
    _interval_is_exact,
    pool_index,
)
from mlrobust.bounds.ibp import interval_affine
from mlrobust.ir.graph import Network, Node
from mlrobust.ir.torch_exec import torch_threads


def _clamp_safe(node: Node) -> bool:
    """Monotone per coordinate/window (Scale, Reshape, ReLU, MaxPool): a clamp passes through exactly."""
    return node.op.elementwise or node.op.activation


def down32(a: np.ndarray) -> np.ndarray:
    """float32 copy of ``a`` rounded towards -inf (every entry ``<=`` the float64 value)."""
    f = np.asarray(a, dtype=np.float32)
    return np.where(f.astype(np.float64) > a, np.nextafter(f, np.float32(-np.inf)), f)


def up32(a: np.ndarray) -> np.ndarray:
    """float32 copy of ``a`` rounded towards +inf."""
    f = np.asarray(a, dtype=np.float32)
    return np.where(f.astype(np.float64) < a, np.nextafter(f, np.float32(np.inf)), f)


@dataclass
class Domain:
    """One sub-domain: an input box, split signs per ReLU node, and bounds of every pre-activation tensor.

    ``pre_lower``/``pre_upper`` map the input tensor of every ReLU/MaxPool to bounds valid on the domain (float32,
    rounded outward); ``splits`` maps a ReLU node's name to int8 signs over its input's shape.
    """

    lower: np.ndarray
    upper: np.ndarray
    pre_lower: dict[str, np.ndarray]
    pre_upper: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]
    depth: int = 0
    changed: frozenset[str] = frozenset()  # pre-activation tensors clamped since the bounds were computed
    box_changed: bool = False  # the input box shrank since the bounds were computed (everything is stale)
    value: float = float("inf")  # the spec's worst bound on this domain (see bab.OutputSpec.value)
    row_upper: np.ndarray | None = None  # upper bounds of the spec's rows (a child's never exceed its parent's)
    warm: object | None = None  # the bound engine's warm start for this domain's children
    relu_coeff: dict[str, np.ndarray] = field(default_factory=dict)  # the binding row's coefficients per ReLU
    input_coeff: np.ndarray | None = None  # the binding row's input coefficients
    binding: int | None = None  # the spec row that decides the domain's value
    objective: np.ndarray | None = None  # the binding row's lower-bound objective (C,) where it varies by domain

    def child(self, node: str | None = None, tensor: str | None = None, index: int = 0, sign: int = 0,
              lower: np.ndarray | None = None, upper: np.ndarray | None = None) -> Domain:
        """A child: ReLU ``node`` (input ``tensor``) at flat ``index`` fixed to ``sign``, or a new input box."""
        splits = dict(self.splits)
        changed = set(self.changed)
        if node is not None and tensor is not None:
            s = splits[node].copy()
            s.reshape(-1)[index] = sign
            splits[node] = s
            changed.add(tensor)
        return Domain(self.lower if lower is None else lower, self.upper if upper is None else upper,
                      self.pre_lower, self.pre_upper, splits, self.depth + 1, frozenset(changed),
                      box_changed=lower is not None or upper is not None, row_upper=self.row_upper,
                      warm=self.warm)


@dataclass
class DomainBound:
    """The result of bounding one domain: lower bounds of the objective rows, or ``feasible=False``."""

    lower: np.ndarray  # (S,)
    domain: Domain  # the domain with refreshed bounds
    feasible: bool = True
    relu_coeff: dict[str, np.ndarray] = field(default_factory=dict)  # node -> (S, *shape), lower-bound pass
    input_coeff: np.ndarray | None = None  # (S, *input shape)
    coeffs: np.ndarray | None = None  # (S', C) the objective rows bounded, where a row mixture made them per domain
    rows: np.ndarray | None = None  # the rows bounded (indices into the S rows; None: all), see AlphaEngine.bound


class _Recorder(BackSubstitution):
    """Back-substitution that keeps the coefficients each dense step receives on ReLU outputs and the input."""

    def __init__(self, network: Network, lower: dict[str, np.ndarray], upper: dict[str, np.ndarray]):
        super().__init__(network, lower, upper)
        self.relu_coeff: dict[str, torch.Tensor] = {}
        self.input_coeff: torch.Tensor | None = None
        self.recording = False  # only the objective's pass is recorded, not the intermediate bounds'

    def _step(self, node: Node, a: torch.Tensor):
        if not self.recording:
            return super()._step(node, a)
        if node.op.splittable:
            self.relu_coeff[node.name] = a.detach().clone()
        terms, bias, mag = super()._step(node, a)
        for tensor, a_in in terms:
            if tensor == self.network.input_name:
                self.input_coeff = a_in if self.input_coeff is None else self.input_coeff + a_in
        return terms, bias, mag


class SplitCrown:
    """CROWN bounds of linear objectives over sub-domains of one network (the plain-CROWN bound engine)."""

    name = "crown"
    gives_input_coeffs = True  # the binding row's input coefficients: input bisection's scores, the corner attack

    def __init__(self, network: Network):
        self.network = network
        self.relu_nodes = [n for n in network.nodes if n.op.splittable]
        self.pre_tensors = sorted({n.inputs[0] for n in network.nodes if n.op.activation})
        producer = {n.output: n for n in network.nodes}
        self._consumers: dict[str, list[Node]] = {}
        for n in network.nodes:
            for t in set(n.inputs):
                self._consumers.setdefault(t, []).append(n)
        # Unlike crown(), ReLU outputs feeding a MaxPool are refined too: CROWN refines only unstable ReLU inputs,
        # so a stable active neuron keeps its interval bound, which back-substitution through the ReLU tightens
        # (often by half on the reference architecture) and which the MaxPool relaxation uses.
        self._needs_crown = {t: not _interval_is_exact(network, producer, t) for t in self.pre_tensors}
        self._pool_idx = {n.name: pool_index(n.op, network.shape_of(n.inputs[0]))
                          for n in network.nodes if n.op.activation and n.op.pooling}

    # --- domains ----------------------------------------------------------------------------------------------
    def root(self, lower: np.ndarray, upper: np.ndarray, lows: dict[str, np.ndarray] | None = None,
             ups: dict[str, np.ndarray] | None = None) -> Domain:
        """The whole box as a domain; ``lows``/``ups`` (e.g. CROWN bounds of this box) are used as priors."""
        pre_lo = {t: down32(lows[t]) for t in self.pre_tensors} if lows is not None else {}
        pre_hi = {t: up32(ups[t]) for t in self.pre_tensors} if ups is not None else {}
        splits = {n.name: np.zeros(self.network.shape_of(n.inputs[0]), dtype=np.int8) for n in self.relu_nodes}
        return Domain(np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64), pre_lo, pre_hi,
                      splits, box_changed=True)

    def bound(self, domains: list[Domain], coeffs: np.ndarray, deadline: float | None = None,
              mix: RowMix | None = None, rows: np.ndarray | None = None) -> list[DomainBound]:
        """Lower bounds of ``coeffs @ y`` (``coeffs``: ``(S, C)``) on every domain, bounds refreshed.

        Domains not reached by ``deadline`` get ``-inf`` (nothing proven; they keep their parent's row bounds).
        ``mix`` and ``rows`` are ignored: plain CROWN bounds every row of ``coeffs`` (a mixture's starting rows).
        """
        out = []
        with torch_threads(1):
            for d in domains:
                if deadline is not None and time.perf_counter() >= deadline:
                    out.append(DomainBound(np.full(coeffs.shape[0], -np.inf), d))
                else:
                    out.append(self._bound_one(d, coeffs, deadline))
        return out

    def _bound_one(self, dom: Domain, coeffs: np.ndarray, deadline: float | None = None) -> DomainBound:
        net = self.network
        refreshed = self.refresh(dom, deadline)
        if refreshed is None:
            return DomainBound(np.full(coeffs.shape[0], np.inf), dom, feasible=False)
        fresh, rec = refreshed
        rec.recording = True
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float64))
        val = rec.lower_bounds(net.output_name, c.reshape(c.shape[0], *net.output_shape))
        relu_coeff = {k: v.numpy() for k, v in rec.relu_coeff.items()}
        input_coeff = None if rec.input_coeff is None else rec.input_coeff.numpy()
        return DomainBound(val, fresh, True, relu_coeff, input_coeff)

    def refresh(self, dom: Domain, deadline: float | None = None) -> tuple[Domain, _Recorder] | None:
        """The domain with bounds recomputed downstream of what changed (None: the domain is empty), and the
        back-substitution engine holding the fresh bounds of every tensor.

        Past ``deadline`` no further back-substitution starts: the remaining tensors keep their interval bounds
        intersected with the domain's priors (sound, only looser), so a refresh overruns a deadline by at most one
        layer's back-substitution."""
        net = self.network
        lows: dict[str, np.ndarray] = {net.input_name: dom.lower}
        ups: dict[str, np.ndarray] = {net.input_name: dom.upper}
        rec = _Recorder(net, lows, ups)
        # dirty: recomputed from changed inputs, so worth back-substituting again; clamped: changed only by split
        # clamps and elementwise maps since, where the clamped interval intersected with the prior is as tight
        dirty: set[str] = {net.input_name} if (dom.box_changed or not dom.pre_lower) else set()
        clamped: set[str] = set()
        sign_of = {n.inputs[0]: dom.splits[n.name] for n in self.relu_nodes}
        for node in net.nodes:
            out = node.output
            lo, hi = interval_affine(node, [lows[t] for t in node.inputs], [ups[t] for t in node.inputs])
            stale = any(t in dirty for t in node.inputs) or (
                any(t in clamped for t in node.inputs) and not _clamp_safe(node))
            if stale:
                dirty.add(out)
            elif out in dom.changed or any(t in clamped for t in node.inputs):
                clamped.add(out)
            if out in dom.pre_lower:
                lo = np.maximum(lo, dom.pre_lower[out])
                hi = np.minimum(hi, dom.pre_upper[out])
            if out in sign_of:
                lo, hi = _clamp(lo, hi, sign_of[out])
            if stale and self._needs_crown.get(out, False) and (deadline is None or time.perf_counter() < deadline):
                idx = self._refine_index(out, lo, hi)
                if idx.size:
                    c_lo, c_hi = rec.neuron_bounds(out, idx)
                    flat_lo, flat_hi = lo.reshape(-1).copy(), hi.reshape(-1).copy()
                    flat_lo[idx] = np.maximum(flat_lo[idx], c_lo)
                    flat_hi[idx] = np.minimum(flat_hi[idx], c_hi)
                    lo, hi = flat_lo.reshape(lo.shape), flat_hi.reshape(hi.shape)
                    if out in sign_of:
                        lo, hi = _clamp(lo, hi, sign_of[out])
            if np.any(lo > hi):
                # both bounds hold on every input of the domain, so no input satisfies its split constraints
                return None
            lows[out], ups[out] = lo, hi
        fresh = Domain(dom.lower, dom.upper, {t: down32(lows[t]) for t in self.pre_tensors},
                       {t: up32(ups[t]) for t in self.pre_tensors}, dom.splits, dom.depth, row_upper=dom.row_upper,
                       warm=dom.warm)
        return fresh, rec

    def split_scores(self, dom: Domain, row: np.ndarray, choices: list[tuple[str, str, int]]) -> np.ndarray:
        """Lower bounds of ``row · y`` on both children of each candidate split ``(node, tensor, index)``, from the
        domain's bounds with only the split neuron clamped (no refresh): ``(len(choices), 2)``, for branching."""
        net = self.network
        lows = {net.input_name: dom.lower, **{t: v.astype(np.float64) for t, v in dom.pre_lower.items()}}
        ups = {net.input_name: dom.upper, **{t: v.astype(np.float64) for t, v in dom.pre_upper.items()}}
        a = torch.as_tensor(np.asarray(row, dtype=np.float64)).reshape(1, *net.output_shape)
        out = np.empty((len(choices), 2))
        with torch_threads(1):
            for c, (_, tensor, index) in enumerate(choices):
                for j, sign in enumerate((1, -1)):
                    lo, hi = lows[tensor].copy(), ups[tensor].copy()
                    if sign > 0:
                        lo.reshape(-1)[index] = max(lo.reshape(-1)[index], 0.0)
                    else:
                        hi.reshape(-1)[index] = min(hi.reshape(-1)[index], 0.0)
                    engine = BackSubstitution(net, {**lows, tensor: lo}, {**ups, tensor: hi})
                    out[c, j] = engine.lower_bounds(net.output_name, a)[0]
        return out

    def pool_index(self, node: Node) -> np.ndarray:
        """Window indices of a pooling node (what its ``refine_index`` reads)."""
        return self._pool_idx[node.name]

    def _refine_index(self, tensor: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Neurons of a pre-activation tensor whose relaxation depends on their bounds."""
        parts = []
        for user in self._consumers.get(tensor, []):
            if user.op.activation:
                parts.append(user.op.refine_index(self, user, lo, hi))
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def _clamp(lo: np.ndarray, hi: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activation bounds restricted to the split side of each neuron."""
    return np.where(sign > 0, np.maximum(lo, 0.0), lo), np.where(sign < 0, np.minimum(hi, 0.0), hi)


class AlphaEngine:
    """α/β-CROWN bounds of a batch of domains in one call (:func:`mlrobust.bounds.alpha_crown.alpha_bounds`).

    Split constraints enter the final bound through β multipliers; each child starts from its parent's optimised
    parameters. With ``refresh`` the domains' intermediate bounds are first recomputed by CROWN under the splits
    (:meth:`SplitCrown.refresh`, one domain at a time), which tightens what α/β start from at the price of the
    intermediate back-substitutions; without it a child keeps its parent's intermediate bounds (sound: it is a
    subset), with its split neurons clamped. Input coefficients are not available, so input bisection falls back
    to the widest dimension. The α/β passes run on ``options.device``, and the queued domains' warm starts stay
    there; the CROWN refreshes and the domains' bounds stay on the CPU (numpy).
    """

    name = "alpha"
    gives_input_coeffs = False

    def __init__(self, network: Network, options: AlphaOptions | None = None, refresh: bool = True,
                 keep_warm: bool = True, memory_budget: int | None = None):
        self.network = network
        #: bytes one α/β call may allocate (None: no limit); larger batches are bounded in chunks, see :meth:`alpha`
        self.memory_budget = memory_budget
        self.options = options or AlphaOptions(iterations=10)
        self.crown = SplitCrown(network)
        self.relu_nodes = self.crown.relu_nodes
        self.pre_tensors = self.crown.pre_tensors
        self.refresh_intermediate = refresh
        self.keep_warm = keep_warm
        #: what bounding has cost so far, measured: the time :meth:`alpha` keeps back before a deadline
        self.costs = BoundCosts()
        #: the compact layout of every α/β state this engine makes and takes (None: dense), see :meth:`fix_support`
        self.support: dict[str, torch.Tensor] | None = None

    def fix_support(self, root: Domain) -> None:
        """Keep every later call's α/β parameters compact over the units whose relaxation has parameters to choose
        under ``root``'s bounds (:func:`~mlrobust.bounds.alpha_crown.parameter_support`): a branch and bound's
        sub-domains inherit the root's intermediate bounds, so theirs are among them. States this engine is given
        without a layout of their own are taken to be in this one (the domain store keeps only the tensors)."""
        self.support = parameter_support(self.network, self._batch([root]))

    def own(self, state: AlphaState | None) -> AlphaState | None:
        """``state`` marked as in this engine's layout where it carries none (see :meth:`fix_support`)."""
        if state is not None and self.support and not state.support:
            state.support = dict(self.support)
        return state

    def root(self, lower: np.ndarray, upper: np.ndarray, lows: dict[str, np.ndarray] | None = None,
             ups: dict[str, np.ndarray] | None = None) -> Domain:
        return self.crown.root(lower, upper, lows, ups)

    def bound(self, domains: list[Domain], coeffs: np.ndarray, deadline: float | None = None,
              mix: RowMix | None = None, rows: np.ndarray | None = None) -> list[DomainBound]:
        """As :meth:`SplitCrown.bound`; the optimisation stops at ``deadline`` (its bounds stay sound). With
        ``mix`` the rows' weights are optimised too and each result carries the rows it bounded. With ``rows``
        (indices) only those rows are bounded (the others get ``-inf``: the parent's bounds stand), e.g. the rows
        of the clauses still open in some domain of the batch; the warm starts keep every row, the others' as
        the parent left them."""
        full = coeffs.shape[0]
        coeffs, mix, rows = select_rows(coeffs, mix, rows)
        out: list[DomainBound | None] = [None] * len(domains)
        live: list[Domain] = []
        where: list[int] = []
        with torch_threads(1):
            for i, dom in enumerate(domains):
                # past the deadline the inherited bounds are used as they are (sound for a sub-domain)
                late = deadline is not None and time.perf_counter() >= deadline
                if not late and (self.refresh_intermediate or dom.box_changed or not dom.pre_lower):
                    refreshed = self.crown.refresh(dom, deadline)
                    if refreshed is None:
                        out[i] = DomainBound(np.full(coeffs.shape[0], np.inf), dom, feasible=False)
                        continue
                    dom = refreshed[0]
                live.append(dom)
                where.append(i)
        if live:
            batch = self._batch(live)
            warm = self.own(AlphaState.stack([d.warm for d in live])) if self.keep_warm else None
            if warm is not None and rows is not None:
                warm = warm.select_rows(rows) if warm.rows == full else None
            res = self.alpha(batch, coeffs, options_within(self.options, deadline), warm, mix)
            weights = res.state.mix.get("rows")
            mixed = None if mix is None or weights is None else mix.coefficients(weights.cpu().numpy())
            done = res.lower.shape[0]  # fewer than the batch when the deadline came first
            infeasible = res.infeasible if res.infeasible is not None else np.zeros(done, dtype=bool)
            for j, (i, dom) in enumerate(zip(where, live)):
                if j >= done:  # not bounded: nothing proven, the domain keeps what it inherited
                    out[i] = DomainBound(np.full(full, -np.inf), dom, True, {}, None, None, rows)
                    continue
                if infeasible[j]:
                    out[i] = DomainBound(np.full(full, np.inf), dom, feasible=False)
                    continue
                if self.keep_warm:
                    # float32 halves the memory of a queued domain's warm start; any value in range is sound
                    st = res.state.select([j]).map(lambda v: v.float())
                    dom.warm = st if rows is None else _scatter_rows(dom.warm, st, rows)
                coeff = {k: v[j] for k, v in res.relu_coeffs.items()}
                lower = res.lower[j]
                if rows is not None:
                    lower = np.full(full, -np.inf)
                    lower[rows] = res.lower[j]
                out[i] = DomainBound(lower, dom, True, coeff, None, None if mixed is None else mixed[j], rows)
        return [o for o in out if o is not None]


    def probe_seconds(self) -> float:
        """Seconds the memory probe of :meth:`chunk_size` takes before a chunked call (0 without a budget)."""
        return self.costs.probe_seconds() if self.memory_budget is not None else 0.0

    def least_call(self, rows: int, warm: bool = True) -> float:
        """Seconds the smallest α/β call of :meth:`alpha` takes at the costs measured so far: the memory probe
        (with a budget) and one domain's fixed passes of ``rows`` rows (``warm``: with a warm start)."""
        return self.probe_seconds() + self.costs.fixed(1, rows, warm)

    def chunk_size(self, batch: DomainBatch, rows: int, options: AlphaOptions | None = None,
                   mix: RowMix | None = None) -> int:
        """Domains per α/β call under :attr:`memory_budget` for a batch like ``batch`` with ``rows`` rows (at least
        one; the whole batch without a budget). The memory probe's seconds are kept in :attr:`costs`."""
        if self.memory_budget is None or batch.size <= 1:
            return max(batch.size, 1)
        t0 = time.perf_counter()
        per_child = alpha_memory(self.network, batch, options or self.options, mix, self.support).per_child(rows)
        self.costs.probe = time.perf_counter() - t0
        return int(min(max(self.memory_budget // max(per_child, 1), 1), batch.size))

    def alpha(self, batch: DomainBatch, coeffs: np.ndarray, options: AlphaOptions, warm: AlphaState | None,
              mix: RowMix | None) -> AlphaResult:
        """:func:`alpha_bounds` of ``batch`` in chunks of :meth:`chunk_size` domains, one result as if in one call
        (``stats["chunks"]``: how many calls).

        Each domain's parameters are optimised on its own bound (the loss is the sum over domains and rows, Adam's
        steps are elementwise), so a domain gets the same bound in a chunk as in the whole batch, up to float
        rounding of the batched products, with two batch-level rules: ``options.time_limit`` holds for the whole
        batch, and ``options.early_stop`` stops a chunk once all of *its* rows pass it (the BaB's engine sets
        none).

        The time limit is planned, not only checked: a chunk (the first too, and a batch in one call) is started
        only when what it costs however little time it gets (its fixed passes: CROWN's, the warm start's — twice
        where new splits are seeded — and the final float64 evaluation, and storing its result) can end before the
        limit, as measured on this engine's earlier calls (:class:`BoundCosts`, scaled by the chunk's domain rows and passes). The result then covers
        only the first domains (``stats["skipped"]``: how many are left out; none at all when even the first chunk
        would not fit). Each chunk's result is written into arrays for the whole batch as soon as it is done
        (:class:`_Gathered`), so nothing is left to merge after the last chunk (merging them all at the end took up
        to 1.7 s for 64 children on a loaded machine, past the deadline). A parameter family that a chunk lacks
        (β of a node split only in other chunks) is NaN in the gathered state: CROWN's value when it warm-starts a
        child (sound). The ReLU coefficients and the parameters are kept in float32 (which the domain store keeps
        anyway; the row mixture's weights stay float64, they define the rows that were bounded), so the round's
        results do not outgrow the budget."""
        size = batch.size
        rows = int(coeffs.shape[-2]) if mix is None else mix.rows
        deadline = None if options.time_limit is None else time.perf_counter() + float(options.time_limit)
        costs = self.costs
        warm = self.own(warm)
        if deadline is not None and size > 1 and self.memory_budget is not None and (
                time.perf_counter() + self.least_call(rows, warm is not None) > deadline):
            return _nothing_bounded(size, rows)  # not even the memory probe and one domain's fixed passes would fit
        step = self.chunk_size(batch, rows, options, mix)
        if step >= size:
            if deadline is not None and time.perf_counter() + costs.fixed(size, rows, warm is not None) > deadline:
                return _nothing_bounded(size, rows)
            t0 = time.perf_counter()
            mine = costs.options_for(options_within(options, deadline), size, rows)
            res = alpha_bounds(self.network, batch, coeffs, options=mine, warm=warm, mix=mix, support=self.support)
            costs.learn_fixed(res, size * rows, time.perf_counter() - t0)
            res.stats["chunks"] = 1
            res.stats["skipped"] = 0
            return res
        coeffs = np.asarray(coeffs)
        per_domain = coeffs.ndim == 3 and coeffs.shape[0] == size and size > 1
        gathered = _Gathered(size)
        for at in range(0, size, step):
            idx = np.arange(at, min(at + step, size))
            if deadline is not None and time.perf_counter() + costs.fixed(idx.size, rows, warm is not None) > deadline:
                break
            mine = costs.options_for(options_within(options, deadline), idx.size, rows)
            part_warm = None
            if warm is not None:
                part_warm = warm.select(idx) if warm.domains == size else warm  # one domain's broadcasts
            t0 = time.perf_counter()
            res = alpha_bounds(self.network, batch.select(idx), coeffs[idx] if per_domain else coeffs,
                               options=mine, warm=part_warm, mix=mix, support=self.support)
            t1 = time.perf_counter()
            gathered.add(res)
            t2 = time.perf_counter()
            costs.learn_fixed(res, idx.size * rows, t2 - t0, t2 - t1)
        if not gathered.done:
            return _nothing_bounded(size, rows)
        res = gathered.result()
        self.own(res.state)
        return res

    def _batch(self, domains: list[Domain]) -> DomainBatch:
        """The domains stacked for one α/β call (their float32 bounds widened to float64 exactly)."""
        pre = self.pre_tensors
        return DomainBatch(np.stack([d.lower for d in domains]), np.stack([d.upper for d in domains]),
                           {t: np.stack([d.pre_lower[t] for d in domains]).astype(np.float64) for t in pre},
                           {t: np.stack([d.pre_upper[t] for d in domains]).astype(np.float64) for t in pre},
                           {n.name: np.stack([d.splits[n.name] for d in domains]) for n in self.relu_nodes})

    def split_scores(self, domains: list[Domain], objectives: np.ndarray,
                     choices: list[list[tuple[str, str, int]]]) -> list[np.ndarray]:
        """Lower bounds of ``objectives[i] · y`` on both children of each candidate split of domain ``i``, all
        domains and candidates in one batch, from each domain's own intermediate bounds and its optimised α/β
        (no steps, no refresh): one ``(len(choices[i]), 2)`` array per domain (``+inf`` for an empty child). A
        domain that has no optimised state yet gets CROWN's parameters."""
        net = self.network
        owner: list[int] = []
        kids: list[Domain] = []
        for i, (dom, mine) in enumerate(zip(domains, choices)):
            for node, tensor, index in mine:
                for sign in (1, -1):
                    kids.append(dom.child(node, tensor, index, sign))
                    owner.append(i)
        if not kids:
            return [np.zeros((0, 2)) for _ in domains]
        batch = self._batch(kids)
        rows = np.asarray([d.binding if d.binding is not None else 0 for d in domains])
        warm = None
        if self.keep_warm and all(isinstance(d.warm, AlphaState) for d in domains):
            # each child starts from its parent's parameters of the row being scored
            parents = AlphaState.stack([d.warm.select_rows([int(r)]) for d, r in zip(domains, rows)
                                        if isinstance(d.warm, AlphaState)])
            if parents is not None:
                self.own(parents)
                warm = parents.select(owner)
        coeffs = np.asarray(objectives, dtype=np.float64)[np.asarray(owner)][:, None, :]
        lower = bounds_at(net, batch, coeffs, warm, device=self.options.device, support=self.support)[:, 0]
        out: list[np.ndarray] = []
        at = 0
        for mine in choices:
            n = 2 * len(mine)
            out.append(lower[at:at + n].reshape(len(mine), 2))
            at += n
        return out


@dataclass
class BoundCosts:
    """What an :class:`AlphaEngine`'s bounding has cost on this run, measured on its last calls: what a deadline
    keeps back so that work started before it also ends before it (seconds; 0 until first measured)."""

    #: an α/β call's seconds besides its steps (set-up, CROWN's pass, the warm start's, the final evaluation, and
    #: storing the result of a chunk), per domain row and fixed pass (a call with a warm start makes one pass more)
    fixed_per_pass_row: float = 0.0
    #: fixed passes of a call with a warm start (CROWN's, the warm start's, its seeded variant's where
    #: ``AlphaOptions.seed_split_beta`` tries one, the final evaluation): the last such call's, at first the most
    warm_passes: int = 4
    #: an α/β call's final evaluation (the last call's)
    final_seconds: float = 0.0
    #: what an α/β call took after its last step (final evaluation, conversions, storing a chunk), per domain row
    after_steps_per_row: float = 0.0
    #: the memory probe of :meth:`AlphaEngine.chunk_size`
    probe: float = 0.0
    #: one domain's CROWN refresh (:func:`mlrobust.verify.bab.bounding.refresh_stale`)
    refresh: float = 0.0
    #: stacking one child's bounds and warm start for an α/β call (:func:`mlrobust.verify.bab.bounding.bound_domains`)
    prepare_per_child: float = 0.0

    def fixed(self, domains: int, rows: int, warm: bool = True) -> float:
        """Expected fixed seconds of a call over ``domains`` domains of ``rows`` rows (``warm``: with a warm start)."""
        return self.fixed_per_pass_row * domains * rows * (self.warm_passes if warm else 2)

    def learn_fixed(self, res: AlphaResult, domain_rows: int, seconds: float, stored: float = 0.0) -> None:
        """Learn from a call's result, its ``seconds`` in all, of which ``stored`` after it returned."""
        after = float(res.stats.get("after_steps_seconds", 0.0)) + stored
        self.after_steps_per_row = after / max(domain_rows, 1)
        fixed = max(seconds - float(res.stats.get("loop_seconds", 0.0)), 0.0)
        passes = int(res.stats.get("fixed_passes", 3))
        self.fixed_per_pass_row = fixed / max(domain_rows * passes, 1)
        if passes > 2:  # a call with a warm start
            self.warm_passes = passes
        self.final_seconds = float(res.stats.get("final_seconds", 0.0))

    def probe_seconds(self) -> float:
        """The memory probe's seconds: the last probe's, or before the first, two passes as long as the last
        final evaluation (the probe is two passes over one domain)."""
        return self.probe if self.probe > 0.0 else 2.0 * self.final_seconds

    def options_for(self, options: AlphaOptions, domains: int, rows: int) -> AlphaOptions:
        """``options`` telling the call what its final evaluation is expected to take (see
        ``AlphaOptions.final_seconds``), from the last call's, for ``domains`` domains of ``rows`` rows."""
        if options.time_limit is None or self.after_steps_per_row <= 0.0:
            return options
        return replace(options, final_seconds=self.after_steps_per_row * domains * rows)


def options_within(options: AlphaOptions, deadline: float | None) -> AlphaOptions:
    """``options`` with a time limit ending at ``deadline`` at the latest."""
    if deadline is None:
        return options
    left = max(deadline - time.perf_counter(), 0.0)
    return replace(options, time_limit=left if options.time_limit is None else min(options.time_limit, left))


def _nothing_bounded(size: int, rows: int) -> AlphaResult:
    """The result of a batch of which the deadline let no domain be bounded (``stats["skipped"]``: all)."""
    return AlphaResult(np.zeros((0, rows)), np.zeros((0, rows)), AlphaState(), 0, 0.0, None, {}, np.zeros(0, dtype=bool),
                       {"chunks": 0, "skipped": size})


def _scatter_rows(full: object | None, part: AlphaState, rows: np.ndarray) -> AlphaState | None:
    """``full`` (one domain's state over every row) with ``rows`` replaced by ``part``'s; None when they do not
    fit (the domain then starts from CROWN's parameters next time: sound, only slower)."""
    if not isinstance(full, AlphaState):
        return None
    out = AlphaState()
    idx = torch.as_tensor(rows)
    for mine, theirs, new in zip(full.groups(), part.groups(), out.groups()):
        if set(mine) != set(theirs):
            return None
        for k, v in mine.items():
            w = theirs[k]
            if v.shape[0] != w.shape[0] or v.shape[2:] != w.shape[2:] or w.shape[1] != idx.numel():
                return None
            v = v.clone()
            v[:, idx.to(v.device)] = w.to(v.dtype)
            new[k] = v
    return out


class _Gathered:
    """The results of consecutive chunks of one batch, written into arrays for the whole batch as each chunk ends:
    parameters and ReLU coefficients in float32 (the row mixture's weights in their own dtype), a family or key
    that a chunk lacks NaN on its rows (CROWN's default when it warm-starts again), coefficients that a chunk
    lacks dropped; :meth:`result` is the batch's first :attr:`done` domains as one :class:`AlphaResult`."""

    def __init__(self, size: int):
        self.size = size
        self.done = 0
        self.state: dict[tuple[str, str], torch.Tensor] = {}
        self.coeffs: dict[str, np.ndarray] = {}
        self.parts: list[AlphaResult] = []  # for their small per-domain arrays (bounds, flags)

    def add(self, res: AlphaResult) -> None:
        at, n = self.done, int(res.lower.shape[0])
        seen = set()
        for name, key, v in res.state.items():
            seen.add((name, key))
            buf = self.state.get((name, key))
            if buf is None:
                # pages are touched as the chunks fill them (not all at once); earlier chunks lacked this family
                buf = torch.empty((self.size, *v.shape[1:]), dtype=v.dtype if name == MIX else torch.float32,
                                  device=v.device)
                buf[:at] = float("nan")
                self.state[(name, key)] = buf
            buf[at:at + n] = v.detach()
        for (name, key), buf in self.state.items():
            if (name, key) not in seen:
                buf[at:at + n] = float("nan")
        for k, c in res.relu_coeffs.items():
            if at == 0:
                self.coeffs[k] = np.empty((self.size, *c.shape[1:]), dtype=np.float32)
            if k in self.coeffs:
                self.coeffs[k][at:at + n] = c
        for k in set(self.coeffs) - set(res.relu_coeffs):
            del self.coeffs[k]
        self.parts.append(replace(res, state=AlphaState(), relu_coeffs={}, domains=None))
        self.done = at + n

    def result(self) -> AlphaResult:
        d, parts = self.done, self.parts
        state = AlphaState()
        for (name, key), buf in self.state.items():
            state.put(name, key, buf[:d])
        infeasible = [p.infeasible if p.infeasible is not None else np.zeros(p.lower.shape[0], dtype=bool)
                      for p in parts]
        inputs = [p.input_coeffs for p in parts]
        return AlphaResult(np.concatenate([p.lower for p in parts]), np.concatenate([p.crown_lower for p in parts]),
                           state, max(p.iterations for p in parts), sum(p.seconds for p in parts), None,
                           {k: v[:d] for k, v in self.coeffs.items()}, np.concatenate(infeasible),
                           {"chunks": len(parts), "skipped": self.size - d},
                           None if any(a is None for a in inputs) else np.concatenate(inputs))  # type: ignore[arg-type]


def select_rows(coeffs: np.ndarray, mix: RowMix | None,
                rows: np.ndarray | None) -> tuple[np.ndarray, RowMix | None, np.ndarray | None]:
    """The objective rows ``rows`` (indices; None: every row) of ``coeffs`` and of the row mixture ``mix``, and the
    indices as an integer array."""
    if rows is None:
        return coeffs, mix, None
    rows = np.asarray(rows, dtype=np.int64)
    return coeffs[rows], None if mix is None else mix.select(rows), rows
