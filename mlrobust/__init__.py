"""mlrobust: maximal robust layered neighborhoods for multi-label image classifiers given as ONNX models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "Network", "load_onnx", "maximize", "check", "load_result"]

if TYPE_CHECKING:
    from mlrobust.api import check, maximize
    from mlrobust.ir.graph import Network
    from mlrobust.ir.onnx_import import load_onnx
    from mlrobust.search.outputs import load_result

# Loaded on first use: the search API pulls in torch and the solver stack, the IR numpy and ONNX; `import mlrobust`
# (and the command line's start, which only needs __version__) stays light.
_WHERE = {"Network": "mlrobust.ir.graph", "load_onnx": "mlrobust.ir.onnx_import", "maximize": "mlrobust.api",
          "check": "mlrobust.api", "load_result": "mlrobust.search.outputs"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mlrobust' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
