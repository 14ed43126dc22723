"""``mlrobust data``: build the Double-MNIST data set from the MNIST files, and fetch those files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from mlrobust.cli import app
from mlrobust.cli.files import output_file
from mlrobust.errors import InputError

data_app = typer.Typer(help="Data sets: build Double-MNIST from the original MNIST files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class OutputFormat(str, Enum):
    npz = "npz"
    png = "png"


@data_app.command("double-mnist")
def double_mnist(
    mnist_dir: Path = typer.Option(..., "--mnist-dir", help="Folder with the four MNIST IDX files (.gz or not)."),
    out: Path = typer.Option(..., "--out", help="Output .npz file, or a folder with --format png."),
    n_train: int = typer.Option(60000, "--n-train", min=0, help="Number of training images (from MNIST train)."),
    n_test: int = typer.Option(10000, "--n-test", min=0, help="Number of test images (from MNIST t10k)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same images."),
    fmt: OutputFormat = typer.Option(OutputFormat.npz, "--format", help="npz: one file; png: images, masks, manifest."),
    skip_md5: bool = typer.Option(
        False, "--skip-md5", help="Do not check the files against the published MNIST checksums (other IDX data)."
    ),
) -> None:
    """Compose two-digit 64x64 images (two different digits, one per 32-pixel slot) with multi-hot labels and
    per-digit masks."""
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

    console = Console()
    sets = build_from_mnist_dir(mnist_dir, n_train, n_test, seed, checksums=None if skip_md5 else MNIST_MD5)
    where = save_png(out, sets) if fmt == OutputFormat.png else save_npz(out, sets)
    table = Table(title=f"Double-MNIST (seed {seed})")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("images per digit (0-9)")
    for split, data in sets.items():
        per_digit = data.labels.sum(axis=0) if len(data) else np.zeros(10, dtype=int)
        table.add_row(split, str(len(data)), " ".join(str(int(c)) for c in per_digit))
    console.print(table)
    console.print(f"written to [bold]{where}[/]")


@data_app.command("download-mnist")
def download_mnist_cmd(
    out: Path = typer.Argument(..., help="Folder to put the four MNIST .gz files in."),
) -> None:
    """Download the four original MNIST files (needs internet) and check their published MD5 sums."""
    from rich.console import Console

    from mlrobust.data.mnist import download_mnist

    for path in download_mnist(out):
        Console().print(f"ok  {path}")
