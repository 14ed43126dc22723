"""Typed errors: every failure a user can cause names what is wrong and how to fix it."""

from __future__ import annotations


class MlrobustError(Exception):
    """Base class of every error mlrobust raises on purpose (the CLI prints these without a traceback)."""


class ModelLoadError(MlrobustError):
    """The model file cannot be read as a supported ONNX network."""


class UnsupportedOpError(ModelLoadError):
    """An ONNX node whose op type (or attribute combination) mlrobust cannot represent."""

    def __init__(self, op_type: str, node_name: str, supported: list[str] | tuple[str, ...], detail: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        self.supported = tuple(sorted(supported))
        msg = f"unsupported ONNX op {op_type!r} at node {node_name!r}"
        if detail:
            msg += f" ({detail})"
        msg += ". Supported ops: " + ", ".join(self.supported)
        super().__init__(msg)


class InputError(MlrobustError):
    """A user-supplied input (image, mask, target, epsilon, box) does not fit the model or the task."""


class SolverNotAvailableError(MlrobustError):
    """A MILP solver backend was requested but is not installed; the message says how to install it."""


class SolverLimitError(MlrobustError):
    """A solver refused a model (for example a size-limited licence)."""
