"""Rebuild the shipped reference classifiers and example images.

    python -m mlrobust.training build --data double_mnist.npz --out examples
    python -m mlrobust.training ladder --rung triple-mnist --mnist-dir DIR --out examples   (or --rung rgb-objects)

trains the three models (CPU, one thread, fixed seeds), evaluates them on the whole test split, exports ONNX
(checked against onnxruntime and mlrobust's own import), picks the example images and writes the metrics.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlrobust.data.double_mnist import load_npz
from mlrobust.training.evaluate import evaluate, exact_set_correct, logits_of
from mlrobust.training.examples import select_examples, write_examples
from mlrobust.training.export import export_onnx, onnx_logits
from mlrobust.training.model import build_model, num_parameters
from mlrobust.training.train import MODELS, config_dict, train


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.float_images()), torch.from_numpy(data.labels.astype(np.float32))


def _check_ir(path: Path, x: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference between mlrobust's IR forward pass and onnxruntime on ``x``."""
    from mlrobust import load_onnx

    network = load_onnx(path)
    return float(np.max(np.abs(network.logits(x.astype(np.float64)) - reference)))


def build(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = load_npz(args.data)
    x, y = _tensors(sets["train"])
    if args.n_train:
        x, y = x[: args.n_train], y[: args.n_train]
    xt, yt = _tensors(sets["test"])
    print(f"training on {len(x)} images, testing on {len(xt)}", flush=True)

    metrics: dict = {}
    models = {}
    for name, config in MODELS.items():
        state = work / f"{name}.pt"
        start = time.perf_counter()
        if args.reuse and state.is_file():
            model = build_model(config.seed)
            model.load_state_dict(torch.load(state))
            history: list[dict] = json.loads((work / f"{name}.history.json").read_text())
        else:
            init = None
            if config.warm_start:
                init = models[config.warm_start]
            model, history = train(x, y, config, init=init, log=lambda s: print(s, flush=True))
            torch.save(model.state_dict(), state)
            (work / f"{name}.history.json").write_text(json.dumps(history))
        train_seconds = sum(row["seconds"] for row in history)
        cpu = [row.get("cpu_seconds") for row in history]
        cpu_seconds = round(sum(cpu), 1) if all(c is not None for c in cpu) else None
        models[name] = model.eval()
        result = evaluate(model, xt, yt, attack_n=args.attack_n, attack_steps=args.attack_steps)
        print(f"{name}: exact-set accuracy {result['exact_set_accuracy']:.4f}; PGD {result['pgd']['accuracy']}",
              flush=True)
        metrics[name] = {
            "file": f"models/{name}.onnx",
            "parameters": num_parameters(model),
            "train": {**config_dict(config), "images": len(x), "wall_seconds": round(train_seconds, 1),
                      "cpu_seconds": cpu_seconds, "history": history},
            "test": result,
            "evaluated_in_seconds": round(time.perf_counter() - start - (0 if args.reuse else train_seconds), 1),
        }

    # Examples: test images all three models get right.
    test_logits = {name: logits_of(m, xt).numpy() for name, m in models.items()}
    correct = np.ones(len(xt), dtype=bool)
    for z in test_logits.values():
        correct &= exact_set_correct(torch.from_numpy(z), yt).numpy()
    chosen = select_examples(sets["test"], correct, n=args.n_examples, seed=args.seed)
    shipped = xt[chosen].numpy()

    for name, model in models.items():
        path = export_onnx(model, out / "models" / f"{name}.onnx", check_inputs=xt[:256].numpy())
        ort_logits = onnx_logits(path, shipped)
        test_logits[name] = test_logits[name].copy()
        test_logits[name][chosen] = ort_logits  # the manifest records what the shipped ONNX file computes
        ir_err = _check_ir(path, shipped, ort_logits)
        print(f"{name}: exported {path} (IR vs onnxruntime max |diff| {ir_err:.2e})", flush=True)
        metrics[name]["shipped_images"] = {
            "n": len(chosen),
            "exact_set_accuracy": float(exact_set_correct(torch.from_numpy(ort_logits), yt[chosen]).double().mean()),
            "ir_vs_onnxruntime_max_abs_diff": ir_err,
        }

    dataset = {
        "name": "Double-MNIST",
        "file": Path(args.data).name,
        "seed": sets["test"].seed,
        "train_images": len(sets["train"]),
        "test_images": len(sets["test"]),
    }
    write_examples(out, sets["test"], chosen, test_logits, extra={"dataset": dataset})
    summary = {
        "dataset": dataset,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "metric_definitions": {
            "exact_set_accuracy": "fraction of test images whose top-2 labels are exactly their two digits",
            "per_label_recall": "per digit 0..9: fraction of the test images containing it with it in the top-2",
            "pgd": "exact-set accuracy under an L-inf PGD attack on (largest wrong logit - smallest true logit), "
            "random start, step 2.5*eps/steps, pixels clipped to [0, 1]; on the first n test images",
        },
        "models": metrics,
    }
    (out / "models" / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'models' / 'metrics.json'} and {out / 'manifest.json'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlrobust.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train, evaluate and export the three models; write the example images")
    b.add_argument("--data", required=True, help="Double-MNIST npz from 'mlrobust data double-mnist'")
    b.add_argument("--out", default="examples", help="examples folder (models/ and images/ go inside)")
    b.add_argument("--work", default="build/training", help="folder for the trained state dicts and histories")
    b.add_argument("--reuse", action="store_true", help="load the state dicts in --work instead of training")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--seed", type=int, default=0, help="seed of the example selection")
    b.add_argument("--n-train", type=int, default=0, help="use only the first N training images (0 = all)")
    b.add_argument("--n-examples", type=int, default=20)
    b.add_argument("--attack-n", type=int, default=2000, help="test images attacked with PGD")
    b.add_argument("--attack-steps", type=int, default=20)
    lad = sub.add_parser("ladder", help="train, evaluate and export a scale-ladder model (Triple-MNIST or RGB "
                         "objects); write its example images")
    lad.add_argument("--rung", required=True, choices=["triple-mnist", "rgb-objects"])
    lad.add_argument("--mnist-dir", required=True, help="folder with the four MNIST IDX files")
    lad.add_argument("--out", default="examples", help="examples folder (models/ and images/ go inside)")
    lad.add_argument("--threads", type=int, default=1)
    lad.add_argument("--n-train", type=int, default=0, help="training images (0 = the rung's default)")
    lad.add_argument("--n-examples", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "ladder":
        from mlrobust.training.ladder import build_ladder

        build_ladder(args.rung, args.mnist_dir, args.out, n_examples=args.n_examples, threads=args.threads,
                     n_train=args.n_train or None)
        return 0
    return build(args)


if __name__ == "__main__":
    sys.exit(main())
