"""A complete custom verifier for mlrobust: interval bounds to prove, random sampling to refute.

A verifier is any object with ``name`` and ``verify(network, box, target, k, mode, time_limit) -> Verdict``.
The search (``mlrobust.maximize``) calls it for every neighborhood it needs decided, and re-checks every
counterexample it returns on the real network; the verifier's one duty is never to say Robust without a proof.
This one is fast and incomplete:

- **Robust** when interval bound propagation (IBP) proves the k-th largest margin ``y_c - y_t`` below
  ``-ROBUST_TOLERANCE`` over the whole box;
- **NotRobust** when one of a few hundred sampled points of the box (corners and uniform points) takes the target
  out of the top-k, confirmed on both the float64 and the float32 executor;
- **Unknown** otherwise. In optimise mode its weak points (the sampled points with the largest margins) guide the
  optimizer's gradient steps.

Run it (from the repository root):

    python examples/custom_verifier.py examples/models/mnist2_pgd.onnx examples/images/ex00.png \\
        --target 7 --object-mask examples/images/ex00_perturbed.png --time-limit 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlrobust.bounds import propagate
from mlrobust.ir.graph import Network
from mlrobust.verify.counterexample import TopKProperty, check_points, check_query
from mlrobust.verify.spec import Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust, Unknown, Verdict, WeakPoint


class IntervalSamplingVerifier:
    """Prove with IBP, refute by sampling ``samples`` points (half of them box corners)."""

    name = "ibp+sampling"

    def __init__(self, samples: int = 256, seed: int = 0):
        self.samples = samples
        self.seed = seed
        self.calls = 0

    def verify(self, network: Network, box: Box, target: int, k: int = 2, mode: str = "decide",
               time_limit: float | None = None) -> Verdict:
        check_query(network, box, target, k)  # a clear InputError for a box or target that does not fit
        self.calls += 1
        start = time.perf_counter()
        prop = TopKProperty(int(target), int(k))
        # 1. refute: corners and uniform points of the box, checked on both executors
        rng = np.random.default_rng(self.seed + self.calls)
        n = self.samples // 2
        corners = np.where(rng.random((n, *box.shape)) < 0.5, box.lower, box.upper)
        inside = box.lower + rng.random((self.samples - n, *box.shape)) * (box.upper - box.lower)
        points = np.concatenate([box.center[None], corners, inside])
        margins = prop.margin(network.logits(points))
        best = np.argsort(-margins)[:8]
        checked = check_points(network, box, list(points[best]), prop)
        weak = [WeakPoint(p.x, p.margin) for p in checked]
        t_attack = time.perf_counter() - start
        cex = next((p for p in checked if p.confirmed), None)
        if cex is not None:
            return NotRobust(tier="sampling", seconds={"sampling": t_attack}, weak_points=weak,
                             counterexample=cex.x, margin=cex.margin)
        # 2. prove: interval bounds on the logits give bounds on every margin y_c - y_t
        t0 = time.perf_counter()
        bounds = propagate(network, box.lower, box.upper, method="ibp")
        upper = bounds.output_upper.reshape(-1) - bounds.output_lower.reshape(-1)[target]
        others = np.delete(upper, target)
        kth = float(np.sort(others)[-k])  # an upper bound on the k-th largest margin
        seconds = {"sampling": t_attack, "ibp": time.perf_counter() - t0}
        if kth < -ROBUST_TOLERANCE:
            return Robust(tier="ibp", seconds=seconds, weak_points=weak, bound=kth)
        return Unknown(tier="ibp", seconds=seconds, weak_points=weak,
                       reason=f"IBP bound {kth:.3g} on the top-{k} margin is not below 0 and sampling found nothing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Search a maximal robust layered neighborhood with a custom "
                                     "verifier (IBP + sampling)")
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--object-mask", required=True)
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--delta", type=float, default=0.01)
    args = parser.parse_args(argv)

    import mlrobust

    verifier = IntervalSamplingVerifier()
    result = mlrobust.maximize(args.model, args.image, args.target, object_mask=args.object_mask,
                               verifier=verifier, time_limit=args.time_limit, delta=args.delta)
    print(f"verifier {result.verifier}: {verifier.calls} calls, w.eps = {result.size:.4f}, "
          f"proven: {result.verified} ({result.proof_tier})")
    print("eps per layer:", " ".join(f"{e:.3f}" for e in result.epsilons[:10]),
          "..." if result.num_layers > 10 else "")
    print(f"layers certified maximal: {result.certified_layers}/{result.num_layers} "
          f"{dict(sorted(result.maximality_counts().items()))}")
    # the same neighborhood, re-checked by the exact cascade (attack, CROWN, MILP)
    check = mlrobust.check(args.model, args.image, args.target, result.epsilons, object_mask=args.object_mask,
                           time_limit=args.time_limit)
    print(f"re-checked by the cascade: {check.status} (decided by {check.tier})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
