"""MILP solver backends: a small protocol, the shipped solvers (HiGHS, CBC, SCIP, Gurobi, any Pyomo solver) and a
registry that also finds third-party backends through the ``mlrobust.solvers`` entry-point group."""

from mlrobust.backends.base import SolverBackend, SolveResult, StopRule
from mlrobust.backends.registry import (
                                        ENTRY_POINT_GROUP,
                                        available_backends,
                                        backend_names,
                                        get_backend,
                                        register_backend,
)

__all__ = ["SolverBackend", "SolveResult", "StopRule", "get_backend", "register_backend", "available_backends",
           "backend_names", "ENTRY_POINT_GROUP"]
