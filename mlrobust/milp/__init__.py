"""The exact encoding: bound tightening and the big-M MILP of a network with a top-k (or disjunctive) objective.

The names are loaded on first use (PEP 562): a light submodule such as :mod:`mlrobust.milp.clause` can be imported
without the builder, the solvers' data structures and Pyomo.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "MilpBuilder": ("builder", "MilpBuilder"), "build_topk_milp": ("builder", "build_topk_milp"),
    "topk_model": ("builder", "topk_model"),
    "Clause": ("clause", "Clause"), "add_disjunction": ("disjunction", "add_disjunction"),
    "MilpProblem": ("problem", "MilpProblem"), "to_pyomo": ("pyomo_model", "to_pyomo"),
    "TIGHTENING_METHODS": ("tightening", "METHODS"), "Tightened": ("tightening", "Tightened"),
    "tighten": ("tightening", "tighten"),
    "TopKObjective": ("topk", "TopKObjective"), "add_topk": ("topk", "add_topk"),
}

__all__ = ["MilpBuilder", "build_topk_milp", "topk_model", "MilpProblem", "to_pyomo", "tighten", "Tightened",
           "TIGHTENING_METHODS", "add_topk", "TopKObjective", "Clause", "add_disjunction"]

if TYPE_CHECKING:  # what the type checker (and an IDE) sees: the eager imports
    from mlrobust.milp.builder import MilpBuilder, build_topk_milp, topk_model
    from mlrobust.milp.clause import Clause
    from mlrobust.milp.disjunction import add_disjunction
    from mlrobust.milp.problem import MilpProblem
    from mlrobust.milp.pyomo_model import to_pyomo
    from mlrobust.milp.tightening import METHODS as TIGHTENING_METHODS
    from mlrobust.milp.tightening import Tightened, tighten
    from mlrobust.milp.topk import TopKObjective, add_topk


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'mlrobust.milp' has no attribute {name!r}")
    module, attr = where
    value = getattr(importlib.import_module(f"mlrobust.milp.{module}"), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
