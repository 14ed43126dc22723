"""Files of the command line: inputs checked and outputs made ready *before* any work, and written atomically.

An output that cannot be written must be found out before a search of minutes, not after it: every output path is
checked (not a folder, a suffix the writer understands), its folder created and a file actually written there (and
removed) up front. Each file is then written
to a temporary file in the same folder and moved into place with ``os.replace`` (atomic on POSIX and Windows), so
an interrupted run leaves either the whole file or none — never half of one.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlrobust.errors import InputError

#: Formats matplotlib's Agg, PDF, PS, SVG and PGF backends write (jpg, tif and webp through Pillow, a dependency).
#: Kept here as a constant because importing matplotlib to ask takes a large part of a second;
#: tests/test_cli_files.py checks it against matplotlib's own list.
IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff", ".webp",
                  ".pgf", ".raw", ".rgba")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def input_file(path: Path, what: str) -> Path:
    """``path`` if it is a readable file, else an InputError that says what is wrong with it."""
    if path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a folder, not a file")
    if not path.exists():
        raise InputError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {str(path)!r} cannot be read (permission denied)")
    return path


def check_output_path(path: Path, what: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """The checks of an output path that change nothing on disk: not a folder, one of ``suffixes`` (if given), its
    folder not a file. Raises InputError otherwise."""
    if str(path) in ("", ".") or path.is_dir() or str(path).endswith(("/", os.sep)):
        raise InputError(f"{what} {str(path)!r} is a folder; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {str(path)!r} must end in one of {', '.join(suffixes)} "
                         f"(the suffix chooses the format)")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {str(path)!r}: {str(folder)!r} is a file, not a folder")
    return path


def probe_output(path: Path, what: str) -> list[Path]:
    """Create the folder of ``path`` and prove that a file can be written there by writing one (a temporary file
    beside ``path``, removed again). ``os.access`` is not enough: as root it says yes to /proc and /sys, where
    creating a file fails. Returns the folders it created (outermost first), for :func:`remove_empty_folders`.
    Raises InputError, naming the user's path, when the folder cannot be made or the file cannot be written; the
    folders it made are removed again then."""
    folder = path.parent
    created = [f for f in reversed((folder, *folder.parents)) if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty_folders(created)
        raise InputError(f"{what} {str(path)!r}: cannot create the folder {str(folder)!r} "
                         f"({exc.strerror or exc})") from None
    try:
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "permission denied")
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_empty_folders(created)
        raise InputError(f"{what} {str(path)!r} cannot be written ({(exc.strerror or str(exc)).lower()})") from None
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove those of ``folders`` (outermost first, as :func:`probe_output` returns them) that are still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or already gone): it stays


def output_file(path: Path, what: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """Make ``path`` ready to be written: :func:`check_output_path`, then its folder created and a file written
    there (:func:`probe_output`). Raises InputError (before any work is done) otherwise."""
    check_output_path(path, what, suffixes)
    probe_output(path, what)
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix, so writers that pick the format by suffix work) that replaces
    ``path`` when the block ends without an exception, and is removed otherwise (Ctrl-C included)."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # the user's path, not the temporary one
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); the result gets the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is not None and str(exc.filename) == str(tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
