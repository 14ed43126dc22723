"""Data sets: the original MNIST files and the Double-MNIST, Triple-MNIST and RGB-objects builders."""

from mlrobust.data.double_mnist import (
    DoubleMnist,
    build_double_mnist,
    build_from_mnist_dir,
    build_multi_digit,
    build_triple_mnist,
    load_npz,
    object_names,
    save_npz,
    save_png,
)
from mlrobust.data.mnist import MNIST_FILES, MNIST_MD5, download_mnist, load_mnist, read_idx, write_idx
from mlrobust.data.rgb_objects import build_rgb_objects

__all__ = [
    "DoubleMnist",
    "MNIST_FILES",
    "MNIST_MD5",
    "build_double_mnist",
    "build_from_mnist_dir",
    "build_multi_digit",
    "build_rgb_objects",
    "build_triple_mnist",
    "download_mnist",
    "load_mnist",
    "load_npz",
    "object_names",
    "read_idx",
    "save_npz",
    "save_png",
    "write_idx",
]
