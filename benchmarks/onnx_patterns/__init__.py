"""Small networks, one per ONNX pattern the structural ops cover, each with a few VNN-LIB properties.

Each module of this package (whose name does not start with ``_``) is one pattern: it defines ``NAME: str`` and
``build(out_dir: Path) -> list[tuple[Path, Path]]``, which writes its ONNX model(s) and properties into ``out_dir``
and returns the (onnx, vnnlib) pairs. :func:`patterns` finds them all, so adding a pattern is adding a module.
The weights are random but seeded: the same files every run.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def patterns() -> dict[str, ModuleType]:
    """Every pattern module by its ``NAME``, in module-name order."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not callable(getattr(module, "build", None)):
            raise TypeError(f"pattern module {module.__name__} must define NAME: str and build(out_dir)")
        if name in found:
            raise ValueError(f"pattern name {name!r} is defined twice ({found[name].__name__}, {module.__name__})")
        found[name] = module
    return found
