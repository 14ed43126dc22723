"""A complete custom MILP solver backend for mlrobust: SciPy's ``scipy.optimize.milp``.

A backend is any object with ``name``, ``available()`` and ``solve(problem, *, time_limit, stop, pool)`` returning
a :class:`mlrobust.backends.base.SolveResult`. mlrobust trusts exactly two numbers from it: the proven upper bound
on the optimum (``bound``, for Robust verdicts) and the incumbent point (``x``, which it re-checks on the network
before reporting a counterexample). This one hands the matrix form of the MILP to SciPy in one call.

Run it (from the repository root):

    python examples/custom_backend.py examples/models/mnist2_pgd.onnx examples/images/ex00.png \
        --target 7 --object-mask examples/images/ex00_perturbed.png --object-eps 0.1

Use it in your own code by passing the object, or register a name for it::

    mlrobust.check(model, image, target, eps, solver=ScipyMilpBackend())
    register_backend("scipy", ScipyMilpBackend)            # then solver="scipy", or --solver scipy in Python runs

A package makes it available to the command line too, with an entry point in its pyproject.toml::

    [project.entry-points."mlrobust.solvers"]
    scipy = "my_package.backend:ScipyMilpBackend"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from mlrobust.backends.base import ERROR, INFEASIBLE, OPTIMAL, TIME_LIMIT, SolveResult, StopRule
from mlrobust.milp.problem import MilpProblem


@contextlib.contextmanager
def _quiet_stdout():
    """SciPy's bundled HiGHS prints debug lines from C++ straight to file descriptor 1; send them to /dev/null."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (e.g. captured by a test runner)
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


class ScipyMilpBackend:
    """``scipy.optimize.milp`` (HiGHS inside SciPy). It has no callback, so decide mode solves to optimality."""

    name = "scipy"
    install_hint = "pip install 'scipy>=1.11'"

    def __init__(self, mip_rel_gap: float = 1e-4):
        self.mip_rel_gap = mip_rel_gap

    def available(self) -> bool:
        try:
            from scipy.optimize import milp  # noqa: F401
        except ImportError:
            return False
        return True

    def solve(self, problem: MilpProblem, *, time_limit: float | None = None, stop: StopRule | None = None,
              pool: int = 0) -> SolveResult:
        from scipy.optimize import Bounds, LinearConstraint, milp

        start = time.perf_counter()
        options = {"mip_rel_gap": self.mip_rel_gap, "disp": False}
        if time_limit is not None:
            options["time_limit"] = max(float(time_limit), 0.01)
        constraints = [LinearConstraint(problem.A, problem.row_lower, problem.row_upper)] if problem.num_rows else []
        # mlrobust MILPs maximise; scipy minimises: negate the objective, and the bounds on the way back.
        with _quiet_stdout():
            res = milp(-problem.objective, integrality=problem.integer.astype(np.uint8),
                       bounds=Bounds(problem.col_lower, problem.col_upper), constraints=constraints, options=options)
        seconds = time.perf_counter() - start
        x = None if res.x is None else np.asarray(res.x, dtype=np.float64)
        objective = None if x is None else problem.objective_value(x)
        dual = getattr(res, "mip_dual_bound", None)
        bound = float("inf") if dual is None or not np.isfinite(dual) else -float(dual) + problem.offset
        if res.status == 0:
            status = OPTIMAL
            if not np.isfinite(bound) and objective is not None:
                bound = objective  # an LP without integers: its optimum is its bound
        elif res.status == 1:
            status = TIME_LIMIT
        elif res.status == 2:
            status, bound = INFEASIBLE, float("-inf")
        else:
            status = ERROR
        return SolveResult(status=status, objective=objective, bound=bound, x=x, seconds=seconds,
                           nodes=getattr(res, "mip_node_count", None), solver=self.name, message=str(res.message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check one layered neighborhood with SciPy's MILP solver and "
                                     "compare with HiGHS")
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--object-mask", required=True)
    parser.add_argument("--object-eps", type=float, default=0.1, help="epsilon of layer 0 (the perturbed object)")
    parser.add_argument("--eps", type=float, default=0.0, help="epsilon of every other layer")
    parser.add_argument("--time-limit", type=float, default=60.0)
    args = parser.parse_args(argv)

    import mlrobust
    from mlrobust.backends.registry import register_backend
    from mlrobust.neighborhood.image_io import read_mask
    from mlrobust.neighborhood.layers import layer_index

    register_backend("scipy", ScipyMilpBackend)
    layers = int(layer_index(read_mask(args.object_mask)).max()) + 1
    eps = [args.object_eps] + [args.eps] * (layers - 1)
    for solver in ("scipy", "highs"):
        # the exact MILP verifier alone (no attack or bound tier in front), so the backend decides
        res = mlrobust.check(args.model, args.image, args.target, eps, object_mask=args.object_mask,
                             verifier="milp", solver=solver, time_limit=args.time_limit)
        print(f"{solver:6s} {res.status:11s} decided by {res.tier} in {sum(res.seconds.values()):.2f} s"
              + (f", proven bound {res.bound:.4g}" if res.bound is not None and np.isfinite(res.bound) else "")
              + (f", counterexample margin {res.margin:+.4g}" if res.margin is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
