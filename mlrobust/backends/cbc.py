"""COIN-OR CBC through Pyomo's ``cbc`` plugin (the executable from the Debian package ``coinor-cbc``).

CBC gets the model as an LP file written by Pyomo; it has no early stop on the sign here, so decide mode solves to
optimality. The relative gap is set to 0 so that the reported bound is CBC's proven one.
"""

from __future__ import annotations

import shutil

from mlrobust.backends.pyomo_backend import PyomoBackend


class CbcBackend(PyomoBackend):
    name = "cbc"
    install_hint = "apt-get install coinor-cbc   (or: conda install -c conda-forge coincbc)"

    def __init__(self, threads: int | None = None, options: dict | None = None):
        opts = {"ratioGap": 0.0}
        if threads is not None:
            opts["threads"] = int(threads)
        opts.update(options or {})
        super().__init__("cbc", opts, name="cbc")

    def available(self) -> bool:
        return shutil.which("cbc") is not None and super().available()
