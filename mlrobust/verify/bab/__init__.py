"""Branch and bound: split the box (ReLU phases, or input intervals for small inputs) until bounds decide each part.

One job per module: :mod:`.spec` (what a domain must prove: the property as clauses of affine rows of the
logits), :mod:`.store` (the open domains as a struct of arrays), :mod:`.branching` (the strategies that rank splits
for a whole batch), :mod:`.split` (children of a batch, one or several levels deep), :mod:`.bounding` (a batch of
children bounded and folded into their arrays), :mod:`.milp_handoff` (the last open domains decided by the MILP),
:mod:`.loop` (:class:`BabVerifier`: the rounds and the verdict) and :mod:`.options` (the knobs).

Sigmoid/Tanh pre-activations are split like ReLUs, at their inflection point 0 (each side is then convex or
concave); a neuron is split once, after which the input is bisected.
"""

import numpy as np

from mlrobust.verify.bab.loop import ROOT_INTERMEDIATE_MAX_COST, BabVerifier
from mlrobust.verify.bab.options import BRANCHING, ENGINES, BabOptions, BabResult
from mlrobust.verify.bab.spec import MAX_CLAUSES, PAIR_WEIGHTS, OutputSpec, clause_spec, open_rows, topk_spec
from mlrobust.verify.bab_bounds import Domain


def _open_rows(spec: OutputSpec, domains: list[Domain]) -> np.ndarray | None:
    """:func:`open_rows` of :class:`Domain` objects (a domain without row bounds leaves every clause open)."""
    if not domains:
        return None
    ub = np.stack([np.full(spec.rows.shape[0], np.inf) if d.row_upper is None else d.row_upper for d in domains])
    return open_rows(spec, ub)


__all__ = ["BRANCHING", "ENGINES", "MAX_CLAUSES", "PAIR_WEIGHTS", "ROOT_INTERMEDIATE_MAX_COST", "BabOptions",
           "BabResult", "BabVerifier", "OutputSpec", "clause_spec", "open_rows", "topk_spec"]
