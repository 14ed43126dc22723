"""mlrobust: maximal robust layered neighborhoods for multi-label image classifiers given as ONNX models."""

__version__ = "0.1.0"

from mlrobust.ir.graph import Network
from mlrobust.ir.onnx_import import load_onnx

__all__ = ["__version__", "Network", "load_onnx"]


def __getattr__(name: str):
    # The search API pulls in torch and the solver stack; load it on first use so `import mlrobust` stays light.
    if name in ("maximize", "check"):
        from mlrobust import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlrobust' has no attribute {name!r}")


__all__ += ["maximize", "check"]
