"""The counterexample code of the side files: lossless whatever the counterexample (bit for bit, float64), and far
smaller than the XOR with the clean image for the points attacks return (box corners, float32 interior points)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlrobust.neighborhood.layers import layer_index
from mlrobust.search.corner_code import (
    EXCEPTION,
    MINUS,
    OFFSET,
    PLUS,
    CornerCode,
    attack_rounding,
    decode_corners,
    encode_corners,
)


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)


def assert_round_trip(x: np.ndarray, clean: np.ndarray, groups: np.ndarray) -> CornerCode:
    code = encode_corners(x, clean, groups)
    assert code.codes.dtype == np.int8 and code.codes.shape == x.shape
    np.testing.assert_array_equal(bits(decode_corners(code, clean, groups)), bits(x))
    return code


def clean_image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Grey levels k/255 with exact 0 and 1, and some subnormal and arbitrary float64 pixels."""
    c = rng.integers(0, 256, shape) / 255.0
    flat = c.ravel()
    picks = rng.integers(0, flat.size, max(1, flat.size // 10))
    flat[picks] = rng.choice([0.0, 1.0, 5e-324, 2.2e-308, 1e-300], picks.size)
    flat[picks[::3]] = rng.random(picks[::3].size)
    return c


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), channels=st.integers(1, 3), height=st.integers(1, 9),
       width=st.integers(1, 9), float32=st.booleans())
def test_round_trip_is_bit_exact_on_corner_and_interior_points(seed, channels, height, width, float32):
    rng = np.random.default_rng(seed)
    shape = (channels, height, width)
    c = clean_image(rng, shape)
    groups = rng.integers(0, 4, (height, width))
    eps = rng.choice([0.0, 5e-324, 1e-310, 1e-9, 0.003, 0.1, 0.7], 4)
    e = eps[groups]
    sign = rng.choice([-1.0, 1.0], shape)
    corner = np.clip(c + sign * e, 0.0, 1.0)
    interior = np.clip(c + rng.uniform(-1, 1, shape) * e, 0.0, 1.0)
    if float32:  # an attack that steps in float32 returns float32 values widened to float64
        corner, interior = (v.astype(np.float32).astype(np.float64) for v in (corner, interior))
    choices = [c, corner, interior, np.zeros(shape), np.ones(shape), c + 5e-324, np.full(shape, -0.0),
               rng.normal(0, 1e3, shape)]
    which = rng.integers(0, len(choices), shape)
    x = np.choose(which, choices)
    assert_round_trip(x, c, groups)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=st.sampled_from([(1, 1, 1), (1, 3, 4), (2, 2, 5), (3, 4, 4)]))
def test_round_trip_on_arbitrary_finite_floats(data, shape):
    finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True, width=64)
    c = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    x = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    groups = data.draw(hnp.arrays(np.int64, shape[-2:], elements=st.integers(0, 3)))
    # half the pixels unchanged, so the clean image and x share values as counterexamples do
    x = np.where(data.draw(hnp.arrays(np.bool_, shape)), c, x)
    assert_round_trip(x, c, groups)


def test_corner_counterexample_codes_far_smaller_than_its_xor():
    rng = np.random.default_rng(7)
    mask = np.zeros((64, 64), dtype=bool)
    mask[24:40, 20:36] = True
    layers = layer_index(mask)
    c = rng.integers(0, 256, (3, 64, 64)) / 255.0
    eps = rng.uniform(0.001, 0.05, layers.max() + 1)
    x = np.clip(c + eps[layers] * rng.choice([-1.0, 1.0], c.shape), 0.0, 1.0)
    interior = rng.choice(x.size, 20, replace=False)  # a few pixels a PGD step left inside the box
    x.flat[interior] = c.flat[interior] + 0.3 * eps[np.broadcast_to(layers, c.shape).flat[interior]]
    code = assert_round_trip(x, c, layers)
    counts = np.bincount(code.codes.ravel(), minlength=EXCEPTION + 1)
    # the corner pixels found their layer's magnitude: besides the interior ones, only a few (rounding ties, where
    # c + m and c + e round apart) are left over
    assert counts[PLUS] + counts[MINUS] > 0.9 * x.size
    assert interior.size <= counts[OFFSET] + counts[EXCEPTION] <= interior.size + x.size // 1000
    coded = sum(len(zlib.compress(np.ascontiguousarray(a).tobytes(), 1))
                for a in (code.codes, code.magnitudes, code.offsets, code.exception_values))
    xored = len(zlib.compress((bits(x) ^ bits(c)).tobytes(), 1))
    assert coded * 10 < xored, (coded, xored)


def test_float32_interior_points_are_small_offsets():
    rng = np.random.default_rng(3)
    c = rng.integers(0, 256, (3, 20, 20)) / 255.0
    x = np.clip(c + rng.uniform(-1e-4, 1e-4, c.shape), 0, 1).astype(np.float32).astype(np.float64)
    assert attack_rounding(x) == "float32" and attack_rounding(c) == "float64"
    code = assert_round_trip(x, c, np.zeros((20, 20), dtype=np.int64))
    assert code.rounding == "float32" and code.exceptions == 0
    # 1e-4 is at most ~1700 float32 steps at 1.0 (and more near 0, where the steps are finer): fits in 32 bits
    assert code.offsets.size > 0.9 * x.size
    assert np.abs(code.offsets).max() < 2**31


def test_decode_rejects_a_code_that_does_not_fit():
    c = np.zeros((1, 2, 2))
    code = encode_corners(np.full((1, 2, 2), 0.5), c, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="rounding"):
        decode_corners(CornerCode(code.codes, code.magnitudes, "float16", code.offsets, code.exception_values), c,
                       np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        decode_corners(code, np.zeros((1, 2, 3)), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        encode_corners(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        encode_corners(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), -np.ones((2, 2), dtype=np.int64))
    # a code whose stored values do not match its pixel codes is refused, not decoded into a wrong image
    with pytest.raises(ValueError, match="exceptions"):
        decode_corners(CornerCode(code.codes, code.magnitudes, code.rounding, code.offsets,
                                  np.zeros(code.exceptions + 1)), c, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="magnitudes"):
        decode_corners(code, c, np.ones((2, 2), dtype=np.int64))
