"""What the pattern modules share: seeded torch export, onnxruntime outputs and VNN-LIB "the label stays" files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx

#: Default radii of the L-inf boxes of a pattern's properties; patterns pass their own, chosen around the radius
#: where the answer turns from unsat to sat, so that some properties need more than the bounds or the attack.
EPSILONS = (0.005, 0.02, 0.06, 0.2)


def export(module, sample_shape: tuple[int, ...], path: Path, opset: int = 17) -> Path:
    """Export a torch module (eval mode, batch 1) with torch's TorchScript exporter to ``path``."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros((1, *sample_shape)),), buf, dynamo=False,
                          input_names=["input"], output_names=["output"], opset_version=opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's flattened output on one input (given flat or in the model's shape), by onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return sess.run(None, {inp.name: np.asarray(x, dtype=np.float32).reshape(shape)})[0].reshape(-1)


def argmax_vnnlib(lower: np.ndarray, upper: np.ndarray, n_out: int, target: int, rivals: list[int],
                  comment: str) -> str:
    """VNN-LIB text whose counterexample region is "some rival output reaches output ``target``"."""
    lines = [f"; {comment}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(lower.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower.tolist(), upper.tolist())):
        lines += [f"(assert (<= X_{i} {hi!r}))", f"(assert (>= X_{i} {lo!r}))"]
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{target}))" for j in rivals]
    lines.append("))")
    return "\n".join(lines) + "\n"


def label_properties(model: Path, center: np.ndarray, out_dir: Path, stem: str, lo: float = 0.0,
                     hi: float = 1.0, groups: list[list[int]] | None = None,
                     epsilons: tuple[float, ...] = EPSILONS) -> list[tuple[Path, Path]]:
    """One property per radius of ``epsilons``: the top output at ``center`` stays the top one over the box.

    ``groups`` splits the outputs into competing sets (the classes of one pixel of a segmenter); the property then
    holds for the first group's winner against its own group. Inputs are clipped to ``[lo, hi]``.
    """
    y = ort_outputs(model, center)
    group = groups[0] if groups else list(range(y.size))
    target = group[int(np.argmax(y[group]))]
    pairs = []
    for eps in epsilons:
        x = center.reshape(-1).astype(np.float64)
        lower, upper = np.clip(x - eps, lo, hi), np.clip(x + eps, lo, hi)
        text = argmax_vnnlib(lower, upper, y.size, target, [j for j in group if j != target],
                             f"{stem}: output {target} stays the largest of {len(group)} over an L-inf box of "
                             f"radius {eps}")
        prop = out_dir / f"{stem}_eps{eps}.vnnlib"
        prop.write_text(text)
        pairs.append((model, prop))
    return pairs
