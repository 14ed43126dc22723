"""The development set: classifiers of the reference architecture trained with other seeds and defenses, so that no
design choice of the verifier is tuned to the three shipped models alone.

    python -m mlrobust.training.devset --data double_mnist.npz --out benchmarks/devset/models

trains every model of :data:`DEVSET` in turn (CPU, one thread, fixed seeds; a few minutes each: they are trained
briefly), evaluates it on the test split, exports ONNX (checked against onnxruntime and
mlrobust's own import) and writes ``manifest.json`` (defense, seed, settings, accuracy, accuracy under PGD).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlrobust.data.double_mnist import load_npz
from mlrobust.training.evaluate import evaluate
from mlrobust.training.export import export_onnx, onnx_logits
from mlrobust.training.model import build_model, num_parameters
from mlrobust.training.train import TrainConfig, config_dict, train

# Other seeds than the shipped models (0, 1, 2) and other defenses. The adversarially trained ones start from the
# undefended model of seed 3 (as mnist2_pgd starts from mnist2_nodefense): adversarial training from scratch costs
# pgd_steps + 1 passes per batch in every epoch.
DEVSET: dict[str, TrainConfig] = {
    "dev_nodefense_s3": TrainConfig(defense="none", epochs=4, lr=1e-2, seed=3),
    "dev_wd_s4": TrainConfig(defense="none", epochs=4, lr=1e-2, seed=4, weight_decay=1e-3),
    "dev_pgd05_s5": TrainConfig(defense="pgd", epochs=1, lr=3e-3, seed=5, pgd_eps=0.05, pgd_steps=5,
                                warm_start="dev_nodefense_s3"),
    "dev_trades_s6": TrainConfig(defense="trades", epochs=1, lr=3e-3, seed=6, pgd_eps=0.03, pgd_steps=5,
                                 trades_beta=3.0, warm_start="dev_nodefense_s3"),
}


def _ir_difference(path: Path, x: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference between mlrobust's IR forward pass and onnxruntime on ``x``."""
    from mlrobust import load_onnx

    return float(np.max(np.abs(load_onnx(path).logits(x.astype(np.float64)) - reference)))


def build(data: str | Path, out: str | Path, work: str | Path, names: list[str] | None = None, n_train: int = 0,
          attack_n: int = 500, reuse: bool = False, log=print) -> dict:
    """Train (or, with ``reuse``, reload from ``work``), evaluate and export the models ``names`` (default: all of
    :data:`DEVSET`, warm starts included); merge their entries into ``out/manifest.json`` and return it."""
    out, work = Path(out), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    sets = load_npz(data)
    n = n_train or len(sets["train"])
    x = torch.from_numpy(sets["train"].float_images()[:n])
    y = torch.from_numpy(sets["train"].labels[:n].astype(np.float32))
    xt = torch.from_numpy(sets["test"].float_images())
    yt = torch.from_numpy(sets["test"].labels.astype(np.float32))
    manifest_path = out / "manifest.json"
    header = {
        "description": "Double-MNIST classifiers of the reference architecture (mlrobust.training.model) trained "
        "with other seeds and defenses than the shipped examples; built by python -m mlrobust.training.devset",
        "torch": torch.__version__,
        "dataset": {"file": Path(data).name, "seed": sets["test"].seed, "test_images": len(xt)},
    }
    manifest: dict = {}
    trained: dict[str, torch.nn.Module] = {}
    wanted = names or list(DEVSET)
    order = [n for n in DEVSET if n in wanted or any(DEVSET[w].warm_start == n for w in wanted)]
    for name in order:
        config = DEVSET[name]
        state = work / f"{name}.pt"
        if reuse and state.is_file():
            model = build_model(config.seed)
            model.load_state_dict(torch.load(state))
            history = json.loads((work / f"{name}.history.json").read_text())
        else:
            init = trained[config.warm_start] if config.warm_start else None
            model, history = train(x, y, config, init=init, log=log)
            torch.save(model.state_dict(), state)
            (work / f"{name}.history.json").write_text(json.dumps(history))
        trained[name] = model.eval()
        if name not in wanted:
            continue
        result = evaluate(model, xt, yt, attack_eps=(0.01, 0.03), attack_n=attack_n)
        # float32 rounding of logits of a few tens differs by ~1e-5 between torch and onnxruntime
        path = export_onnx(model, out / f"{name}.onnx", check_inputs=xt[:256].numpy(), atol=1e-4)
        ort = onnx_logits(path, xt[:16].numpy())
        entry = {
            "file": path.name,
            "defense": config.defense,
            "seed": config.seed,
            "parameters": num_parameters(model),
            "train": {**config_dict(config), "images": len(x),
                      "wall_seconds": round(sum(r["seconds"] for r in history), 1)},
            "exact_set_accuracy": round(result["exact_set_accuracy"], 4),
            "pgd": result["pgd"],
            "ir_vs_onnxruntime_max_abs_diff": _ir_difference(path, xt[:16].numpy(), ort),
        }
        log(f"{name}: exact-set accuracy {result['exact_set_accuracy']:.4f}; PGD {result['pgd']['accuracy']}")
        # read again and written at once after every model: builds of other models may share the manifest
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": {}}
        manifest.update(header)
        manifest["models"] = dict(sorted({**manifest["models"], name: entry}.items()))
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlrobust.training.devset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Double-MNIST npz from 'mlrobust data double-mnist'")
    parser.add_argument("--out", default="benchmarks/devset/models", help="folder of the ONNX files and manifest")
    parser.add_argument("--work", default="build/devset", help="folder for the trained state dicts and histories")
    parser.add_argument("--models", default="", help="comma-separated names (default: all of DEVSET)")
    parser.add_argument("--n-train", type=int, default=0, help="train on the first N training images (0 = all)")
    parser.add_argument("--attack-n", type=int, default=500, help="test images attacked with PGD")
    parser.add_argument("--reuse", action="store_true", help="load the state dicts in --work instead of training")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(DEVSET))
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(DEVSET)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    build(args.data, args.out, args.work, names or None, args.n_train, args.attack_n, args.reuse,
          log=lambda s: print(s, flush=True))
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
