"""Test-run settings shared by every test module.

Under CI (the ``CI`` environment variable set, as ``.ci/run`` runs) hypothesis draws a fixed, derandomised set of
examples, so a result says the same thing on every run of the same code; a developer's local run keeps drawing new
examples (and stores the failing ones in .hypothesis/), which is where new counterexamples are found.
"""

from __future__ import annotations

import os

from hypothesis import settings

# Every search of the suite runs in one process unless a test asks for workers (mlrobust.search.pool): starting a
# pool costs seconds per test, and the tests that are about the pool name their worker count.
os.environ.setdefault("MLROBUST_WORKERS", "1")

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
