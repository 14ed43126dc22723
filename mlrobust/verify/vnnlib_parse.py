"""Reading VNN-LIB properties: the S-expression text into input boxes and disjunctions of linear output clauses.

Kept apart from deciding them (:mod:`mlrobust.verify.vnnlib`) and light to import (numpy only, no torch or solver
stack): the command line reports a broken property file at once, before any model is loaded.

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` (flattened, C order) and asserts the *counterexample
region*: bounds on the inputs and linear constraints on the outputs, combined with ``and``/``or``. The assertions are
brought into disjunctive normal form; each disjunct must split into single-variable bounds on inputs (a box) and
linear inequalities on outputs. Strict inequalities are read as non-strict (the usual reading in VNN-COMP, whose
checker works with a tolerance anyway).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.errors import InputError
from mlrobust.milp.clause import Clause

MAX_DISJUNCTS = 100_000
FLOAT32_MAX = float(np.finfo(np.float32).max)

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def _sexprs(text: str) -> list[tuple[int, Any]]:
    """The top-level S-expressions of ``text``, each with the line (1-based) it starts on."""
    text = re.sub(r";[^\n]*", "", text)
    stack: list[list] = [[]]
    starts: list[int] = []  # line of each open '('
    out: list[tuple[int, Any]] = []
    line, pos = 1, 0
    for m in _TOKEN.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        tok = m.group()
        if tok == "(":
            stack.append([])
            starts.append(line)
        elif tok == ")":
            if len(stack) == 1:
                raise InputError(f"VNN-LIB line {line}: unbalanced ')'")
            done = stack.pop()
            begun = starts.pop()
            if len(stack) == 1:
                out.append((begun, done))
            else:
                stack[-1].append(done)
        elif len(stack) == 1:
            out.append((line, tok))
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise InputError(f"VNN-LIB line {starts[-1]}: unbalanced '(' (the file ends inside this expression)")
    return out


@dataclass
class _Linear:
    """``Σ coef[v] · v + const``."""

    coef: dict[str, float] = field(default_factory=dict)
    const: float = 0.0
    line: int = 0  # where the constraint stands in the file (0: not known), for error messages

    def scaled(self, s: float) -> "_Linear":
        return _Linear({k: s * v for k, v in self.coef.items()}, s * self.const)

    def plus(self, other: "_Linear") -> "_Linear":
        coef = dict(self.coef)
        for k, v in other.coef.items():
            coef[k] = coef.get(k, 0.0) + v
        return _Linear(coef, self.const + other.const)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _term(expr, declared: set[str]) -> _Linear:
    if isinstance(expr, str):
        if _NUMBER.match(expr):
            value = float(expr)
            if not np.isfinite(value):
                raise InputError(f"VNN-LIB: the number {expr} is out of the range of a float")
            return _Linear({}, value)
        if expr in declared:
            return _Linear({expr: 1.0})
        raise InputError(f"VNN-LIB: {expr!r} is neither a number nor a declared variable")
    if not expr:
        raise InputError("VNN-LIB: empty expression '()'")
    op, args = expr[0], [_term(a, declared) for a in expr[1:]]
    if op == "+":
        out = _Linear()
        for a in args:
            out = out.plus(a)
        return out
    if op == "-":
        if len(args) == 1:
            return args[0].scaled(-1.0)
        out = args[0]
        for a in args[1:]:
            out = out.plus(a.scaled(-1.0))
        return out
    if op == "*":
        const = [a for a in args if not a.coef]
        varying = [a for a in args if a.coef]
        if len(varying) > 1:
            raise InputError("VNN-LIB: only linear terms are supported (a product of two variables was found)")
        factor = float(np.prod([a.const for a in const])) if const else 1.0
        return varying[0].scaled(factor) if varying else _Linear({}, factor)
    raise InputError(f"VNN-LIB: unsupported term operator {_show(op)!r} (supported: + - * and numbers)")


# A constraint is ``lin <= 0``; a DNF is a list of conjunctions (lists of constraints).
def _dnf(expr, declared: set[str]) -> list[list[_Linear]]:
    if isinstance(expr, str) or not expr:
        raise InputError(f"VNN-LIB: expected a formula, found {_show(expr) if expr else '()'}")
    op = expr[0]
    if op == "and":
        parts = [_dnf(a, declared) for a in expr[1:]]
        total = int(np.prod([len(p) for p in parts], dtype=np.float64)) if parts else 1
        if total > MAX_DISJUNCTS:
            raise InputError(f"VNN-LIB: the property expands to more than {MAX_DISJUNCTS} disjuncts")
        return [sum(combo, []) for combo in itertools.product(*parts)] if parts else [[]]
    if op == "or":
        out = []
        for a in expr[1:]:
            out.extend(_dnf(a, declared))
        return out
    if op in ("<=", ">=", "<", ">", "="):
        if len(expr) != 3:
            raise InputError(f"VNN-LIB: {op} takes two arguments: {_show(expr)}")
        a, b = _term(expr[1], declared), _term(expr[2], declared)
        diff = a.plus(b.scaled(-1.0))  # a - b
        if op in ("<=", "<"):
            return [[diff]]
        if op in (">=", ">"):
            return [[diff.scaled(-1.0)]]
        return [[diff, diff.scaled(-1.0)]]
    raise InputError(f"VNN-LIB: unsupported formula operator {_show(op)!r} (supported: and, or, <=, >=, <, >, =)")


@dataclass
class VnnlibRegion:
    """One input box and the output clauses reachable from it (a violation = some clause holds)."""

    lower: np.ndarray  # (num_inputs,)
    upper: np.ndarray
    clauses: list[Clause]


@dataclass
class VnnlibProperty:
    num_inputs: int
    num_outputs: int
    regions: list[VnnlibRegion]


def _show(expr: Any, limit: int = 80) -> str:
    """An S-expression as VNN-LIB text, cut to ``limit`` characters (error messages stay one short line)."""
    text = expr if isinstance(expr, str) else "(" + " ".join(_show(e, limit) for e in expr) + ")"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _at(line: int, exc: InputError) -> InputError:
    """``exc`` with the line number in front of its message (``VNN-LIB line N: ...``)."""
    message = str(exc)
    message = message[len("VNN-LIB: "):] if message.startswith("VNN-LIB: ") else message
    return InputError(f"VNN-LIB line {line}: {message}")


def _index(name: str, prefix: str) -> int | None:
    m = re.fullmatch(prefix + r"_(\d+)", name)
    return int(m.group(1)) if m else None


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise InputError(f"VNN-LIB file {str(path)!r} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"VNN-LIB file {str(path)!r} does not exist")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"VNN-LIB file {str(path)!r} is not text (byte {exc.start} is not UTF-8)") from None


def parse_vnnlib(source: str | Path) -> VnnlibProperty:
    """Parse VNN-LIB text (or a path to a ``.vnnlib`` file). Errors name the line of the command at fault."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith(".vnnlib")):
        text = _read_text(Path(source))
    else:
        text = str(source)
    declared: set[str] = set()
    asserts: list[tuple[int, Any]] = []
    for line, cmd in _sexprs(text):
        try:
            if not isinstance(cmd, list) or not cmd:
                raise InputError(f"unexpected top-level token {cmd!r}")
            if cmd[0] == "declare-const":
                if len(cmd) != 3 or cmd[2] != "Real" or not isinstance(cmd[1], str):
                    raise InputError(f"expected (declare-const NAME Real), found {_show(cmd)}")
                if _index(cmd[1], "X") is None and _index(cmd[1], "Y") is None:
                    raise InputError(f"variable {cmd[1]!r} must be named X_i (input) or Y_j (output)")
                declared.add(cmd[1])
            elif cmd[0] == "assert":
                if len(cmd) != 2:
                    raise InputError("assert takes one formula")
                asserts.append((line, cmd[1]))
            elif cmd[0] in ("set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"):
                continue
            else:
                raise InputError(f"unsupported command {_show(cmd[0])}")
        except InputError as exc:
            raise _at(line, exc) from None
    xs = sorted(i for i in (_index(n, "X") for n in declared) if i is not None)
    ys = sorted(i for i in (_index(n, "Y") for n in declared) if i is not None)
    if not xs or not ys:
        raise InputError("VNN-LIB: the file must declare input variables X_i and output variables Y_j")
    if xs != list(range(len(xs))) or ys != list(range(len(ys))):
        raise InputError("VNN-LIB: X_i and Y_j must be numbered 0, 1, 2, ... without gaps")
    n_in, n_out = len(xs), len(ys)
    # Assertions without a disjunction (the usual input bounds) are collected once; only the others multiply out.
    common: list[_Linear] = []
    dnf: list[list[_Linear]] = [[]]
    for line, a in asserts:
        try:
            part = _dnf(a, declared)
        except InputError as exc:
            raise _at(line, exc) from None
        for conj in part:
            for lin in conj:
                lin.line = line
        if len(part) == 1:
            common.extend(part[0])
            continue
        if len(dnf) * len(part) > MAX_DISJUNCTS:
            raise InputError(f"VNN-LIB: the property expands to more than {MAX_DISJUNCTS} disjuncts")
        dnf = [c1 + c2 for c1 in dnf for c2 in part]
    dnf = [common + conj for conj in dnf]
    regions: dict[bytes, VnnlibRegion] = {}
    for conj in dnf:
        lo = np.full(n_in, -np.inf)
        hi = np.full(n_in, np.inf)
        rows: list[np.ndarray] = []
        rhs: list[float] = []
        for lin in conj:
            kinds = {n[0] for n in lin.coef if lin.coef[n] != 0}
            if not kinds:
                if lin.const > 0:  # "c <= 0" with c > 0: this disjunct is empty
                    break
                continue
            if kinds == {"X"}:
                (name, c), *rest = [(n, v) for n, v in lin.coef.items() if v != 0]
                if rest:
                    raise _at(lin.line, InputError("input constraints must bound one X_i each (found a linear "
                                                   "combination of inputs)"))
                i, bound = _index(name, "X"), -lin.const / c
                if c > 0:
                    hi[i] = min(hi[i], bound)
                else:
                    lo[i] = max(lo[i], bound)
            elif kinds == {"Y"}:
                g = np.zeros(n_out)
                for n, v in lin.coef.items():
                    g[_index(n, "Y")] += v
                rows.append(g)
                rhs.append(-lin.const)
            else:
                raise _at(lin.line, InputError("a constraint mixes inputs X and outputs Y; only separate input "
                                               "bounds and output constraints are supported"))
        else:
            if np.any(~np.isfinite(lo)) or np.any(~np.isfinite(hi)):
                missing = np.flatnonzero(~np.isfinite(lo) | ~np.isfinite(hi))[:5]
                raise InputError(f"VNN-LIB: inputs {', '.join(f'X_{i}' for i in missing)} lack a lower or upper "
                                 f"bound")
            too_big = np.flatnonzero((np.abs(lo) > FLOAT32_MAX) | (np.abs(hi) > FLOAT32_MAX))[:5]
            if too_big.size:  # the network also runs in float32, where such an input is inf
                raise InputError(f"VNN-LIB: the bounds of {', '.join(f'X_{i}' for i in too_big)} lie beyond the "
                                 f"float32 range (|x| <= {FLOAT32_MAX:.3g})")
            if np.any(lo > hi):
                continue  # an empty input box holds no counterexample
            key = lo.tobytes() + hi.tobytes()
            region = regions.setdefault(key, VnnlibRegion(lo, hi, []))
            region.clauses.append(Clause(np.array(rows).reshape(len(rows), n_out), np.array(rhs, dtype=np.float64)))
    return VnnlibProperty(n_in, n_out, list(regions.values()))


# --- deciding -----------------------------------------------------------------------------------------------------


# --- a property that is a top-k membership ---------------------------------------------------------------------------
def region_topk(region: VnnlibRegion, num_outputs: int) -> tuple[int, int] | None:
    """``(target, k)`` when the region's counterexample clauses are exactly "``target`` is not in the top-k":
    one clause per k-subset S of the other outputs, holding ``Y_j >= Y_target`` for every j in S; else None."""
    subsets = []
    target = None
    for cl in region.clauses:
        G, h = np.asarray(cl.G), np.asarray(cl.h)
        if G.size == 0 or np.any(h != 0):
            return None
        rows = []
        for g in G:  # each row: y_t - y_j <= 0
            pos, neg = np.flatnonzero(g == 1.0), np.flatnonzero(g == -1.0)
            if len(pos) != 1 or len(neg) != 1 or np.count_nonzero(g) != 2:
                return None
            if target is None:
                target = int(pos[0])
            if int(pos[0]) != target:
                return None
            rows.append(int(neg[0]))
        subsets.append(frozenset(rows))
    if target is None or not subsets:
        return None
    k = len(subsets[0])
    others = [j for j in range(num_outputs) if j != target]
    if set(subsets) != {frozenset(c) for c in itertools.combinations(others, k)}:
        return None
    return target, k


def topk_form(prop: VnnlibProperty) -> tuple[int, int] | None:
    """``(target, k)`` when every region of ``prop`` is the same top-k membership (:func:`region_topk`), else
    None."""
    found: tuple[int, int] | None = None
    for region in prop.regions:
        form = region_topk(region, prop.num_outputs)
        if form is None or (found is not None and found != form):
            return None
        found = form
    return found
