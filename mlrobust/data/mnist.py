"""The original MNIST files: reading IDX (gzipped or not), checking them against the published MD5 sums, and an
optional download.

Checksums are those of the decompressed IDX content, so a file re-compressed by another tool (or stored
uncompressed) is still recognised; a download is also checked against the published ``.gz`` checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from mlrobust.errors import InputError

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type codes -> big-endian numpy dtypes.
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(v).newbyteorder("=") if v.itemsize > 1 else v: k for k, v in _IDX_TYPES.items()}


@dataclass(frozen=True)
class MnistFile:
    """One of the four distribution files: its name, MD5 of the ``.gz`` file and of its content, item count."""

    name: str
    md5_gz: str
    md5_raw: str
    count: int


MNIST_FILES: dict[str, MnistFile] = {
    "train-images": MnistFile(
        "train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb", 60000
    ),
    "train-labels": MnistFile(
        "train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624", 60000
    ),
    "test-images": MnistFile(
        "t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea", 10000
    ),
    "test-labels": MnistFile(
        "t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637", 10000
    ),
}
# MD5 of the decompressed content of each file; pass another mapping (or None) to read other IDX files.
MNIST_MD5: dict[str, str] = {key: f.md5_raw for key, f in MNIST_FILES.items()}

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def parse_idx(data: bytes, what: str = "IDX data") -> np.ndarray:
    """An IDX byte string (already decompressed) as a numpy array in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise InputError(f"{what} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{what}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise InputError(f"{what}: IDX header says shape {shape} ({expected} bytes) but the file has {len(data)}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path, md5: str | None = None) -> np.ndarray:
    """Read an IDX file, gzipped or not (told apart by content, not name); with ``md5``, check the decompressed
    content against it first."""
    path = Path(path)
    data = _read_bytes(path)
    if md5 is not None:
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise InputError(
                f"{path} fails its MD5 check (content MD5 {got}, expected {md5}); the file is damaged or not the "
                "original MNIST file — download it again"
            )
    return parse_idx(data, str(path))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress`` or when the name ends in ``.gz``)."""
    path = Path(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if native not in _IDX_CODES:
        raise InputError(f"IDX cannot store dtype {arr.dtype}")
    code = _IDX_CODES[native]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(_IDX_TYPES[code], copy=False).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def find_mnist_file(directory: str | Path, key: str) -> Path:
    """The file of ``key`` (``train-images``, ``train-labels``, ``test-images``, ``test-labels``) in ``directory``,
    under its usual names (``.gz`` or not; ``-idx`` or ``.idx``)."""
    directory = Path(directory)
    if key not in MNIST_FILES:
        raise InputError(f"unknown MNIST file {key!r}; choose one of {', '.join(MNIST_FILES)}")
    base = MNIST_FILES[key].name
    names = [base + ".gz", base, base.replace("-idx", ".idx") + ".gz", base.replace("-idx", ".idx")]
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise InputError(f"MNIST file {base}(.gz) not found in {directory}")


def load_mnist(
    directory: str | Path, split: str = "train", checksums: Mapping[str, str] | None = MNIST_MD5
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of the ``train`` or ``test`` split in ``directory``.

    ``checksums`` maps file keys to MD5s of the decompressed content (the published MNIST values by default);
    ``None`` skips the check, for other IDX files of the same layout.
    """
    if split not in ("train", "test"):
        raise InputError(f"MNIST split must be 'train' or 'test', not {split!r}")
    arrays = []
    for kind in ("images", "labels"):
        key = f"{split}-{kind}"
        md5 = None if checksums is None else checksums.get(key)
        arrays.append(read_idx(find_mnist_file(directory, key), md5))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1:
        raise InputError(f"MNIST {split} files have shapes {images.shape} and {labels.shape}; expected (N, H, W), (N,)")
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or (labels.size and labels.max() > 9):
        raise InputError(f"MNIST {split}: expected uint8 images and labels 0..9")
    return images, labels


def download_mnist(directory: str | Path, mirrors: tuple[str, ...] = MIRRORS, timeout: float = 60.0) -> list[Path]:
    """Download the four ``.gz`` files into ``directory`` (skipping files already there and correct), checking each
    against its published MD5. Needs internet; nothing in mlrobust calls it implicitly."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, info in MNIST_FILES.items():
        target = directory / (info.name + ".gz")
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == info.md5_gz:
            paths.append(target)
            continue
        errors = []
        for mirror in mirrors:
            tmp = target.with_suffix(".part")
            try:
                with urllib.request.urlopen(mirror + target.name, timeout=timeout) as resp, tmp.open("wb") as out:
                    shutil.copyfileobj(resp, out)
                got = hashlib.md5(tmp.read_bytes()).hexdigest()
                if got == info.md5_gz:
                    tmp.replace(target)
                    break
                errors.append(f"{mirror}: MD5 {got} instead of {info.md5_gz}")
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise InputError(f"could not download {target.name}: " + "; ".join(errors))
        paths.append(target)
    return paths
