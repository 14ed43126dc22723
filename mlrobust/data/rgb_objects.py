"""RGB objects: 2-4 coloured MNIST digits on a textured, noisy 3x300x300 background, with a multi-hot label over the
10 digit classes and each object's pixel mask — the large rung of the scale ladder.

Layout: the canvas is cut into a 2x2 grid of 150-pixel cells; an image holds 2, 3 or 4 digits of different classes
(uniform), each in its own cell (so objects never overlap), scaled 3x or 4x (84 or 112 pixels, nearest neighbour)
and pasted near the cell's centre (a uniform jitter of up to ``JITTER`` pixels each way): like Double-MNIST's slots,
the fixed slots let a small network whose dense layer sees every position separately learn from a few thousand
images. A digit's ink is its alpha: pixel = (1 - a) * background + a * colour,
with a bright, saturated colour per object. The background is a dark random colour plus a smooth random field, a
random grating and per-pixel Gaussian noise (also added over the objects).

Every image is drawn from its own random stream ``(seed, split, index)``, so any range of a split can be built on
its own (training draws batches on the fly instead of holding thousands of 270k-pixel images).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mlrobust.data.double_mnist import _SPLIT_STREAM, NUM_CLASSES, SPLITS, DoubleMnist
from mlrobust.data.mnist import MNIST_MD5, load_mnist
from mlrobust.errors import InputError

CANVAS = 300
CHANNELS = 3
CELL = CANVAS // 2
MAX_OBJECTS = 4
SCALES = (3, 4)
JITTER = 12
_COARSE = 7  # the smooth background field is a 7x7 grid per channel, interpolated bilinearly


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights interpolating ``n_in`` grid values linearly onto ``n_out`` pixels."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    low = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = pos - low
    out = np.zeros((n_out, n_in))
    out[np.arange(n_out), low] = 1.0 - frac
    out[np.arange(n_out), low + 1] = frac
    return out


_INTERP = _bilinear_matrix(CANVAS, _COARSE)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _background(rng: np.random.Generator) -> np.ndarray:
    """(3, 300, 300) float in about [0, 0.5]: a dark colour, a smooth field and a grating."""
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.35))
    field = np.einsum("ya,cab,xb->cyx", _INTERP, rng.random((CHANNELS, _COARSE, _COARSE)), _INTERP)
    angle, period = rng.uniform(0, np.pi), rng.uniform(8, 40)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    grating = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period)
    return base[:, None, None] + 0.2 * (field - 0.5) + 0.06 * grating[None]


def _compose_one(
    rng: np.random.Generator, mnist_images: np.ndarray, by_class: list[np.ndarray], classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image: pixels (3, 300, 300) uint8, digits (4,) (-1 = none), masks (4, 300, 300), positions, sources."""
    count = int(rng.integers(2, MAX_OBJECTS + 1))
    cells = np.sort(rng.permutation(4)[:count])  # row-major cell order = the objects' order
    digits = np.full(MAX_OBJECTS, -1, dtype=np.int64)
    digits[:count] = classes[rng.permutation(classes.size)[:count]]
    source = np.full(MAX_OBJECTS, -1, dtype=np.int64)
    positions = np.zeros((MAX_OBJECTS, 2), dtype=np.int64)
    masks = np.zeros((MAX_OBJECTS, CANVAS, CANVAS), dtype=bool)
    pixels = _background(rng)
    for j in range(count):
        pool = by_class[int(np.searchsorted(classes, digits[j]))]
        source[j] = pool[rng.integers(pool.size)]
        scale = int(rng.choice(SCALES))
        alpha = np.kron(mnist_images[source[j]].astype(np.float64) / 255.0, np.ones((scale, scale)))
        size_y, size_x = alpha.shape
        y0 = (cells[j] // 2) * CELL + (CELL - size_y) // 2 + int(rng.integers(-JITTER, JITTER + 1))
        x0 = (cells[j] % 2) * CELL + (CELL - size_x) // 2 + int(rng.integers(-JITTER, JITTER + 1))
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))
        window = pixels[:, y0 : y0 + size_y, x0 : x0 + size_x]
        window[:] = (1.0 - alpha) * window + alpha * colour[:, None, None]
        masks[j, y0 : y0 + size_y, x0 : x0 + size_x] = alpha > 0
        positions[j] = (y0, x0)
    pixels = pixels + rng.normal(0.0, 0.03, size=pixels.shape)
    image = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, digits, masks, positions, source


def build_rgb_objects(
    mnist_images: np.ndarray,
    mnist_labels: np.ndarray,
    n: int,
    seed: int = 0,
    split: str = "train",
    start: int = 0,
) -> DoubleMnist:
    """Images ``start .. start + n - 1`` of ``split`` (each from its own stream, so ranges compose)."""
    mnist_images = np.asarray(mnist_images)
    mnist_labels = np.asarray(mnist_labels).astype(np.int64)
    if split not in _SPLIT_STREAM:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if n < 0 or start < 0:
        raise InputError(f"the number of images and the start must be >= 0, not {n} and {start}")
    if mnist_images.ndim != 3 or mnist_images.shape[0] != mnist_labels.shape[0]:
        raise InputError(f"MNIST images {mnist_images.shape} and labels {mnist_labels.shape} do not match")
    if max(mnist_images.shape[1:]) * max(SCALES) + 2 * JITTER > CELL:
        raise InputError(f"digits of {mnist_images.shape[1:]} pixels scaled {max(SCALES)}x do not fit a {CELL} cell")
    classes = np.unique(mnist_labels)
    if classes.size < MAX_OBJECTS:
        raise InputError(f"MNIST data with fewer than {MAX_OBJECTS} digit classes cannot make these images")
    by_class = [np.flatnonzero(mnist_labels == c) for c in classes]
    parts = [
        _compose_one(np.random.default_rng([int(seed), _SPLIT_STREAM[split], 300, i]), mnist_images, by_class, classes)
        for i in range(start, start + n)
    ]
    images = np.zeros((n, CHANNELS, CANVAS, CANVAS), dtype=np.uint8)
    digits = np.full((n, MAX_OBJECTS), -1, dtype=np.int8)
    masks = np.zeros((n, MAX_OBJECTS, CANVAS, CANVAS), dtype=bool)
    positions = np.zeros((n, MAX_OBJECTS, 2), dtype=np.int16)
    source = np.full((n, MAX_OBJECTS), -1, dtype=np.int32)
    for i, (image, d, m, pos, src) in enumerate(parts):
        images[i], digits[i], masks[i], positions[i], source[i] = image, d, m, pos, src
    labels = np.zeros((n, NUM_CLASSES), dtype=np.uint8)
    rows, cols = np.nonzero(digits >= 0)
    labels[rows, digits[rows, cols].astype(np.int64)] = 1
    return DoubleMnist(images=images, labels=labels, digits=digits, masks=masks, positions=positions, source=source,
                       split=split, seed=int(seed))


def build_rgb_from_mnist_dir(
    mnist_dir: str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    checksums: Mapping[str, str] | None = MNIST_MD5,
) -> dict[str, DoubleMnist]:
    """Train images from MNIST train digits, test images from t10k digits, both from ``seed``."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_mnist(mnist_dir, split, checksums)
        out[split] = build_rgb_objects(images, labels, n, seed, split)
    return out
