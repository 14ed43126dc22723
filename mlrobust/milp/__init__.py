"""The exact encoding: bound tightening and the big-M MILP of a network with a top-k (or disjunctive) objective."""

from mlrobust.milp.builder import MilpBuilder, build_topk_milp, topk_model
from mlrobust.milp.disjunction import Clause, add_disjunction
from mlrobust.milp.problem import MilpProblem
from mlrobust.milp.pyomo_model import to_pyomo
from mlrobust.milp.tightening import METHODS as TIGHTENING_METHODS
from mlrobust.milp.tightening import Tightened, tighten
from mlrobust.milp.topk import TopKObjective, add_topk

__all__ = ["MilpBuilder", "build_topk_milp", "topk_model", "MilpProblem", "to_pyomo", "tighten", "Tightened",
           "TIGHTENING_METHODS", "add_topk", "TopKObjective", "Clause", "add_disjunction"]
