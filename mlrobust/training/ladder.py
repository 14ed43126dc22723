"""The scale ladder's reference classifiers: Triple-MNIST (84x84, top-3) and RGB objects (3x300x300, top-k with k the
image's object count), their training, evaluation, ONNX export and shipped example images.

    python -m mlrobust.training ladder --rung triple-mnist --mnist-dir DIR --out examples
    python -m mlrobust.training ladder --rung rgb-objects --mnist-dir DIR --out examples

Both are trained briefly on the CPU (one thread, fixed seeds): they are the project's stand-ins for real multi-label
models of these sizes, for the verifier to scale on, not accuracy records. The Double-MNIST models (``build``) are
untouched by this module.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlrobust.data.double_mnist import DoubleMnist, build_triple_mnist, object_names
from mlrobust.data.mnist import load_mnist
from mlrobust.data.rgb_objects import build_rgb_objects
from mlrobust.training.evaluate import logits_of
from mlrobust.training.export import export_onnx, onnx_logits
from mlrobust.training.model import num_parameters

NUM_LABELS = 10


class TripleMnistNet(nn.Module):
    """(N, 1, 84, 84) -> 10 logits. Conv(1->8, k4, s2, p1), ReLU, Conv(8->16, k3, s3, p1), ReLU,
    Conv(16->32, k4, s2, p1), ReLU, flatten (1568), Linear(1568->10): 18,816 ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, stride=3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=4, stride=2, padding=1)
        self.fc = nn.Linear(1568, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


class RgbObjectsNet(nn.Module):
    """(N, 3, 300, 300) -> 10 logits. Conv(3->8, k5, s5, p2), ReLU, Conv(8->16, k4, s4, p1), ReLU,
    Conv(16->32, k3, s3, p1), ReLU, flatten (800), Linear(800->10): 33,200 ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=5, stride=5, padding=2)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=4, stride=4, padding=1)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3, stride=3, padding=1)
        self.fc = nn.Linear(800, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


@dataclass(frozen=True)
class Rung:
    """One ladder model: its name, network class, input shape, data builder and training schedule."""

    name: str
    network: type[nn.Module]
    input_shape: tuple[int, int, int]
    build: Callable[..., DoubleMnist]
    n_train: int
    n_test: int
    epochs: int
    lr: float = 1e-2
    batch_size: int = 64
    seed: int = 0


# Training sets are small on purpose: a few CPU minutes each on one thread. The RGB rung needs more images than the
# Triple-MNIST one per parameter (3,000 gave 8.7 % exact-set test accuracy, 12,000 give 32 %); its 12 epochs on
# 12,000 images (270 kB each as uint8, 3.2 GB in memory) took 4 CPU minutes, building the images about as long again.
RUNGS: dict[str, Rung] = {
    "triple-mnist": Rung("triple_mnist", TripleMnistNet, (1, 84, 84), build_triple_mnist, 20000, 2000, 6),
    "rgb-objects": Rung("rgb_objects", RgbObjectsNet, (3, 300, 300), build_rgb_objects, 12000, 300, 12, lr=3e-3,
                        batch_size=32),
}


def build_network(rung: Rung) -> nn.Module:
    """A freshly initialised network (He-normal convolutions with a small positive bias, as the Double-MNIST
    models: fewer dead channels); the same seed gives the same weights."""
    state = torch.random.get_rng_state()
    torch.manual_seed(rung.seed)
    model = rung.network()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.constant_(module.bias, 0.05)
    torch.random.set_rng_state(state)
    return model


def topk_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: whether its top-k labels, k = its number of objects, are exactly its objects' labels."""
    k = labels.sum(dim=1, keepdim=True)
    ranks = torch.argsort(torch.argsort(-logits, dim=1, stable=True), dim=1)
    return ((ranks < k) == labels.bool()).all(dim=1)


def train_rung(rung: Rung, x: torch.Tensor, y: torch.Tensor, log=print) -> tuple[nn.Module, list[dict]]:
    """Adam with a one-cycle schedule on the multi-label binary cross-entropy; one history row per epoch."""
    torch.manual_seed(rung.seed)
    gen = torch.Generator().manual_seed(rung.seed)
    model = build_network(rung)
    opt = torch.optim.Adam(model.parameters(), lr=rung.lr)
    batches = (len(x) + rung.batch_size - 1) // rung.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=rung.lr, total_steps=max(rung.epochs * batches, 1),
                                                pct_start=0.15, anneal_strategy="cos")
    history = []
    for epoch in range(rung.epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train()
        order = torch.randperm(len(x), generator=gen)
        loss_sum, correct = 0.0, 0
        for b in range(batches):
            idx = order[b * rung.batch_size : (b + 1) * rung.batch_size]
            xb = x[idx].float() / 255.0  # uint8 storage: a quarter of the float memory
            logits = model(xb)
            loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int(topk_correct(logits.detach(), y[idx]).sum())
        row = {"epoch": epoch + 1, "loss": loss_sum / len(x), "train_exact_set_accuracy": correct / len(x),
               "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}
        history.append(row)
        log(f"[{rung.name}] epoch {epoch + 1}/{rung.epochs} loss {row['loss']:.4f} "
            f"train exact-set acc {row['train_exact_set_accuracy']:.4f} ({row['seconds']:.0f} s)")
    return model.eval(), history


def _data(rung: Rung, mnist_dir: str, split: str, n: int) -> DoubleMnist:
    images, labels = load_mnist(mnist_dir, split)
    return rung.build(images, labels, n, rung.seed, split)


def _train_tensors(rung: Rung, mnist_dir: str, n: int, chunk: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images (uint8) and labels; RGB images are built in chunks so their masks (four 300x300 masks
    per image) never all sit in memory."""
    if rung.build is not build_rgb_objects:
        return _tensors(_data(rung, mnist_dir, "train", n))
    images, labels = load_mnist(mnist_dir, "train")
    parts = [_tensors(build_rgb_objects(images, labels, min(chunk, n - s), rung.seed, "train", start=s))
             for s in range(0, n, chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _tensors(data: DoubleMnist) -> tuple[torch.Tensor, torch.Tensor]:
    images = data.images if data.images.ndim == 4 else data.images[:, None]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(data.labels.astype(np.float32))


def write_ladder_examples(out: Path, rung: Rung, data: DoubleMnist, chosen: list[int], logits: np.ndarray) -> list:
    """``images/<name>NN.png`` with ``_perturbed`` (the second object) and ``_target`` (the first object) masks;
    returns the manifest entries."""
    from mlrobust.neighborhood.image_io import write_image, write_mask

    prefix = rung.name.split("_")[0]
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for j, i in enumerate(chosen):
        name = f"{prefix}{j:02d}"
        present = [int(d) for d in data.digits[i] if int(d) >= 0]
        names = object_names(data.masks.shape[1])
        write_image(out / "images" / f"{name}.png", data.images[i])
        write_mask(out / "images" / f"{name}_target.png", data.masks[i, 0])
        write_mask(out / "images" / f"{name}_perturbed.png", data.masks[i, 1])
        row = logits[i].astype(np.float64)
        entries.append({
            "id": name,
            "model": rung.name,
            "file": f"images/{name}.png",
            "mask": f"images/{name}_perturbed.png",
            "target_mask": f"images/{name}_target.png",
            "digits": present,
            "objects": list(names[: len(present)]),
            "labels": [int(v) for v in data.labels[i]],
            "k": len(present),
            "target": {"object": names[0], "digit": present[0]},
            "perturbed": {"object": names[1], "digit": present[1]},
            "target_label": present[0],
            "source": {"split": data.split, "index": int(i), "mnist_indices": [int(s) for s in data.source[i][:len(present)]],
                       "positions_yx": data.positions[i][:len(present)].tolist()},
            "prediction": {"topk": [int(c) for c in np.argsort(-row, kind="stable")[:len(present)]],
                           "logits": [round(float(v), 6) for v in row]},
        })
    return entries


def build_ladder(rung_key: str, mnist_dir: str, out: str | Path, n_examples: int = 3, threads: int = 1,
                 n_train: int | None = None, log=print) -> dict:
    """Train, evaluate and export one rung's model; write its example images and its entries of
    ``ladder.json`` and ``models/ladder_metrics.json`` (the other rung's entries are kept)."""
    torch.set_num_threads(threads)
    rung = RUNGS[rung_key]
    out = Path(out)
    start = time.perf_counter()
    x, y = _train_tensors(rung, mnist_dir, n_train or rung.n_train)
    log(f"[{rung.name}] {len(x)} training images built in {time.perf_counter() - start:.0f} s")
    model, history = train_rung(rung, x, y, log=log)
    del x, y
    test = _data(rung, mnist_dir, "test", rung.n_test)
    xt, yt = _tensors(test)
    xt_float = xt.float() / 255.0
    logits = logits_of(model, xt_float, batch=100)
    correct = topk_correct(logits, yt).numpy()
    accuracy = float(correct.mean())
    log(f"[{rung.name}] test exact-set accuracy {accuracy:.4f} on {len(xt)} images")

    path = export_onnx(model, out / "models" / f"{rung.name}.onnx", check_inputs=xt_float[:32].numpy(),
                       input_shape=rung.input_shape)
    chosen = [int(i) for i in np.flatnonzero(correct)[:n_examples]]
    shipped = onnx_logits(path, xt_float[chosen].numpy())
    test_logits = logits.numpy().copy()
    test_logits[chosen] = shipped  # the manifest records what the shipped ONNX file computes
    entries = write_ladder_examples(out, rung, test, chosen, test_logits)

    manifest_path = out / "ladder.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "description": "Scale-ladder examples: Triple-MNIST (84x84 grey, top-3) and RGB objects (3x300x300, top-k "
        "with k the image's object count); pixels/255 in [0, 1]; 'mask' is the perturbed object (the second one), "
        "'target_mask' the target object (the first one), 255 = object.",
        "images": [],
    }
    manifest["images"] = [e for e in manifest["images"] if e.get("model") != rung.name] + entries
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    metrics_path = out / "models" / "ladder_metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {"models": {}}
    metrics["models"][rung.name] = {
        "file": f"models/{rung.name}.onnx",
        "input_shape": list(rung.input_shape),
        "parameters": num_parameters(model),
        "train": {**{k: v for k, v in asdict(rung).items() if k not in ("network", "build", "input_shape")},
                  "threads": threads, "torch": torch.__version__, "history": history,
                  "wall_seconds": round(sum(r["seconds"] for r in history), 1)},
        "test": {"n": int(len(xt)), "exact_set_accuracy": accuracy,
                 "definition": "fraction of test images whose top-k labels (k = object count) are exactly their "
                 "objects' digits"},
    }
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    log(f"[{rung.name}] wrote {path}, {len(entries)} example images, {manifest_path} and {metrics_path}")
    return metrics["models"][rung.name]
