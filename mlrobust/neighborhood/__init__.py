"""Layered neighborhoods: layers by Chebyshev distance to a perturbed object, an epsilon per layer, boxes, sizes."""

from mlrobust.neighborhood.layers import (
    chebyshev_distance,
    layer_counts,
    layer_index,
    layer_masks,
    num_layers,
    per_layer_mean,
    per_layer_sum,
    per_layer_sum_batch,
)
from mlrobust.neighborhood.layout import ImageLayout, as_chw
from mlrobust.neighborhood.neighborhood import (
    WEIGHT_KINDS,
    LayeredNeighborhood,
    eps_map,
    eps_vector,
    layer_weights,
    layered_bounds,
    neighborhood_size,
)

__all__ = [
    "LayeredNeighborhood",
    "ImageLayout",
    "WEIGHT_KINDS",
    "as_chw",
    "chebyshev_distance",
    "eps_map",
    "eps_vector",
    "layer_counts",
    "layer_index",
    "layer_masks",
    "layer_weights",
    "layered_bounds",
    "neighborhood_size",
    "num_layers",
    "per_layer_mean",
    "per_layer_sum",
    "per_layer_sum_batch",
]
