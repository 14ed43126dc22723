"""Solver backends by name: the shipped ones, entry points (group ``mlrobust.solvers``) and any Pyomo solver.

``get_backend("highs")`` returns a ready backend; ``get_backend(obj)`` accepts any object with ``name``,
``available()`` and ``solve(...)``. A third-party package registers a backend in its ``pyproject.toml``::

    [project.entry-points."mlrobust.solvers"]
    mysolver = "my_package.backend:MyBackend"      # a class (or factory) called with no arguments

Names of the form ``pyomo:NAME`` (or any name Pyomo's ``SolverFactory`` knows) run through Pyomo. A solver that is
not installed raises :class:`~mlrobust.errors.SolverNotAvailableError` with the command that installs it.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable

from mlrobust.backends.base import SolverBackend
from mlrobust.errors import SolverNotAvailableError

ENTRY_POINT_GROUP = "mlrobust.solvers"


def _highs(**kw: Any) -> SolverBackend:
    from mlrobust.backends.highs import HighsBackend

    return HighsBackend(**kw)


def _cbc(**kw: Any) -> SolverBackend:
    from mlrobust.backends.cbc import CbcBackend

    return CbcBackend(**kw)


def _scip(**kw: Any) -> SolverBackend:
    from mlrobust.backends.scip import ScipBackend

    return ScipBackend(**kw)


def _gurobi(**kw: Any) -> SolverBackend:
    from mlrobust.backends.gurobi import GurobiBackend

    return GurobiBackend(**kw)


_BUILTIN: dict[str, Callable[..., SolverBackend]] = {"highs": _highs, "cbc": _cbc, "scip": _scip,
                                                      "gurobi": _gurobi}
_REGISTERED: dict[str, Callable[..., SolverBackend]] = {}

#: How to install each shipped backend's solver.
INSTALL_HINTS = {
    "highs": "pip install highspy",
    "cbc": "apt-get install coinor-cbc   (or: conda install -c conda-forge coincbc)",
    "scip": "pip install pyscipopt",
    "gurobi": "pip install gurobipy   (the pip build carries a size-limited licence: 2000 variables/constraints)",
}


def register_backend(name: str, factory: Callable[..., SolverBackend]) -> None:
    """Make ``factory`` (a class or a function returning a backend) available as ``name``."""
    _REGISTERED[name.lower()] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name.lower(): ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}  # Python >= 3.10


def backend_names() -> list[str]:
    """Every name :func:`get_backend` resolves without Pyomo (shipped, registered, entry points)."""
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def _pyomo_backend(solver_name: str, **kw: Any) -> SolverBackend | None:
    from mlrobust.backends.pyomo_backend import PyomoBackend, pyomo_knows

    if not pyomo_knows(solver_name):
        return None
    return PyomoBackend(solver_name, **kw)


def get_backend(spec: str | SolverBackend | None = None, **options: Any) -> SolverBackend:
    """Resolve a backend by name (``None`` = ``"highs"``) or accept a backend object as is.

    Raises SolverNotAvailableError (with the install command) for a known solver that is not installed, and for a
    name nobody knows (listing the names that exist).
    """
    if spec is None:
        spec = "highs"
    if not isinstance(spec, str):
        missing = [a for a in ("solve", "available") if not callable(getattr(spec, a, None))]
        if missing:
            raise SolverNotAvailableError(
                f"{spec!r} is not a solver backend: it lacks {', '.join(missing)}() (see mlrobust.backends.base)")
        if not spec.available():
            raise SolverNotAvailableError(f"solver backend {getattr(spec, 'name', spec)!r} reports it is not available")
        return spec
    name = spec.strip()
    key = name.lower()
    backend: SolverBackend | None = None
    if key.startswith("pyomo:"):
        backend = _pyomo_backend(name.split(":", 1)[1], **options)
        if backend is None:
            raise SolverNotAvailableError(f"Pyomo does not know a solver named {name.split(':', 1)[1]!r}")
    elif key in _REGISTERED:
        backend = _REGISTERED[key](**options)
    elif key in _BUILTIN:
        backend = _BUILTIN[key](**options)
    else:
        eps = _entry_points()
        if key in eps:
            try:
                factory = eps[key].load()
            except Exception as exc:  # a broken third-party plugin must not look like a missing solver
                raise SolverNotAvailableError(
                    f"solver plugin {name!r} ({eps[key].value}) failed to load: {exc}") from exc
            backend = factory(**options)
        else:
            backend = _pyomo_backend(name, **options)
    if backend is None:
        raise SolverNotAvailableError(
            f"unknown solver {name!r}; known backends: {', '.join(backend_names())}, or any Pyomo solver "
            f"as 'pyomo:NAME'")
    if not backend.available():
        hint = getattr(backend, "install_hint", None) or INSTALL_HINTS.get(key, "")
        raise SolverNotAvailableError(
            f"solver {name!r} is not installed" + (f"; {install_phrase(hint)}" if hint else ""))
    return backend


def install_phrase(hint: str) -> str:
    """A backend's install hint as the end of the "not installed" sentence: a command reads "install it with:
    pip install ...", a pointer to the documentation ("see https://...") reads as it is."""
    return hint if hint.lower().startswith("see ") else f"install it with: {hint}"


def available_backends() -> list[str]:
    """Names of the shipped and registered backends whose solver is installed here."""
    out = []
    for name in backend_names():
        try:
            get_backend(name)
        except Exception:
            continue
        out.append(name)
    return out
