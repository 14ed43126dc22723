"""Benchmark of bound propagation: IBP vs CROWN time, unstable ReLUs and bound widths on 64×64 networks.

Networks: the reference architecture (Conv 1→8 k3 s2 p1, ReLU, Conv 8→16 k3 s2 p1, ReLU, MaxPool 4, Linear 256→10)
with fixed-seed random weights, a wider random CNN (65,536 + 32,768 ReLUs) that exercises row chunking, and every
shipped model ``examples/models/*.onnx`` (loaded with :func:`mlrobust.load_onnx`). The input is the first image of
``examples/images`` if one fits, else a synthetic Double-MNIST-like image (two strokes on black); boxes are the
L-inf balls of the given radii clipped to [0, 1]. Single-threaded (BLAS and torch), timings are medians.

    python -m benchmarks.bench_bounds [--radii 0.001 0.005 0.01 0.02 0.05] [--repeats 3] [--out PATH]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from mlrobust.bounds import margin_bounds, propagate  # noqa: E402
from mlrobust.bounds.crown import crown  # noqa: E402
from mlrobust.ir.graph import Network, Node  # noqa: E402
from mlrobust.ir.ops import Conv2d, Dense, MaxPool2d, Relu, Reshape  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RADII = (0.001, 0.005, 0.01, 0.02, 0.05)
K = 2  # top-k of the project's question


def _random_cnn(seed: int, layers: list[tuple], size: int = 64) -> Network:
    """A random (He-initialised) network from ``("conv", c_out, stride) | ("pool", k) | ("dense", n) | "relu"``."""
    rng = np.random.default_rng(seed)
    shape: tuple[int, ...] = (1, size, size)
    nodes, cur = [], "input"
    for i, layer in enumerate(layers):
        kind = layer if isinstance(layer, str) else layer[0]
        if kind == "conv":
            _, c_out, stride = layer
            w = rng.normal(0, np.sqrt(2.0 / (shape[0] * 9)), (c_out, shape[0], 3, 3))
            op = Conv2d(w, rng.normal(0, 0.1, c_out), (stride, stride), (1, 1, 1, 1))
            shape = (c_out, *op.output_hw(*shape[1:]))
        elif kind == "relu":
            op = Relu()
        elif kind == "pool":
            op = MaxPool2d((layer[1], layer[1]), (layer[1], layer[1]))
            shape = (shape[0], *op.output_hw(*shape[1:]))
        elif kind == "flatten":
            shape = (int(np.prod(shape)),)
            op = Reshape(shape)
        else:
            n_in = int(np.prod(shape))
            op = Dense(rng.normal(0, np.sqrt(2.0 / n_in), (layer[1], n_in)), rng.normal(0, 0.1, layer[1]))
            shape = (layer[1],)
        out = f"t{i}"
        nodes.append(Node(f"n{i}", op, (cur,), out, shape))
        cur = out
    return Network("input", (1, 1, size, size), nodes, cur)


def networks() -> list[tuple[str, Network]]:
    nets = [
        ("reference arch, random (seed 0)",
         _random_cnn(0, [("conv", 8, 2), "relu", ("conv", 16, 2), "relu", ("pool", 4), "flatten", ("dense", 10)])),
        ("wide CNN, random (seed 1)",
         _random_cnn(1, [("conv", 16, 1), "relu", ("conv", 32, 2), "relu", ("pool", 2), "flatten", ("dense", 128),
                         "relu", ("dense", 10)])),
    ]
    for path in sorted((ROOT / "examples" / "models").glob("*.onnx")):
        from mlrobust import load_onnx

        nets.append((f"{path.name} (trained)", load_onnx(path)))
    return nets


def synthetic_image(size: int = 64) -> np.ndarray:
    """Two digit-like strokes on black (a '1' and a '7'), softened by a 3×3 box blur, in [0, 1]."""
    img = np.zeros((size, size))
    s = size / 64
    img[int(12 * s):int(52 * s), int(14 * s):int(19 * s)] = 1.0  # the '1'
    img[int(12 * s):int(17 * s), int(34 * s):int(54 * s)] = 1.0  # the '7': bar ...
    for r in range(int(17 * s), int(52 * s)):  # ... and diagonal
        c = int(54 * s - (r - 17 * s) * 0.45)
        img[r, max(c - 3, 0):c + 2] = 1.0
    pad = np.pad(img, 1)
    return np.clip(sum(pad[i:i + size, j:j + size] for i in range(3) for j in range(3)) / 9.0, 0, 1)


def input_image(net: Network) -> tuple[np.ndarray, str]:
    images = sorted((ROOT / "examples" / "images").glob("*.png")) if (ROOT / "examples" / "images").is_dir() else []
    for path in images:
        from PIL import Image

        arr = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
        if arr.size == int(np.prod(net.sample_shape)):
            return arr.reshape(net.sample_shape), path.name
    side = int(round(np.sqrt(np.prod(net.sample_shape))))
    return synthetic_image(side).reshape(net.sample_shape), "synthetic two-stroke image"


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def kth_largest(values: np.ndarray, target: int, k: int) -> float:
    others = np.delete(values, target)
    return float(np.sort(others)[-k])


def run(radii, repeats: int, dense_limit: int) -> tuple[list[dict], str]:
    rows = []
    image_note = ""
    for name, net in networks():
        x, image_note = input_image(net)
        logits = net.logits(x[None])[0]
        target = int(np.argsort(-logits)[0])  # the top label at the image
        for r in radii:
            lo, hi = np.clip(x - r, 0, 1), np.clip(x + r, 0, 1)
            t_ibp, b_ibp = _median_time(lambda: propagate(net, lo, hi, "ibp"), max(repeats, 3))
            t_crown, b_crown = _median_time(lambda: crown(net, lo, hi), repeats)
            t_all, b_all = _median_time(lambda: crown(net, lo, hi, refine="all"), 1)
            t_dense = float("nan")
            if net.num_relus <= dense_limit:
                t_dense, _ = _median_time(lambda: crown(net, lo, hi, patches=False), 1)
            t_margin, (m_lo, m_hi) = _median_time(lambda: margin_bounds(net, lo, hi, target, bounds=b_crown), repeats)
            i_lo, i_hi = margin_bounds(net, lo, hi, target, method="ibp", bounds=b_ibp)
            others = np.arange(net.num_classes) != target
            rows.append({
                "net": name, "radius": r, "relus": net.num_relus,
                "t_ibp": t_ibp, "t_crown": t_crown, "t_all": t_all, "t_dense": t_dense, "t_margin": t_margin,
                "rows": b_crown.info["rows"], "rows_all": b_all.info["rows"],
                "unst_ibp": b_ibp.num_unstable, "unst_crown": b_crown.num_unstable, "unst_all": b_all.num_unstable,
                "w_out_ibp": float(np.mean(b_ibp.output_upper - b_ibp.output_lower)),
                "w_out_crown": float(np.mean(b_crown.output_upper - b_crown.output_lower)),
                "w_m_ibp": float(np.mean((i_hi - i_lo)[others])),
                "w_m_diff": float(np.mean((b_crown.output_upper - b_crown.output_lower[target]
                                           - b_crown.output_lower + b_crown.output_upper[target])[others])),
                "w_m_crown": float(np.mean((m_hi - m_lo)[others])),
                "k_ibp": kth_largest(i_hi, target, K), "k_crown": kth_largest(m_hi, target, K),
            })
            print(f"{name:36s} r={r:<6} IBP {t_ibp * 1e3:7.1f} ms  CROWN {t_crown * 1e3:8.1f} ms  "
                  f"unstable {rows[-1]['unst_ibp']}->{rows[-1]['unst_crown']}", file=sys.stderr, flush=True)
    return rows, image_note


def _f(v: float, digits: int = 3) -> str:
    return "–" if v != v else f"{v:.{digits}g}"


def markdown(rows: list[dict], image_note: str, facts: dict) -> str:
    """The report; ``facts``: :func:`benchmarks.suite.run_facts` with :func:`benchmarks.suite.end_facts`."""
    from benchmarks.suite import report_header

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Bound propagation benchmark",
        "",
        *report_header(facts),
        f"torch {torch.__version__}, 1 thread (BLAS and torch); times are medians; input: {image_note}; boxes: L-inf radius clipped to [0, 1]; "
        f"margins for the image's top label; peak RSS of the whole run {peak:.0f} MiB.",
        "",
        "## Time and unstable ReLUs",
        "",
        "CROWN = default (`refine=\"unstable\"`, patch-local coefficients); *all* = every pre-activation neuron "
        "back-substituted; *dense* = no patches (only on the smaller nets). Rows = specification rows "
        "back-substituted (two per bounded neuron).",
        "",
        "| network | radius | ReLUs | IBP ms | CROWN ms | CROWN all ms | CROWN dense ms | margin ms | rows | rows all "
        "| unstable IBP | unstable CROWN | unstable CROWN all |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['radius']} | {r['relus']} | {r['t_ibp'] * 1e3:.1f} | {r['t_crown'] * 1e3:.0f} | "
            f"{r['t_all'] * 1e3:.0f} | {_f(r['t_dense'] * 1e3, 4)} | {r['t_margin'] * 1e3:.0f} | {r['rows']} | "
            f"{r['rows_all']} | {r['unst_ibp']} | {r['unst_crown']} | {r['unst_all']} |")
    lines += [
        "",
        "## Tightness",
        "",
        "Mean width of the output bounds, and of the margin bounds `y_c - y_t` over c ≠ t: IBP interval difference, "
        f"difference of CROWN output intervals, and CROWN on the margin directly. Last columns: the {K}nd largest "
        f"upper margin bound (< 0 proves the top label stays in the top-{K} on the whole box).",
        "",
        "| network | radius | out width IBP | out width CROWN | margin width IBP | margin width CROWN diff "
        f"| margin width CROWN | {K}nd upper margin IBP | {K}nd upper margin CROWN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['radius']} | {_f(r['w_out_ibp'])} | {_f(r['w_out_crown'])} | {_f(r['w_m_ibp'])} | "
            f"{_f(r['w_m_diff'])} | {_f(r['w_m_crown'])} | {_f(r['k_ibp'])} | {_f(r['k_crown'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from benchmarks.suite import command_line, end_facts, run_facts

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--radii", type=float, nargs="+", default=list(RADII))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-limit", type=int, default=20000, help="skip dense CROWN on nets with more ReLUs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bounds.md")
    args = parser.parse_args(argv)
    facts = run_facts(command_line("python -m benchmarks.bench_bounds", argv))  # the load before the work
    rows, image_note = run(args.radii, args.repeats, args.dense_limit)
    text = markdown(rows, image_note, {**facts, **end_facts()})
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
