"""mlrobust: maximal robust layered neighborhoods for multi-label image classifiers given as ONNX models."""

__version__ = "0.1.0"

from mlrobust.ir.graph import Network
from mlrobust.ir.onnx_import import load_onnx

__all__ = ["__version__", "Network", "load_onnx"]
