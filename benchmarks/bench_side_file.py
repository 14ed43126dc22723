"""``python -m benchmarks side-file``: the result side file's size and write time at 3x300x300, counterexamples
coded against the clean image (:mod:`mlrobust.search.corner_code`) vs their bits XOR the clean image's (the layout
before), both deflated at the side file's level.

Synthetic counterexamples built as a PGD result is (``clip(c + e_L * sign, 0, 1)`` per layer ``L``, with a few
random interior pixels; once in float64 and once widened from float32 as the torch attacks return them), and, with
``--result R.json``, the counterexamples of a real result re-written both ways.

    python -m benchmarks side-file --count 20 --result out.json --out benchmarks/results/side_file.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.suite import command_line, end_facts, report_header, run_facts
from mlrobust.neighborhood.layers import layer_index
from mlrobust.search.outputs import CLEAN_KEY, _atomic_savez, _code_counterexamples


def synthetic(count: int, seed: int = 0, float32: bool = False, shape: tuple[int, int, int] = (3, 300, 300),
              interior: int = 50) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A textured clean image (grey levels k/255), a 100x100 object mask and ``count`` PGD-like counterexamples."""
    rng = np.random.default_rng(seed)
    _, h, w = shape
    texture = np.add.outer(np.sin(np.arange(h) / 7.0), np.cos(np.arange(w) / 11.0))[None] * 0.2 + 0.5
    clean = np.clip(np.round((texture + rng.normal(0, 0.1, shape)) * 255), 0, 255) / 255.0
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 3:h // 3 + 100, w // 3:w // 3 + 100] = True
    layers = layer_index(mask)
    out = []
    for _ in range(count):
        eps = rng.uniform(1e-4, 0.02, layers.max() + 1)
        x = np.clip(clean + eps[layers] * rng.choice([-1.0, 1.0], shape), 0.0, 1.0)
        picks = rng.choice(x.size, interior, replace=False)
        x.flat[picks] = np.clip(clean.flat[picks] + rng.uniform(-1, 1, interior) * 0.01, 0, 1)
        out.append(x.astype(np.float32).astype(np.float64) if float32 else x)
    return clean, mask, out


def measure(clean: np.ndarray, mask: np.ndarray, counterexamples: list[np.ndarray], folder: Path) -> dict:
    """Write the counterexamples both ways (each as one side file); seconds and bytes of each."""
    row: dict = {"count": len(counterexamples), "shape": list(clean.shape)}
    for name in ("xor", "corner"):
        arrays = {f"counterexample_layer{i}": x.copy() for i, x in enumerate(counterexamples)}
        path = folder / f"{name}.npz"
        start = time.perf_counter()
        if name == "xor":
            base = clean.view(np.uint64)
            for key in list(arrays):
                arrays[key] = arrays[key].view(np.uint64) ^ base
            arrays[CLEAN_KEY] = clean
            coded, xored = {}, list(arrays)
        else:
            # no budget here: the benchmark compares the codings on every counterexample
            coded, xored, _ = _code_counterexamples(arrays, SimpleNamespace(image=clean, mask=mask), budget=1 << 62)
        encoded = time.perf_counter()
        _atomic_savez(path, arrays)
        done = time.perf_counter()
        row[name] = {"encode_s": round(encoded - start, 2), "write_s": round(done - encoded, 2),
                     "total_s": round(done - start, 2), "bytes": path.stat().st_size,
                     "mb": round(path.stat().st_size / 1e6, 2),
                     "corner_coded": len(coded), "xor_coded": len(xored) - (1 if name == "xor" else 0)}
        path.unlink()
    return row


def real_result(json_path: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    import mlrobust

    data = mlrobust.load_result(json_path)
    side = json_path.parent / data["arrays"]["file"]
    with np.load(side) as z:
        clean = z[CLEAN_KEY]
    xs = [m["counterexample"] for m in data.get("maximality") or [] if m.get("counterexample") is not None]
    return clean, np.asarray(data["object"]["mask"], dtype=bool), xs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks side-file", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="synthetic counterexamples per side file")
    parser.add_argument("--result", type=Path, action="append", default=[], help="a result JSON to re-write")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/side_file.md"))
    args = parser.parse_args(argv)
    facts = run_facts(command_line("python -m benchmarks side-file", argv))  # the load before the work
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for float32 in (False, True):
            clean, mask, xs = synthetic(args.count, float32=float32)
            rows.append({"case": f"synthetic PGD-like, {'float32' if float32 else 'float64'}", **measure(
                clean, mask, xs, Path(tmp))})
            print(json.dumps(rows[-1]), flush=True)
        for path in args.result:
            clean, mask, xs = real_result(path)
            rows.append({"case": f"real: {path.name}", **measure(clean, mask, xs, Path(tmp))})
            print(json.dumps(rows[-1]), flush=True)
    facts.update(end_facts())
    lines = ["# Side file: counterexamples coded against the clean image vs XOR", "", *report_header(facts),
             f"{facts['machine']['platform']}.", "",
             "| case | counterexamples | XOR MB | XOR s (encode + write) | coded MB | coded s (encode + write) "
             "| coded / XOR-coded |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        x, c = r["xor"], r["corner"]
        lines.append(f"| {r['case']} | {r['count']} | {x['mb']} | {x['total_s']} ({x['encode_s']} + {x['write_s']}) "
                     f"| {c['mb']} | {c['total_s']} ({c['encode_s']} + {c['write_s']}) "
                     f"| {c['corner_coded']} / {c['xor_coded']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
