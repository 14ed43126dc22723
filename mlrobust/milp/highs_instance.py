"""A fresh ``highspy.Highs`` with its output switched off, including the banner HiGHS prints to the process's
standard output (C level, not Python's ``sys.stdout``) the first time one is created — it would otherwise land in
the middle of ``--quiet`` and ``--json -`` output."""

from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()
_banner_shown = False


def new_highs():
    """A ``highspy.Highs`` with ``output_flag`` off; the first one in the process is created with fd 1 silenced."""
    global _banner_shown
    import highspy

    with _lock:
        if _banner_shown:
            h = highspy.Highs()
        else:
            _banner_shown = True
            try:
                sys.stdout.flush()
                saved = os.dup(1)
            except (OSError, ValueError):  # no usable fd 1 (embedded interpreters): nothing to silence
                h = highspy.Highs()
            else:
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, 1)
                    h = highspy.Highs()
                finally:
                    os.dup2(saved, 1)
                    os.close(saved)
                    os.close(null)
    h.setOptionValue("output_flag", False)
    return h
