"""The epsilon heatmap: a readable PNG with the image, the colour-mapped epsilons, a colour bar and the object's
outline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_search_oracles import ExactLpVerifier, tiny_case

import mlrobust
from mlrobust.errors import InputError
from mlrobust.neighborhood.layers import layer_index
from mlrobust.viz.heatmap import heatmap_figure, save_heatmap


def test_heatmap_figure_has_image_colour_bar_and_outline():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(1, 16, 16))
    mask = np.zeros((16, 16), dtype=bool)
    mask[3:7, 4:9] = True
    eps = np.linspace(0.3, 0.0, int(layer_index(mask).max()) + 1)
    emap = eps[layer_index(mask)]
    fig = heatmap_figure(image, mask, emap, "title")
    axes = fig.get_axes()
    assert len(axes) == 3  # image, epsilon map, colour bar
    img_ax, eps_ax, bar = axes
    shown = eps_ax.get_images()
    assert len(shown) == 2  # the epsilon map, and the image as translucent ink above it
    np.testing.assert_allclose(np.asarray(shown[0].get_array()), emap)
    assert shown[0].get_clim() == pytest.approx((0.0, 0.3))
    ink = np.asarray(shown[1].get_array())
    np.testing.assert_allclose(ink[..., 3], 0.55 * image[0])
    # the object's outline on both panels: one segment per boundary edge of the 4x5 block, on pixel edges
    for ax in (img_ax, eps_ax):
        (lines,) = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
        segs = lines.get_segments()
        assert len(segs) == 2 * (4 + 5)
        xs = np.concatenate([s[:, 0] for s in segs])
        ys = np.concatenate([s[:, 1] for s in segs])
        assert xs.min() == 3.5 and xs.max() == 8.5 and ys.min() == 2.5 and ys.max() == 6.5
    assert fig._suptitle.get_text() == "title"


def test_refuted_panel_shares_a_square_root_colour_scale_with_the_proven_one():
    mask = np.zeros((12, 12), dtype=bool)
    mask[4:7, 4:7] = True
    layers = layer_index(mask)
    eps = np.full(int(layers.max()) + 1, 0.02)
    refuted = np.full(eps.shape, 0.5)
    refuted[-1] = np.nan  # no counterexample known for the outermost layer
    fig = heatmap_figure(np.zeros((12, 12)), mask, eps[layers], refuted_map=refuted[layers])
    eps_ax, ref_ax = fig.get_axes()[1:3]
    proven, upper = eps_ax.get_images()[0], ref_ax.get_images()[0]
    assert proven.norm is upper.norm and proven.get_clim() == pytest.approx((0.0, 0.5))
    # 0.02 of 0.5 lands a fifth of the way up the colour map (sqrt(0.04)), not 4 % of it: the proven map stays visible
    assert float(proven.norm(0.02)) == pytest.approx(0.2)
    assert np.ma.getmaskarray(upper.get_array())[layers == layers.max()].all()  # drawn grey


def test_heatmap_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="differ in size"):
        heatmap_figure(np.zeros((1, 8, 8)), np.ones((8, 8), bool), np.zeros((7, 8)))


def test_save_heatmap_of_a_search_result(tmp_path):
    net, image, target, mask = tiny_case(4, hidden=3, classes=3)
    res = mlrobust.maximize(net, image, target, object_mask=mask, verifier=ExactLpVerifier(), method="uniform",
                            certify=False, time_limit=60)
    path = save_heatmap(res, tmp_path / "heat.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas
