"""Where the perturbed object comes from: a mask image, a bounding box, or an automatic choice among the image's
foreground connected components.

The automatic choice only needs a ``logits_fn(images) -> (N, C)`` callable, so this module does not depend on the
verifier: each component is removed (set to 0) in turn, and the drop of every label's score tells which label the
component belongs to.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from mlrobust.errors import InputError
from mlrobust.neighborhood.image_io import read_mask
from mlrobust.neighborhood.layers import as_mask
from mlrobust.neighborhood.layout import ImageLayout, as_chw

LogitsFn = Callable[[np.ndarray], np.ndarray]


def check_object_mask(
    mask: np.ndarray,
    hw: tuple[int, int],
    target_mask: np.ndarray | None = None,
    what: str = "object mask",
) -> np.ndarray:
    """``mask`` as a boolean (H, W) array after checking it is usable as a perturbed object.

    Errors: wrong size, no pixel, every pixel (no surroundings to layer). Warning: it contains the whole target
    object (``target_mask``), so the perturbation may erase what should stay recognised.
    """
    mask = as_mask(mask, what)
    if mask.shape != tuple(hw):
        raise InputError(f"{what} is {mask.shape[1]}x{mask.shape[0]} pixels (W x H) but the image is {hw[1]}x{hw[0]}")
    if not mask.any():
        raise InputError(f"{what} is empty: it selects no pixel (non-zero pixels mark the object)")
    if mask.all():
        raise InputError(
            f"{what} covers the whole image: there are no layers around the object; "
            "use one epsilon for all pixels instead"
        )
    if target_mask is not None:
        target = as_mask(target_mask, "target object mask")
        if target.shape == mask.shape and target.any() and np.all(mask[target]):
            warnings.warn(
                f"{what} contains the whole target object: the perturbation may change the target itself",
                stacklevel=2,
            )
    return mask


def mask_from_file(path: str | Path, hw: tuple[int, int], target_mask: np.ndarray | None = None) -> np.ndarray:
    """The object mask in a PNG (or ``.npy``) file: non-zero pixels are the object."""
    return check_object_mask(read_mask(path, hw), hw, target_mask, f"object mask {Path(path).name}")


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` -> a tuple of four ints."""
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"object box {text!r} must be four integers x0,y0,x1,y1") from None
    if len(values) != 4:
        raise InputError(f"object box {text!r} must be four integers x0,y0,x1,y1")
    x0, y0, x1, y1 = values
    return x0, y0, x1, y1


def mask_from_box(
    box: Sequence[int] | str, hw: tuple[int, int], target_mask: np.ndarray | None = None
) -> np.ndarray:
    """The pixels of the box ``(x0, y0, x1, y1)``: columns x0..x1-1 and rows y0..y1-1 (the end is exclusive, as in
    PIL's crop box)."""
    x0, y0, x1, y1 = parse_box(box) if isinstance(box, str) else tuple(int(v) for v in box)
    h, w = hw
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(
            f"object box ({x0}, {y0}, {x1}, {y1}) must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
            "(x1, y1 exclusive)"
        )
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return check_object_mask(mask, hw, target_mask, f"object box ({x0}, {y0}, {x1}, {y1})")


def foreground_components(
    image: np.ndarray, threshold: float = 0.0, merge_distance: int = 1
) -> tuple[np.ndarray, int]:
    """Connected components of the foreground (pixels above ``threshold`` in any channel), 8-connected.

    Pieces whose Chebyshev gap is at most ``2 * merge_distance + 1`` join one component (a pen stroke with a faint
    break stays one digit). Returns a label map (H, W; 0 = background, 1..n) and n.
    """
    chw = as_chw(image)
    fg = np.any(chw > threshold, axis=0)
    eight = np.ones((3, 3), dtype=bool)
    grown = ndimage.binary_dilation(fg, structure=eight, iterations=merge_distance) if merge_distance > 0 else fg
    labels, n = ndimage.label(grown, structure=eight)
    labels = np.where(fg, labels, 0)
    # Relabel 1..n without gaps (dilation never splits, but keep the contract exact).
    present = np.unique(labels[labels > 0])
    remap = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    remap[present] = np.arange(1, present.size + 1)
    return remap[labels], int(present.size)


@dataclass
class ObjectChoice:
    """The perturbed object: its mask, the label it belongs to (when known), and how it was found.

    For an automatic choice, ``components`` holds every foreground component's mask, ``drops`` the score drop of
    each label when that component is removed ((n, C): clean minus removed logits), ``component_labels`` the label
    each component belongs to, ``index`` the chosen component and ``target_index`` the target's component.
    """

    mask: np.ndarray
    label: int | None
    source: str
    components: list[np.ndarray] = field(default_factory=list)
    drops: np.ndarray | None = None
    component_labels: list[int] = field(default_factory=list)
    index: int | None = None
    target_index: int | None = None

    @property
    def target_mask(self) -> np.ndarray | None:
        return None if self.target_index is None else self.components[self.target_index]


def _logits(logits_fn: LogitsFn, batch_chw: np.ndarray, layout: ImageLayout | None) -> np.ndarray:
    batch = layout.to_sample(batch_chw) if layout is not None else batch_chw
    out = np.asarray(logits_fn(batch), dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != batch_chw.shape[0]:
        raise InputError(f"logits_fn returned shape {out.shape}; expected ({batch_chw.shape[0]}, classes)")
    return out


def find_object(
    image: np.ndarray,
    logits_fn: LogitsFn,
    target: int | None = None,
    object_label: int | None = None,
    sample_shape: tuple[int, ...] | None = None,
    k: int = 2,
    threshold: float = 0.0,
    merge_distance: int = 1,
) -> ObjectChoice:
    """Choose the perturbed object among the foreground components of ``image`` ((H, W) or (C, H, W)).

    Each component is removed (set to 0) and the image re-scored; the component belongs to the label whose score
    drops most. With ``object_label`` the component whose removal lowers that label most is chosen. Otherwise, with a
    ``target``, the target's own component (the one lowering the target most) is excluded and the component whose
    removal lowers its label most is chosen, its label being one of the clean image's top-(k+1) labels other than
    the target; without a target, the component and top-k label with the largest drop.
    ``logits_fn`` takes a batch in the model's layout (``sample_shape``; (N, C, H, W) when not given).
    """
    chw = as_chw(image)
    layout = ImageLayout.infer(tuple(sample_shape), image_hw=chw.shape[1:]) if sample_shape is not None else None
    labels, n = foreground_components(chw, threshold, merge_distance)
    if n == 0:
        raise InputError("the image has no foreground pixel to choose an object from; give an object mask or box")
    masks = labels[None, :, :] == np.arange(1, n + 1)[:, None, None]
    removed = np.where(masks[:, None, :, :], 0.0, chw[None])
    clean = _logits(logits_fn, chw[None], layout)[0]
    drops = clean[None, :] - _logits(logits_fn, removed, layout)
    num_classes = drops.shape[1]
    for name, value in (("target", target), ("object label", object_label)):
        if value is not None and not 0 <= value < num_classes:
            raise InputError(f"{name} {value} is not a label of this model (labels 0..{num_classes - 1})")
    own = [int(i) for i in np.argmax(drops, axis=1)]

    target_index = int(np.argmax(drops[:, target])) if target is not None and n > 1 else None
    # The object's label is one the model sees in the clean image: among its top-k labels (top-(k+1) less the
    # target when there is one). Removing a component also shifts unrelated labels a little; without this
    # restriction such a shift can name a label that is not in the image at all.
    ranked = [int(c) for c in np.argsort(-clean, kind="stable") if c != target]
    allowed = np.zeros(num_classes, dtype=bool)
    allowed[ranked[:k]] = True
    if object_label is not None:
        if target is not None and object_label == target:
            warnings.warn("the perturbed object's label is the target label itself", stacklevel=2)
        elif not allowed[object_label]:
            raise InputError(f"object label {object_label} is not among the labels the model sees in the image "
                             f"({', '.join(map(str, ranked[:k]))}"
                             + (f", besides the target {target}" if target is not None else "")
                             + "): give one of those, or the object as a mask or box")
        index, label = int(np.argmax(drops[:, object_label])), object_label
    else:
        candidates = np.arange(n)
        scores = np.where(allowed[None, :], drops, -np.inf)
        if target is not None:
            if n == 1:
                raise InputError(
                    "the image has a single foreground object, which holds the target; give the perturbed object "
                    "as a mask or box"
                )
            candidates = candidates[candidates != target_index]
        best_label = np.argmax(scores[candidates], axis=1)
        best_drop = scores[candidates, best_label]
        pick = int(np.argmax(best_drop))
        index, label = int(candidates[pick]), int(best_label[pick])
    if drops[index, label] <= 0:
        warnings.warn(
            f"removing the chosen object does not lower the score of label {label}; "
            "the automatic choice may be wrong — give an object mask or box",
            stacklevel=2,
        )
    mask = masks[index]
    if target_index is not None:
        check_object_mask(mask, chw.shape[1:], masks[target_index])
    return ObjectChoice(
        mask=mask,
        label=label,
        source="auto",
        components=list(masks),
        drops=drops,
        component_labels=own,
        index=index,
        target_index=target_index,
    )


def resolve_object(
    image: np.ndarray,
    mask: str | Path | np.ndarray | None = None,
    box: Sequence[int] | str | None = None,
    logits_fn: LogitsFn | None = None,
    target: int | None = None,
    object_label: int | None = None,
    sample_shape: tuple[int, ...] | None = None,
    k: int = 2,
) -> ObjectChoice:
    """The perturbed object of ``image`` from a mask (file or array), a box, or automatically (needs ``logits_fn``).

    At most one of ``mask`` and ``box``; with neither the object is found by :func:`find_object`.
    """
    chw = as_chw(image)
    hw = chw.shape[1:]
    if mask is not None and box is not None:
        raise InputError("give the perturbed object either as a mask or as a box, not both")
    if mask is not None:
        if isinstance(mask, (str, Path)):
            return ObjectChoice(mask_from_file(mask, hw), object_label, "mask")
        return ObjectChoice(check_object_mask(mask, hw), object_label, "mask")
    if box is not None:
        return ObjectChoice(mask_from_box(box, hw), object_label, "box")
    if logits_fn is None:
        raise InputError("finding the perturbed object automatically needs the model; give a mask or a box instead")
    return find_object(chw, logits_fn, target=target, object_label=object_label, sample_shape=sample_shape, k=k)
