"""Metrics of a multi-label top-2 classifier: exact-set accuracy, per-label recall, accuracy under a PGD attack."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def logits_of(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def topk_sets(logits: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Multi-hot (N, C) of the k largest logits per row."""
    out = torch.zeros_like(logits, dtype=torch.bool)
    return out.scatter_(1, logits.topk(k, dim=1).indices, True)


def exact_set_correct(logits: torch.Tensor, y: torch.Tensor, k: int = 2) -> torch.Tensor:
    """Per image: whether the top-k set equals the true label set."""
    return (topk_sets(logits, k) == y.bool()).all(dim=1)


def per_label_recall(logits: torch.Tensor, y: torch.Tensor, k: int = 2) -> np.ndarray:
    """For each label, the fraction of images that carry it where it is among the top-k."""
    hit = (topk_sets(logits, k) & y.bool()).sum(dim=0).double()
    return (hit / y.sum(dim=0).double().clamp(min=1)).numpy()


def set_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Largest wrong logit minus smallest true logit: > 0 exactly when the top-|y| set is not the true set."""
    yb = y.bool()
    wrong = logits.masked_fill(yb, float("-inf")).max(dim=1).values
    true = logits.masked_fill(~yb, float("inf")).min(dim=1).values
    return wrong - true


def pgd_set_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 20,
    restarts: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Per image: whether an L-inf PGD attack of radius ``eps`` (clipped to [0, 1]) changes the top-2 set.

    Ascends :func:`set_margin` (a direct target, stronger than the training loss) with signed steps of
    ``2.5 * eps / steps`` from a random start; an image counts as broken as soon as any iterate breaks it.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    broken = set_margin(logits_of(model, x), y) >= 0
    step = 2.5 * eps / steps
    for _ in range(restarts):
        adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0.0, 1.0)
        for _ in range(steps + 1):
            adv.requires_grad_(True)
            margin = set_margin(model(adv), y)
            broken |= (margin >= 0).detach()
            (grad,) = torch.autograd.grad(margin.sum(), adv)
            with torch.no_grad():
                adv = adv + step * grad.sign()
                adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return broken


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack_eps: tuple[float, ...] = (0.01, 0.03, 0.05, 0.1),
    attack_n: int | None = 2000,
    attack_steps: int = 20,
    seed: int = 0,
) -> dict:
    """Exact-set accuracy and per-label recall on all of ``x``; accuracy under PGD on its first ``attack_n``."""
    logits = logits_of(model, x)
    correct = exact_set_correct(logits, y)
    result = {
        "n": int(len(x)),
        "exact_set_accuracy": float(correct.double().mean()),
        "per_label_recall": [round(float(r), 4) for r in per_label_recall(logits, y)],
    }
    n = len(x) if attack_n is None else min(attack_n, len(x))
    xa, ya = x[:n], y[:n]
    pgd = {}
    for eps in attack_eps:
        broken = torch.zeros(n, dtype=torch.bool)
        for i in range(0, n, 500):
            broken[i : i + 500] = pgd_set_attack(model, xa[i : i + 500], ya[i : i + 500], eps, attack_steps, 1, seed)
        pgd[f"{eps:g}"] = float(1.0 - broken.double().mean())
    result["pgd"] = {"n": n, "steps": attack_steps, "restarts": 1, "accuracy": pgd}
    return result
