"""Write the top-2 question of a layered neighborhood as a standard VNN-LIB property, for ``mlrobust vnnlib`` or
any VNN-COMP tool.

The input box is the neighborhood of the given epsilons (``--object-eps`` on layer 0, the perturbed object,
``--eps`` on every other layer), clipped to [0, 1]. The output region is where the target leaves the top-2: some
pair of other labels both reach the target's logit,

    (or (and (>= Y_a Y_t) (>= Y_b Y_t)) ...)     over all pairs {a, b} of labels other than t,

which is the pairwise scheme of the reference thesis written as one disjunction. ``unsat`` means the target stays
among the top-2 everywhere in the box. Run it (from the repository root):

    python examples/custom_property.py examples/images/ex00.png --object-mask examples/images/ex00_perturbed.png \\
        --target 1 --object-eps 0.05 --out out/ex00.vnnlib
    mlrobust vnnlib examples/models/mnist2_pgd.onnx out/ex00.vnnlib
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np


def topk_property(lower: np.ndarray, upper: np.ndarray, target: int, num_labels: int = 10, k: int = 2) -> str:
    """VNN-LIB text: inputs ``X_i`` in ``[lower_i, upper_i]``, violation = k labels other than ``target`` all
    at least as large as ``Y_target``."""
    lower, upper = np.ravel(lower), np.ravel(upper)
    lines = [f"; top-{k} membership of label {target}: the violation is k other labels >= Y_{target}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(lower.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_labels)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines.append(f"(assert (>= X_{i} {float(lo)!r}))")
        lines.append(f"(assert (<= X_{i} {float(hi)!r}))")
    others = [c for c in range(num_labels) if c != target]
    clauses = ["(and " + " ".join(f"(>= Y_{c} Y_{target})" for c in group) + ")"
               for group in itertools.combinations(others, k)]
    lines.append("(assert (or " + " ".join(clauses) + "))")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a layered neighborhood's top-2 property as VNN-LIB")
    parser.add_argument("image")
    parser.add_argument("--object-mask", required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--object-eps", type=float, default=0.05, help="epsilon of layer 0 (the object)")
    parser.add_argument("--eps", type=float, default=0.0, help="epsilon of every other layer")
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from mlrobust.neighborhood import LayeredNeighborhood
    from mlrobust.neighborhood.image_io import read_image, read_mask

    image = read_image(args.image)
    nbhd = LayeredNeighborhood.build(image, read_mask(args.object_mask, image.shape[1:]))
    eps = np.full(nbhd.num_layers, args.eps)
    eps[0] = args.object_eps
    box = nbhd.box(eps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(topk_property(box.lower, box.upper, args.target, args.labels))
    free = int(np.count_nonzero(box.upper > box.lower))
    print(f"wrote {args.out}: {box.lower.size} inputs ({free} free), {args.labels} outputs, "
          f"{len(list(itertools.combinations(range(args.labels - 1), 2)))} disjuncts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
