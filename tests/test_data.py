"""MNIST IDX reading and checksums, the Double-MNIST builder, its storage and the ``mlrobust data`` command, all on
small IDX files written here."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from mlrobust.data import (
    MNIST_FILES,
    build_double_mnist,
    build_from_mnist_dir,
    load_mnist,
    load_npz,
    read_idx,
    save_npz,
    save_png,
    write_idx,
)
from mlrobust.data.mnist import find_mnist_file, parse_idx
from mlrobust.errors import InputError


def fake_digits(rng: np.random.Generator, n: int, classes=range(10)) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 'digits': a random blob of ink inside the central 20x20 box, labels cycling ``classes``."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    ink = rng.random((n, 20, 20)) < 0.3
    images[:, 4:24, 4:24] = np.where(ink, rng.integers(1, 256, size=(n, 20, 20)), 0)
    labels = np.array([list(classes)[i % len(classes)] for i in range(n)], dtype=np.uint8)
    return images, labels


def write_fake_mnist(folder, rng, n_train=40, n_test=30, gz=True) -> dict[str, str]:
    """Four IDX files under the MNIST names; returns the MD5 of each file's content."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = fake_digits(rng, n)
        for kind, arr in (("images", images), ("labels", labels)):
            key = f"{split}-{kind}"
            path = folder / (MNIST_FILES[key].name + (".gz" if gz else ""))
            write_idx(path, arr)
            raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
            sums[key] = hashlib.md5(raw).hexdigest()
    return sums


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]).flatmap(
        lambda dt: arrays(dt, st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple))
    ),
    st.booleans(),
)
def test_idx_roundtrip(tmp_path_factory, arr, compress):
    path = tmp_path_factory.mktemp("idx") / "a.idx"
    write_idx(path, arr, compress=compress)
    back = read_idx(path)
    assert back.shape == arr.shape and back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)


def test_idx_header_layout(tmp_path):
    write_idx(tmp_path / "l", np.array([7, 2, 1], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes.fromhex("00000801 00000003 070201")


def test_idx_errors(tmp_path):
    with pytest.raises(InputError, match="bad magic"):
        parse_idx(b"\x01\x02\x03\x04rest")
    good = bytes.fromhex("00000803 00000002 00000002 00000002") + bytes(8)
    assert parse_idx(good).shape == (2, 2, 2)
    with pytest.raises(InputError, match="8 bytes|24 bytes"):
        parse_idx(good[:-1])
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_idx(tmp_path / "broken.gz")


def test_md5_check(tmp_path):
    rng = np.random.default_rng(0)
    sums = write_fake_mnist(tmp_path, rng)
    # Synthetic files are not the published ones: the default check refuses them and says why.
    with pytest.raises(InputError, match="fails its MD5 check"):
        load_mnist(tmp_path, "train")
    images, labels = load_mnist(tmp_path, "train", checksums=sums)
    assert images.shape == (40, 28, 28) and labels.shape == (40,)
    images2, _ = load_mnist(tmp_path, "train", checksums=None)
    np.testing.assert_array_equal(images, images2)
    wrong = dict(sums, **{"test-labels": "0" * 32})
    with pytest.raises(InputError, match="t10k-labels"):
        load_mnist(tmp_path, "test", checksums=wrong)


def test_uncompressed_and_alternative_names(tmp_path):
    rng = np.random.default_rng(1)
    write_fake_mnist(tmp_path / "gz", np.random.default_rng(1), gz=True)
    write_fake_mnist(tmp_path / "raw", np.random.default_rng(1), gz=False)
    a = load_mnist(tmp_path / "gz", "test", checksums=None)
    b = load_mnist(tmp_path / "raw", "test", checksums=None)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # The '.idx' spelling of some mirrors.
    p = find_mnist_file(tmp_path / "raw", "test-labels")
    p.rename(tmp_path / "raw" / "t10k-labels.idx1-ubyte")
    assert find_mnist_file(tmp_path / "raw", "test-labels").name == "t10k-labels.idx1-ubyte"
    (tmp_path / "raw" / "t10k-labels.idx1-ubyte").unlink()
    with pytest.raises(InputError, match="not found"):
        load_mnist(tmp_path / "raw", "test", checksums=None)
    with pytest.raises(InputError, match="split"):
        load_mnist(tmp_path / "gz", "valid")
    del rng


def test_mismatched_counts(tmp_path):
    rng = np.random.default_rng(2)
    write_fake_mnist(tmp_path, rng)
    write_idx(tmp_path / (MNIST_FILES["train-labels"].name + ".gz"), np.zeros(39, dtype=np.uint8))
    with pytest.raises(InputError, match="40 images but 39 labels"):
        load_mnist(tmp_path, "train", checksums=None)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_fake_mnist(folder, np.random.default_rng(3), n_train=50, n_test=30)
    return folder


def test_double_mnist_layout(mnist_dir):
    images, labels = load_mnist(mnist_dir, "train", checksums=None)
    data = build_double_mnist(images, labels, 200, seed=5, split="train")
    n = len(data)
    assert data.images.shape == (n, 64, 64) and data.images.dtype == np.uint8
    assert data.labels.shape == (n, 10) and data.masks.shape == (n, 2, 64, 64)
    assert n == 200
    # Two different digits, a multi-hot label of exactly those, each digit drawn from MNIST images of its class.
    assert np.all(data.digits[:, 0] != data.digits[:, 1])
    np.testing.assert_array_equal(data.labels.sum(axis=1), 2)
    np.testing.assert_array_equal(data.labels[np.arange(n)[:, None], data.digits], 1)
    np.testing.assert_array_equal(labels[data.source], data.digits)
    # Positions: y in 0..36-1, left x in 0..3, right x in 32..35.
    ys, xs = data.positions[..., 0], data.positions[..., 1]
    assert ys.min() >= 0 and ys.max() <= 35
    assert xs[:, 0].min() >= 0 and xs[:, 0].max() <= 3 and xs[:, 1].min() >= 32 and xs[:, 1].max() <= 35
    # With 200 images every offset shows up: the draw covers the whole range.
    assert set(np.unique(xs[:, 0])) == {0, 1, 2, 3} and ys.max() >= 30 and ys.min() <= 5
    for i in range(n):
        expected = np.zeros((64, 64), dtype=np.uint8)
        for side in (0, 1):
            y, x = data.positions[i, side]
            digit = images[data.source[i, side]]
            # The pasted pixels are the digit, and the mask is exactly its ink.
            np.testing.assert_array_equal(data.images[i, y : y + 28, x : x + 28], digit)
            mask = np.zeros((64, 64), dtype=bool)
            mask[y : y + 28, x : x + 28] = digit > 0
            np.testing.assert_array_equal(data.masks[i, side], mask)
            expected[y : y + 28, x : x + 28] = digit
        np.testing.assert_array_equal(data.images[i], expected)
        assert not np.any(data.masks[i, 0] & data.masks[i, 1])
        np.testing.assert_array_equal(data.images[i] > 0, data.masks[i, 0] | data.masks[i, 1])


def test_double_mnist_determinism(mnist_dir):
    a = build_from_mnist_dir(mnist_dir, 30, 20, seed=11, checksums=None)
    b = build_from_mnist_dir(mnist_dir, 30, 20, seed=11, checksums=None)
    c = build_from_mnist_dir(mnist_dir, 30, 20, seed=12, checksums=None)
    d = build_from_mnist_dir(mnist_dir, 5, 20, seed=11, checksums=None)
    for split in ("train", "test"):
        np.testing.assert_array_equal(a[split].images, b[split].images)
        np.testing.assert_array_equal(a[split].masks, b[split].masks)
        assert not np.array_equal(a[split].images, c[split].images)
    # The test split does not depend on how many training images were asked for.
    np.testing.assert_array_equal(a["test"].images, d["test"].images)
    # Train digits come from MNIST train, test digits from t10k.
    train_images, _ = load_mnist(mnist_dir, "train", checksums=None)
    test_images, _ = load_mnist(mnist_dir, "test", checksums=None)
    y, x = a["test"].positions[0, 0]
    np.testing.assert_array_equal(a["test"].images[0, y : y + 28, x : x + 28], test_images[a["test"].source[0, 0]])
    y, x = a["train"].positions[0, 1]
    np.testing.assert_array_equal(a["train"].images[0, y : y + 28, x : x + 28], train_images[a["train"].source[0, 1]])


def test_builder_errors():
    rng = np.random.default_rng(4)
    images, labels = fake_digits(rng, 10, classes=[3])
    with pytest.raises(InputError, match="fewer than two"):
        build_double_mnist(images, labels, 5)
    images, labels = fake_digits(rng, 10, classes=[3, 8])
    data = build_double_mnist(images, labels, 20)
    assert set(np.unique(data.digits)) == {3, 8}
    with pytest.raises(InputError, match="do not fit"):
        build_double_mnist(np.zeros((4, 28, 40), np.uint8), labels[:4], 2)
    with pytest.raises(InputError, match="split"):
        build_double_mnist(images, labels, 2, split="val")
    assert len(build_double_mnist(images, labels, 0)) == 0


def test_npz_and_png_storage(mnist_dir, tmp_path):
    sets = build_from_mnist_dir(mnist_dir, 6, 4, seed=1, checksums=None)
    save_npz(tmp_path / "d.npz", sets)
    back = load_npz(tmp_path / "d.npz")
    for split in ("train", "test"):
        for f in ("images", "labels", "digits", "masks", "positions", "source"):
            np.testing.assert_array_equal(getattr(back[split], f), getattr(sets[split], f))
        assert back[split].seed == 1
    floats = back["test"].float_images()
    assert floats.shape == (4, 1, 64, 64) and floats.dtype == np.float32 and floats.max() <= 1.0
    save_png(tmp_path / "png", sets)
    manifest = json.loads((tmp_path / "png" / "test" / "manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["seed"] == 1
    entry = manifest["images"][2]
    img = np.asarray(Image.open(tmp_path / "png" / "test" / entry["file"]))
    np.testing.assert_array_equal(img, sets["test"].images[2])
    right = np.asarray(Image.open(tmp_path / "png" / "test" / entry["masks"][1])) > 0
    np.testing.assert_array_equal(right, sets["test"].masks[2, 1])
    assert entry["digits"] == sets["test"].digits[2].tolist()
    (tmp_path / "x.npz").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot read"):
        load_npz(tmp_path / "x.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(InputError, match="no Double-MNIST split"):
        load_npz(tmp_path / "other.npz")


def run_cli(monkeypatch, args) -> int:
    from mlrobust.cli import main

    monkeypatch.setattr(sys, "argv", ["mlrobust", *args])
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    return exc.value.code


def test_cli_double_mnist(mnist_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "dm.npz"
    args = ["data", "double-mnist", "--mnist-dir", str(mnist_dir), "--out", str(out), "--n-train", "12",
            "--n-test", "7", "--seed", "3"]
    assert run_cli(monkeypatch, args + ["--skip-md5"]) == 0
    sets = load_npz(out)
    assert len(sets["train"]) == 12 and len(sets["test"]) == 7
    expected = build_from_mnist_dir(mnist_dir, 12, 7, seed=3, checksums=None)
    np.testing.assert_array_equal(sets["test"].images, expected["test"].images)
    # Without --skip-md5 the synthetic files fail the MNIST checksums: exit code 2 and a message, no traceback.
    capsys.readouterr()
    assert run_cli(monkeypatch, args) == 2
    err = capsys.readouterr().err
    assert "MD5" in err and "Traceback" not in err
    assert run_cli(monkeypatch, args + ["--skip-md5", "--format", "png", "--out", str(tmp_path / "png")]) == 0
    assert (tmp_path / "png" / "train" / "manifest.json").is_file()
    assert len(list((tmp_path / "png" / "test" / "masks").glob("*.png"))) == 14


# --- Triple-MNIST and RGB objects ------------------------------------------------------------------------------
def test_triple_mnist_layout(mnist_dir):
    from mlrobust.data import build_triple_mnist

    images, labels = load_mnist(mnist_dir, "train", checksums=None)
    data = build_triple_mnist(images, labels, 120, seed=2, split="train")
    n = len(data)
    assert data.images.shape == (n, 84, 84) and data.masks.shape == (n, 3, 84, 84) and data.digits.shape == (n, 3)
    # Three different classes per image, a multi-hot label of exactly those, each from an MNIST image of its class.
    assert all(len(set(row)) == 3 for row in data.digits.tolist())
    np.testing.assert_array_equal(data.labels.sum(axis=1), 3)
    np.testing.assert_array_equal(labels[data.source], data.digits)
    np.testing.assert_array_equal(data.object_counts(), 3)
    # Side by side as MultiDigitMNIST's triple_mnist: x = 0, 28, 56 exactly, y anywhere in 0..55.
    np.testing.assert_array_equal(data.positions[..., 1], np.tile([0, 28, 56], (n, 1)))
    ys = data.positions[..., 0]
    assert ys.min() >= 0 and ys.max() <= 55 and ys.max() >= 45 and ys.min() <= 10
    for i in range(0, n, 7):
        for side in range(3):
            y, x = data.positions[i, side]
            digit = images[data.source[i, side]]
            np.testing.assert_array_equal(data.images[i, y : y + 28, x : x + 28], digit)
            mask = np.zeros((84, 84), dtype=bool)
            mask[y : y + 28, x : x + 28] = digit > 0
            np.testing.assert_array_equal(data.masks[i, side], mask)
        np.testing.assert_array_equal(data.images[i] > 0, data.masks[i].any(axis=0))
    # Deterministic, and Double-MNIST of the same seed is unchanged by the new builder (its own stream).
    again = build_triple_mnist(images, labels, 120, seed=2, split="train")
    np.testing.assert_array_equal(again.images, data.images)
    assert not np.array_equal(build_triple_mnist(images, labels, 120, seed=3).images, data.images)
    with pytest.raises(InputError, match="fewer than three"):
        build_triple_mnist(*fake_digits(np.random.default_rng(0), 10, classes=[1, 2]), 3)


def test_rgb_objects_layout_and_determinism(mnist_dir):
    from mlrobust.data import build_rgb_objects

    images, labels = load_mnist(mnist_dir, "test", checksums=None)
    data = build_rgb_objects(images, labels, 12, seed=4, split="test")
    assert data.images.shape == (12, 3, 300, 300) and data.images.dtype == np.uint8
    assert data.masks.shape == (12, 4, 300, 300) and data.labels.shape == (12, 10)
    counts = data.object_counts()
    assert counts.min() >= 2 and counts.max() <= 4 and len(set(counts.tolist())) > 1
    for i in range(12):
        present = data.digits[i][data.digits[i] >= 0].astype(int)
        assert len(present) == counts[i] == len(set(present.tolist())) == data.labels[i].sum()
        np.testing.assert_array_equal(np.flatnonzero(data.labels[i]), np.sort(present))
        np.testing.assert_array_equal(labels[data.source[i, : counts[i]]], present)
        # Each present object has ink, objects never overlap, absent slots have no mask.
        assert all(data.masks[i, j].sum() > 50 for j in range(counts[i]))
        assert data.masks[i].sum(axis=0).max() == 1 and not data.masks[i, counts[i]:].any()
        # Each object lies in its own 150-pixel cell.
        for j in range(counts[i]):
            ys, xs = np.nonzero(data.masks[i, j])
            assert ys.min() // 150 == ys.max() // 150 and xs.min() // 150 == xs.max() // 150
    # Coloured objects on a textured, noisy background: the channels differ and the background is not flat.
    assert np.abs(data.images[:, 0].astype(int) - data.images[:, 1]).mean() > 3
    background = data.images[0][:, ~data.masks[0].any(axis=0)]
    assert background.std(axis=1).min() > 5
    # Deterministic, and any range can be built on its own with the same pixels.
    part = build_rgb_objects(images, labels, 4, seed=4, split="test", start=5)
    np.testing.assert_array_equal(part.images, data.images[5:9])
    np.testing.assert_array_equal(part.masks, data.masks[5:9])
    other = build_rgb_objects(images, labels, 2, seed=5, split="test")
    assert not np.array_equal(other.images, data.images[:2])
    assert data.float_images().shape == (12, 3, 300, 300)


def test_cli_triple_mnist_and_rgb_objects(mnist_dir, tmp_path, monkeypatch):
    out = tmp_path / "tm.npz"
    assert run_cli(monkeypatch, ["data", "triple-mnist", "--mnist-dir", str(mnist_dir), "--out", str(out),
                                 "--n-train", "5", "--n-test", "4", "--skip-md5"]) == 0
    sets = load_npz(out)
    assert sets["test"].images.shape == (4, 84, 84) and sets["train"].masks.shape == (5, 3, 84, 84)
    png = tmp_path / "rgb"
    assert run_cli(monkeypatch, ["data", "rgb-objects", "--mnist-dir", str(mnist_dir), "--out", str(png),
                                 "--n-train", "0", "--n-test", "3", "--skip-md5", "--format", "png"]) == 0
    manifest = json.loads((png / "test" / "manifest.json").read_text())
    entry = manifest["images"][0]
    assert len(entry["masks"]) == len(entry["digits"]) >= 2 and entry["masks"][0].endswith("_obj0.png")
    assert np.asarray(Image.open(png / "test" / entry["file"])).shape == (300, 300, 3)
