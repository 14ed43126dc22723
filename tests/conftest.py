"""Test-run settings shared by every test module.

Under CI (the ``CI`` environment variable set, as ``.ci/run`` runs) hypothesis draws a fixed, derandomised set of
examples, so a result says the same thing on every run of the same code; a developer's local run keeps drawing new
examples (and stores the failing ones in .hypothesis/), which is where new counterexamples are found.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
