"""The results file of a batch run: JSON lines, appended one complete line at a time, so a run can be resumed.

Why this never loses a finished line: each line is written with one ``write`` of the whole line (newline
included) to a file opened for appending, then flushed and ``fsync``-ed before the next job's line; a crash can
only cut the line being written. On opening, a last line without its newline (the trace of such a crash) is cut
off — its job simply runs again — and complete lines that do not parse are reported and ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlrobust.errors import InputError

SCHEMA = "mlrobust.batch/1"


@dataclass
class StoreState:
    """What an existing results file holds: the last line per job id, and what was repaired."""

    lines: dict[str, dict] = field(default_factory=dict)
    truncated_bytes: int = 0  # bytes of an unfinished last line that were cut off
    unreadable: int = 0  # complete lines that are not JSON objects with an id

    def finished(self, retry_errors: bool = False) -> set[str]:
        """Ids whose line says done (and error too, unless errors are to be retried)."""
        ok = {"done"} if retry_errors else {"done", "error"}
        return {i for i, line in self.lines.items() if line.get("status") in ok}


def _parse(raw: bytes) -> dict | None:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        return None
    return obj


class ResultStore:
    """Append-only JSON-lines file of per-job results."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self, repair: bool = False) -> StoreState:
        """Parse the file; with ``repair`` cut off an unfinished last line in place (before appending to it)."""
        state = StoreState()
        if not self.path.exists():
            return state
        if self.path.is_dir():
            raise InputError(f"results file {str(self.path)!r} is a folder")
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished line
        state.truncated_bytes = len(data) - end
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            obj = _parse(raw)
            if obj is None:
                state.unreadable += 1
                continue
            state.lines[obj["id"]] = obj
        if repair and state.truncated_bytes:
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        return state

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, durably, before returning."""
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # one write almost always; loop for the rare partial write of a huge line
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
