"""How an image (C, H, W) maps onto a model's per-sample input tensor, and back.

mlrobust works on images as channel-first (C, H, W) arrays; models may take (C, H, W), (H, W, C), (H, W) or a flat
vector. :class:`ImageLayout` records which, so boxes can be built in the model's own shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlrobust.errors import InputError

_CHANNEL_COUNTS = (1, 3, 4)


@dataclass(frozen=True)
class ImageLayout:
    """An image of ``channels`` x ``height`` x ``width`` stored in a model input of per-sample ``sample_shape``."""

    sample_shape: tuple[int, ...]
    channels: int
    height: int
    width: int
    channels_last: bool = False

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    @classmethod
    def infer(cls, sample_shape: tuple[int, ...], image_hw: tuple[int, int] | None = None) -> "ImageLayout":
        """The layout of a model input of per-sample shape ``sample_shape`` (no batch axis).

        Three axes are read as (C, H, W), or (H, W, C) when only the last axis looks like a channel count; two axes
        greater than one as (H, W). Anything else is a flattened image: its size must be ``image_hw`` times a channel
        count, or a square (of 1 or 3 channels) when ``image_hw`` is not known.
        """
        shape = tuple(int(d) for d in sample_shape)
        if any(d <= 0 for d in shape) or not shape:
            raise InputError(f"model input shape {shape} is not a fixed image shape")
        if len(shape) == 3:
            c, h, w = shape
            if c not in _CHANNEL_COUNTS and w in _CHANNEL_COUNTS:
                return cls(shape, w, c, h, channels_last=True)
            return cls(shape, c, h, w)
        if len(shape) == 2 and min(shape) > 1 and (image_hw is None or shape == tuple(image_hw)):
            return cls(shape, 1, shape[0], shape[1])
        n = int(np.prod(shape))
        if image_hw is not None:
            h, w = image_hw
            if n % (h * w) == 0:
                return cls(shape, n // (h * w), h, w)
            raise InputError(f"model input of shape {shape} ({n} values) cannot hold an image of {h}x{w} pixels")
        for c in (1, 3):
            side = math.isqrt(n // c)
            if n % c == 0 and side * side * c == n:
                return cls(shape, c, side, side)
        raise InputError(
            f"cannot tell the image size of a model input of shape {shape}; give the image so its size is known"
        )

    def to_sample(self, chw: np.ndarray) -> np.ndarray:
        """(C, H, W) -> the per-sample shape; a leading batch axis (N, C, H, W) is kept."""
        arr = np.asarray(chw)
        batched = arr.ndim == 4
        if arr.shape[-3:] != self.chw:
            raise InputError(f"image of shape {arr.shape[-3:]} does not match the model's (C, H, W) = {self.chw}")
        if self.channels_last:
            arr = np.moveaxis(arr, -3, -1)
        return arr.reshape(((arr.shape[0],) if batched else ()) + self.sample_shape)

    def to_chw(self, sample: np.ndarray) -> np.ndarray:
        """The per-sample shape (or a batch of it) -> (C, H, W) (or (N, C, H, W))."""
        arr = np.asarray(sample)
        ndim = len(self.sample_shape)
        if arr.shape[-ndim:] != self.sample_shape or arr.ndim not in (ndim, ndim + 1):
            raise InputError(f"array of shape {arr.shape} does not have the model's input shape {self.sample_shape}")
        lead = arr.shape[:-ndim]
        if self.channels_last:
            arr = arr.reshape(lead + (self.height, self.width, self.channels))
            return np.moveaxis(arr, -1, -3)
        return arr.reshape(lead + self.chw)


def as_chw(image: np.ndarray) -> np.ndarray:
    """An image given as (H, W) or (C, H, W) -> (C, H, W) float64."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise InputError(f"an image must be (H, W) or (C, H, W); got shape {arr.shape}")
