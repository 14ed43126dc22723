"""The open domains of a branch and bound as a struct of arrays: one array per field, one row per domain.

:class:`Domains` is a batch (what a round pops, splits, bounds and pushes back); :class:`DomainStore` holds every
open domain in preallocated buffers of the same layout and hands out the worst ones (largest spec value first, ties
in insertion order) by sorting one ``(N,)`` array, so no Python loop runs over domains. A domain's bounds of every
ReLU/MaxPool input are float32 rounded outward (sound, half the memory); its α/β warm start lives on the α/β
engine's device, NaN where a parameter has no value yet (the engine then starts from CROWN's). Input boxes live
once in a :class:`BoxTable` that domains index (ReLU splits never change a box, so children share their parent's
row; only input bisection adds rows), and the input coefficients only where the engine gives them (plain CROWN):
on a 64x64 image the box was ~64 KB and the coefficients 16 KB of every domain. With window splits on (a layout
with ``pool_nodes``), each domain also keeps, per MaxPool node, the window entries ruled out of attaining the
window's maximum (a bool per window entry) and the binding row's coefficients on the window outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Array fields of :class:`Domains` indexed by domain along their first axis.
ARRAY_FIELDS = ("box", "row_upper", "value", "depth", "binding", "objective", "changed", "box_changed", "stale")
#: Array fields of :class:`Domains` that a layout may leave out (None): then no domain of it has them.
OPTIONAL_FIELDS = ("input_coeff",)
#: Fields of :class:`Domains` that map a name (tensor, ReLU or MaxPool node) to an array indexed by domain.
DICT_FIELDS = ("pre_lower", "pre_upper", "splits", "relu_coeff", "pool_excluded", "pool_coeff")


class BoxTable:
    """Input boxes that domains share, one row per box, grown by doubling.

    Rows are only ever appended, so an index once handed out stays valid for every holder of the table (a batch in
    flight keeps reading the rows it was given while the store adds others).
    """

    def __init__(self, input_shape: tuple[int, ...], capacity: int = 1):
        self._lower = np.zeros((max(capacity, 1), *input_shape))
        self._upper = np.zeros((max(capacity, 1), *input_shape))
        self.count = 0

    @property
    def lower(self) -> np.ndarray:
        """``(count, *input)`` lower corners."""
        return self._lower[:self.count]

    @property
    def upper(self) -> np.ndarray:
        """``(count, *input)`` upper corners."""
        return self._upper[:self.count]

    def add(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Append boxes ``(n, *input)``; their row indices."""
        n = int(lower.shape[0])
        if self.count + n > self._lower.shape[0]:
            cap = max(2 * self._lower.shape[0], self.count + n)
            for name in ("_lower", "_upper"):
                old = getattr(self, name)
                grown = np.zeros((cap, *old.shape[1:]))
                grown[:self.count] = old[:self.count]
                setattr(self, name, grown)
        rows = np.arange(self.count, self.count + n)
        self._lower[rows], self._upper[rows] = lower, upper
        self.count += n
        return rows

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use."""
        return int(self.lower.nbytes + self.upper.nbytes)


@dataclass(frozen=True)
class DomainLayout:
    """The shapes of one network's domains: ReLU (splittable) nodes and their input tensors, every pre-activation
    tensor with its shape, the input shape, the spec's rows ``S`` and the logits ``C``; ``input_coeffs``: whether
    the bound engine gives the binding row's input coefficients (plain CROWN does, the α/β engine does not);
    ``pool_nodes``: the MaxPool nodes whose windows may be split (none: window splits off), with their input
    tensors, their windows' flat input indices ``(P, K)`` (-1: padding) and their output shapes."""

    relu_nodes: tuple[str, ...]
    relu_tensors: tuple[str, ...]  # the input tensor of each ReLU node, in the same order
    pre_shapes: dict[str, tuple[int, ...]]  # every ReLU/MaxPool input tensor
    input_shape: tuple[int, ...]
    rows: int
    classes: int
    input_coeffs: bool = True
    pool_nodes: tuple[str, ...] = ()
    pool_tensors: tuple[str, ...] = ()
    pool_windows: tuple[np.ndarray, ...] = field(default=(), compare=False)
    pool_out_shapes: tuple[tuple[int, ...], ...] = ()

    def empty(self, n: int) -> Domains:
        """``n`` domains on one all-zero box, no bounds (``-inf``/``+inf``), no splits and nothing known (NaN)."""
        shapes = dict(self.pre_shapes)
        boxes = BoxTable(self.input_shape)
        boxes.add(np.zeros((1, *self.input_shape)), np.zeros((1, *self.input_shape)))
        return Domains(
            box=np.zeros(n, dtype=np.int64), boxes=boxes,
            pre_lower={t: np.full((n, *s), -np.inf, dtype=np.float32) for t, s in shapes.items()},
            pre_upper={t: np.full((n, *s), np.inf, dtype=np.float32) for t, s in shapes.items()},
            splits={m: np.zeros((n, *shapes[t]), dtype=np.int8) for m, t in zip(self.relu_nodes, self.relu_tensors)},
            row_upper=np.full((n, self.rows), np.inf), value=np.full(n, np.inf), depth=np.zeros(n, dtype=np.int32),
            binding=np.full(n, -1, dtype=np.int64),
            relu_coeff={m: np.full((n, *shapes[t]), np.nan, dtype=np.float32)
                        for m, t in zip(self.relu_nodes, self.relu_tensors)},
            input_coeff=np.full((n, *self.input_shape), np.nan, dtype=np.float32) if self.input_coeffs else None,
            pool_excluded={m: np.zeros((n, *w.shape), dtype=bool)
                           for m, w in zip(self.pool_nodes, self.pool_windows)},
            pool_coeff={m: np.full((n, *s), np.nan, dtype=np.float32)
                        for m, s in zip(self.pool_nodes, self.pool_out_shapes)},
            objective=np.full((n, self.classes), np.nan), changed=np.zeros((n, len(self.relu_nodes)), dtype=bool),
            box_changed=np.zeros(n, dtype=bool), stale=np.zeros(n, dtype=bool), warm={})


@dataclass
class Domains:
    """A batch of sub-domains, one row per domain in every field.

    ``box``: each domain's row in ``boxes``, the table of input boxes it shares with the other domains of its
    run (:attr:`lower`/:attr:`upper` gather them); ``pre_lower``/``pre_upper``: bounds of every ReLU/MaxPool
    input tensor valid on the domain (float32, rounded outward); ``splits``: per ReLU node, int8 signs over its
    input's shape (``+1``: ``z >= 0``, ``-1``: ``z <= 0``, ``0``: free); ``row_upper``: upper bounds of the spec's
    rows (``+inf`` unknown; a child's never exceed its parent's); ``value``: the spec's worst bound
    (:meth:`OutputSpec.value`); ``binding``: the row deciding it (-1: none yet); ``relu_coeff``/``input_coeff``: that
    row's coefficients on each ReLU output / the input in the last bound (NaN: unknown; ``input_coeff`` None: the
    engine gives none), what branching scores; ``pool_excluded``: per MaxPool node whose windows may be split, bool
    ``(P, K)`` per domain, the window entries ruled out of attaining the window's maximum on the domain (window
    splits, see :func:`~mlrobust.verify.bab.split.split_windows`); ``pool_coeff``: the binding row's coefficients
    on those nodes' outputs (NaN: unknown);
    ``objective``: that row's lower-bound objective where a row mixture makes it vary by domain (NaN: the spec's);
    ``changed``: per ReLU node, whether its input was clamped by a split since the bounds were computed;
    ``box_changed``: the input box shrank since then; ``stale``: its last bounding did not improve on its parent's
    value, so the intermediate bounds it inherited (never re-derived under its splits by the α/β engine) are what
    holds it back: they are recomputed before it is split (:func:`~mlrobust.verify.bab.bounding.refresh_stale`);
    ``warm``: the α/β engine's parameters ``(D, S, ...)`` per ``"group.key"`` (NaN: CROWN's default).
    """

    box: np.ndarray
    boxes: BoxTable
    pre_lower: dict[str, np.ndarray]
    pre_upper: dict[str, np.ndarray]
    splits: dict[str, np.ndarray]
    row_upper: np.ndarray
    value: np.ndarray
    depth: np.ndarray
    binding: np.ndarray
    relu_coeff: dict[str, np.ndarray]
    pool_excluded: dict[str, np.ndarray]
    pool_coeff: dict[str, np.ndarray]
    input_coeff: np.ndarray | None
    objective: np.ndarray
    changed: np.ndarray
    box_changed: np.ndarray
    stale: np.ndarray
    warm: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return int(self.value.shape[0])

    @property
    def lower(self) -> np.ndarray:
        """``(D, *input)`` lower corners of the domains' boxes (a copy)."""
        return self.boxes.lower[self.box]

    @property
    def upper(self) -> np.ndarray:
        """``(D, *input)`` upper corners of the domains' boxes (a copy)."""
        return self.boxes.upper[self.box]

    def set_boxes(self, lower: np.ndarray, upper: np.ndarray) -> None:
        """Give the domains the boxes ``lower``/``upper`` ``(D, *input)``: each distinct one becomes a new row of
        the table (the table's other rows are left as they are, for whoever else holds them)."""
        if self.size == 0:
            self.box = np.zeros(0, dtype=np.int64)
            return
        flat = np.concatenate([lower.reshape(self.size, -1), upper.reshape(self.size, -1)], axis=1)
        _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
        rows = self.boxes.add(lower[first], upper[first])
        self.box = rows[inverse.reshape(-1)]

    def rows_in(self, table: BoxTable) -> np.ndarray:
        """The domains' box rows in ``table``, copying the boxes they use there unless it is their own table."""
        if self.boxes is table:
            return self.box
        used, inverse = np.unique(self.box, return_inverse=True)
        return table.add(self.boxes.lower[used], self.boxes.upper[used])[inverse.reshape(-1)]

    def take(self, idx: np.ndarray) -> Domains:
        """A copy of domains ``idx`` (repeats allowed: the children of one parent start as copies of it); the box
        table is shared, not copied."""
        i = np.asarray(idx, dtype=np.int64)
        arrays: dict[str, Any] = {f: getattr(self, f)[i] for f in ARRAY_FIELDS}
        optional: dict[str, Any] = {f: None if getattr(self, f) is None else getattr(self, f)[i]
                                    for f in OPTIONAL_FIELDS}
        dicts: dict[str, Any] = {f: {k: v[i] for k, v in getattr(self, f).items()} for f in DICT_FIELDS}
        ti = torch.as_tensor(i)
        warm = {k: v[ti.to(v.device)] for k, v in self.warm.items()}
        return Domains(**arrays, **optional, **dicts, boxes=self.boxes, warm=warm)

    @property
    def nbytes(self) -> int:
        """Bytes of these arrays, the warm starts and the box table's rows in use."""
        total = sum(getattr(self, f).nbytes for f in ARRAY_FIELDS)
        total += sum(getattr(self, f).nbytes for f in OPTIONAL_FIELDS if getattr(self, f) is not None)
        total += sum(v.nbytes for f in DICT_FIELDS for v in getattr(self, f).values())
        total += sum(v.element_size() * v.nelement() for v in self.warm.values())
        return int(total + self.boxes.nbytes)

    def nbytes_per_domain(self) -> int:
        """Bytes one domain takes in these arrays (its warm start and its share of the box table included)."""
        return self.nbytes // max(self.size, 1)


def concat(parts: list[Domains]) -> Domains:
    """The domains of ``parts`` one after the other (same layout; warm keys missing in a part are NaN there; the
    boxes in the first part's table)."""
    if len(parts) == 1:
        return parts[0]
    boxes = parts[0].boxes
    arrays: dict[str, Any] = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ARRAY_FIELDS}
    arrays["box"] = np.concatenate([p.rows_in(boxes) for p in parts])
    for f in OPTIONAL_FIELDS:
        arrays[f] = None if getattr(parts[0], f) is None else np.concatenate([getattr(p, f) for p in parts])
    dicts: dict[str, Any] = {f: {k: np.concatenate([getattr(p, f)[k] for p in parts]) for k in getattr(parts[0], f)}
             for f in DICT_FIELDS}
    warm: dict[str, torch.Tensor] = {}
    for key in {k for p in parts for k in p.warm}:
        like = next(p.warm[key] for p in parts if key in p.warm)
        pieces = [p.warm[key] if key in p.warm and p.warm[key].shape[1:] == like.shape[1:]
                  else torch.full((p.size, *like.shape[1:]), float("nan"), dtype=like.dtype, device=like.device)
                  for p in parts]
        warm[key] = torch.cat(pieces)
    return Domains(**arrays, **dicts, boxes=boxes, warm=warm)


class DomainStore:
    """Every open domain in preallocated buffers (grown by doubling); a free slot is marked dead.

    :meth:`pop` takes the ``n`` worst domains (largest ``value``, ties in insertion order), :meth:`push` writes a
    batch into free slots, :meth:`prune` drops every domain whose value is below a threshold (proven) and returns
    those values. All three are array operations over the slots. The boxes live in one table: popped domains and
    their ReLU-split children point into it, so pushing them back copies nothing; boxes from elsewhere (input
    bisection's halves, a batch built apart) are copied in, and the table is rebuilt from the open domains' boxes
    when most of its rows belong to closed ones.
    """

    def __init__(self, layout: DomainLayout, capacity: int = 64):
        self.layout = layout
        self._buf = layout.empty(capacity)
        self._buf.boxes = BoxTable(layout.input_shape)  # free slots read no box: the table holds open ones' only
        self._alive = np.zeros(capacity, dtype=bool)
        self._order = np.zeros(capacity, dtype=np.int64)  # insertion counter: ties broken first in, first out
        self._pushed = 0
        self._grow_per_slot = 0.0  # the last growth's seconds per slot copied (see grow_seconds)

    def __len__(self) -> int:
        return int(self._alive.sum())

    @property
    def capacity(self) -> int:
        return int(self._alive.size)

    def grow_seconds(self, n: int) -> float:
        """What pushing ``n`` domains will take to grow the buffers (0 when they fit), at the last growth's seconds
        per slot copied: a growth copies every slot, a cost a deadline must keep back when it is due."""
        if self.capacity - len(self) >= n:
            return 0.0
        return self._grow_per_slot * self.capacity

    def push(self, doms: Domains) -> None:
        """Add the domains of ``doms`` (copied into the buffers)."""
        n = doms.size
        if n == 0:
            return
        free = np.flatnonzero(~self._alive)
        if free.size < n:
            t0 = time.perf_counter()
            copied = self.capacity
            self._grow(self.capacity + n - free.size)
            if copied:
                self._grow_per_slot = (time.perf_counter() - t0) / copied
            free = np.flatnonzero(~self._alive)
        slots = free[:n]
        self._write(slots, doms)
        self._alive[slots] = True
        self._order[slots] = self._pushed + np.arange(n)
        self._pushed += n

    def ranked(self, n: int | None = None) -> np.ndarray:
        """Slots of the ``n`` worst open domains (all with None), worst first."""
        live = np.flatnonzero(self._alive)
        value = self._buf.value[live]
        if n is not None and n < live.size:
            # only the n largest need ordering: partition first (ties at the cut are settled by the full key below)
            cut = -np.partition(-value, n - 1)[n - 1]
            keep = value >= cut
            live, value = live[keep], value[keep]
        ordered = live[np.lexsort((self._order[live], -value))]
        return ordered if n is None else ordered[:n]

    def pop(self, n: int) -> Domains:
        """Remove and return the ``n`` worst open domains, worst first."""
        slots = self.ranked(n)
        out = self._buf.take(slots)
        self._alive[slots] = False
        return out

    def peek(self, n: int) -> Domains:
        """The ``n`` worst open domains (copies), worst first; the store is unchanged."""
        return self._buf.take(self.ranked(n))

    def worst(self) -> float:
        """The largest value of an open domain (``-inf`` when none is open)."""
        return float(self._buf.value[self._alive].max()) if self._alive.any() else float("-inf")

    def prune(self, below: float) -> np.ndarray:
        """Drop every open domain whose value is below ``below``; their values."""
        gone = self._alive & (self._buf.value < below)
        self._alive[gone] = False
        return self._buf.value[gone].copy()

    def bytes_per_domain(self) -> int:
        """Bytes one slot takes in the buffers (bounds, splits, coefficients, warm start, its share of the boxes)."""
        return self._buf.nbytes_per_domain()

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold, free slots included (they are allocated), and the box table's rows in use."""
        return self._buf.nbytes

    def nbytes_after_push(self, doms: Domains) -> int:
        """Bytes the store would hold at most once ``doms`` are pushed: the buffers grow by doubling when the free
        slots do not suffice, a slot takes what one of ``doms`` takes where that is more (a warm-start parameter the
        store has no column for yet adds one to every slot), and boxes from another table are copied in."""
        free = self.capacity - len(self)
        slots = self.capacity if doms.size <= free else max(2 * self.capacity, self.capacity + doms.size - free)
        mine = -(-(self._buf.nbytes - self.boxes.nbytes) // self.capacity)  # a slot's bytes, rounded up
        theirs = -(-(doms.nbytes - doms.boxes.nbytes) // max(doms.size, 1))
        copied = 0 if doms.boxes is self.boxes else doms.size * 2 * self.boxes.lower[:1].itemsize * int(
            np.prod(self.layout.input_shape))
        return int(slots * max(mine, theirs) + self.boxes.nbytes + copied)

    @property
    def boxes(self) -> BoxTable:
        """The table the open domains' boxes are in."""
        return self._buf.boxes

    # --- buffers -------------------------------------------------------------------------------------------------
    def _grow(self, needed: int) -> None:
        cap = max(2 * self.capacity, needed)
        old, n = self._buf, self.capacity
        new = self.layout.empty(cap)
        new.boxes = old.boxes
        for f in (*ARRAY_FIELDS, *OPTIONAL_FIELDS):
            if getattr(old, f) is not None:
                getattr(new, f)[:n] = getattr(old, f)
        for f in DICT_FIELDS:
            for k, v in getattr(old, f).items():
                getattr(new, f)[k][:n] = v
        for k, v in old.warm.items():
            grown = torch.full((cap, *v.shape[1:]), float("nan"), dtype=v.dtype, device=v.device)
            grown[:n] = v
            new.warm[k] = grown
        self._buf = new
        self._alive = np.concatenate([self._alive, np.zeros(cap - n, dtype=bool)])
        self._order = np.concatenate([self._order, np.zeros(cap - n, dtype=np.int64)])

    def _compact_boxes(self) -> None:
        """A new table of only the open domains' boxes (batches in flight keep the old one, which stays intact)."""
        buf, alive = self._buf, self._alive
        used, inverse = np.unique(buf.box[alive], return_inverse=True)
        table = BoxTable(self.layout.input_shape, capacity=2 * used.size)
        table.add(buf.boxes.lower[used], buf.boxes.upper[used])
        buf.box[alive] = inverse.reshape(-1)
        buf.boxes = table

    def _write(self, slots: np.ndarray, doms: Domains) -> None:
        buf = self._buf
        buf.box[slots] = doms.rows_in(buf.boxes)
        if buf.boxes.count > 2 * (len(self) + slots.size) + 64:
            self._alive[slots] = True  # (the caller marks them too) so that their boxes are kept
            self._compact_boxes()
        for f in ARRAY_FIELDS:
            if f != "box":
                getattr(buf, f)[slots] = getattr(doms, f)
        for f in OPTIONAL_FIELDS:
            mine, theirs = getattr(buf, f), getattr(doms, f)
            if mine is not None:
                mine[slots] = np.nan if theirs is None else theirs
        for f in DICT_FIELDS:
            for k, v in getattr(doms, f).items():
                getattr(buf, f)[k][slots] = v
        ts = torch.as_tensor(slots)
        for k, v in doms.warm.items():
            mine = buf.warm.get(k)
            if mine is None or mine.shape[1:] != v.shape[1:]:
                # a parameter not seen before (or of another shape): the other slots have no value for it
                mine = torch.full((self.capacity, *v.shape[1:]), float("nan"), dtype=torch.float32, device=v.device)
                buf.warm[k] = mine
            mine[ts.to(mine.device)] = v.to(mine.device, mine.dtype)
        for k, mine in buf.warm.items():
            if k not in doms.warm:
                mine[ts.to(mine.device)] = float("nan")
