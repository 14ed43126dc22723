"""Build the VNN-COMP-like instances of ``benchmarks/vnncomp/``: train the networks, export them to ONNX, write the
VNN-LIB properties and ``instances.csv``.

Networks (torch, CPU, fixed seeds, normally trained — no adversarial training):

- ``mnist_fc_256x2`` (784-256-256-10) and ``mnist_fc_256x4`` (784-256-256-256-256-10), like VNN-COMP's ``mnistfc``:
  flat 784-pixel input in [0, 1] (pixels/255, no normalisation layer), ReLU hidden layers, 10 logits.
- ``mnist_conv_small``: a small convolutional net on the same 784 pixels as a (1, 28, 28) image: Conv(1->8, k4, s2,
  p1), ReLU, Conv(8->16, k4, s2, p1), ReLU, flatten (784), Dense(784->10); added to an existing instance folder with
  ``--add-conv`` (the MLPs and their properties stay as they are). It shares the MNIST property files; an image it
  misclassifies gets no instance.
- ``acas_like`` (5-50x6-5, the ACAS Xu shape): trained to imitate a smooth synthetic "advisory score" function of
  five normalised inputs in [-1, 1] (distance, two angles, two speeds); the advisory is the output with the
  *largest* score.

Properties (VNN-LIB, written in the form :func:`mlrobust.verify.vnnlib.parse_vnnlib` reads; each states the
counterexample region):

- MNIST local robustness: L∞ ε ∈ {0.02, 0.03, 0.05} around the first 15 test images that both MNIST networks
  classify correctly (box clipped to [0, 1]); the counterexample region is "some other logit >= the true label's"
  (top-1). The same files serve both MNIST networks, as in VNN-COMP.
- ACAS-like: input boxes over the five inputs, either "output 0 is not the minimum" (counterexample: ``Y_0 <= Y_j``
  for all j, i.e. label 0 among the top 4 of 5) or "output t stays the maximum" (counterexample: some ``Y_j >= Y_t``).

Raw MNIST is read only here (``--mnist-dir``); the project ships the outputs (a few MB), so nothing needs MNIST at
run or test time.

    python -m benchmarks.vnncomp_models --mnist-dir /path/to/mnist [--out benchmarks/vnncomp] [--epochs 3]
    python -m benchmarks.vnncomp_models --mnist-dir /path/to/mnist --add-conv     # only the conv net
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "vnncomp"
MNIST_EPS = (0.02, 0.03, 0.05)
MNIST_IMAGES = 15
MNIST_MODELS = {"mnist_fc_256x2": (256, 256), "mnist_fc_256x4": (256, 256, 256, 256)}
ACAS_HIDDEN = (50,) * 6
ACAS_OUTPUTS = 5


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Dense layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_small() -> nn.Sequential:
    """The small MNIST conv net: (1, 28, 28) -> 10 logits."""
    return nn.Sequential(nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 4, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


def export_onnx(model: nn.Module, input_shape: int | tuple[int, ...], path: Path) -> None:
    """TorchScript exporter (``dynamo=False``): plain graphs with a (1, *input_shape) input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), input_names=["input"], output_names=["output"],
                      dynamo=False, opset_version=13)


# --- MNIST ------------------------------------------------------------------------------------------------------
def train_mnist(images: np.ndarray, labels: np.ndarray, hidden: tuple[int, ...], seed: int, epochs: int,
                log) -> nn.Sequential:
    """Plain cross-entropy training with Adam (lr 1e-3, batch 128)."""
    torch.manual_seed(seed)
    model = mlp((784, *hidden, 10))
    return fit(model, images.reshape(len(images), -1), labels, seed, epochs, log)


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int, epochs: int, log) -> nn.Module:
    """Cross-entropy training of ``model`` on ``images`` (uint8, in the model's input shape) with Adam (lr 1e-3,
    batch 128)."""
    x = torch.as_tensor(images, dtype=torch.float32) / 255.0
    y = torch.as_tensor(labels, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    return model.eval()


def predictions(model: nn.Module, images: np.ndarray, shape: tuple[int, ...] = (784,)) -> np.ndarray:
    with torch.no_grad():
        x = torch.as_tensor(images.reshape(len(images), *shape), dtype=torch.float32) / 255.0
        return model(x).argmax(1).numpy()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, shape: tuple[int, ...] = (784,)) -> float:
    return float((predictions(model, images, shape) == labels).mean())


def _declare(n_in: int, n_out: int) -> list[str]:
    return [f"(declare-const X_{i} Real)" for i in range(n_in)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)]


def _input_bounds(lower: np.ndarray, upper: np.ndarray) -> list[str]:
    # repr of a float64 round-trips exactly, so the parsed box is the box meant here.
    out = []
    for i, (lo, hi) in enumerate(zip(lower.tolist(), upper.tolist())):
        out += [f"(assert (<= X_{i} {hi!r}))", f"(assert (>= X_{i} {lo!r}))"]
    return out


def topk_vnnlib(lower: np.ndarray, upper: np.ndarray, n_out: int, target: int, k: int, comment: str) -> str:
    """VNN-LIB text whose counterexample region is "``target`` is not among the top-``k`` outputs".

    k = 1: a disjunction of ``Y_j >= Y_t``; k = n_out - 1: one conjunction ``Y_j >= Y_t`` for every j (for
    ``t = 0`` that is "output 0 is the minimum"). Other k: every k-subset of the other outputs.
    """
    others = [j for j in range(n_out) if j != target]
    subsets = list(itertools.combinations(others, k))
    lines = [f"; {comment}"] + _declare(lower.size, n_out) + ["; input constraints"]
    lines += _input_bounds(lower, upper) + ["; output constraints (the counterexample region)"]
    if len(subsets) == 1:
        lines.append("(assert (and " + " ".join(f"(>= Y_{j} Y_{target})" for j in subsets[0]) + "))")
    else:
        lines.append("(assert (or")
        lines += ["    (and " + " ".join(f"(>= Y_{j} Y_{target})" for j in s) + ")" for s in subsets]
        lines.append("))")
    return "\n".join(lines) + "\n"


def mnist_property(pixels: np.ndarray, label: int, eps: float, index: int) -> str:
    x = pixels.reshape(-1).astype(np.float64) / 255.0
    lower, upper = np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)
    return topk_vnnlib(lower, upper, 10, int(label), 1,
                       f"MNIST test image {index} (label {label}), L-infinity eps {eps}: the label stays the argmax")


# --- ACAS-like ----------------------------------------------------------------------------------------------------
def advisory_scores(x: np.ndarray) -> np.ndarray:
    """A smooth synthetic stand-in for ACAS Xu's advisory scores; the largest score is the advisory.

    Inputs in [-1, 1]: distance (x0), bearing of the intruder (x1), its heading (x2), own speed (x3), intruder speed
    (x4). Outputs: clear of conflict (COC), weak left, weak right, strong left, strong right. Far away (or heading
    away), COC wins; close intruders on one side push the turn to the other side, harder when closer and faster.
    """
    rho = (x[:, 0] + 1.0) / 2.0
    theta, psi = np.pi * x[:, 1], np.pi * x[:, 2]
    closing = 1.0 + 0.3 * x[:, 4] - 0.2 * x[:, 3] + 0.4 * np.cos(psi)
    threat = np.exp(-3.0 * rho) * closing
    side = np.sin(theta)
    coc = 1.0 - 1.5 * threat
    weak_left = 0.4 + 0.8 * threat * (0.5 - side) - 0.6 * threat ** 2
    weak_right = 0.4 + 0.8 * threat * (0.5 + side) - 0.6 * threat ** 2
    strong_left = 0.1 + 1.4 * threat * (0.2 - side) * threat
    strong_right = 0.1 + 1.4 * threat * (0.2 + side) * threat
    return np.stack([coc, weak_left, weak_right, strong_left, strong_right], axis=1)


def train_acas(seed: int, steps: int, log) -> nn.Sequential:
    """MSE regression onto :func:`advisory_scores` on 20 000 uniform samples (Adam, lr 1e-3, batch 256)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1.0, 1.0, (20_000, 5))
    x = torch.as_tensor(xs, dtype=torch.float32)
    y = torch.as_tensor(advisory_scores(xs), dtype=torch.float32)
    model = mlp((5, *ACAS_HIDDEN, ACAS_OUTPUTS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=gen)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(steps // 4, 1) == 0:
            log(f"  step {step + 1}/{steps}: mse {float(loss):.5f}")
    return model.eval()


@dataclass
class AcasProperty:
    name: str
    lower: np.ndarray
    upper: np.ndarray
    target: int
    k: int
    comment: str


def acas_properties(model: nn.Module, seed: int, count: int, half_width: tuple[float, float] = (0.02, 0.15),
                    first: int = 0) -> list[AcasProperty]:
    """Input boxes around random points where the property holds at the centre and at 200 samples of the box.

    Half are "output 0 is not the minimum" (k = 4, target 0) at points whose advisory is a turn, half are
    "the advisory t stays the maximum" (k = 1). Half-widths are drawn from ``half_width`` per input (narrow boxes
    are decided by bounds, wide ones need splitting); boxes whose samples already break the property are skipped
    (sat instances are still expected from attacks on the wide boxes). Names are numbered from ``first``.
    """
    rng = np.random.default_rng(seed)
    props: list[AcasProperty] = []
    tries = 0
    while len(props) < count and tries < 10_000:
        tries += 1
        kind = "not_min0" if len(props) % 2 == 0 else "stays_max"
        centre = rng.uniform(-0.9, 0.9, 5)
        half = rng.uniform(*half_width, 5)
        lower, upper = np.clip(centre - half, -1, 1), np.clip(centre + half, -1, 1)
        samples = np.vstack([centre, rng.uniform(lower, upper, (200, 5))])
        with torch.no_grad():
            out = model(torch.as_tensor(samples, dtype=torch.float32)).numpy()
        if kind == "not_min0":
            target, k = 0, 4
            if out[0].argmax() == 0 or np.any(out.argmin(axis=1) == 0):
                continue
            comment = "ACAS-like: output 0 (COC) is not the minimal score"
        else:
            target, k = int(out[0].argmax()), 1
            if np.any(out.argmax(axis=1) != target):
                continue
            comment = f"ACAS-like: the advisory (output {target}) stays the maximal score"
        name = f"acas_like_prop_{first + len(props):02d}_{kind}"
        props.append(AcasProperty(name, lower, upper, target, k, comment))
    return props


# --- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, required=True, help="folder with the four raw MNIST files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--acas-steps", type=int, default=6000)
    parser.add_argument("--acas-properties", type=int, default=10, help="narrow boxes; as many wide ones follow")
    parser.add_argument("--timeout", type=float, default=60.0, help="timeout written to instances.csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--add-conv", action="store_true", help="only train mnist_conv_small and add its instances "
                                                                "to the existing folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from mlrobust.data.mnist import load_mnist
    from mlrobust.errors import InputError

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        train_x, train_y = load_mnist(args.mnist_dir, "train")
        test_x, test_y = load_mnist(args.mnist_dir, "test")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.add_conv:
        return add_conv(args, train_x, train_y, test_x, test_y, log)
    start = time.perf_counter()
    models_dir, props_dir = args.out / "models", args.out / "vnnlib"
    props_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {"command": "python -m benchmarks.vnncomp_models " + " ".join(sys.argv[1:] if argv is None else argv),
                  "seed": args.seed, "torch": torch.__version__, "models": {}, "mnist_images": []}
    correct = np.ones(len(test_x), dtype=bool)
    trained = {}
    for i, (name, hidden) in enumerate(MNIST_MODELS.items()):
        log(f"training {name} ({args.epochs} epochs)")
        model = train_mnist(train_x, train_y, hidden, args.seed + i, args.epochs, log)
        acc = accuracy(model, test_x, test_y)
        log(f"  test accuracy {acc:.4f}")
        with torch.no_grad():
            pred = model(torch.as_tensor(test_x.reshape(len(test_x), -1), dtype=torch.float32) / 255.0).argmax(1)
        correct &= pred.numpy() == test_y
        export_onnx(model, 784, models_dir / f"{name}.onnx")
        trained[name] = model
        info["models"][name] = {"layers": [784, *hidden, 10], "epochs": args.epochs, "test_accuracy": acc,
                                "seed": args.seed + i}
    picked = np.flatnonzero(correct)[:MNIST_IMAGES]
    rows = []
    for index in picked:
        info["mnist_images"].append({"test_index": int(index), "label": int(test_y[index])})
        for eps in MNIST_EPS:
            fname = f"mnist_img{int(index)}_eps{eps:g}.vnnlib"
            (props_dir / fname).write_text(mnist_property(test_x[index], int(test_y[index]), eps, int(index)))
            for name in MNIST_MODELS:
                rows.append((f"models/{name}.onnx", f"vnnlib/{fname}", args.timeout))
    log(f"training acas_like ({args.acas_steps} steps)")
    acas = train_acas(args.seed + 10, args.acas_steps, log)
    rng = np.random.default_rng(args.seed)
    probe = rng.uniform(-1, 1, (20_000, 5))
    with torch.no_grad():
        agree = float((acas(torch.as_tensor(probe, dtype=torch.float32)).argmax(1).numpy()
                       == advisory_scores(probe).argmax(1)).mean())
    log(f"  advisory agreement on fresh samples {agree:.4f}")
    export_onnx(acas, 5, models_dir / "acas_like.onnx")
    info["models"]["acas_like"] = {"layers": [5, *ACAS_HIDDEN, ACAS_OUTPUTS], "steps": args.acas_steps,
                                   "advisory_agreement": agree, "seed": args.seed + 10}
    info["acas_properties"] = []
    wide = acas_properties(acas, args.seed + 21, args.acas_properties, (0.15, 0.4), first=args.acas_properties)
    for p in acas_properties(acas, args.seed + 20, args.acas_properties) + wide:
        (props_dir / f"{p.name}.vnnlib").write_text(topk_vnnlib(p.lower, p.upper, ACAS_OUTPUTS, p.target, p.k,
                                                                p.comment))
        rows.append(("models/acas_like.onnx", f"vnnlib/{p.name}.vnnlib", args.timeout))
        info["acas_properties"].append({"name": p.name, "target": p.target, "k": p.k})
    with (args.out / "instances.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(
            (m, p, f"{t:g}") for m, p, t in rows)
    info["seconds"] = time.perf_counter() - start
    (args.out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {len(rows)} instances to {args.out} ({info['seconds']:.0f} s)")
    return 0


def add_conv(args: argparse.Namespace, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
             test_y: np.ndarray, log) -> int:
    """Train ``mnist_conv_small`` and pair it with the existing MNIST property files of the images it classifies
    correctly (appended to ``instances.csv``; ``info.json`` records it)."""
    start = time.perf_counter()
    name, shape = "mnist_conv_small", (1, 28, 28)
    info = json.loads((args.out / "info.json").read_text())
    seed = args.seed + len(MNIST_MODELS)
    log(f"training {name} ({args.epochs} epochs)")
    torch.manual_seed(seed)
    model = fit(conv_small(), train_x.reshape(len(train_x), *shape), train_y, seed, args.epochs, log)
    acc = accuracy(model, test_x, test_y, shape)
    log(f"  test accuracy {acc:.4f}")
    export_onnx(model, shape, args.out / "models" / f"{name}.onnx")
    images = [e["test_index"] for e in info["mnist_images"]]
    right = predictions(model, test_x[images], shape) == test_y[images]
    model_path = f"models/{name}.onnx"
    with (args.out / "instances.csv").open() as fh:
        rows = [r for r in csv.reader(fh) if r and r[0] != model_path]
    timeout = float(rows[0][2]) if rows else args.timeout
    for index, ok in zip(images, right):
        if ok:
            rows += [[model_path, f"vnnlib/mnist_img{index}_eps{eps:g}.vnnlib", f"{timeout:g}"] for eps in MNIST_EPS]
    with (args.out / "instances.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    info["models"][name] = {"layers": "conv(1->8,k4,s2,p1)-relu-conv(8->16,k4,s2,p1)-relu-dense(784->10)",
                            "input_shape": list(shape), "epochs": args.epochs, "test_accuracy": acc, "seed": seed,
                            "images_misclassified": [int(i) for i, ok in zip(images, right) if not ok],
                            "command": "python -m benchmarks.vnncomp_models " + " ".join(sys.argv[1:])}
    (args.out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"added {int(right.sum()) * len(MNIST_EPS)} instances of {name} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
