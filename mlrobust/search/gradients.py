"""Gradients the search steers by: the top-k margin's gradient at weak points, turned into a gradient of the
worst-case margin with respect to each layer's epsilon, and the per-layer saliency behind the sensitivity cuts.

Why ``|g|`` on the movable side. Write the worst-case margin of a neighborhood as
``M(eps) = max over x in B(eps) of m(x)``, where pixel ``i`` of layer ``d`` ranges over
``[max(0, x0_i - eps_d), min(1, x0_i + eps_d)]``. By Danskin's theorem the derivative of ``M`` along ``eps_d`` is
``sum over i in layer d of g_i * dx*_i/d eps_d`` at a maximiser ``x*``, with ``g = grad m(x*)``. At a maximiser
every pixel with ``g_i > 0`` sits on its upper bound and every pixel with ``g_i < 0`` on its lower one (KKT), so a
pixel's bound moving outward moves ``x*_i`` by ``sign(g_i)`` per unit of epsilon and contributes ``|g_i|`` — unless
that bound is clipped at 0 or 1, where it does not move with epsilon and contributes nothing. Weak points from an
attack are only near-maximisers, so ``|g_i|`` on the side the gradient points to is the rate at which the margin
grows when the point follows its gradient sign to the moving bound: the derivative of the linearised worst case.
It is never negative (a bigger box never has a smaller worst case), as the true derivative. Several near-maximal
weak points are combined by an elementwise maximum: the maximum of their directional derivatives bounds the
derivative of their maximum, the conservative choice when the step must keep the margin negative.
"""

from __future__ import annotations

import numpy as np
import torch

from mlrobust.ir.graph import Network
from mlrobust.ir.torch_exec import torch_threads
from mlrobust.neighborhood.neighborhood import LayeredNeighborhood
from mlrobust.verify.counterexample import TopKProperty, torch_module
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import WeakPoint


def margin_gradients(network: Network, xs: np.ndarray, target: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k margins ``(N,)`` and their input gradients ``(N, *sample_shape)`` at a batch of inputs."""
    net = torch_module(network)
    prop = TopKProperty(int(target), int(k))
    x = torch.as_tensor(np.asarray(xs, dtype=np.float32)).requires_grad_(True)
    with torch_threads(1):  # a few points of a small network: one thread is fastest (see torch_threads)
        margins = prop.margin_torch(net.logits(x))
        (grad,) = torch.autograd.grad(margins.sum(), x)
    return margins.detach().double().numpy(), grad.double().numpy()


def eps_gradient(nbhd: LayeredNeighborhood, box: Box, grads: np.ndarray) -> np.ndarray:
    """``d margin / d eps_d`` for each gradient of a batch ``(N, *sample_shape)`` -> ``(N, r + 1)`` (see module doc):
    ``|g_i|`` summed over the pixels of each layer whose bound on the side ``sign(g_i)`` can still move."""
    g = np.asarray(grads, dtype=np.float64)
    can_up = box.upper < 1.0
    can_down = box.lower > 0.0
    movable = np.where(g > 0, g * can_up, np.where(g < 0, -g * can_down, 0.0))
    return np.atleast_2d(nbhd.per_layer_sum(movable))


def worst_case_gradient(network: Network, nbhd: LayeredNeighborhood, box: Box, points: list[WeakPoint],
                        target: int, k: int, rel_tol: float = 0.1) -> tuple[float, np.ndarray]:
    """The estimated worst-case margin over the box (the best weak point's) and its gradient w.r.t. the epsilons.

    Weak points within ``rel_tol`` (relative to the margin's magnitude, at least 1e-3) of the best are near-active
    and combine by an elementwise maximum of their per-layer gradients.
    """
    xs = np.stack([np.asarray(p.x, dtype=np.float64).reshape(box.shape) for p in points])
    margins, grads = margin_gradients(network, xs, target, k)
    per_layer = eps_gradient(nbhd, box, grads)
    best = float(np.max(margins))
    near = margins >= best - max(rel_tol * abs(best), 1e-3)
    return best, per_layer[near].max(axis=0)


def layer_saliency(network: Network, nbhd: LayeredNeighborhood, target: int, k: int) -> np.ndarray:
    """Vanilla-gradient saliency (Simonyan et al.) per layer: the mean ``|d loss / d x|`` over each layer's pixels at
    the clean image, the loss being the top-k margin (it grows as the target loses its place)."""
    _, grads = margin_gradients(network, nbhd.x[None], target, k)
    return nbhd.per_layer_mean(np.abs(grads[0]))
