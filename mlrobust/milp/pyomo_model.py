"""The MILP as a Pyomo ``ConcreteModel``, for CBC and any other solver Pyomo can drive.

Built in bulk from the matrix form: one indexed variable ``v`` (bounds and domains set in a loop over columns),
one indexed constraint ``rows`` whose rule returns a prebuilt ``LinearExpression`` per CSR row (measured about twice
as fast as a rule that calls ``sum()``; Pyomo 6.10's ``MatrixConstraint`` fails in every writer, so it is not used),
and ``obj`` maximising the objective.
"""

from __future__ import annotations

import numpy as np

from mlrobust.milp.problem import MilpProblem


def to_pyomo(problem: MilpProblem, minimize: bool = False):
    """A Pyomo model of ``problem``: variables ``model.v[j]``, constraints ``model.rows[i]``, objective ``model.obj``.

    ``minimize=True`` states the objective as ``minimise -(c·v + offset)`` (same optimum, sign flipped).
    """
    import pyomo.environ as pyo
    from pyomo.core.expr.numeric_expr import LinearExpression

    model = pyo.ConcreteModel(name="mlrobust_milp")
    n = problem.num_cols
    model.v = pyo.Var(range(n), domain=pyo.Reals)
    variables = [model.v[j] for j in range(n)]
    lower, upper, integer = problem.col_lower.tolist(), problem.col_upper.tolist(), problem.integer.tolist()
    binary = (problem.col_lower == 0) & (problem.col_upper == 1)
    for j, var in enumerate(variables):
        if integer[j]:
            var.domain = pyo.Binary if binary[j] else pyo.Integers
        var.setlb(lower[j])
        var.setub(upper[j])
    A = problem.A
    indptr, indices, data = A.indptr, A.indices.tolist(), A.data.tolist()
    row_lower = [None if not np.isfinite(b) else float(b) for b in problem.row_lower]
    row_upper = [None if not np.isfinite(b) else float(b) for b in problem.row_upper]

    def rule(_m, i):
        s, e = indptr[i], indptr[i + 1]
        expr = LinearExpression(constant=0.0, linear_coefs=data[s:e], linear_vars=[variables[j] for j in indices[s:e]])
        lo, hi = row_lower[i], row_upper[i]
        if lo is not None and lo == hi:
            return expr == lo
        return (lo, expr, hi)

    model.rows = pyo.Constraint(range(problem.num_rows), rule=rule)
    nz = np.flatnonzero(problem.objective)
    sign = -1.0 if minimize else 1.0
    model.obj = pyo.Objective(
        expr=LinearExpression(constant=sign * float(problem.offset), linear_coefs=(sign * problem.objective[nz]).tolist(),
                              linear_vars=[variables[j] for j in nz]),
        sense=pyo.minimize if minimize else pyo.maximize)
    return model


def values_from_pyomo(model, problem: MilpProblem) -> np.ndarray | None:
    """Column values of the solution loaded into ``model`` (None if a variable used by the model has no value).

    Solvers are not told about columns that occur in no row and not in the objective (an input pixel no weight
    reads, say); any value within their bounds will do, and they get their lower bound.
    """
    vals = [model.v[j].value for j in range(problem.num_cols)]
    unused = (np.diff(problem.A.tocsc().indptr) == 0) & (problem.objective == 0)
    out = np.empty(problem.num_cols)
    for j, v in enumerate(vals):
        if v is None:
            if not unused[j]:
                return None
            v = problem.col_lower[j]
        out[j] = v
    return out
