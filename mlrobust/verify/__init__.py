"""Verdicts and verifiers: the PGD attack, the bound check, the exact MILP verifier, branch and bound, the cascade
and VNN-LIB."""

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

__all__ = [
    "Verifier", "Mode", "Verdict", "Robust", "NotRobust", "Unknown", "WeakPoint", "ROBUST_TOLERANCE",
    "Box", "TopK", "topk_margin", "topk_labels",
    "PgdAttack", "pgd", "AttackResult", "BoundCheck", "MilpVerifier", "Cascade", "BabVerifier", "BabOptions",
    "CheckedPoint", "TopKProperty", "check_points", "confirm",
    "VnnlibProperty", "VnnlibResult", "parse_vnnlib", "check_vnnlib",
]
