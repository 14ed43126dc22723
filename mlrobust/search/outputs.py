"""Result files sized for real images: the JSON holds numbers per layer; counterexamples and per-pixel arrays go to
one compressed ``.npz`` side file that the JSON names (``"arrays": {"file": ..., "keys": [...]}``).

A full counterexample image per layer written as JSON text grows with pixels x layers (hundreds of MB at 3x300x300).
In the npz each float64 counterexample is stored against the clean image with the lossless code of
:mod:`mlrobust.search.corner_code` (a small int8 code per pixel: unchanged, clipped, at a corner of its layer's box,
or an integer number of float32 steps from the clean pixel; the rest as float64), listed in the JSON's
``corner_keys``: a counterexample re-runs bit for bit. Its bits XOR the clean image's (``xor_keys``), the layout
before the code, deflated to 22-31 MB for the 15-28 counterexamples of a 3x300x300 search: the low bits of two
float64 values that differ are near random. Files with XOR-coded counterexamples (and a counterexample the code
would store mostly as exceptions is still written so) load as before.
:func:`load_result` reads all layouts back into the same dict, so JSON files written before the side file existed
still load.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.errors import InputError
from mlrobust.neighborhood.layers import layer_index
from mlrobust.search.corner_code import CornerCode, decode_corners, encode_corners

SIDE_SUFFIX = ".npz"
#: Deflate level of the side file. np.savez_compressed's default (6) took 10 s for 15 counterexamples at 3x300x300
#: on the loaded 2-core machine — past the command's time limit, which reserves well under a second for its
#: outputs; level 1 wrote the same arrays in 1.5 s, 12.6 MB instead of 10.4 MB (the coding against the clean image
#: does most of the compression).
NPZ_COMPRESSLEVEL = 1


def side_file_path(json_path: str | Path) -> Path:
    """The side file of a result JSON: the same name with ``.npz`` (``result.json`` -> ``result.npz``; a JSON path
    that itself ends in ``.npz`` gets ``.arrays.npz`` appended, so the two never collide)."""
    path = Path(json_path)
    side = path.with_suffix(SIDE_SUFFIX) if path.suffix else path.with_name(path.name + SIDE_SUFFIX)
    return path.with_name(path.name + ".arrays" + SIDE_SUFFIX) if side == path else side


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz next to its final name and rename it there: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED,
                                                           compresslevel=NPZ_COMPRESSLEVEL) as archive:
            for key, value in arrays.items():  # the layout of np.savez_compressed: one .npy member per array
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); the result gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CLEAN_KEY = "clean_image"
GROUPS_KEY = "counterexample_groups"
#: A counterexample the corner code would store with more than this share of its pixels as float64 exceptions is
#: XOR-coded instead (about as small then, and no slower to read).
MAX_EXCEPTION_SHARE = 0.5
_CODE_PARTS = ("codes", "magnitudes", "offsets", "exceptions")
#: What the counterexamples of one side file may take (estimated before deflating, see :func:`_stored_bytes`).
#: Counterexamples inside their box (the attacks' usual answer) carry ~11 bits of entropy per pixel, about 0.5 MB
#: each at 3x300x300 whatever the code, and a search of a 200-layer image refutes a hundred layers or more: 62 MB
#: and 4 s of writing for one 120 s search. The file keeps the counterexamples of the layers nearest the object
#: until this budget is spent and the JSON says which it left out (each was re-run on the network before it was
#: reported; only its image is not kept).
COUNTEREXAMPLE_BUDGET_BYTES = 16_000_000
OMITTED_REASON = "not stored: the side file's counterexample budget was spent on layers nearer the object"


def _counterexample_keys(arrays: dict[str, np.ndarray], shape: tuple[int, ...]) -> list[str]:
    return [k for k, v in arrays.items() if k.startswith("counterexample") and v.dtype == np.float64
            and v.shape == shape]


def _shuffle_bytes(values: np.ndarray) -> np.ndarray:
    """Integers in the narrowest signed type that holds them, as byte planes (itemsize, n): the high bytes of small
    offsets are all 0 or 0xff and deflate to almost nothing once they sit together."""
    narrow = values.astype(np.int64)
    for kind in (np.int8, np.int16, np.int32):
        if narrow.size == 0 or (narrow.min() >= np.iinfo(kind).min and narrow.max() <= np.iinfo(kind).max):
            narrow = narrow.astype(kind)
            break
    return np.ascontiguousarray(narrow.view(np.uint8).reshape(-1, narrow.itemsize).T)


def _unshuffle_bytes(planes: np.ndarray) -> np.ndarray:
    kind = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[planes.shape[0]]
    return np.ascontiguousarray(planes.T).view(kind).ravel().astype(np.int64)


def _layer_groups(result: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The layer of every pixel (the groups that share a magnitude), or one group where the mask does not fit."""
    mask = np.asarray(getattr(result, "mask", np.zeros(0)))
    if mask.ndim == 2 and mask.shape == tuple(shape[-2:]) and np.any(mask):
        return layer_index(mask).astype(np.int32)
    return np.zeros(shape[-2:] if len(shape) >= 2 else shape, dtype=np.int32)


def _stored_bytes(parts: list[np.ndarray]) -> int:
    """A generous estimate of what ``parts`` take once deflated: every byte, except the int8 codes' (few distinct
    values in long runs: a quarter)."""
    return int(sum(p.nbytes // 4 if p.dtype == np.int8 else p.nbytes for p in parts))


def _layer_order(key: str) -> tuple[int, str]:
    """``counterexample_layer<d>`` keys by layer (nearest the object first), others after them by name."""
    tail = key.removeprefix("counterexample_layer")
    return (int(tail), key) if tail.isdigit() else (1 << 30, key)


def _code_counterexamples(arrays: dict[str, np.ndarray], result: Any,
                          budget: int | None = None) -> tuple[dict[str, str], list[str], list[str]]:
    """Replace each float64 counterexample in ``arrays`` by its corner code (or, where that is mostly exceptions,
    its bits XOR the clean image's) and add the clean image and the groups, layer by layer from the object out
    until ``budget`` bytes (default :data:`COUNTEREXAMPLE_BUDGET_BYTES`) are spent; the rest leave ``arrays``.
    Returns the corner-coded keys with their rounding, the XOR-coded keys and the keys left out."""
    budget = COUNTEREXAMPLE_BUDGET_BYTES if budget is None else budget
    clean = getattr(result, "image", None)
    if clean is None:
        return {}, [], []
    base = np.ascontiguousarray(clean, dtype=np.float64)
    keys = sorted(_counterexample_keys(arrays, base.shape), key=_layer_order)
    if not keys:
        return {}, [], []
    groups = _layer_groups(result, base.shape)
    coded: dict[str, str] = {}
    xored: list[str] = []
    omitted: list[str] = []
    spent = 0
    for key in keys:
        x = np.ascontiguousarray(arrays.pop(key), dtype=np.float64)
        if spent >= budget:
            omitted.append(key)  # not even coded: coding a hundred large images costs seconds past the limit
            continue
        code = encode_corners(x, base, groups)
        if code.exceptions > MAX_EXCEPTION_SHARE * x.size:
            parts = {key: x.view(np.uint64) ^ base.view(np.uint64)}
            size = x.nbytes // 2
        else:
            parts = {f"{key}.codes": code.codes, f"{key}.magnitudes": code.magnitudes,
                     f"{key}.offsets": _shuffle_bytes(code.offsets), f"{key}.exceptions": code.exception_values}
            size = _stored_bytes(list(parts.values()))
        if spent + size > budget and (coded or xored):
            omitted.append(key)
            spent = budget  # the next ones go too, so what is kept is every layer up to one distance
            continue
        spent += size
        arrays.update(parts)
        if key in parts:
            xored.append(key)
        else:
            coded[key] = code.rounding
    arrays[CLEAN_KEY] = base
    if coded:
        arrays[GROUPS_KEY] = groups
    return coded, xored, omitted


def _drop_references(data: dict, omitted: list[str]) -> None:
    """The JSON's references to counterexamples left out of the side file: None, with the reason beside them."""
    gone = set(omitted)
    for layer in data.get("maximality") or []:
        ref = layer.get("counterexample") if isinstance(layer, dict) else None
        if isinstance(ref, dict) and ref.get("array") in gone:
            layer["counterexample"] = None
            layer["counterexample_omitted"] = OMITTED_REASON


def json_with_side_file(result: Any, json_path: str | Path, extra: dict | None = None) -> dict:
    """``result.to_json`` with its arrays moved to the side file of ``json_path`` (written here), plus ``extra``.

    ``result`` is a :class:`~mlrobust.search.result.SearchResult` or ``CheckResult``; the returned dict is what the
    caller writes as the JSON."""
    arrays: dict[str, np.ndarray] = {}
    data = result.to_json(arrays=arrays)
    coded, xored, omitted = _code_counterexamples(arrays, result)
    _drop_references(data, omitted)
    side = side_file_path(json_path)
    _atomic_savez(side, arrays)
    data["arrays"] = {"file": side.name, "keys": sorted(arrays)}
    if omitted:
        data["arrays"].update({"omitted": omitted, "omitted_reason": OMITTED_REASON,
                               "counterexample_budget_bytes": COUNTEREXAMPLE_BUDGET_BYTES})
    if coded:
        data["arrays"].update({"encoding": "corner/1", "corner_with": CLEAN_KEY, "corner_groups": GROUPS_KEY,
                               "corner_keys": coded})
    if xored:
        data["arrays"].update({"xor_with": CLEAN_KEY, "xor_keys": xored})
    data.update(extra or {})
    return data


def _decode_stored(stored: dict[str, np.ndarray], names: dict, json_name: str) -> dict[str, np.ndarray]:
    """The corner-coded counterexamples of a side file, decoded (see :func:`_code_counterexamples`)."""
    coded = names.get("corner_keys") or {}
    if not coded:
        return {}
    clean = stored.get(str(names.get("corner_with", "")))
    groups = stored.get(str(names.get("corner_groups", "")))
    out: dict[str, np.ndarray] = {}
    for key, rounding in dict(coded).items():
        parts = [f"{key}.{part}" for part in _CODE_PARTS]
        if clean is None or groups is None or any(p not in stored for p in parts):
            raise InputError(f"the side file of {json_name} lacks the parts of {key!r} or the clean image and "
                             "layers it is coded against")
        codes, magnitudes, offsets, exceptions = (stored[p] for p in parts)
        try:
            out[key] = decode_corners(CornerCode(codes, magnitudes, str(rounding), _unshuffle_bytes(offsets),
                                                 exceptions), clean, groups)
        except (ValueError, KeyError, IndexError) as exc:
            raise InputError(f"the side file of {json_name} holds a malformed code for {key!r}: {exc}") from None
    return out


def _as_array(value: Any) -> Any:
    return None if value is None else np.asarray(value)


def load_result(json_path: str | Path) -> dict:
    """A result JSON with its arrays in place: ``object.mask`` and each layer's ``counterexample`` (or a check's
    ``mask`` and ``counterexample``) as numpy arrays, read from the side file the JSON names, or — for JSON files
    written before side files — from the JSON itself."""
    path = Path(json_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read result {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a result JSON (an object expected)")
    stored: dict[str, np.ndarray] = {}
    if isinstance(data.get("arrays"), dict):
        side = path.parent / str(data["arrays"].get("file", ""))
        try:
            with np.load(side, allow_pickle=False) as z:
                stored = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the side file {side} that {path.name} names: {exc}") from None
        clean = stored.get(str(data["arrays"].get("xor_with", "")))
        for key in data["arrays"].get("xor_keys") or []:
            if clean is None or key not in stored:
                raise InputError(f"the side file of {path.name} lacks {key!r} or the clean image it is stored against")
            stored[key] = (stored[key] ^ np.ascontiguousarray(clean, dtype=np.float64).view(np.uint64)).view(np.float64)
        stored.update(_decode_stored(stored, data["arrays"], path.name))

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"array"}:
            key = str(value["array"])
            if key not in stored:
                raise InputError(f"the side file of {path.name} lacks the array {key!r}")
            return stored[key]
        return _as_array(value)

    obj = data.get("object")
    if isinstance(obj, dict) and "mask" in obj:
        obj["mask"] = resolve(obj["mask"])
    for layer in data.get("maximality") or []:
        if isinstance(layer, dict) and "counterexample" in layer:
            layer["counterexample"] = resolve(layer["counterexample"])
    for key in ("mask", "counterexample"):
        if key in data:
            data[key] = resolve(data[key])
    return data
