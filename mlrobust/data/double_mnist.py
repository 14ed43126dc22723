"""Double- and Triple-MNIST: two (three) different MNIST digits side by side on a 64x64 (84x84) canvas, with a
multi-hot label and each digit's pixel mask.

Layout of the widely used double_mnist generator: the canvas is cut into two 32-pixel-wide slots; the left digit is
pasted at x = randint(0..3), the right one at x = 32 + randint(0..3), each at its own y = randint(0..35). A 28-pixel
digit in a 32-pixel slot can never reach the other slot, so the digits never overlap. The two digit classes differ.
Each digit's mask is its non-zero pixels where it was pasted: the perturbed-object masks of the experiments.

Triple-MNIST follows MultiDigitMNIST's triple_mnist: an 84-pixel canvas cut into three 28-pixel slots, so the digits
sit exactly side by side (x = 0, 28, 56) at their own y = randint(0..55), three different classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from mlrobust.data.mnist import MNIST_MD5, load_mnist
from mlrobust.errors import InputError

CANVAS = 64
# The canvas of each digit count (MultiDigitMNIST's double_mnist and triple_mnist).
CANVAS_OF = {2: 64, 3: 84}
NUM_CLASSES = 10
SPLITS = ("train", "test")
# Each split draws from its own stream of the seed, so the test set does not change with --n-train.
_SPLIT_STREAM = {"train": 0, "test": 1}
_FIELDS = ("images", "labels", "digits", "masks", "positions", "source")


@dataclass(eq=False)
class DoubleMnist:
    """One split of a multi-object set: Double-MNIST, Triple-MNIST or the RGB objects of :mod:`rgb_objects`.

    images (N, H, W) uint8 (grey) or (N, 3, H, W) (RGB); labels (N, 10) uint8 multi-hot; digits (N, M) each
    object's class, left to right (-1 where an image holds fewer than M objects); masks (N, M, H, W) bool, each
    object's pixels; positions (N, M, 2) each object's top-left (y, x); source (N, M) the index of each digit in its
    MNIST split.
    """

    images: np.ndarray
    labels: np.ndarray
    digits: np.ndarray
    masks: np.ndarray
    positions: np.ndarray
    source: np.ndarray
    split: str = "train"
    seed: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def float_images(self) -> np.ndarray:
        """Images as (N, C, H, W) float32 in [0, 1], the models' input layout (C = 1 for grey images)."""
        x = self.images.astype(np.float32) / 255.0
        return x[:, None] if x.ndim == 3 else x

    def object_counts(self) -> np.ndarray:
        """(N,) the number of objects in each image (its top-k: every object's label must be among the top-k)."""
        return (np.asarray(self.digits).astype(np.int64) >= 0).sum(axis=1)

    def subset(self, index: np.ndarray | slice) -> "DoubleMnist":
        return DoubleMnist(*(getattr(self, f)[index] for f in _FIELDS), split=self.split, seed=self.seed)


def _pick_pairs(rng: np.random.Generator, classes: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) digit classes, left and right, uniform over ordered pairs of different classes."""
    k = classes.size
    first = rng.integers(0, k, size=n)
    second = (first + rng.integers(1, k, size=n)) % k  # never equal to ``first``
    return classes[np.stack([first, second], axis=1)]


def _pick_sources(rng: np.random.Generator, labels: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """For each requested digit class, a uniformly drawn index of an MNIST image of that class."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offset = np.floor(rng.random(digits.shape) * counts[digits]).astype(np.int64)
    return order[starts[digits] + offset]


def _pick_distinct(rng: np.random.Generator, classes: np.ndarray, n: int, count: int) -> np.ndarray:
    """(n, count) digit classes, left to right, uniform over ordered tuples of different classes."""
    order = np.argsort(rng.random((n, classes.size)), axis=1)[:, :count]
    return classes[order]


def object_names(count: int) -> tuple[str, ...]:
    """The names of the objects of a set with ``count`` objects per image (at most): left/right, left/middle/right,
    else obj0, obj1, ... (the RGB set's row-major grid cells)."""
    if count == 2:
        return ("left", "right")
    if count == 3:
        return ("left", "middle", "right")
    return tuple(f"obj{i}" for i in range(count))


def build_double_mnist(
    mnist_images: np.ndarray, mnist_labels: np.ndarray, n: int, seed: int = 0, split: str = "train"
) -> DoubleMnist:
    """Compose ``n`` Double-MNIST images from MNIST digits (``mnist_images`` (M, 28, 28) uint8, labels (M,))."""
    return build_multi_digit(mnist_images, mnist_labels, n, seed, split, digits_per_image=2)


def build_triple_mnist(
    mnist_images: np.ndarray, mnist_labels: np.ndarray, n: int, seed: int = 0, split: str = "train"
) -> DoubleMnist:
    """Compose ``n`` Triple-MNIST images (84x84, three different digits side by side) from MNIST digits."""
    return build_multi_digit(mnist_images, mnist_labels, n, seed, split, digits_per_image=3)


def build_multi_digit(
    mnist_images: np.ndarray,
    mnist_labels: np.ndarray,
    n: int,
    seed: int = 0,
    split: str = "train",
    digits_per_image: int = 2,
) -> DoubleMnist:
    """Compose ``n`` images of ``digits_per_image`` (2 or 3) different MNIST digits, one per slot."""
    mnist_images = np.asarray(mnist_images)
    mnist_labels = np.asarray(mnist_labels).astype(np.int64)
    if split not in _SPLIT_STREAM:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if n < 0:
        raise InputError(f"the number of images must be >= 0, not {n}")
    if mnist_images.ndim != 3 or mnist_images.shape[0] != mnist_labels.shape[0]:
        raise InputError(f"MNIST images {mnist_images.shape} and labels {mnist_labels.shape} do not match")
    if digits_per_image not in CANVAS_OF:
        raise InputError(f"digits per image must be one of {sorted(CANVAS_OF)}, not {digits_per_image}")
    count, canvas = digits_per_image, CANVAS_OF[digits_per_image]
    size_y, size_x = mnist_images.shape[1:]
    slot = canvas // count
    if size_y > canvas or size_x > slot:
        raise InputError(f"digits of {size_y}x{size_x} pixels do not fit a {slot}-pixel slot of a {canvas} canvas")
    classes = np.unique(mnist_labels)
    if classes.size < count:
        word = {2: "two", 3: "three"}[count]
        raise InputError(f"MNIST data with fewer than {word} digit classes cannot make {word}-digit images")

    # Double-MNIST keeps its original stream (the same seed gives the same images as before Triple-MNIST existed).
    stream = [int(seed), _SPLIT_STREAM[split]] + ([] if count == 2 else [count])
    rng = np.random.default_rng(stream)
    digits = _pick_pairs(rng, classes, n) if count == 2 else _pick_distinct(rng, classes, n, count)
    source = _pick_sources(rng, mnist_labels, digits)
    # The generator's coordinates: randint(canvas - digit) for y and randint(slot - digit) for x within the digit's
    # own slot (0..35 and 0..3 for 28-pixel digits on 64; the upper end is exclusive, as in the original generator).
    ys = rng.integers(0, max(canvas - size_y, 1), size=(n, count))
    xs = rng.integers(0, max(slot - size_x, 1), size=(n, count)) + slot * np.arange(count)
    positions = np.stack([ys, xs], axis=-1)

    patches = mnist_images[source]  # (n, count, size_y, size_x)
    images = np.zeros((n, canvas, canvas), dtype=np.uint8)
    masks = np.zeros((n, count, canvas, canvas), dtype=bool)
    rows = ys[..., None] + np.arange(size_y)  # (n, count, size_y)
    cols = xs[..., None] + np.arange(size_x)  # (n, count, size_x)
    idx = np.arange(n)[:, None, None]
    for side in range(count):  # the slots are disjoint, so pasting one after the other never overwrites
        r, c = rows[:, side, :, None], cols[:, side, None, :]
        images[idx, r, c] = patches[:, side]
        masks[idx, side, r, c] = patches[:, side] > 0
    labels = np.zeros((n, NUM_CLASSES), dtype=np.uint8)
    labels[np.arange(n)[:, None], digits] = 1
    return DoubleMnist(
        images=images,
        labels=labels,
        digits=digits.astype(np.uint8),
        masks=masks,
        positions=positions.astype(np.int16),
        source=source.astype(np.int32),
        split=split,
        seed=int(seed),
    )


def build_from_mnist_dir(
    mnist_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    checksums: Mapping[str, str] | None = MNIST_MD5,
    digits_per_image: int = 2,
) -> dict[str, DoubleMnist]:
    """Train images from MNIST train, test images from t10k, both from ``seed``."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_mnist(mnist_dir, split, checksums)
        out[split] = build_multi_digit(images, labels, n, seed, split, digits_per_image)
    return out


# --- storage ---------------------------------------------------------------------------------------------------
def save_npz(path: str | Path, sets: Mapping[str, DoubleMnist]) -> Path:
    """All splits in one compressed npz: keys ``<split>_<field>`` plus ``<split>_seed``."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for split, data in sets.items():
        for f in _FIELDS:
            arrays[f"{split}_{f}"] = getattr(data, f)
        arrays[f"{split}_seed"] = np.asarray(data.seed, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_npz(path: str | Path) -> dict[str, DoubleMnist]:
    """The splits stored by :func:`save_npz`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a Double-MNIST npz file: {exc}") from None
    out = {}
    for split in SPLITS:
        if f"{split}_images" not in stored:
            continue
        missing = [f for f in _FIELDS if f"{split}_{f}" not in stored]
        if missing:
            raise InputError(f"{path} lacks {', '.join(f'{split}_{f}' for f in missing)}")
        fields = {f: stored[f"{split}_{f}"] for f in _FIELDS}
        out[split] = DoubleMnist(**fields, split=split, seed=int(stored.get(f"{split}_seed", 0)))
    if not out:
        raise InputError(f"{path} holds no Double-MNIST split (expected keys like train_images)")
    return out


def save_png(folder: str | Path, sets: Mapping[str, DoubleMnist]) -> Path:
    """One folder per split with ``images/NNNNN.png``, one mask per object ``masks/NNNNN_<name>.png`` (255 = object;
    names from :func:`object_names`: ``left``/``right`` for Double-MNIST), and a ``manifest.json`` listing each
    image's files, digits (left to right, one per mask) and multi-hot label."""
    folder = Path(folder)
    for split, data in sets.items():
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        (folder / split / "masks").mkdir(parents=True, exist_ok=True)
        width = max(5, len(str(len(data))))
        entries = []
        for i in range(len(data)):
            name = f"{i:0{width}d}"
            pixels = data.images[i]
            Image.fromarray(pixels if pixels.ndim == 2 else np.moveaxis(pixels, 0, -1)).save(
                folder / split / "images" / f"{name}.png")
            present = np.flatnonzero(np.asarray(data.digits[i]).astype(np.int64) >= 0)
            files = []
            names = object_names(data.masks.shape[1])
            for j in present:
                files.append(f"masks/{name}_{names[j]}.png")
                Image.fromarray(np.where(data.masks[i, j], 255, 0).astype(np.uint8)).save(folder / split / files[-1])
            entries.append(
                {
                    "file": f"images/{name}.png",
                    "masks": files,
                    "digits": [int(d) for d in data.digits[i][present]],
                    "labels": [int(v) for v in data.labels[i]],
                    "positions": data.positions[i][present].tolist(),
                }
            )
        manifest = {"split": split, "seed": data.seed, "count": len(data), "images": entries}
        (folder / split / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder
