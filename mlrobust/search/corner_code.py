"""A compact, lossless code for a counterexample given the clean image: most of its pixels sit at a corner of the
query's box, so they are stored as a small per-pixel code plus one magnitude per pixel group (a layer).

Per pixel the code says which of a few values the counterexample ``x`` takes, given the clean pixel ``c`` and the
magnitude ``m`` of the pixel's group (all float64):

=====  ==============================  ==========================================================
code   x                               why
=====  ==============================  ==========================================================
0      ``c``                           a pixel the attack left alone (or a layer at epsilon 0)
1      ``0.0``                         the box clipped at black
2      ``1.0``                         the box clipped at white
3      ``round(c + m)``                the upper corner of the pixel's layer
4      ``round(c - m)``                the lower corner
5      ``round(c)``                    left alone, but passed through the attack's precision
6      ``step(round(c), k)``           an interior point: ``k`` steps of the attack's precision
                                       from ``round(c)`` (an int in ``offsets``, in pixel order)
7      an exception                    any other value, stored as it is (``exception_values``, in
                                       pixel order)
=====  ==============================  ==========================================================

``round`` is the precision the attack worked in: ``float64`` (identity) or ``float32`` (the torch attacks step in
float32, so their counterexamples are float32 values widened back to float64). It is chosen per counterexample.
An attack that stops inside the box (the search's upper-bound attacks do: on the 3x300x300 RGB net the other layers'
pixels spread over the whole of ``[c - e, c + e]``) leaves few corner pixels; there the offset in float32 steps from
the clean pixel (within about +-2^11 at e = 1e-4) replaces 64 bits of near-random XOR by a small integer.

The magnitude of a group is not simply the most frequent ``|x - c|``: ``c + e`` rounds to the grid of its binade,
so ``x - c`` differs between binades and a mode taken on the coarse grid (where most pixels sit) misses every
finer one (on a 3x300x300 PGD-like image: 30% of the pixels). The candidates are therefore the ``|x - c|`` of the
group's few pixels nearest to 0 (the finest grid: within a rounding error of the attack's true step, so that
``c + m`` rounds as ``c + e`` did on every coarser grid); the candidate reproducing the most pixels wins.

The code is exact by construction: :func:`encode_corners` decodes what it built and turns every pixel whose float64
bits differ into an exception, whatever the attack did. Pure functions, vectorised over pixels (a Python loop runs
over at most ``candidates`` candidate rows, never over pixels or groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAME, ZERO, ONE, PLUS, MINUS, ROUNDED, OFFSET, EXCEPTION = range(8)
ROUNDINGS = ("float64", "float32")
SCORING_SAMPLE = 32768  # about this many open pixels score the candidate magnitudes
_ONE_BITS = np.float64(1.0).view(np.uint64)


@dataclass(frozen=True)
class CornerCode:
    """A counterexample coded against the clean image (see the module's table)."""

    codes: np.ndarray  # int8, the shape of the counterexample
    magnitudes: np.ndarray  # float64, one per group id (0 where a group has no corner pixel)
    rounding: str  # "float64" or "float32"
    offsets: np.ndarray  # int64, the steps of the OFFSET pixels, in pixel (C) order
    exception_values: np.ndarray  # float64, the values of the EXCEPTION pixels, in pixel (C) order

    @property
    def exceptions(self) -> int:
        return int(self.exception_values.size)


def _round(values: np.ndarray, rounding: str) -> np.ndarray:
    """``values`` in the attack's precision, back in float64."""
    return values.astype(np.float32).astype(np.float64) if rounding == "float32" else values


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)


def _ordered(values: np.ndarray, rounding: str) -> np.ndarray:
    """The float bits of ``values`` in the attack's precision as int64 that count steps: consecutive floats get
    consecutive integers, negative ones mirrored below zero."""
    if rounding == "float32":
        raw = np.ascontiguousarray(values, dtype=np.float64).astype(np.float32).view(np.int32).astype(np.int64)
        sign_bit = np.int64(0x7FFFFFFF)
    else:
        raw = _bits(values).view(np.int64)
        sign_bit = np.int64(0x7FFFFFFFFFFFFFFF)
    return np.where(raw < 0, -(raw & sign_bit), raw)


def _from_ordered(ordered: np.ndarray, rounding: str) -> np.ndarray:
    """The float64 values of :func:`_ordered`'s integers (its inverse on all but -0.0, which comes back as +0.0)."""
    if rounding == "float32":
        raw = np.where(ordered < 0, (-ordered) | np.int64(0x80000000), ordered)
        return raw.astype(np.uint32).view(np.float32).astype(np.float64)
    raw = np.where(ordered < 0, (-ordered) | np.int64(-0x8000000000000000), ordered)
    return raw.astype(np.int64).view(np.float64)


def attack_rounding(x: np.ndarray) -> str:
    """``float32`` where most pixels of ``x`` are float32 values (an attack that stepped in float32), else
    ``float64``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        exact32 = np.count_nonzero(_bits(_round(x, "float32")) == _bits(x))
    return "float32" if 2 * exact32 > x.size else "float64"


def _candidates(magnitude: np.ndarray, x_abs: np.ndarray, group: np.ndarray, n_groups: int,
                limit: int) -> np.ndarray:
    """Candidate magnitudes, shape (limit, n_groups), NaN where a group has fewer pixels: per group the
    ``|x - c|`` of its ``limit`` pixels nearest to 0 (the finest rounding grid)."""
    table = np.full((limit, n_groups), np.nan)
    if magnitude.size == 0:
        return table
    # group the pixels once (a stable radix sort on small ints), then take each group's minimum ``limit`` times:
    # ``limit`` linear passes instead of a full sort by |x|
    by_group = np.argsort(group.astype(np.int32 if n_groups > 2**15 else np.int16), kind="stable")
    sorted_group = group[by_group]
    values = x_abs[by_group].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    run_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, sorted_group.size]))
    for row in range(limit):
        lowest = np.minimum.reduceat(values, starts)
        if not np.any(np.isfinite(lowest)):
            break
        # the first pixel of each run that holds its run's minimum
        at_min = np.flatnonzero((values == lowest[run_of]) & np.isfinite(values))
        first = at_min[np.r_[True, run_of[at_min[1:]] != run_of[at_min[:-1]]]]
        table[row, sorted_group[first]] = magnitude[by_group[first]]
        values[first] = np.inf
    return table


def encode_corners(x: np.ndarray, clean: np.ndarray, groups: np.ndarray, candidates: int = 4,
                   rounding: str | None = None) -> CornerCode:
    """Code ``x`` against ``clean`` (same shape, float64); ``groups`` (non-negative ints, broadcastable to the
    shape: a layer map (H, W) for a (C, H, W) image) gives each pixel the group whose magnitude it shares.
    ``decode_corners(encode_corners(x, c, g), c, g)`` is ``x`` bit for bit."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    clean = np.ascontiguousarray(clean, dtype=np.float64)
    if x.shape != clean.shape:
        raise ValueError(f"counterexample shape {x.shape} differs from the clean image's {clean.shape}")
    group = np.broadcast_to(np.asarray(groups, dtype=np.int64), x.shape).ravel()
    if group.size and group.min() < 0:
        raise ValueError("pixel groups must be non-negative integers (a layer map)")
    n_groups = int(group.max()) + 1 if group.size else 1
    rounding = rounding or attack_rounding(x)
    xb, cb = _bits(x).ravel(), _bits(clean).ravel()
    xf, cf = x.ravel(), clean.ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        rounded_bits = _bits(_round(cf, rounding))
        delta = xf - cf
        plain = (xb == cb) | (xb == 0) | (xb == _ONE_BITS) | (xb == rounded_bits)
        open_idx = np.flatnonzero(~plain & np.isfinite(delta) & (delta != 0))
        magnitude, sign, g_open = np.abs(delta[open_idx]), np.sign(delta[open_idx]), group[open_idx]
        table = _candidates(magnitude, np.abs(xf[open_idx]), g_open, n_groups, candidates)
        # the candidates are scored on an evenly spaced sample of the open pixels: a count to rank them needs no
        # more, and scored on all of them the candidate rows took about a sixth of the encoding time at 3x300x300
        sample = slice(None, None, max(1, open_idx.size // SCORING_SAMPLE))
        s_idx, s_sign, s_group = open_idx[sample], sign[sample], g_open[sample]
        coverage = np.zeros(table.shape)
        for row in range(table.shape[0]):  # a few candidate rows, each vectorised over the sampled pixels
            hit = _bits(_round(cf[s_idx] + s_sign * table[row, s_group], rounding)) == xb[s_idx]
            coverage[row] = np.bincount(s_group[hit], minlength=n_groups)
        # a group the sample missed keeps its finest-grid candidate (row 0: argmax of an all-zero column)
        best = table[np.argmax(coverage, axis=0), np.arange(n_groups)]
        magnitudes = np.where(np.isnan(best), 0.0, best)
        m_all = magnitudes[group]
        codes = np.select(
            [xb == cb, xb == 0, xb == _ONE_BITS, _bits(_round(cf + m_all, rounding)) == xb,
             _bits(_round(cf - m_all, rounding)) == xb, xb == rounded_bits, _bits(_round(xf, rounding)) == xb],
            [SAME, ZERO, ONE, PLUS, MINUS, ROUNDED, OFFSET], EXCEPTION).astype(np.int8)
        steps = _ordered(xf[codes == OFFSET], rounding) - _ordered(cf[codes == OFFSET], rounding)
    code = CornerCode(codes.reshape(x.shape), magnitudes, rounding, steps, xf[codes == EXCEPTION])
    # exact by construction: whatever does not decode to the same bits is stored as it is
    wrong = _bits(decode_corners(code, clean, groups)).ravel() != xb
    if np.any(wrong):
        codes[wrong] = EXCEPTION
        steps = _ordered(xf[codes == OFFSET], rounding) - _ordered(cf[codes == OFFSET], rounding)
        code = CornerCode(codes.reshape(x.shape), magnitudes, rounding, steps, xf[codes == EXCEPTION])
    return code


def decode_corners(code: CornerCode, clean: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The counterexample ``code`` stands for, given the clean image and groups it was encoded with."""
    if code.rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {code.rounding!r} (expected one of {', '.join(ROUNDINGS)})")
    clean = np.ascontiguousarray(clean, dtype=np.float64)
    codes = np.asarray(code.codes)
    if codes.shape != clean.shape:
        raise ValueError(f"code shape {codes.shape} differs from the clean image's {clean.shape}")
    group = np.broadcast_to(np.asarray(groups, dtype=np.int64), clean.shape)
    magnitudes = np.asarray(code.magnitudes, dtype=np.float64).ravel()
    offsets = np.asarray(code.offsets, dtype=np.int64).ravel()
    exceptions = np.asarray(code.exception_values, dtype=np.float64).ravel()
    stepped, kept = codes == OFFSET, codes == EXCEPTION
    # numpy would broadcast a single stored value over any number of pixels: a count that does not match is a
    # malformed code, never an image
    if group.size and (group.min() < 0 or group.max() >= magnitudes.size):
        raise ValueError(f"the code holds {magnitudes.size} magnitudes, the pixel groups need {group.max() + 1}")
    if offsets.size != np.count_nonzero(stepped) or exceptions.size != np.count_nonzero(kept):
        raise ValueError(f"the code holds {offsets.size} offsets and {exceptions.size} exceptions for "
                         f"{np.count_nonzero(stepped)} and {np.count_nonzero(kept)} pixels")
    m = magnitudes[group]
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.select([codes == SAME, codes == ZERO, codes == ONE, codes == PLUS, codes == MINUS,
                         codes == ROUNDED],
                        [clean, 0.0, 1.0, _round(clean + m, code.rounding), _round(clean - m, code.rounding),
                         _round(clean, code.rounding)], 0.0)
        out[stepped] = _from_ordered(_ordered(clean[stepped], code.rounding) + offsets, code.rounding)
    out[kept] = exceptions
    return out
