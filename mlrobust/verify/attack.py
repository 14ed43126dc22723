"""PGD attack (the first tier of the cascade): signed-gradient ascent on the property margin inside the box.

All restarts run as one batch through the float32 torch executor; restart 0 starts at the box centre (the clean
image for a neighbourhood), the others uniformly at random. The loss is the property margin itself (for top-k: the
k-th largest ``y_c - y_t``), so a point with margin ``>= 0`` is a counterexample — which is then re-checked on both
executors (:mod:`mlrobust.verify.counterexample`) before anyone hears of it. The best points of the restarts are
the attack's weak points.

The cascade's tier runs the *diversified* variant (``diversify=True``), as strong attacks on verification
benchmarks do. A property's margin is the largest of its clauses' margins (a top-k property: one clause per k-subset
of competitors), and its gradient only ever follows the clause that leads now; so every other random restart aims at
one clause instead, the most promising clauses first (the others climb the margin from uniform starts, as in the
plain attack). The aimed restarts start from points spread by output-diversified initialisation (Tashiro et al.,
2020: a few steps along a random direction of the logits), and a random restart whose own objective has stopped
improving starts again elsewhere, an aimed one at the next clause. The full margin of every iterate is tracked, so a
counterexample counts whichever restart stumbles on it.
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
    ClauseMargins,
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
        include_center: bool = True, diversify: bool = False) -> AttackResult:
    """Projected (signed) gradient ascent on ``prop``'s margin over ``box``.

    The per-pixel step is ``step_scale * half_width / steps`` (Madry et al.'s 2.5 ε / steps), halved at 50% and
    75% of the steps. ``starts`` adds given starting points (e.g. earlier counterexamples) before the random ones.
    ``threads``: torch threads while attacking (one is fastest for networks of this size; None keeps torch's).
    ``include_center=False`` starts only from ``starts`` and random points (local polishing of a given point).
    ``diversify``: the diversified attack of the module docstring; it costs one forward and one backward pass per
    restart and step (the plain attack: two forward passes and one backward).
    """
    with torch_threads(threads):
        if diversify:
            return _diversified_pgd(network, box, prop, restarts, steps, step_scale, seed, starts,
                                    stop_on_violation, time_limit, include_center)
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
    step_seconds = 0.0  # the longest step so far: a step is not started unless one as long ends within the limit
    for step in range(int(steps)):
        if stop_on_violation and bool((best_m >= 0).any()):
            break
        step_start = time.perf_counter()
        if time_limit is not None and step_start - start_time + step_seconds > time_limit:
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
        step_seconds = max(step_seconds, time.perf_counter() - step_start)
    candidates = [best_x[i].double().numpy() for i in range(best_x.shape[0])]
    points = check_points(network, box, candidates, prop, net)
    points.sort(key=lambda p: (not p.confirmed, -p.margin))
    return AttackResult(points, time.perf_counter() - start_time, steps_run,
                        {"restarts": int(best_x.shape[0]), "best_margin": points[0].margin if points else None})


#: Output-diversified initialisation: this many steps of ``half_width`` along a random direction of the logits.
ODI_STEPS = 2
#: A restart whose own objective has not improved for this share of the steps (at least MIN_PATIENCE) restarts.
STUCK_SHARE = 0.2
MIN_PATIENCE = 4
#: Smallest rise of a restart's objective that counts as progress.
PROGRESS = 1e-6


def clause_margins(prop: OutputProperty, logits: torch.Tensor) -> torch.Tensor:
    """(N, n_clauses) clause margins of ``prop`` (one clause, its margin, for a property without clauses)."""
    if isinstance(prop, ClauseMargins):
        return prop.clause_margins_torch(logits)
    return prop.margin_torch(logits)[:, None]


def _diversified_pgd(network: Network, box: Box, prop: OutputProperty, restarts: int, steps: int,
                     step_scale: float, seed: int, starts: list[np.ndarray] | None, stop_on_violation: bool,
                     time_limit: float | None, include_center: bool) -> AttackResult:
    start_time = time.perf_counter()
    net = torch_module(network)
    lo = torch.as_tensor(box.lower, dtype=torch.float32)
    hi = torch.as_tensor(box.upper, dtype=torch.float32)
    half = (hi - lo) / 2.0
    gen = torch.Generator().manual_seed(int(seed))
    inits = [torch.as_tensor(box.center, dtype=torch.float32)] if include_center or not starts else []
    inits += [torch.as_tensor(box.clip(s), dtype=torch.float32) for s in starts or []]
    n_given = len(inits)
    n = max(int(restarts), n_given)
    X = torch.cat([torch.stack(inits), lo + torch.rand((n - n_given, *box.shape), generator=gen) * (hi - lo)])
    X = torch.maximum(torch.minimum(X, hi), lo)
    rows = (-1,) + (1,) * len(box.shape)  # a per-restart flag broadcast over the input

    with torch.no_grad():
        first = clause_margins(prop, net.logits(X[:1]))[0]
    n_clauses = int(first.numel())
    # the given starts and every other random restart climb the property's own margin (-1); the other random
    # restarts aim at one clause each, the clauses with the largest margin at the first start first, and move on
    # to the next clause when they start again
    order = torch.argsort(first, descending=True)
    aim = torch.full((n,), -1, dtype=torch.long)
    random_rows = torch.arange(n) >= n_given
    aiming = random_rows & (torch.arange(n) - n_given) % 2 == 1
    cursor = 0
    if n_clauses > 1:
        count = int(aiming.sum())
        aim[aiming] = order[torch.arange(count) % n_clauses]
        cursor = count % n_clauses
    directions = torch.rand((n, int(network.num_classes)), generator=gen) * 2 - 1

    best_x = X.clone()
    best_m = torch.full((n,), -torch.inf)
    best_own = torch.full((n,), -torch.inf)
    last_gain = torch.zeros(n, dtype=torch.long)
    patience = max(int(STUCK_SHARE * steps), MIN_PATIENCE)
    alpha = step_scale * half / max(int(steps), 1)
    # output-diversified steps still to take, per restart: the aimed restarts' random starts and fresh starts after
    # being stuck (the restarts on the whole margin start uniformly, as the plain attack's do)
    odi_left = torch.where(aiming, min(ODI_STEPS, max(int(steps) - 1, 0)), 0)
    restarted = 0
    steps_run = 0
    for step in range(int(steps) + 1):
        # one forward pass per step serves both the search (its gradient) and the bookkeeping (its margins)
        last = step == steps
        X = X.detach().requires_grad_(not last)
        with torch.set_grad_enabled(not last):
            logits = net.logits(X)
            margins = clause_margins(prop, logits)
        full = margins.detach().max(dim=1).values
        better = full > best_m
        best_x[better] = X.detach()[better]
        best_m = torch.where(better, full, best_m)
        if last or (stop_on_violation and bool((best_m >= 0).any())):
            break
        if time_limit is not None and time.perf_counter() - start_time > time_limit:
            break
        mine = margins.gather(1, aim.clamp(min=0)[:, None])[:, 0]
        own = torch.where(aim >= 0, mine, margins.max(dim=1).values)
        scale = 1.0 if step < steps // 2 else (0.5 if step < 3 * steps // 4 else 0.25)
        size = scale * alpha
        diversifying = odi_left > 0
        drive = own
        if bool(diversifying.any()):  # output-diversified start: half a box along a random direction of the logits
            drive = torch.where(diversifying, (logits * directions).sum(dim=1), own)
            size = torch.where(diversifying.view(rows), half, size)
        odi_left = (odi_left - 1).clamp(min=0)
        (grad,) = torch.autograd.grad(drive.sum(), X)
        own = own.detach()
        gained = (own > best_own + PROGRESS) & ~diversifying
        best_own = torch.where(gained, own, best_own)
        last_gain = torch.where(gained | diversifying, torch.full_like(last_gain, step), last_gain)
        with torch.no_grad():
            X = torch.maximum(torch.minimum(X + size * grad.sign(), hi), lo)
            stuck = random_rows & (step - last_gain >= patience) & (step < steps - MIN_PATIENCE)
            count = int(stuck.sum())
            if count:
                X[stuck] = lo + torch.rand((count, *box.shape), generator=gen) * (hi - lo)
                directions[stuck] = torch.rand((count, directions.shape[1]), generator=gen) * 2 - 1
                odi_left[stuck & aiming] = ODI_STEPS
                moving = stuck & aiming
                if n_clauses > 1 and bool(moving.any()):
                    n_moving = int(moving.sum())
                    aim[moving] = order[(cursor + torch.arange(n_moving)) % n_clauses]
                    cursor = (cursor + n_moving) % n_clauses
                best_own[stuck] = -torch.inf
                last_gain[stuck] = step
                restarted += count
        steps_run += 1
    candidates = [best_x[i].double().numpy() for i in range(n)]
    points = check_points(network, box, candidates, prop, net)
    points.sort(key=lambda p: (not p.confirmed, -p.margin))
    return AttackResult(points, time.perf_counter() - start_time, steps_run,
                        {"restarts": n, "best_margin": points[0].margin if points else None,
                         "clauses": n_clauses, "stuck_restarts": restarted})


class PgdAttack:
    """The attack as a verifier: NotRobust with a confirmed counterexample, otherwise Unknown (never Robust)."""

    name = "attack"

    def __init__(self, restarts: int = 8, steps: int = 40, seed: int = 0, weak_point_limit: int = 5,
                 diversify: bool = True):
        self.restarts = restarts
        self.steps = steps
        self.seed = seed
        self.weak_point_limit = weak_point_limit
        self.diversify = diversify

    def run(self, network: Network, box: Box, target: int, k: int = 2, time_limit: float | None = None,
            starts: list[np.ndarray] | None = None) -> AttackResult:
        check_query(network, box, target, k)
        return pgd(network, box, TopKProperty(target, k), restarts=self.restarts, steps=self.steps,
                   seed=self.seed, starts=starts, time_limit=time_limit, diversify=self.diversify)

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
