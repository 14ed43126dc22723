"""Intermediate graph (IR): typed ops, the network DAG, ONNX import and the torch executor."""

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale

__all__ = ["Network", "Node", "Dense", "Conv2d", "Relu", "MaxPool2d", "AvgPool2d", "Reshape", "Scale", "Add"]
