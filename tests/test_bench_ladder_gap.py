"""The ladder-gap benchmark's questions: which ε vector each mode asks about."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_ladder_gap import scaled_eps


def test_each_mode_scales_the_part_of_the_vector_it_names_and_clips_to_the_pixel_range():
    eps = np.array([0.1, 0.02, 0.5, 0.0])
    assert np.allclose(scaled_eps(eps, 1.5, "whole"), [0.15, 0.03, 0.75, 0.0])
    assert np.allclose(scaled_eps(eps, 1.5, "object"), [0.15, 0.0, 0.0, 0.0])
    assert np.allclose(scaled_eps(eps, 1.5, "object+rings"), [0.15, 0.02, 0.5, 0.0])
    assert np.allclose(scaled_eps(eps, 3.0, "whole"), [0.3, 0.06, 1.0, 0.0])
    assert np.array_equal(eps, [0.1, 0.02, 0.5, 0.0])  # the result's vector is left alone
    with pytest.raises(ValueError, match="unknown mode"):
        scaled_eps(eps, 1.0, "rings")
