"""Double-MNIST: two different MNIST digits side by side on a 64x64 canvas, with a multi-hot label and each digit's
pixel mask.

Layout of the widely used double_mnist generator: the canvas is cut into two 32-pixel-wide slots; the left digit is
pasted at x = randint(0..3), the right one at x = 32 + randint(0..3), each at its own y = randint(0..35). A 28-pixel
digit in a 32-pixel slot can never reach the other slot, so the digits never overlap. The two digit classes differ.
Each digit's mask is its non-zero pixels where it was pasted: the perturbed-object masks of the experiments.
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
NUM_CLASSES = 10
SPLITS = ("train", "test")
# Each split draws from its own stream of the seed, so the test set does not change with --n-train.
_SPLIT_STREAM = {"train": 0, "test": 1}
_FIELDS = ("images", "labels", "digits", "masks", "positions", "source")


@dataclass(eq=False)
class DoubleMnist:
    """One split of Double-MNIST.

    images (N, 64, 64) uint8; labels (N, 10) uint8 multi-hot; digits (N, 2) the left and right digit classes;
    masks (N, 2, 64, 64) bool, the left and right digit's pixels; positions (N, 2, 2) each digit's top-left (y, x);
    source (N, 2) the index of each digit in its MNIST split.
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
        """Images as (N, 1, 64, 64) float32 in [0, 1], the models' input layout."""
        return (self.images.astype(np.float32) / 255.0)[:, None]

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


def build_double_mnist(
    mnist_images: np.ndarray, mnist_labels: np.ndarray, n: int, seed: int = 0, split: str = "train"
) -> DoubleMnist:
    """Compose ``n`` Double-MNIST images from MNIST digits (``mnist_images`` (M, 28, 28) uint8, labels (M,))."""
    mnist_images = np.asarray(mnist_images)
    mnist_labels = np.asarray(mnist_labels).astype(np.int64)
    if split not in _SPLIT_STREAM:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if n < 0:
        raise InputError(f"the number of images must be >= 0, not {n}")
    if mnist_images.ndim != 3 or mnist_images.shape[0] != mnist_labels.shape[0]:
        raise InputError(f"MNIST images {mnist_images.shape} and labels {mnist_labels.shape} do not match")
    size_y, size_x = mnist_images.shape[1:]
    slot = CANVAS // 2
    if size_y > CANVAS or size_x > slot:
        raise InputError(f"digits of {size_y}x{size_x} pixels do not fit a {slot}-pixel slot of a {CANVAS} canvas")
    classes = np.unique(mnist_labels)
    if classes.size < 2:
        raise InputError("MNIST data with fewer than two digit classes cannot make two-digit images")

    rng = np.random.default_rng([int(seed), _SPLIT_STREAM[split]])
    digits = _pick_pairs(rng, classes, n)
    source = _pick_sources(rng, mnist_labels, digits)
    # The generator's coordinates: randint(canvas - digit) for y and randint(slot - digit) for x within the digit's
    # own slot (0..35 and 0..3 for 28-pixel digits; the upper end is exclusive, as in the original generator).
    ys = rng.integers(0, max(CANVAS - size_y, 1), size=(n, 2))
    xs = rng.integers(0, max(slot - size_x, 1), size=(n, 2)) + np.array([0, slot])
    positions = np.stack([ys, xs], axis=-1)

    patches = mnist_images[source]  # (n, 2, size_y, size_x)
    images = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    masks = np.zeros((n, 2, CANVAS, CANVAS), dtype=bool)
    rows = ys[..., None] + np.arange(size_y)  # (n, 2, size_y)
    cols = xs[..., None] + np.arange(size_x)  # (n, 2, size_x)
    idx = np.arange(n)[:, None, None]
    for side in (0, 1):  # the two slots are disjoint, so pasting one after the other never overwrites
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
) -> dict[str, DoubleMnist]:
    """Train images from MNIST train, test images from t10k, both from ``seed``."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_mnist(mnist_dir, split, checksums)
        out[split] = build_double_mnist(images, labels, n, seed, split)
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
    """One folder per split with ``images/NNNNN.png``, ``masks/NNNNN_left.png`` and ``_right.png`` (255 = digit),
    and a ``manifest.json`` listing each image's files, digits and multi-hot label."""
    folder = Path(folder)
    for split, data in sets.items():
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        (folder / split / "masks").mkdir(parents=True, exist_ok=True)
        width = max(5, len(str(len(data))))
        entries = []
        for i in range(len(data)):
            name = f"{i:0{width}d}"
            Image.fromarray(data.images[i]).save(folder / split / "images" / f"{name}.png")
            files = []
            for side, m in zip(("left", "right"), data.masks[i]):
                files.append(f"masks/{name}_{side}.png")
                Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(folder / split / files[-1])
            entries.append(
                {
                    "file": f"images/{name}.png",
                    "masks": files,
                    "digits": [int(d) for d in data.digits[i]],
                    "labels": [int(v) for v in data.labels[i]],
                    "positions": data.positions[i].tolist(),
                }
            )
        manifest = {"split": split, "seed": data.seed, "count": len(data), "images": entries}
        (folder / split / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder
