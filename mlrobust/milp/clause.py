"""One conjunction of linear output constraints ``G @ y <= h``: the unit a VNN-LIB output region is made of.

Its own light module (numpy only): the VNN-LIB reader builds clauses without loading the MILP stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clause:
    """``G @ y <= h`` (all rows) over the flattened output ``y``."""

    G: np.ndarray  # (rows, num_outputs)
    h: np.ndarray  # (rows,)
