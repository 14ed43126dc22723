"""Verdicts and verifiers: the PGD attack, the bound check, the exact MILP verifier, branch and bound, the cascade
and VNN-LIB.

The names are loaded on first use (PEP 562): importing a light submodule such as ``mlrobust.verify.spec`` must not
pull in torch and the solver stack, so that the command line can reject bad arguments and files at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "AttackResult": "attack", "PgdAttack": "attack", "pgd": "attack",
    "Mode": "base", "Verifier": "base",
    "BabOptions": "bab", "BabVerifier": "bab",
    "BoundCheck": "bound_check",
    "Cascade": "cascade",
    "CheckedPoint": "counterexample", "TopKProperty": "counterexample", "check_points": "counterexample",
    "confirm": "counterexample",
    "topk_labels": "margin", "topk_margin": "margin",
    "MilpVerifier": "milp_verifier",
    "Box": "spec", "TopK": "spec",
    "ROBUST_TOLERANCE": "verdict", "NotRobust": "verdict", "Robust": "verdict", "Unknown": "verdict",
    "Verdict": "verdict", "WeakPoint": "verdict",
    "VnnlibProperty": "vnnlib", "VnnlibResult": "vnnlib", "check_vnnlib": "vnnlib", "parse_vnnlib": "vnnlib",
}

__all__ = [
    "Verifier", "Mode", "Verdict", "Robust", "NotRobust", "Unknown", "WeakPoint", "ROBUST_TOLERANCE",
    "Box", "TopK", "topk_margin", "topk_labels",
    "PgdAttack", "pgd", "AttackResult", "BoundCheck", "MilpVerifier", "Cascade", "BabVerifier", "BabOptions",
    "CheckedPoint", "TopKProperty", "check_points", "confirm",
    "VnnlibProperty", "VnnlibResult", "parse_vnnlib", "check_vnnlib",
]

if TYPE_CHECKING:  # what the type checker (and an IDE) sees: the eager imports
    from mlrobust.verify.attack import AttackResult, PgdAttack, pgd
    from mlrobust.verify.bab import BabOptions, BabVerifier
    from mlrobust.verify.base import Mode, Verifier
    from mlrobust.verify.bound_check import BoundCheck
    from mlrobust.verify.cascade import Cascade
    from mlrobust.verify.counterexample import CheckedPoint, TopKProperty, check_points, confirm
    from mlrobust.verify.margin import topk_labels, topk_margin
    from mlrobust.verify.milp_verifier import MilpVerifier
    from mlrobust.verify.spec import Box, TopK
    from mlrobust.verify.verdict import ROBUST_TOLERANCE, NotRobust, Robust, Unknown, Verdict, WeakPoint
    from mlrobust.verify.vnnlib import VnnlibProperty, VnnlibResult, check_vnnlib, parse_vnnlib


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mlrobust.verify' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mlrobust.verify.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
