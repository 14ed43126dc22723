"""Training-time defenses: random black rectangles (an L0-style occlusion) and PGD adversarial examples (L-inf)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def black_rectangles(
    x: torch.Tensor, generator: torch.Generator, min_side: int = 4, max_side: int = 16
) -> torch.Tensor:
    """A copy of ``x`` (N, C, H, W) with one black (0) rectangle per image.

    Height and width are drawn independently and uniformly from ``min_side..max_side``; the position uniformly among
    the places where the whole rectangle fits. With the default 4..16 a rectangle can blank out part of a digit,
    the sort of local, unbounded-amplitude change an L0 perturbation of one object makes, but not a whole 28x28 digit.
    """
    n, _, h, w = x.shape
    sides = torch.randint(min_side, max_side + 1, (n, 2), generator=generator)
    top = (torch.rand(n, generator=generator) * (h - sides[:, 0] + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - sides[:, 1] + 1)).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + sides[:, 0])[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + sides[:, 1])[:, None])  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


def pgd_bce(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Madry et al.'s PGD on the multi-label loss: from a uniform random start in the L-inf ball of radius ``eps``
    (clipped to [0, 1]), ``steps`` signed-gradient ascent steps of ``step_size`` on the binary cross-entropy,
    projected back after each step. Returns the adversarial batch (detached)."""
    was_training = model.training
    model.eval()
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train(was_training)
    return adv.detach()


def _binary_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-image sum over labels of KL(Bernoulli(sigmoid(p)) || Bernoulli(sigmoid(q))), from logits (stable)."""
    p = torch.sigmoid(p_logits)
    return (p * (F.logsigmoid(p_logits) - F.logsigmoid(q_logits))
            + (1 - p) * (F.logsigmoid(-p_logits) - F.logsigmoid(-q_logits))).sum(dim=1)


def trades_adversary(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al., 2019) for a multi-label model: signed-gradient ascent on the
    divergence between the clean and the perturbed per-label probabilities (Bernoulli KL summed over labels), from a
    small random start in the L-inf ball of radius ``eps`` (clipped to [0, 1]). Needs no labels: it pushes the
    prediction away from the model's own, so the loss smooths the model around every training image."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        clean = model(x)
    adv = (x + 0.001 * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(_binary_kl(clean, model(adv)).sum(), adv)
        with torch.no_grad():
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train(was_training)
    return adv.detach()


def trades_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES's objective for multi-label outputs: the clean binary cross-entropy plus ``beta`` times the mean
    Bernoulli KL between the clean and the adversarial prediction (the robustness / accuracy trade-off)."""
    natural = F.binary_cross_entropy_with_logits(clean_logits, y)
    return natural + beta * _binary_kl(clean_logits, adv_logits).mean()
