"""Where the perturbed object comes from (mask file, box, automatic), and reading images and masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from mlrobust.errors import InputError
from mlrobust.neighborhood.image_io import load_image, read_image, read_mask, write_image, write_mask
from mlrobust.neighborhood.objects import (
    check_object_mask,
    find_object,
    foreground_components,
    mask_from_box,
    mask_from_file,
    parse_box,
    resolve_object,
)

H, W = 16, 20


def two_blob_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (1, H, W) image with a small blob on the left and a bigger one on the right, and their masks."""
    img = np.zeros((1, H, W))
    left = np.zeros((H, W), bool)
    right = np.zeros((H, W), bool)
    left[3:7, 2:5] = True
    right[8:14, 11:18] = True
    img[0, left] = 0.8
    img[0, right] = 0.6
    img[0, 12, 14] = 0.0  # a hole does not split a component
    return img, left, right


def region_logits(images: np.ndarray) -> np.ndarray:
    """A linear 'model': label 3 sums the left half of the image, label 7 the right half, others are constant."""
    images = np.asarray(images)
    out = np.full((images.shape[0], 10), 0.5)
    out[:, 3] = images[..., : W // 2].sum(axis=(1, 2, 3))
    out[:, 7] = images[..., W // 2 :].sum(axis=(1, 2, 3))
    return out


def test_mask_png_roundtrip_and_checks(tmp_path):
    mask = np.zeros((H, W), bool)
    mask[2:5, 3:9] = True
    write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(mask_from_file(tmp_path / "m.png", (H, W)), mask)
    with pytest.raises(InputError, match=r"mask m.png is 20x16 pixels \(W x H\) but the image is 10x16"):
        mask_from_file(tmp_path / "m.png", (H, 10))
    write_mask(tmp_path / "empty.png", np.zeros((H, W), bool))
    with pytest.raises(InputError, match="empty"):
        mask_from_file(tmp_path / "empty.png", (H, W))
    write_mask(tmp_path / "full.png", np.ones((H, W), bool))
    with pytest.raises(InputError, match="whole image"):
        mask_from_file(tmp_path / "full.png", (H, W))
    with pytest.raises(InputError, match="does not exist"):
        mask_from_file(tmp_path / "missing.png", (H, W))
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        mask_from_file(tmp_path / "junk.png", (H, W))


def test_mask_with_transparency_and_colour(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, but only opaque on the object
    rgba[4:6, 4:6, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    expected = np.zeros((H, W), bool)
    expected[4:6, 4:6] = True
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), expected)
    np.save(tmp_path / "m.npy", expected.astype(np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", (H, W)), expected)


def test_box_masks():
    mask = mask_from_box((2, 3, 5, 4), (H, W))
    assert mask.sum() == 3 and mask[3, 2:5].all()
    np.testing.assert_array_equal(mask_from_box("2,3,5,4", (H, W)), mask)
    assert parse_box("1, 2, 3, 4") == (1, 2, 3, 4)
    with pytest.raises(InputError, match="four integers"):
        parse_box("1,2,3")
    with pytest.raises(InputError, match="four integers"):
        parse_box("a,b,c,d")
    with pytest.raises(InputError, match="x0 < x1"):
        mask_from_box((5, 3, 5, 4), (H, W))
    with pytest.raises(InputError, match="x0 < x1"):
        mask_from_box((0, 0, W + 1, 4), (H, W))
    with pytest.raises(InputError, match="whole image"):
        mask_from_box((0, 0, W, H), (H, W))


def test_mask_covering_the_target_warns():
    _, left, right = two_blob_image()
    with pytest.warns(UserWarning, match="whole target object"):
        check_object_mask(left | right, (H, W), target_mask=left)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_object_mask(right, (H, W), target_mask=left)


def test_foreground_components():
    img, left, right = two_blob_image()
    labels, n = foreground_components(img)
    assert n == 2
    comps = {frozenset(zip(*np.nonzero(labels == i))) for i in (1, 2)}
    assert comps == {frozenset(zip(*np.nonzero(left))), frozenset(zip(*np.nonzero(right & (img[0] > 0))))}
    # Two pieces with a one-pixel gap merge at the default distance, not without merging.
    img2 = np.zeros((5, 9))
    img2[2, 1:4] = 1
    img2[2, 5:8] = 1
    assert foreground_components(img2)[1] == 1
    assert foreground_components(img2, merge_distance=0)[1] == 2


def test_automatic_object_excludes_the_target():
    img, left, right = two_blob_image()
    right_fg = right & (img[0] > 0)
    choice = find_object(img, region_logits, target=3)
    assert choice.label == 7 and choice.source == "auto"
    np.testing.assert_array_equal(choice.mask, right_fg)
    np.testing.assert_array_equal(choice.target_mask, left)
    choice = find_object(img, region_logits, target=7)
    assert choice.label == 3
    np.testing.assert_array_equal(choice.mask, left)
    # Component labels come from the score drops: the left blob is label 3, the right one label 7.
    assert sorted(choice.component_labels) == [3, 7]
    assert choice.drops[choice.index, 3] == pytest.approx(img[0, left].sum())


def test_automatic_object_without_target_and_with_override():
    img, left, right = two_blob_image()
    # Without a target: the right blob lowers its label most (sum 24.6 against 9.6).
    choice = find_object(img, region_logits)
    assert choice.label == 7 and choice.target_index is None
    # The user names the perturbed object's label.
    choice = find_object(img, region_logits, target=7, object_label=3)
    assert choice.label == 3
    np.testing.assert_array_equal(choice.mask, left)
    with pytest.warns(UserWarning):
        find_object(img, region_logits, target=7, object_label=7)


def test_automatic_object_in_model_layout():
    img, left, _ = two_blob_image()
    seen = []

    def flat_logits(batch):
        seen.append(batch.shape)
        return region_logits(batch.reshape(-1, 1, H, W))

    choice = find_object(img, flat_logits, target=7, sample_shape=(H * W,))
    assert all(s[1:] == (H * W,) for s in seen)
    np.testing.assert_array_equal(choice.mask, left)


def test_automatic_object_errors():
    img, left, _ = two_blob_image()
    with pytest.raises(InputError, match="no foreground"):
        find_object(np.zeros((1, H, W)), region_logits, target=3)
    single = np.where(left, 1.0, 0.0)[None]
    with pytest.raises(InputError, match="single foreground object"):
        find_object(single, region_logits, target=3)
    with pytest.raises(InputError, match="not a label"):
        find_object(img, region_logits, target=12)
    with pytest.warns(UserWarning, match="does not lower"):
        find_object(img, lambda b: np.zeros((len(b), 10)), target=3)
    with pytest.raises(InputError, match="logits_fn returned"):
        find_object(img, lambda b: np.zeros(10), target=3)


def test_resolve_object(tmp_path):
    img, left, right = two_blob_image()
    write_mask(tmp_path / "m.png", left)
    assert resolve_object(img, mask=tmp_path / "m.png").source == "mask"
    assert resolve_object(img, mask=left, object_label=3).label == 3
    assert resolve_object(img, box=(2, 3, 5, 7)).mask.sum() == 12
    assert resolve_object(img, logits_fn=region_logits, target=3).label == 7
    with pytest.raises(InputError, match="not both"):
        resolve_object(img, mask=left, box=(0, 0, 1, 1))
    with pytest.raises(InputError, match="needs the model"):
        resolve_object(img)


def test_load_image_grey_png(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(H, W)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "g.png")
    chw, layout = load_image(tmp_path / "g.png", (1, H, W))
    assert chw.shape == (1, H, W) and layout.chw == (1, H, W)
    np.testing.assert_allclose(chw[0], pixels / 255.0)
    flat, layout = load_image(tmp_path / "g.png", (H * W,))
    np.testing.assert_allclose(layout.to_sample(flat), pixels.ravel() / 255.0)
    with pytest.raises(InputError, match=r"20x16 pixels \(W x H\) but the model expects 16x16"):
        load_image(tmp_path / "g.png", (1, 16, 16))
    # Grey image for a colour model: repeated.
    rgb, _ = load_image(tmp_path / "g.png", (3, H, W))
    np.testing.assert_allclose(rgb[2], pixels / 255.0)


def test_load_image_colour_and_16_bit(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(H, W, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    chw, _ = load_image(tmp_path / "c.png", (3, H, W))
    np.testing.assert_allclose(chw, np.moveaxis(rgb, -1, 0) / 255.0)
    with pytest.warns(UserWarning, match="grey"):
        grey, _ = load_image(tmp_path / "c.png", (1, H, W))
    np.testing.assert_allclose(grey[0], rgb @ np.array([0.299, 0.587, 0.114]) / 255.0)
    wide = rng.integers(0, 65536, size=(H, W)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    np.testing.assert_allclose(read_image(tmp_path / "w.png")[0], wide / 65535.0)
    with pytest.raises(InputError, match="3 channels but the model takes 2"):
        load_image(tmp_path / "c.png", (2, H, W))


def test_image_write_read_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(1, H, W)) / 255.0
    write_image(tmp_path / "x.png", img)
    np.testing.assert_allclose(read_image(tmp_path / "x.png"), img)
    np.save(tmp_path / "x.npy", img)
    np.testing.assert_allclose(read_image(tmp_path / "x.npy"), img)
    np.save(tmp_path / "bad.npy", img * 3)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        read_image(tmp_path / "bad.npy")
    (tmp_path / "t.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "t.png")
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_automatic_label_is_one_the_model_sees():
    img, _, right = two_blob_image()

    def logits(images):
        out = region_logits(images)
        # Label 9 reacts strongly to the right blob but is far from the top of the clean image.
        out[:, 9] = 2 * out[:, 7] - 100
        return out

    choice = find_object(img, logits, target=3)
    assert choice.label == 7 and choice.component_labels[choice.index] == 9
    np.testing.assert_array_equal(choice.mask, right & (img[0] > 0))
