"""Reading and writing images and masks: files -> float (C, H, W) arrays in [0, 1] in the model's layout, and back.

Images are never resized: a size that differs from the model's input is an error that names both sizes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlrobust.errors import InputError
from mlrobust.neighborhood.layout import ImageLayout, as_chw
from mlrobust.neighborhood.neighborhood import check_pixel_range

# ITU-R 601-2 luma, the same weights PIL uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114])
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {str(path)!r} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {str(path)!r} as an image: {exc}") from None
    return img


def _pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(C, H, W) float64 values in [0, 1] of a PIL image, and its alpha channel (H, W) if it has one."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img, mode = img.convert("RGB"), "RGB"
    arr = np.asarray(img)
    if mode == "1":
        values = arr.astype(np.float64)
    elif mode.startswith("I;16") or mode == "I":
        # 16-bit PNGs open as I;16 or I; their full range is 0..65535.
        values = arr.astype(np.float64) / 65535.0
    elif mode == "F":
        values = arr.astype(np.float64)
    elif arr.dtype == np.uint8:
        values = arr.astype(np.float64) / 255.0
    else:
        raise InputError(f"unsupported image mode {mode!r}")
    alpha = None
    if mode in _ALPHA_MODES:
        values, alpha = values[..., :-1], values[..., -1]
    chw = values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0)
    return chw, alpha


def read_image(path: str | Path) -> np.ndarray:
    """An image file (PNG or any format PIL reads, or a ``.npy`` array of (H, W) or (C, H, W) values in [0, 1]) as a
    float64 (C, H, W) array in [0, 1]. An alpha channel is dropped."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {str(path)!r} as a numpy array: {exc}") from None
        return check_pixel_range(as_chw(arr), f"image {path.name}")
    chw, _ = _pixels(_open(path))
    return check_pixel_range(chw, f"image {path.name}")


def fit_channels(chw: np.ndarray, channels: int, what: str = "image") -> np.ndarray:
    """Adapt an image's channel count to the model's: grey -> colour by repetition, colour -> grey by luma."""
    have = chw.shape[0]
    if have == channels:
        return chw
    if have == 1 and channels in (3, 4):
        return np.repeat(chw, channels, axis=0)
    if have in (3, 4) and channels == 1:
        rgb = chw[:3]
        if np.allclose(rgb, rgb[:1]):
            return rgb[:1]
        warnings.warn(f"{what} is in colour but the model takes one channel; converting to grey (luma)", stacklevel=3)
        return np.tensordot(_LUMA, rgb, axes=1)[None]
    raise InputError(f"{what} has {have} channels but the model takes {channels}")


def load_image(path: str | Path, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, ImageLayout]:
    """Read an image for a model of per-sample input shape ``sample_shape``: (C, H, W) in [0, 1] and its layout.

    The image must have the model's height and width; channels are adapted (see :func:`fit_channels`).
    """
    chw = read_image(path)
    layout = ImageLayout.infer(tuple(sample_shape), image_hw=chw.shape[1:])
    if chw.shape[1:] != layout.hw:
        raise InputError(
            f"image {Path(path).name} is {chw.shape[2]}x{chw.shape[1]} pixels (W x H) but the model expects "
            f"{layout.width}x{layout.height}"
        )
    return fit_channels(chw, layout.channels, f"image {Path(path).name}"), layout


def read_mask(path: str | Path, hw: tuple[int, int] | None = None) -> np.ndarray:
    """A mask image as a boolean (H, W) array: a pixel is in the mask when any colour channel is non-zero (and, in
    images with transparency, it is not fully transparent). ``hw`` checks the size."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {str(path)!r} as a numpy array: {exc}") from None
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise InputError(f"mask {path.name} must be a 2-D (H, W) array, got shape {arr.shape}")
        mask = arr != 0
    else:
        chw, alpha = _pixels(_open(path))
        mask = np.any(chw != 0, axis=0)
        if alpha is not None:
            mask &= alpha > 0
    if hw is not None and mask.shape != tuple(hw):
        raise InputError(
            f"mask {path.name} is {mask.shape[1]}x{mask.shape[0]} pixels (W x H) but the image is {hw[1]}x{hw[0]}"
        )
    return mask


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 0..255 (rounded); uint8 input is returned unchanged."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    return np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W), (1, H, W) or (3, H, W) image (float in [0, 1] or uint8) as an 8-bit PNG."""
    arr = to_uint8(image)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    Image.fromarray(arr).save(Path(path))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a boolean (H, W) mask as an 8-bit PNG: 255 = object, 0 = elsewhere."""
    Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)).save(Path(path))
