"""Per-op MILP encodings: each module turns one kind of IR op into columns, rows and an output affine form."""

from mlrobust.milp.layers.affine import affine_matrix, encode_affine
from mlrobust.milp.layers.maxpool import encode_maxpool, pool_windows
from mlrobust.milp.layers.relu import encode_relu

__all__ = ["affine_matrix", "encode_affine", "encode_relu", "encode_maxpool", "pool_windows"]
