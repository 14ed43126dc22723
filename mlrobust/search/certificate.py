"""Search along the certificate: grow the epsilon vector to what the bound (CROWN) can prove, directly.

CROWN's back-substitution ends in a linear bound of every margin over the input box it was computed on,
``y_c - y_t <= A_c . x + b_c`` for all ``x`` in ``box(eps_ref)`` (the ReLU relaxations are built from that box's
intermediate bounds). Concretised over a layered box ``box(eps)`` inside it, the bound is an explicit function of
the epsilons:

    U_c(eps) = b_c + A_c . x0 + sum_i |A_c,i| * min(room_c,i, eps_layer(i)),

``room_c,i`` being how far pixel ``i`` can move in the direction its coefficient pays for (``1 - x0_i`` up,
``x0_i`` down). Every ``U_c`` is increasing and concave in each epsilon, with the exact (sub)gradient
``dU_c/d eps_d = sum of |A_c,i|`` over the pixels of layer ``d`` whose room is not yet used up. The top-k property
holds on ``box(eps)`` when all but the ``k - 1`` largest ``U_c`` are ``<= -tolerance``.

One step: compute the certificate on a trust region ``eps_ref = eps* + eta * w / max(w)`` (clipped to saturation)
around the proven ``eps*``, then maximise ``w . eps`` over ``floor <= eps <= eps_ref`` subject to the certificate's
constraint — a knapsack with concave costs, filled greedily by the best ratio of size gained to bound spent (whole
layers first, the last one by bisection). The candidate is then *queried* like any other (the cheap tiers recompute
the bounds on its own, smaller box, which are at least as tight as the certificate's up to rounding): nothing is
accepted on the strength of the surrogate. A proven candidate becomes ``eps*`` and the trust radius doubles when the
whole region was proven; otherwise it halves. Where the bound can no longer prove any growth, the complete verifier
takes over (the optimizer's refinement with the MILP, then the per-layer upper bounds and maximality check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlrobust.bounds.alpha_crown import AlphaOptions, alpha_bounds, initial_domain
from mlrobust.bounds.crown import BackSubstitution, crown
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.search.problem import SearchProblem
from mlrobust.verify.verdict import ROBUST_TOLERANCE

#: The certificate must leave this margin below zero (beyond the verifier's own tolerance) for its candidate.
SLACK = 4 * ROBUST_TOLERANCE
#: The search stops when the trust radius falls below this fraction of the tolerance (steps along the certificate
#: are cheap — two CROWN passes and a bound query — and near the bound's boundary the good ones are small).
MIN_RADIUS = 0.25


@dataclass
class Certificate:
    """Linear upper bounds ``A_c . x + b_c`` of ``y_c - y_t`` (rows: the other classes) valid on ``box(eps_ref)``,
    prepared for concretisation over layered boxes inside it."""

    eps_ref: np.ndarray
    classes: np.ndarray  # (S,) class of each row
    base: np.ndarray  # (S,) b_c + A_c . x0
    weight: np.ndarray  # (S, P) |A_c,i|
    room: np.ndarray  # (S, P) how far pixel i can move in the direction its coefficient pays for
    layer: np.ndarray  # (P,) layer of each element
    k: int

    def upper(self, eps: np.ndarray) -> np.ndarray:
        """``U_c(eps)`` for every row (``eps`` must lie below ``eps_ref``)."""
        moved = np.minimum(self.room, np.asarray(eps, dtype=np.float64)[self.layer][None, :])
        return self.base + (self.weight * moved).sum(axis=1)

    def violation(self, eps: np.ndarray) -> float:
        """The k-th largest ``U_c`` plus the slack: ``<= 0`` where the certificate proves ``box(eps)``."""
        u = np.sort(self.upper(eps))[::-1]
        return float(u[self.k - 1] + SLACK)

    def rates(self, eps: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``dU_c / d eps_d`` (right derivative) for the given rows -> (len(rows), n_layers)."""
        open_ = self.room[rows] > np.asarray(eps)[self.layer][None, :]
        n = int(self.layer.max()) + 1
        out = np.zeros((len(rows), n))
        for j, r in enumerate(rows):
            out[j] = np.bincount(self.layer, weights=self.weight[r] * open_[j], minlength=n)
        return out


def certificate(problem: SearchProblem, eps_ref: np.ndarray, alpha: AlphaOptions | None = None) -> Certificate:
    """The linear bound of every margin ``y_c - y_t`` on ``box(eps_ref)`` before concretisation: CROWN's, or with
    ``alpha`` α-CROWN's (slopes optimised for these rows on this box, :mod:`mlrobust.bounds.alpha_crown`)."""
    network = problem.network
    eps_ref = problem.clip(eps_ref)
    box = problem.box(eps_ref)
    n_cls = network.num_classes
    classes = np.delete(np.arange(n_cls), problem.target)
    coeffs = np.zeros((classes.size, n_cls))
    coeffs[np.arange(classes.size), classes] = -1.0  # lower bound of -(y_c - y_t): an upper bound of the margin
    coeffs[:, problem.target] = 1.0
    bounds = crown(network, box.lower, box.upper)
    if alpha is not None:
        res = alpha_bounds(network, initial_domain(network, box.lower, box.upper, bounds), coeffs, options=alpha)
        if res.input_coeffs is None:
            a = np.zeros((classes.size, problem.x0.size))
        else:
            a = res.input_coeffs[0].reshape(classes.size, -1)
        # lower = a . x* + const at the corner x* the bound picks (its outward rounding stays in const)
        corner = np.where(a >= 0, box.lower.ravel()[None, :], box.upper.ravel()[None, :])
        bias = res.lower[0] - (a * corner).sum(axis=1)
    else:
        engine = BackSubstitution(network, dict(bounds.lower), dict(bounds.upper))
        engine.capture = []
        with torch_threads(1):
            engine.lower_bounds(network.output_name, coeffs)
        a_parts, b_parts = [], []
        for coeff_x, b_part, _ in engine.capture:
            if coeff_x is None:  # the margin does not depend on the input
                a_parts.append(torch.zeros((b_part.shape[0], problem.x0.size), dtype=torch.float64))
            else:
                a_parts.append(torch.as_tensor(coeff_x).reshape(b_part.shape[0], -1))
            b_parts.append(b_part)
        a = torch.cat(a_parts).numpy()
        bias = torch.cat(b_parts).numpy()
    A, b = -a, -bias
    x0 = problem.x0.ravel()
    room = np.where(A > 0, 1.0 - x0[None, :], x0[None, :])
    return Certificate(eps_ref, classes, b + A @ x0, np.abs(A), room, problem.elem_layer, problem.k)


def fill(cert: Certificate, lo: np.ndarray, hi: np.ndarray, weights: np.ndarray, tol: float) -> np.ndarray:
    """A large ``eps`` in ``[lo, hi]`` with ``cert.violation(eps) <= 0`` (``lo`` must satisfy it): layers are raised
    to ``hi`` in order of size gained per bound spent (rates at ``lo`` over the rows that decide the k-th largest
    bound), a layer that does not fit whole by bisection to ``tol``, after which the remaining layers are tried in
    the same order (a concave cost may still leave room for them)."""
    eps = np.asarray(lo, dtype=np.float64).copy()
    hi = np.asarray(hi, dtype=np.float64)
    u = cert.upper(eps)
    rows = np.argsort(-u)[cert.k - 1:]  # the rows that must stay below zero
    rates = cert.rates(eps, rows).max(axis=0)
    gain = weights * (hi - eps)
    cost = rates * (hi - eps)
    order = np.argsort(-(gain / np.maximum(cost, 1e-300)), kind="stable")
    for d in order:
        if hi[d] <= eps[d]:
            continue
        trial = eps.copy()
        trial[d] = hi[d]
        if cert.violation(trial) <= 0:
            eps = trial
            continue
        a, b = float(eps[d]), float(hi[d])
        while b - a > tol:
            mid = (a + b) / 2
            trial[d] = mid
            if cert.violation(trial) <= 0:
                a = mid
            else:
                b = mid
        eps[d] = a
    return eps


@dataclass
class CertificateReport:
    iterations: int = 0
    accepted: int = 0
    rejected: int = 0
    whole_region: int = 0
    stop_reason: str = ""


def certificate_search(problem: SearchProblem, eps_start: np.ndarray, delta: float,
                       radius: float | None = None, max_iterations: int = 500,
                       alpha: AlphaOptions | None = None) -> tuple[np.ndarray, CertificateReport]:
    """Grow the proven ``eps_start`` along the certificate (see the module doc); returns the largest proven vector.
    ``alpha``: the trust region's certificate by α-CROWN with these options (the rates at ``eps*`` stay CROWN's)."""
    report = CertificateReport()
    w = problem.weights
    wn = w / np.max(w)
    sat = problem.saturation
    eps = problem.clip(eps_start)
    problem.improve(eps)
    eta = radius if radius is not None else max(8 * delta, float(np.max(eps)))
    problem.phase = "search"
    while True:
        why = problem.exhausted()
        if why:
            report.stop_reason = why
            break
        if eta < delta * MIN_RADIUS:
            report.stop_reason = f"converged (trust radius below {MIN_RADIUS:g} delta = {delta * MIN_RADIUS:g})"
            break
        if report.iterations >= max_iterations:
            report.stop_reason = "iteration limit"
            break
        if np.all(eps >= sat):
            report.stop_reason = "every layer saturated"
            break
        report.iterations += 1
        problem.iteration = report.iterations
        # grow the region where the bound is cheap: the certificate at eps* itself gives each layer's rate
        here = certificate(problem, eps)
        rows = np.argsort(-here.upper(eps))[here.k - 1:]
        rate = here.rates(eps, rows).max(axis=0)
        ratio = wn / np.maximum(rate, 1e-12 * max(float(rate.max()), 1e-300))
        ratio[eps >= sat] = 0.0
        if not np.any(ratio > 0):
            report.stop_reason = "no layer left to grow"
            break
        ref = problem.clip(np.minimum(eps + eta * ratio / ratio.max(), sat))
        cert = certificate(problem, ref, alpha)
        floor = np.minimum(problem.floor, ref)
        if cert.violation(ref) <= 0:
            cand, whole = ref, True
        elif cert.violation(floor) > 0:
            # the relaxation of this box cannot even prove the floor: a smaller region
            eta /= 2
            continue
        else:
            # from the floor, not from eps*: the certificate may trade size between layers (eps* itself can lie
            # outside what the larger box's relaxation proves)
            cand, whole = problem.clip(fill(cert, floor, ref, w, tol=delta / 4)), False
        if problem.size(cand) <= problem.size(eps) + 1e-3 * delta * float(np.max(w)):
            eta /= 2
            continue
        verdict = problem.query(cand, purpose=f"certificate step {report.iterations}", warm=False)
        if verdict.is_robust:
            eps = cand
            report.accepted += 1
            problem.improve(eps)
            if whole:
                report.whole_region += 1
                eta *= 2
        else:
            report.rejected += 1
            eta /= 2
    return eps, report
