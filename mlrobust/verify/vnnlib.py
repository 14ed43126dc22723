"""VNN-LIB properties: read them, and decide them with the pipeline ``verify`` uses (PGD, CROWN bounds, MILP;
:mod:`mlrobust.verify.decision`).

A VNN-LIB file declares inputs ``X_i`` and outputs ``Y_j`` (flattened, C order) and asserts the *counterexample
region*: bounds on the inputs and linear constraints on the outputs, combined with ``and``/``or``. "sat" means an
input in the box reaches the output region (the property is violated), "unsat" that none does (it holds).

The assertions are brought into disjunctive normal form; each disjunct must split into single-variable bounds on
inputs (a box) and linear inequalities on outputs. Disjuncts with the same input box are decided together as one
MILP over a disjunction of conjunctions (:mod:`mlrobust.milp.disjunction`). Strict inequalities are read as
non-strict (the usual reading in VNN-COMP, whose checker works with a tolerance anyway).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrobust.backends.base import SolverBackend, StopRule
from mlrobust.backends.registry import get_backend
from mlrobust.bounds import linear_bounds
from mlrobust.errors import InputError
from mlrobust.ir.graph import Network
from mlrobust.milp.builder import MilpBuilder
from mlrobust.milp.disjunction import Clause, add_disjunction, clause_forms, clause_margin
from mlrobust.milp.tightening import base_bounds, torch_threads
from mlrobust.verify.attack import PgdAttack
from mlrobust.verify.counterexample import CheckedPoint, check_points, torch_module
from mlrobust.verify.decision import decide_after_solve, run_attack
from mlrobust.verify.spec import VNNLIB_VERIFIERS, Box
from mlrobust.verify.verdict import ROBUST_TOLERANCE

MAX_DISJUNCTS = 100_000
FLOAT32_MAX = float(np.finfo(np.float32).max)

# --- parsing ------------------------------------------------------------------------------------------------------
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
@dataclass(frozen=True)
class ClauseProperty:
    """The output property of one region as an :class:`OutputProperty`: margin ``max_i min_j g_ij >= 0`` = sat."""

    clauses: tuple[Clause, ...]

    def margin(self, logits: np.ndarray) -> np.ndarray:
        return clause_margin(logits, list(self.clauses))

    def margin_torch(self, logits: torch.Tensor) -> torch.Tensor:
        vals = []
        for cl in self.clauses:
            G = torch.as_tensor(cl.G, dtype=logits.dtype)
            h = torch.as_tensor(cl.h, dtype=logits.dtype)
            vals.append((h[None, :] - logits @ G.T).min(dim=1).values)
        return torch.stack(vals, dim=1).max(dim=1).values


@dataclass
class VnnlibResult:
    """``status``: "sat", "unsat", "timeout" or "unknown"; for sat the confirmed input and its outputs."""

    status: str
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    seconds: float = 0.0
    tier: str = ""
    reason: str = ""
    stats: dict = field(default_factory=dict)

    def to_vnncomp(self) -> str:
        """The result in VNN-COMP's format: the status line, then for sat ``((X_0 v) ... (Y_0 v) ...)``."""
        if self.status != "sat" or self.x is None or self.y is None:
            return self.status + "\n"
        # ``+ 0.0`` turns -0.0 into 0.0: a pixel at the bottom of its range reads 0, not -0
        entries = [f"(X_{i} {float(v) + 0.0!r})" for i, v in enumerate(self.x.reshape(-1))]
        entries += [f"(Y_{j} {float(v) + 0.0!r})" for j, v in enumerate(self.y.reshape(-1))]
        return "sat\n(" + "\n ".join(entries) + ")\n"


def _region_box(network: Network, region: VnnlibRegion) -> Box:
    n = int(np.prod(network.sample_shape))
    if region.lower.size != n:
        raise InputError(f"the VNN-LIB property declares {region.lower.size} inputs; the model has {n}")
    return Box(region.lower.reshape(network.sample_shape), region.upper.reshape(network.sample_shape))


def _clause_bounds(network: Network, box: Box, builder: MilpBuilder, clauses: list[Clause], bounds,
                   deadline: float | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bounds of every ``g_ij`` from the output form and (unless the bounds are IBP) CROWN linear bounds; past the
    ``deadline`` the remaining clauses keep their interval bounds (looser, still sound)."""
    col_lower, col_upper, *_ = builder.enc.arrays()

    forms = clause_forms(builder.output_form, clauses, builder.enc.ncols)
    lows, highs = [], []
    for cl, form in zip(clauses, forms):
        lo, hi = form.interval(col_lower, col_upper)
        if bounds.method != "ibp" and (deadline is None or time.perf_counter() < deadline):
            c_lo, c_hi = linear_bounds(network, box.lower, box.upper, -np.asarray(cl.G), bounds=bounds)
            lo, hi = np.maximum(lo, c_lo + cl.h), np.minimum(hi, c_hi + cl.h)
        lows.append(lo)
        highs.append(np.maximum(hi, lo))
    return lows, highs


def decide_region(network: Network, region: VnnlibRegion, solver: str | SolverBackend | None = "highs",
                  time_limit: float | None = None, attack: PgdAttack | None = None,
                  tightening: str = "crown", verifier: str = "cascade") -> VnnlibResult:
    """Decide one region with the pipeline ``verify`` uses (:mod:`mlrobust.verify.decision`): the attack (with
    ``attack``'s settings, by default the cascade's), bounds, then the MILP and the same verdict rule.

    ``verifier``: "cascade" (as above), "bab" (branch and bound instead of the MILP) or "cascade-bab" (branch and
    bound for half the time left, then the MILP).
    """
    if verifier not in VNNLIB_VERIFIERS:
        raise InputError(f"unknown verifier {verifier!r}; choose one of {', '.join(VNNLIB_VERIFIERS)}")
    start = time.perf_counter()
    box = _region_box(network, region)
    clauses = list(region.clauses)
    prop = ClauseProperty(tuple(clauses))
    deadline = None if time_limit is None else start + time_limit

    def left() -> float | None:
        return None if deadline is None else max(deadline - time.perf_counter(), 0.0)

    def sat(point: CheckedPoint, tier: str) -> VnnlibResult:
        with torch.no_grad():
            y = torch_module(network).logits(torch.as_tensor(point.x[None], dtype=torch.float32))[0].double().numpy()
        return VnnlibResult("sat", point.x.reshape(-1), y, time.perf_counter() - start, tier,
                            stats={"margin": point.margin, "margin_float32": point.margin_torch})

    if any(cl.h.size == 0 for cl in clauses):  # a clause with no output constraint: every input is a witness
        point = check_points(network, box, [box.center], prop)[0]
        return sat(point, "bounds")
    found = run_attack(network, box, prop, attack, time_limit=left())
    if found.counterexample is not None:
        return sat(found.counterexample, "attack")
    if deadline is not None and time.perf_counter() >= deadline:  # the bounds below cannot be interrupted
        return VnnlibResult("timeout", seconds=time.perf_counter() - start, tier="attack",
                            stats={"attack_best": found.best.margin if found.best else None})
    with torch_threads(1):
        bounds, _ = base_bounds(network, box.lower, box.upper, "ibp" if tightening == "ibp" else "crown")
    builder = MilpBuilder(network, bounds).run()
    lows, highs = _clause_bounds(network, box, builder, clauses, bounds, deadline)
    m_hi = max(float(np.min(h)) for h in highs)
    stats: dict = {"attack_best": found.best.margin if found.best else None, "bound_before_milp": m_hi}
    if m_hi < -ROBUST_TOLERANCE:
        return VnnlibResult("unsat", seconds=time.perf_counter() - start, tier="bounds", stats=stats)
    if deadline is not None and time.perf_counter() >= deadline:
        return VnnlibResult("timeout", seconds=time.perf_counter() - start, tier="bounds", stats=stats)
    if verifier in ("bab", "cascade-bab"):
        from mlrobust.verify.bab import BabVerifier, clause_spec

        spec = clause_spec(clauses, prop)
        spec.cap = np.concatenate([_cert_caps(h) for h in highs])  # the bounds above, sound on every sub-domain
        remaining = left()
        share = remaining if remaining is None or verifier == "bab" else remaining / 2
        bab = BabVerifier().run(network, box, spec, share, attack=False,
                                root_bounds=bounds if bounds.method.startswith("crown") else None)
        stats["bab"] = bab.stats
        if bab.status == "violated" and bab.counterexample is not None:
            return sat(bab.counterexample, "bab")
        if bab.status == "proven":
            return VnnlibResult("unsat", seconds=time.perf_counter() - start, tier="bab", stats=stats)
        if verifier == "bab" or (deadline is not None and time.perf_counter() >= deadline):
            status = "timeout" if "time limit" in bab.reason else "unknown"
            return VnnlibResult(status, seconds=time.perf_counter() - start, tier="bab", reason=bab.reason,
                                stats=stats)
    obj = add_disjunction(builder.enc, builder.output_form, clauses, lows, highs, prune_below=-ROBUST_TOLERANCE)
    problem = builder.problem(obj.objective_col, {"clause_binaries": int(obj.clause_binaries.size)})
    backend = get_backend(solver)
    result = backend.solve(problem, time_limit=left(), stop=StopRule(0.0, -ROBUST_TOLERANCE))
    result.bound = max(result.bound, obj.dropped_upper)
    stats.update({"status": result.status, "objective": result.objective, "bound": result.bound,
                  "binaries": problem.num_binaries, "variables": problem.num_cols, "solve_seconds": result.seconds})
    decision = decide_after_solve(network, box, prop, problem, result)
    if decision.counterexample is not None:
        return sat(decision.counterexample, "milp")
    seconds = time.perf_counter() - start
    status = {"holds": "unsat", "timeout": "timeout"}.get(decision.status, "unknown")
    return VnnlibResult(status, seconds=seconds, tier="milp", reason=decision.reason if status == "unknown" else "",
                        stats=stats)


def _cert_caps(highs: np.ndarray) -> np.ndarray:
    """Known upper bounds of one clause's certificate rows (:func:`mlrobust.verify.bab.clause_spec`): its own rows,
    then (for more than one row) their average, bounded by the average of their bounds."""
    highs = np.asarray(highs, dtype=np.float64).reshape(-1)
    return highs if highs.size <= 1 else np.append(highs, highs.mean())


def check_vnnlib(network: Network, prop: VnnlibProperty | str | Path, solver: str | SolverBackend | None = "highs",
                 timeout: float | None = None, tightening: str = "crown", verifier: str = "cascade") -> VnnlibResult:
    """Decide a whole VNN-LIB property: sat as soon as one region is sat, unsat when every region is unsat.

    ``verifier``: how each region is decided after the attack and the bounds (see :func:`decide_region`).
    """
    if verifier not in VNNLIB_VERIFIERS:
        raise InputError(f"unknown verifier {verifier!r}; choose one of {', '.join(VNNLIB_VERIFIERS)}")
    if not isinstance(prop, VnnlibProperty):
        prop = parse_vnnlib(prop)
    if prop.num_outputs != network.num_classes:
        raise InputError(f"the VNN-LIB property declares {prop.num_outputs} outputs; the model has "
                         f"{network.num_classes}")
    n = int(np.prod(network.sample_shape))
    if prop.num_inputs != n:
        raise InputError(f"the VNN-LIB property declares {prop.num_inputs} inputs; the model has {n}")
    start = time.perf_counter()
    if not prop.regions:
        return VnnlibResult("unsat", seconds=0.0, tier="parse", reason="every disjunct is empty")
    results: list[VnnlibResult] = []
    for region in prop.regions:
        left = None if timeout is None else timeout - (time.perf_counter() - start)
        if left is not None and left <= 0:
            results.append(VnnlibResult("timeout", reason="no time left for this region"))
            break
        res = decide_region(network, region, solver, left, tightening=tightening, verifier=verifier)
        if res.status == "sat":
            res.seconds = time.perf_counter() - start
            return res
        results.append(res)
    seconds = time.perf_counter() - start
    if len(results) == 1:
        results[0].seconds = seconds
        return results[0]
    statuses = [r.status for r in results]
    tiers = ",".join(sorted({r.tier for r in results if r.tier}))
    stats = {"regions": len(prop.regions), "statuses": statuses}
    if len(results) == len(prop.regions) and all(s == "unsat" for s in statuses):
        return VnnlibResult("unsat", seconds=seconds, tier=tiers, stats=stats)
    status = "timeout" if "timeout" in statuses else "unknown"
    reasons = "; ".join(r.reason for r in results if r.reason)
    return VnnlibResult(status, seconds=seconds, tier=tiers, reason=reasons, stats=stats)
