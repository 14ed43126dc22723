"""Data sets: the original MNIST files and the Double-MNIST builder."""

from mlrobust.data.double_mnist import (
    DoubleMnist,
    build_double_mnist,
    build_from_mnist_dir,
    load_npz,
    save_npz,
    save_png,
)
from mlrobust.data.mnist import MNIST_FILES, MNIST_MD5, download_mnist, load_mnist, read_idx, write_idx

__all__ = [
    "DoubleMnist",
    "MNIST_FILES",
    "MNIST_MD5",
    "build_double_mnist",
    "build_from_mnist_dir",
    "download_mnist",
    "load_mnist",
    "load_npz",
    "read_idx",
    "save_npz",
    "save_png",
    "write_idx",
]
