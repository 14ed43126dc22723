"""PGD attack (the first tier of the cascade): signed-gradient ascent on the property margin inside the box.

All restarts run as one batch through the float32 torch executor; restart 0 starts at the box centre (the clean
image for a neighbourhood), the others uniformly at random. The loss is the property margin itself (for top-k: the
k-th largest ``y_c - y_t``), so a point with margin ``>= 0`` is a counterexample — which is then re-checked on both
executors (:mod:`mlrobust.verify.counterexample`) before anyone hears of it. The best points of the restarts are
the attack's weak points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.verify.base import Mode
from mlrobust.verify.counterexample import (
    CheckedPoint,
    OutputProperty,
    TopKProperty,
    check_points,
    check_query,
    torch_module,
    weak_points,
)
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import NotRobust, Unknown, Verdict


@dataclass
class AttackResult:
    """The best point of every restart (checked on both executors), best first."""

    points: list[CheckedPoint]
    seconds: float
    steps_run: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def best(self) -> CheckedPoint | None:
        return self.points[0] if self.points else None

    @property
    def counterexample(self) -> CheckedPoint | None:
        """The best confirmed counterexample, if any."""
        return next((p for p in self.points if p.confirmed), None)


def pgd(network: Network, box: Box, prop: OutputProperty, *, restarts: int = 8, steps: int = 40,
        step_scale: float = 2.5, seed: int = 0, starts: list[np.ndarray] | None = None,
        stop_on_violation: bool = True, time_limit: float | None = None, threads: int | None = 1,
        include_center: bool = True) -> AttackResult:
    """Projected (signed) gradient ascent on ``prop``'s margin over ``box``.

    The per-pixel step is ``step_scale * half_width / steps`` (Madry et al.'s 2.5 ε / steps), halved at 50% and
    75% of the steps. ``starts`` adds given starting points (e.g. earlier counterexamples) before the random ones.
    ``threads``: torch threads while attacking (one is fastest for networks of this size; None keeps torch's).
    ``include_center=False`` starts only from ``starts`` and random points (local polishing of a given point).
    """
    with torch_threads(threads):
        return _pgd(network, box, prop, restarts, steps, step_scale, seed, starts, stop_on_violation, time_limit,
                    include_center)


def _pgd(network: Network, box: Box, prop: OutputProperty, restarts: int, steps: int, step_scale: float, seed: int,
         starts: list[np.ndarray] | None, stop_on_violation: bool, time_limit: float | None,
         include_center: bool) -> AttackResult:
    start_time = time.perf_counter()
    net = torch_module(network)
    shape = box.shape
    lo = torch.as_tensor(box.lower, dtype=torch.float32)
    hi = torch.as_tensor(box.upper, dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    inits = [torch.as_tensor(box.center, dtype=torch.float32)] if include_center or not starts else []
    for s in starts or []:
        inits.append(torch.as_tensor(box.clip(s), dtype=torch.float32))
    n_random = max(int(restarts) - len(inits), 0)
    X = torch.stack(inits)
    if n_random:
        u = torch.rand((n_random, *shape), generator=gen, dtype=torch.float32)
        X = torch.cat([X, lo + u * (hi - lo)])
    X = torch.maximum(torch.minimum(X, hi), lo)
    alpha = step_scale * (hi - lo) / 2.0 / max(int(steps), 1)
    best_x = X.clone()
    with torch.no_grad():
        best_m = prop.margin_torch(net.logits(X))
    steps_run = 0
    for step in range(int(steps)):
        if stop_on_violation and bool((best_m >= 0).any()):
            break
        if time_limit is not None and time.perf_counter() - start_time > time_limit:
            break
        scale = 1.0 if step < steps // 2 else (0.5 if step < 3 * steps // 4 else 0.25)
        X = X.detach().requires_grad_(True)
        margins = prop.margin_torch(net.logits(X))
        (grad,) = torch.autograd.grad(margins.sum(), X)
        with torch.no_grad():
            X = torch.maximum(torch.minimum(X + scale * alpha * grad.sign(), hi), lo)
            m = prop.margin_torch(net.logits(X))
            better = m > best_m
            best_x[better] = X[better]
            best_m = torch.where(better, m, best_m)
        steps_run += 1
    candidates = [best_x[i].double().numpy() for i in range(best_x.shape[0])]
    points = check_points(network, box, candidates, prop, net)
    points.sort(key=lambda p: (not p.confirmed, -p.margin))
    return AttackResult(points, time.perf_counter() - start_time, steps_run,
                        {"restarts": int(best_x.shape[0]), "best_margin": points[0].margin if points else None})


class PgdAttack:
    """The attack as a verifier: NotRobust with a confirmed counterexample, otherwise Unknown (never Robust)."""

    name = "attack"

    def __init__(self, restarts: int = 8, steps: int = 40, seed: int = 0, weak_point_limit: int = 5):
        self.restarts = restarts
        self.steps = steps
        self.seed = seed
        self.weak_point_limit = weak_point_limit

    def run(self, network: Network, box: Box, target: int, k: int = 2, time_limit: float | None = None,
            starts: list[np.ndarray] | None = None) -> AttackResult:
        check_query(network, box, target, k)
        return pgd(network, box, TopKProperty(target, k), restarts=self.restarts, steps=self.steps,
                   seed=self.seed, starts=starts, time_limit=time_limit)

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: Mode = "decide",
               time_limit: float | None = None) -> Verdict:
        result = self.run(network, box, target, k, time_limit)
        return verdict_from_attack(result, self.weak_point_limit)


def verdict_from_attack(result: AttackResult, weak_point_limit: int = 5) -> Verdict:
    stats = {"attack": dict(result.stats, steps=result.steps_run)}
    wps = weak_points(result.points, weak_point_limit)
    cex = result.counterexample
    if cex is not None:
        return NotRobust(tier="attack", seconds={"attack": result.seconds}, stats=stats, weak_points=wps,
                         counterexample=cex.x, margin=cex.margin)
    best = result.best
    reason = "attack found no counterexample" + (f" (best margin {best.margin:.4g})" if best else "")
    return Unknown(tier="attack", seconds={"attack": result.seconds}, stats=stats, weak_points=wps, reason=reason)
