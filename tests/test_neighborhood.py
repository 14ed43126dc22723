"""Layers, epsilon maps, boxes, sizes and weights of layered neighborhoods."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mlrobust.errors import InputError
from mlrobust.neighborhood import (
    ImageLayout,
    LayeredNeighborhood,
    chebyshev_distance,
    eps_map,
    layer_counts,
    layer_masks,
    layer_weights,
    per_layer_mean,
    per_layer_sum,
    per_layer_sum_batch,
)
from mlrobust.verify.spec import Box


def brute_force_distance(mask: np.ndarray) -> np.ndarray:
    """Chebyshev distance to the nearest object pixel by comparing every pixel with every object pixel."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    gy, gx = np.mgrid[0:h, 0:w]
    d = np.maximum(np.abs(gy[..., None] - ys), np.abs(gx[..., None] - xs))
    return d.min(axis=-1)


masks = st.tuples(st.integers(1, 14), st.integers(1, 14)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans()).filter(lambda m: m.any())
)


@settings(max_examples=150, deadline=None)
@given(masks)
def test_distance_matches_brute_force(mask):
    np.testing.assert_array_equal(chebyshev_distance(mask), brute_force_distance(mask))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.002, 0.2))
def test_distance_sparse_masks_match_brute_force(seed, density):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 40, size=2)
    mask = rng.random((h, w)) < density
    mask[rng.integers(h), rng.integers(w)] = True
    np.testing.assert_array_equal(chebyshev_distance(mask), brute_force_distance(mask))


def test_layers_of_a_single_pixel_are_squares():
    mask = np.zeros((7, 7), dtype=bool)
    mask[3, 3] = True
    d = chebyshev_distance(mask)
    np.testing.assert_array_equal(layer_counts(d), [1, 8, 16, 24])
    assert d[0, 0] == 3 and d[3, 3] == 0 and d[2, 4] == 1


def test_layer_masks_partition_the_image():
    rng = np.random.default_rng(1)
    mask = rng.random((12, 17)) < 0.05
    mask[0, 0] = True
    layers = chebyshev_distance(mask)
    lm = layer_masks(layers)
    assert lm.shape == (layers.max() + 1, 12, 17)
    np.testing.assert_array_equal(lm.sum(axis=0), 1)
    np.testing.assert_array_equal(lm.sum(axis=(1, 2)), layer_counts(layers))
    np.testing.assert_array_equal(lm[0], mask)


def test_empty_mask_is_an_error():
    with pytest.raises(InputError, match="empty"):
        chebyshev_distance(np.zeros((4, 4)))


def test_per_layer_sum_matches_loop():
    rng = np.random.default_rng(2)
    mask = rng.random((10, 11)) < 0.1
    mask[5, 5] = True
    layers = chebyshev_distance(mask)
    grad = rng.normal(size=(3, 10, 11))
    expected = [grad[:, layers == d].sum() for d in range(layers.max() + 1)]
    np.testing.assert_allclose(per_layer_sum(grad, layers), expected)
    first = [grad[0][layers == d].sum() for d in range(len(expected))]
    np.testing.assert_allclose(per_layer_sum(grad[0], layers), first)
    batch = rng.normal(size=(4, 3, 10, 11))
    out = per_layer_sum_batch(batch, layers)
    assert out.shape == (4, len(expected))
    for i in range(4):
        np.testing.assert_allclose(out[i], per_layer_sum(batch[i], layers))
    means = per_layer_mean(grad, layers)
    np.testing.assert_allclose(means, [grad[:, layers == d].mean() for d in range(len(expected))])


def test_per_layer_sum_rejects_wrong_shape():
    with pytest.raises(InputError):
        per_layer_sum(np.zeros((3, 4)), np.zeros((4, 3), dtype=int))


images_and_eps = st.integers(0, 2**31 - 1).map(np.random.default_rng).map(
    lambda rng: (
        rng.integers(1, 4),
        rng.integers(3, 16),
        rng.integers(3, 16),
        rng,
    )
)


@settings(max_examples=80, deadline=None)
@given(images_and_eps)
def test_box_is_within_unit_range_and_contains_image(args):
    channels, h, w, rng = args
    image = rng.random((channels, h, w))
    image[rng.random(image.shape) < 0.2] = 0.0
    image[rng.random(image.shape) < 0.2] = 1.0
    mask = rng.random((h, w)) < 0.15
    mask[rng.integers(h), rng.integers(w)] = True
    nb = LayeredNeighborhood.build(image, mask)
    eps = rng.random(nb.num_layers) * rng.choice([0.01, 0.3, 2.0])
    box = nb.box(eps)
    assert isinstance(box, Box)
    assert box.shape == (channels, h, w)
    assert np.all(box.lower >= 0.0) and np.all(box.upper <= 1.0)
    assert box.contains(image)
    # Per pixel, the box is exactly the clipped interval of the pixel's layer epsilon, in every channel.
    radius = eps[brute_force_distance(mask)]
    np.testing.assert_allclose(box.lower, np.clip(image - radius, 0, 1))
    np.testing.assert_allclose(box.upper, np.clip(image + radius, 0, 1))
    np.testing.assert_allclose(nb.eps_map(eps), radius)
    # Size is w . eps for the named weight kinds and for explicit vectors.
    weights = rng.random(nb.num_layers)
    assert nb.size(eps) == pytest.approx(eps.sum())
    assert nb.size(eps, "count") == pytest.approx(float(layer_counts(nb.layers) @ eps))
    assert nb.size(eps, weights) == pytest.approx(float(weights @ eps))


def test_zero_eps_box_is_the_image():
    rng = np.random.default_rng(3)
    image = rng.random((1, 6, 6))
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:3] = True
    box = LayeredNeighborhood.build(image, mask).box(0.0)
    np.testing.assert_array_equal(box.lower, image)
    np.testing.assert_array_equal(box.upper, image)


def test_several_objects_are_perturbed_together():
    image = np.zeros((2, 9, 9))
    a = np.zeros((9, 9), bool)
    b = np.zeros((9, 9), bool)
    a[0, 0] = True
    b[8, 8] = True
    nb = LayeredNeighborhood.build(image, [a, b])
    assert nb.layers[0, 0] == 0 and nb.layers[8, 8] == 0
    # The corners (0, 8) and (8, 0) are 8 away from both objects; the centre 4 away from each.
    assert nb.layers[4, 4] == 4 and nb.layers[0, 8] == 8 and nb.radius == 8
    box = nb.box([0.5] + [0.0] * 8)
    assert box.upper[1, 8, 8] == 0.5 and box.upper[0, 0, 0] == 0.5 and box.upper[:, 4, 4].max() == 0


def test_model_layouts():
    rng = np.random.default_rng(4)
    image = rng.random((3, 5, 6))
    mask = np.zeros((5, 6), bool)
    mask[2, 2] = True
    eps = np.array([0.1, 0.2, 0.3, 0.4])
    chw = LayeredNeighborhood.build(image, mask).box(eps)
    hwc = LayeredNeighborhood.build(image, mask, sample_shape=(5, 6, 3)).box(eps)
    flat = LayeredNeighborhood.build(image, mask, sample_shape=(90,)).box(eps)
    np.testing.assert_allclose(hwc.lower, np.moveaxis(chw.lower, 0, -1))
    np.testing.assert_allclose(flat.upper, chw.upper.ravel())
    gray = rng.random((5, 6))
    nb = LayeredNeighborhood.build(gray.reshape(30, 1), mask, sample_shape=(30, 1))
    np.testing.assert_allclose(nb.x, gray.reshape(30, 1))
    grad = rng.normal(size=(30, 1))
    np.testing.assert_allclose(nb.per_layer_sum(grad), per_layer_sum(grad.reshape(5, 6), nb.layers))
    np.testing.assert_allclose(nb.per_layer_sum(grad[None])[0], nb.per_layer_sum(grad))
    flat_grad = grad.reshape(5, 6)
    means = [flat_grad[nb.layers == d].mean() for d in range(nb.num_layers)]
    np.testing.assert_allclose(nb.per_layer_mean(grad), means)


def test_layout_inference():
    assert ImageLayout.infer((1, 64, 64)).chw == (1, 64, 64)
    assert ImageLayout.infer((28, 28)).chw == (1, 28, 28)
    assert ImageLayout.infer((784,)).chw == (1, 28, 28)
    assert ImageLayout.infer((784, 1)).chw == (1, 28, 28)
    layout = ImageLayout.infer((32, 32, 3))
    assert layout.channels_last and layout.chw == (3, 32, 32)
    assert ImageLayout.infer((60,), image_hw=(5, 4)).chw == (3, 5, 4)
    with pytest.raises(InputError, match="cannot tell"):
        ImageLayout.infer((70,))
    with pytest.raises(InputError, match="cannot hold"):
        ImageLayout.infer((70,), image_hw=(8, 8))


def test_eps_errors():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    nb = LayeredNeighborhood.build(np.zeros((5, 5)), mask)
    with pytest.raises(InputError, match="expected 3 epsilons"):
        nb.box([0.1, 0.2])
    with pytest.raises(InputError, match=">= 0"):
        nb.box([0.1, -0.2, 0.0])
    with pytest.raises(InputError, match="finite"):
        nb.box([0.1, np.nan, 0.0])


def test_image_and_mask_errors():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        LayeredNeighborhood.build(np.full((5, 5), 2.0), mask)
    with pytest.raises(InputError, match="4x4"):
        LayeredNeighborhood.build(np.zeros((4, 4)), mask)
    with pytest.raises(InputError, match="empty"):
        LayeredNeighborhood.build(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(InputError, match="different shapes"):
        LayeredNeighborhood.build(np.zeros((5, 5)), [mask, np.ones((4, 4))])


def test_weights_from_files(tmp_path):
    counts = np.array([3, 8, 12])
    np.testing.assert_array_equal(layer_weights("uniform", counts), [1, 1, 1])
    np.testing.assert_array_equal(layer_weights(None, counts), [1, 1, 1])
    np.testing.assert_array_equal(layer_weights("count", counts), [3, 8, 12])
    (tmp_path / "w.json").write_text(json.dumps([1, 0.5, 0.25]))
    (tmp_path / "o.json").write_text(json.dumps({"weights": [2, 1, 0]}))
    (tmp_path / "w.txt").write_text("# weights\n1, 2\n3\n")
    np.save(tmp_path / "w.npy", np.array([0.0, 0.0, 4.0]))
    np.testing.assert_array_equal(layer_weights(tmp_path / "w.json", counts), [1, 0.5, 0.25])
    np.testing.assert_array_equal(layer_weights(str(tmp_path / "o.json"), counts), [2, 1, 0])
    np.testing.assert_array_equal(layer_weights(tmp_path / "w.txt", counts), [1, 2, 3])
    np.testing.assert_array_equal(layer_weights(tmp_path / "w.npy", counts), [0, 0, 4])
    (tmp_path / "short.txt").write_text("1 2")
    with pytest.raises(InputError, match="2 values, but the neighborhood has 3 layers"):
        layer_weights(tmp_path / "short.txt", counts)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        layer_weights(tmp_path / "bad.json", counts)
    with pytest.raises(InputError, match="neither"):
        layer_weights("nonexistent-kind", counts)
    with pytest.raises(InputError, match=">= 0"):
        layer_weights([1, -1, 1], counts)
    with pytest.raises(InputError, match="all zero"):
        layer_weights([0, 0, 0], counts)


def test_eps_map_function():
    layers = np.array([[0, 1], [2, 1]])
    np.testing.assert_array_equal(eps_map(layers, np.array([0.1, 0.2, 0.3])), [[0.1, 0.2], [0.3, 0.2]])


def test_neighborhood_arrays_are_read_only():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    nb = LayeredNeighborhood.build(np.zeros((4, 4)), mask)
    with pytest.raises(ValueError):
        nb.layers[0, 0] = 3
    mask[1, 1] = True  # the caller's mask stays the caller's
    assert not nb.mask[1, 1]
