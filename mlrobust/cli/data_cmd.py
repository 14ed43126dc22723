"""``mlrobust data``: build Double-MNIST, Triple-MNIST and the RGB objects set from the MNIST files, and fetch
those files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from mlrobust.cli import app
from mlrobust.cli.files import output_file
from mlrobust.errors import InputError

data_app = typer.Typer(help="Data sets: build Double-MNIST, Triple-MNIST or RGB objects from the original MNIST files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class OutputFormat(str, Enum):
    npz = "npz"
    png = "png"


def _write_sets(
    kind: str, mnist_dir: Path, out: Path, n_train: int, n_test: int, seed: int, fmt: OutputFormat, skip_md5: bool
) -> None:
    """Build ``kind`` (double-mnist, triple-mnist, rgb-objects), write it as npz or PNG folders, print a summary."""
    if not mnist_dir.is_dir():
        raise InputError(f"--mnist-dir {str(mnist_dir)!r} is not a folder")
    if fmt == OutputFormat.npz:
        output_file(out, "--out", (".npz",))
    elif out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; --format png writes a folder")
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from mlrobust.data.double_mnist import build_from_mnist_dir, save_npz, save_png
    from mlrobust.data.mnist import MNIST_MD5
    from mlrobust.data.rgb_objects import build_rgb_from_mnist_dir

    console = Console()
    checksums = None if skip_md5 else MNIST_MD5
    if kind == "rgb-objects":
        sets = build_rgb_from_mnist_dir(str(mnist_dir), n_train, n_test, seed, checksums=checksums)
    else:
        sets = build_from_mnist_dir(mnist_dir, n_train, n_test, seed, checksums=checksums,
                                    digits_per_image=3 if kind == "triple-mnist" else 2)
    where = save_png(out, sets) if fmt == OutputFormat.png else save_npz(out, sets)
    title = {"double-mnist": "Double-MNIST", "triple-mnist": "Triple-MNIST", "rgb-objects": "RGB objects"}[kind]
    table = Table(title=f"{title} (seed {seed})")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("images per digit (0-9)")
    for split, data in sets.items():
        per_digit = data.labels.sum(axis=0) if len(data) else np.zeros(10, dtype=int)
        table.add_row(split, str(len(data)), " ".join(str(int(c)) for c in per_digit))
    console.print(table)
    console.print(f"written to [bold]{where}[/]")


_MNIST_DIR = typer.Option(..., "--mnist-dir", help="Folder with the four MNIST IDX files (.gz or not).")
_OUT = typer.Option(..., "--out", help="Output .npz file, or a folder with --format png.")
_SEED = typer.Option(0, "--seed", help="Random seed; the same seed gives the same images.")
_FORMAT = typer.Option(OutputFormat.npz, "--format", help="npz: one file; png: images, masks, manifest.")
_SKIP_MD5 = typer.Option(
    False, "--skip-md5", help="Do not check the files against the published MNIST checksums (other IDX data)."
)


@data_app.command("double-mnist")
def double_mnist(
    mnist_dir: Path = _MNIST_DIR,
    out: Path = _OUT,
    n_train: int = typer.Option(60000, "--n-train", min=0, help="Number of training images (from MNIST train)."),
    n_test: int = typer.Option(10000, "--n-test", min=0, help="Number of test images (from MNIST t10k)."),
    seed: int = _SEED,
    fmt: OutputFormat = _FORMAT,
    skip_md5: bool = _SKIP_MD5,
) -> None:
    """Compose two-digit 64x64 images (two different digits, one per 32-pixel slot) with multi-hot labels and
    per-digit masks."""
    _write_sets("double-mnist", mnist_dir, out, n_train, n_test, seed, fmt, skip_md5)


@data_app.command("triple-mnist")
def triple_mnist(
    mnist_dir: Path = _MNIST_DIR,
    out: Path = _OUT,
    n_train: int = typer.Option(60000, "--n-train", min=0, help="Number of training images (from MNIST train)."),
    n_test: int = typer.Option(10000, "--n-test", min=0, help="Number of test images (from MNIST t10k)."),
    seed: int = _SEED,
    fmt: OutputFormat = _FORMAT,
    skip_md5: bool = _SKIP_MD5,
) -> None:
    """Compose three-digit 84x84 images (three different digits side by side in 28-pixel slots, as
    MultiDigitMNIST's triple_mnist) with multi-hot labels and per-digit masks (left, middle, right)."""
    _write_sets("triple-mnist", mnist_dir, out, n_train, n_test, seed, fmt, skip_md5)


@data_app.command("rgb-objects")
def rgb_objects(
    mnist_dir: Path = _MNIST_DIR,
    out: Path = _OUT,
    n_train: int = typer.Option(2000, "--n-train", min=0, help="Number of training images (MNIST train digits)."),
    n_test: int = typer.Option(200, "--n-test", min=0, help="Number of test images (MNIST t10k digits)."),
    seed: int = _SEED,
    fmt: OutputFormat = _FORMAT,
    skip_md5: bool = _SKIP_MD5,
) -> None:
    """Compose 3x300x300 RGB images of 2-4 coloured digits of different classes on textured, noisy backgrounds,
    with multi-hot labels over the 10 digits and per-object masks (obj0.. in row-major cell order; 360 kB of masks
    per image, so the defaults are small)."""
    _write_sets("rgb-objects", mnist_dir, out, n_train, n_test, seed, fmt, skip_md5)


@data_app.command("download-mnist")
def download_mnist_cmd(
    out: Path = typer.Argument(..., help="Folder to put the four MNIST .gz files in."),
) -> None:
    """Download the four original MNIST files (needs internet) and check their published MD5 sums."""
    from rich.console import Console

    from mlrobust.data.mnist import download_mnist

    for path in download_mnist(out):
        Console().print(f"ok  {path}")
