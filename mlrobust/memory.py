"""The process's own memory: what it holds now (resident set), handing freed heap back to the system, and the
memory limit a user gives (MiB).

torch and numpy allocate their CPU tensors with ``malloc``; glibc keeps what they free in its heap and arenas for
later allocations instead of returning it, so after one large computation (a branch-and-bound round's α/β state)
the process goes on holding its peak. :func:`trim_heap` asks glibc to return those free pages (``malloc_trim``), and
:func:`resident_bytes` reads what is left from ``/proc``. Both are no-ops where the platform has neither (None /
False): callers then fall back to their fixed budgets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from functools import lru_cache

from mlrobust.errors import InputError

MIB = 2 ** 20
#: The search's default process memory target: ``mlrobust verify --memory-limit``, ``maximize``'s
#: ``memory_limit_mib`` (the 64x64 reference searches hold ~0.4 GiB before their first branch and bound).
DEFAULT_MEMORY_LIMIT_MIB = 1024.0

#: Where Linux reports the process's memory in pages: size, resident, shared, ...
STATM = "/proc/self/statm"


def resident_bytes() -> int | None:
    """Bytes of this process's resident set now (None where ``/proc`` is not there to read)."""
    try:
        with open(STATM) as f:
            fields = f.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@lru_cache(maxsize=1)
def _malloc_trim():  # type: ignore[no-untyped-def]
    """glibc's ``malloc_trim`` (None on other C libraries)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the heap's free memory to the system (glibc ``malloc_trim(0)``; a few milliseconds on a heap of a
    gigabyte). True when it ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def memory_target_bytes(mib: float | None, option: str = "memory_limit_mib") -> int | None:
    """A memory limit given in MiB as bytes (None stays None: no target); anything but a finite number > 0 is an
    input error naming ``option``."""
    if mib is None:
        return None
    if isinstance(mib, bool) or not isinstance(mib, (int, float)) or not math.isfinite(mib) or mib <= 0:
        raise InputError(f"{option} must be a finite number of MiB > 0, not {mib!r}")
    return max(int(mib * MIB), 1)
