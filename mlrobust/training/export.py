"""ONNX export of a trained classifier, checked against onnxruntime before it is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlrobust.training.model import INPUT_SHAPE

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(
    model: nn.Module,
    path: str | Path,
    check_inputs: np.ndarray | None = None,
    atol: float = 1e-5,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
) -> Path:
    """Write ``model`` as ONNX (opset 17, legacy exporter, dynamic batch axis) and, with ``check_inputs``
    (N, *input_shape), check that onnxruntime reproduces torch's logits within ``atol``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    dummy = torch.zeros((1,) + tuple(input_shape))
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    if check_inputs is not None:
        got = onnx_logits(path, check_inputs)
        with torch.no_grad():
            want = model(torch.as_tensor(check_inputs, dtype=torch.float32)).numpy()
        err = float(np.max(np.abs(got - want)))
        if err > atol:
            raise RuntimeError(f"ONNX export of {path.name} differs from torch by {err:g} (> {atol:g})")
    return path


def onnx_logits(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Logits of an ONNX model under onnxruntime (CPU) for a float batch ``x``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.asarray(x, dtype=np.float32)})[0]
