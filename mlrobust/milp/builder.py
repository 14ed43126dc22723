"""Walks the IR in topological order and emits the MILP: input columns, per-op encodings, an objective.

Columns are made only for what the bounds leave open: input pixels the box fixes are constants, stable ReLUs and
single-candidate max-pool windows add nothing. Before a ReLU or MaxPool is encoded, its input bounds are intersected
with the interval of its affine form over the current column bounds (MIPVerify's "interval arithmetic" on
expressions, sound and often tighter than plain IBP), so the big-M constants are as small as the bounds allow.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from mlrobust.bounds.result import Bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network, Node
from mlrobust.milp.encoding import AffineForm, Encoding
from mlrobust.milp.layers.maxpool import PoolColumns
from mlrobust.milp.layers.relu import ReluColumns
from mlrobust.milp.problem import MilpProblem
from mlrobust.milp.topk import TopKObjective, add_topk, margin_form
from mlrobust.ops.smooth import SmoothColumns


class MilpBuilder:
    """Incremental encoder of one network over one input box (given as the input bounds of ``bounds``).

    ``step()`` encodes the next node; LP tightening interleaves it with bound updates (``set_bounds``) so each
    layer is encoded with the tightest bounds known by then.
    """

    def __init__(self, network: Network, bounds: Bounds):
        self.network = network
        self.enc = Encoding()
        self.lower: dict[str, np.ndarray] = dict(bounds.lower)
        self.upper: dict[str, np.ndarray] = dict(bounds.upper)
        self.forms: dict[str, AffineForm] = {}
        self.layer_stats: dict[str, dict] = {}
        self.columns: dict[str, ReluColumns | PoolColumns | SmoothColumns] = {}
        # ReLUs whose output only feeds MaxPools are encoded inside the pool (max(0, window)): relu output -> input
        self.fused: dict[str, str] = {}
        self.topk: TopKObjective | None = None
        self.position = 0
        self.seconds = 0.0
        start = time.perf_counter()
        lo = np.asarray(bounds.input_lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(bounds.input_upper, dtype=np.float64).reshape(-1)
        free = lo < hi
        cols = self.enc.add_columns(lo[free], hi[free], False, "input")
        self.input_cols = np.full(lo.size, -1, dtype=np.int64)
        self.input_cols[free] = cols
        self.input_base = lo.copy()
        self.forms[network.input_name] = AffineForm(
            sp.csr_matrix((np.ones(cols.size), (np.flatnonzero(free), cols)), shape=(lo.size, self.enc.ncols)),
            np.where(free, 0.0, lo))
        self.seconds += time.perf_counter() - start

    # --- walking ---------------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.position >= len(self.network.nodes)

    @property
    def next_node(self) -> Node | None:
        return None if self.done else self.network.nodes[self.position]

    def form_interval(self, tensor: str) -> tuple[np.ndarray, np.ndarray]:
        col_lower, col_upper, *_ = self.enc.arrays()
        return self.forms[tensor].interval(col_lower, col_upper)

    def set_bounds(self, tensor: str, lower: np.ndarray, upper: np.ndarray) -> None:
        """Intersect the bounds of ``tensor`` with new sound bounds (flattened or shaped)."""
        shape = self.network.shape_of(tensor)
        lo = np.maximum(self.lower[tensor].reshape(-1), np.asarray(lower, dtype=np.float64).reshape(-1))
        hi = np.minimum(self.upper[tensor].reshape(-1), np.asarray(upper, dtype=np.float64).reshape(-1))
        # Sound bounds can only cross by rounding; keep the interval non-empty.
        hi = np.maximum(hi, lo)
        self.lower[tensor], self.upper[tensor] = lo.reshape(shape), hi.reshape(shape)

    def step(self) -> Node:
        node = self.network.nodes[self.position]
        start = time.perf_counter()
        inputs = [self.forms[t] for t in node.inputs]
        shapes = [self.network.shape_of(t) for t in node.inputs]
        out = node.op.encode_milp(self, node, inputs, shapes)  # the op's own rule (mlrobust.ops)
        self.forms[node.output] = out
        self.position += 1
        self.seconds += time.perf_counter() - start
        return node

    def _feeds_only_pools(self, node: Node) -> bool:
        """True when every consumer of ``node``'s output encodes the ReLU before it itself (``absorbs_relu``)."""
        consumers = self.network.consumers(node.output)
        return (node.output != self.network.output_name and bool(consumers)
                and all(c.op.absorbs_relu and c.inputs[0] == node.output for c in consumers))

    def run(self) -> "MilpBuilder":
        while not self.done:
            self.step()
        return self

    # --- results ---------------------------------------------------------------------------------------------------
    @property
    def output_form(self) -> AffineForm:
        return self.forms[self.network.output_name]

    def margin_interval(self, target: int) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on ``y_c - y_target`` for every class from the output form (target entry 0)."""
        col_lower, col_upper, *_ = self.enc.arrays()
        D, classes = margin_form(self.output_form, target, self.enc.ncols)
        lo, hi = D.interval(col_lower, col_upper)
        L = np.zeros(self.output_form.size)
        U = np.zeros(self.output_form.size)
        L[classes], U[classes] = lo, hi
        return L, U

    def unstable_relus(self) -> int:
        return sum(s["unstable"] for s in self.layer_stats.values() if s["kind"] == "Relu")

    def add_topk(self, target: int, k: int, margin_lower: np.ndarray | None = None,
                 margin_upper: np.ndarray | None = None, prune_below: float | None = None) -> TopKObjective:
        """Add the top-k objective; given margin bounds are intersected with the output form's own interval."""
        start = time.perf_counter()
        L, U = self.margin_interval(target)
        if margin_lower is not None:
            L = np.maximum(L, np.asarray(margin_lower, dtype=np.float64).reshape(-1))
        if margin_upper is not None:
            U = np.minimum(U, np.asarray(margin_upper, dtype=np.float64).reshape(-1))
        U = np.maximum(U, L)
        obj = add_topk(self.enc, self.output_form, target, k, L, U, prune_below)
        self.topk = obj
        self.target, self.k = target, k
        self.seconds += time.perf_counter() - start
        return obj

    def assignment(self, x: np.ndarray) -> np.ndarray:
        """The column values a real input ``x`` (per-sample shape) implies: a feasible point of the MILP.

        Used to check the encoding (every input of the box must be feasible, with objective = its real margin)
        and to hand a known point (e.g. the attack's best) to a solver as a start.
        """
        v = np.zeros(self.enc.ncols)
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        free = self.input_cols >= 0
        v[self.input_cols[free]] = flat[free]
        values = self.network.forward(np.asarray(x, dtype=np.float64)[None], return_all=True)
        for node in self.network.nodes:
            cols = self.columns.get(node.name)
            pre = values[self.fused.get(node.inputs[0], node.inputs[0])][0].reshape(-1)
            if isinstance(cols, PoolColumns):
                cols.assign(v, pre, values[node.output][0].reshape(-1))
            elif cols is not None:  # ReLU and Sigmoid/Tanh columns: values of the pre-activation
                cols.assign(v, pre)
        if self.topk is not None:
            logits = values[self.network.output_name][0].reshape(-1)
            d = logits[self.topk.classes] - logits[self.target]
            order = np.argsort(-d, kind="stable")
            v[self.topk.objective_col] = d[order[self.k - 1]]
            if self.topk.class_binaries.size:
                z = np.zeros(d.size)
                z[order[: self.k]] = 1.0
                v[self.topk.class_binaries] = z
        return v

    def problem(self, objective_col: int, extra_stats: dict | None = None) -> MilpProblem:
        """Snapshot of the model, maximising column ``objective_col``."""
        start = time.perf_counter()
        col_lower, col_upper, integer, A, row_lower, row_upper = self.enc.arrays()
        c = np.zeros(self.enc.ncols)
        c[objective_col] = 1.0
        unstable = self.unstable_relus()
        stats = {
            "unstable_relus": unstable,
            "relu_binaries": int(sum(s["binaries"] for s in self.layer_stats.values() if s["kind"] == "Relu")),
            "maxpool_binaries": int(sum(s["binaries"] for s in self.layer_stats.values()
                                        if s["kind"] == "MaxPool2d")),
            "free_inputs": int(np.count_nonzero(self.input_cols >= 0)),
            "layers": {k: dict(v) for k, v in self.layer_stats.items()},
            **(extra_stats or {}),
        }
        self.seconds += time.perf_counter() - start
        stats["build_seconds"] = self.seconds
        return MilpProblem(col_lower.copy(), col_upper.copy(), integer.copy(), A, row_lower.copy(),
                           row_upper.copy(), c, 0.0, self.input_cols.copy(), self.input_base.copy(),
                           self.network.sample_shape, objective_col, self.enc.col_kinds(), self.enc.row_kinds(),
                           stats)


def topk_model(network: Network, bounds: Bounds, target: int, k: int, margin_lower: np.ndarray | None = None,
               margin_upper: np.ndarray | None = None,
               prune_below: float | None = None) -> tuple[MilpBuilder, MilpProblem]:
    """The top-k MILP for ``network`` over the box of ``bounds`` and the builder that made it.

    ``prune_below`` (decide mode): see :func:`mlrobust.milp.topk.add_topk`; the problem's stats then carry
    ``dropped_upper``, which caps the optimum of the classes left out.
    """
    if isinstance(target, bool) or not 0 <= int(target) < network.num_classes:
        raise InputError(f"target {target} is not a label of this model (labels 0..{network.num_classes - 1})")
    if not 1 <= k < network.num_classes:
        raise InputError(f"k must be between 1 and {network.num_classes - 1} for a model with "
                         f"{network.num_classes} labels")
    builder = MilpBuilder(network, bounds).run()
    obj = builder.add_topk(int(target), int(k), margin_lower, margin_upper, prune_below)
    problem = builder.problem(obj.objective_col, {
        "class_binaries": int(obj.class_binaries.size), "classes_pruned": obj.pruned,
        "dropped_upper": obj.dropped_upper,
        "margin_lower_bound": obj.m_lower, "margin_upper_bound": obj.m_upper, "target": int(target), "k": int(k),
    })
    return builder, problem


def build_topk_milp(network: Network, bounds: Bounds, target: int, k: int,
                    margin_lower: np.ndarray | None = None, margin_upper: np.ndarray | None = None,
                    prune_below: float | None = None) -> MilpProblem:
    """The whole top-k MILP for ``network`` over the box of ``bounds``: maximise the k-th largest margin."""
    return topk_model(network, bounds, target, k, margin_lower, margin_upper, prune_below)[1]
