"""A hard stop at the time limit, behind the search's own deadlines.

The search plans its phases against the budget (``SearchProblem.remaining``), and every verifier call gets the time
left as its limit; but a stage that does not look at the clock often enough (an α-CROWN optimisation, a MILP build,
an attack's steps on a large network) could still run on past the limit. :func:`hard_stop` arms a timer for the
limit (plus a short grace, so a stage that keeps its limit ends on its own first) that raises
:class:`TimeLimitReached` in the running code. It derives from ``BaseException`` so that no ``except Exception`` of a
stage swallows it; the search catches it at the top, like Ctrl-C, and returns what it had *proven* so far (never a
vector still being tried), saying where the time ran out.

The timer is SIGALRM: it works in the main thread of a process (the command line, a batch worker process); elsewhere
(a thread, a platform without ``setitimer``) :func:`hard_stop` does nothing and the cooperative deadlines alone hold.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

#: Seconds past the limit before the hard stop fires: a stage that keeps its own limit ends first, cleanly.
HARD_STOP_GRACE = 0.25


class TimeLimitReached(BaseException):
    """The time limit passed while a stage was still running (raised by :func:`hard_stop`'s timer)."""


def _can_arm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def hard_stop(seconds: float | None, grace: float = HARD_STOP_GRACE) -> Iterator[None]:
    """Raise :class:`TimeLimitReached` in the block once ``seconds + grace`` have passed (None: never).

    Nested use keeps the earlier of the two stops; the previous timer and handler come back on exit."""
    if seconds is None or not _can_arm():
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise TimeLimitReached(f"time limit of {seconds:.1f} s reached")

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    when = max(float(seconds) + grace, 1e-3)
    if outer_left > 0 and outer_left <= when:  # an enclosing stop comes first: leave it in charge
        yield
        return
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, when)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:  # an enclosing, later stop: re-arm it for the time it has left
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))
