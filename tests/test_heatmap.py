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


def test_heatmap_figure_has_image_colour_bar_outline_and_legend():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(1, 16, 16))
    mask = np.zeros((16, 16), dtype=bool)
    mask[3:7, 4:9] = True
    eps = np.linspace(0.3, 0.0, int(layer_index(mask).max()) + 1)
    emap = eps[layer_index(mask)]
    fig = heatmap_figure(image, mask, emap, "title", target_note="target: label 1 stays among the top-2")
    img_ax, eps_ax = fig.get_axes()  # image and epsilon map, the colour bar inside the map's panel
    (bar,) = eps_ax.child_axes
    (shown,) = eps_ax.get_images()  # the image's strokes are contour lines, not a tint over the colours
    np.testing.assert_allclose(np.asarray(shown.get_array()), emap)
    assert shown.get_clim() == pytest.approx((0.0, 0.3))
    assert "square-root scale, 0 to 0.3" in bar.get_ylabel()
    # the object's outline on both panels: one segment per boundary edge of the 4x5 block, on pixel edges
    for ax in (img_ax, eps_ax):
        (lines,) = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
        segs = lines.get_segments()
        assert len(segs) == 2 * (4 + 5)
        xs = np.concatenate([s[:, 0] for s in segs])
        ys = np.concatenate([s[:, 1] for s in segs])
        assert xs.min() == 3.5 and xs.max() == 8.5 and ys.min() == 2.5 and ys.max() == 6.5
    assert fig._suptitle.get_text() == "title"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0].startswith("outline: the perturbed object") and "target: label 1" in legend[-1]


def test_each_panel_has_its_own_scale_equal_size_and_full_range_layers_stand_out():
    mask = np.zeros((12, 12), dtype=bool)
    mask[4:7, 4:7] = True
    layers = layer_index(mask)
    eps = np.full(int(layers.max()) + 1, 0.02)
    eps[0] = 0.08
    eps[-1] = 1.0  # the outermost ring spans the whole range
    full = (eps >= 1.0)[layers]
    refuted = np.full(eps.shape, 0.5)
    refuted[-2] = np.nan  # no counterexample known for this layer
    fig = heatmap_figure(np.zeros((12, 12)), mask, eps[layers], refuted_map=refuted[layers], full_map=full)
    img_ax, eps_ax, ref_ax = fig.get_axes()[:3]
    proven, upper = eps_ax.get_images()[0], ref_ax.get_images()[0]
    # the proven scale stops at the largest epsilon below the full range, not at 1 (nor at the refuted 0.5)
    assert proven.get_clim() == pytest.approx((0.0, 0.08)) and upper.get_clim() == pytest.approx((0.0, 0.5))
    assert float(proven.norm(0.02)) == pytest.approx(0.5)  # square root: a quarter of the top is half-way up
    assert np.all(np.asarray(proven.get_array())[full] > 0.08)  # drawn in the "over" colour
    assert np.ma.getmaskarray(upper.get_array())[layers == layers.max() - 1].all()  # the "none" colour
    sizes = {tuple(np.round(ax.get_position().size, 3)) for ax in (img_ax, eps_ax, ref_ax)}
    assert len(sizes) == 1  # the three panels are the same size
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "no counterexample known" in legend and "whole range [0, 1]" in legend


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
