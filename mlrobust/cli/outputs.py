"""The output files of a command that works for minutes: made ready before the work, written after it, and never
lost.

- Before the work, every output's folder is created and a file is written there (and removed): an output that
  cannot be written is an input error then, not after a search (:func:`mlrobust.cli.files.probe_output`).
- Folders exist only for a run that got past its input checks: a later input error (a target the network does not
  know, an object mask of the wrong size) removes the folders the run created, when still empty.
- Printed answers are never cut: outside a terminal there is no width to fit (:func:`answer_console`).
- After the work, an output that can no longer be written (the disk filled up, the folder went away) goes to a
  fallback file in the system's temporary folder, and the error line names both: the result is never lost.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlrobust.cli.files import probe_output, remove_empty_folders


@dataclass
class Outputs:
    """The output files of one command, as ``(path, what)`` pairs (``what``: the option, e.g. ``--json``), and the
    failures met while writing them (one message each)."""

    files: list[tuple[Path, str]]
    created: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def write(self, path: Path | None, what: str, writer: Callable[[Path], None]) -> Path | None:
        """``writer(path)``; when it fails with an OSError, ``writer`` into a fallback file instead (see
        :func:`fallback_path`) and a failure message naming both. Returns where the output went (None: nowhere)."""
        if path is None:
            return None
        try:
            writer(path)
            return path
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            fallback = fallback_path(path)
            try:
                writer(fallback)
            except OSError as again:
                self.failures.append(f"{what} {str(path)!r} could not be written ({reason}); nor the fallback "
                                     f"{str(fallback)!r} ({(again.strerror or str(again)).lower()})")
                return None
            self.failures.append(f"{what} {str(path)!r} could not be written ({reason}); written to "
                                 f"{str(fallback)!r} instead")
            return fallback


def fallback_path(path: Path) -> Path:
    """Where an output goes when its own path cannot be written: the system's temporary folder, the same name with
    the process id (two failed runs do not overwrite each other), the same suffix (the format)."""
    return Path(tempfile.gettempdir()) / f"{path.stem}.{os.getpid()}{path.suffix}"


@contextmanager
def prepared_outputs(files: list[tuple[Path | None, str]]) -> Iterator[Outputs]:
    """Probe every output (``None`` paths are skipped), then run the block; when the block raises, the folders the
    probe created are removed again if still empty."""
    outputs = Outputs([(p, w) for p, w in files if p is not None])
    try:
        for path, what in outputs.files:
            outputs.created += probe_output(path, what)
        yield outputs
    except BaseException:
        remove_empty_folders(outputs.created)
        raise


def answer_console() -> Any:
    """The rich console a command prints its answer on: on a terminal, its width; outside one (a pipe, a log file)
    no width to fit, so that no line is wrapped and no number is cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000, no_color=True)
