"""The reference experiment of the suite: the shipped models x a fixed image set x search methods, run through
``mlrobust.batch`` (so a long run resumes where it stopped), and a strong PGD attack on every returned
neighborhood.

A neighborhood the search reports as proven robust, in which the attack finds a point that takes the target out of
the top-k (confirmed on both the float64 IR and the float32 executor), is a soundness violation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.batch import BatchSettings, Job, load_jobs, run_batch
from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.verify.attack import pgd
from mlrobust.verify.counterexample import TopKProperty


@dataclass(frozen=True)
class Method:
    """A search configuration of the experiment."""

    key: str
    method: str
    cutting: str = "fixed"


METHODS = {
    "optimize-fixed": Method("optimize-fixed", "optimize", "fixed"),
    "optimize-sensitivity": Method("optimize-sensitivity", "optimize", "sensitivity"),
    "layer-search": Method("layer-search", "layer-search"),
    "uniform": Method("uniform", "uniform"),
}


def model_label(name: str) -> str:
    """``mnist2_pgd`` -> ``PGD``; ``mnist2_nodefense`` -> ``no defense``; others unchanged."""
    tail = name.rsplit("_", 1)[-1].lower()
    return {"nodefense": "no defense", "none": "no defense", "l0": "L0", "pgd": "PGD"}.get(tail, name)


def shipped_models(examples: Path) -> list[tuple[str, Path]]:
    """(name, ONNX path) of every model the examples manifest lists, in its order."""
    manifest = json.loads((examples / "manifest.json").read_text())
    names = manifest.get("models") or sorted(p.stem for p in (examples / "models").glob("*.onnx"))
    out = []
    for name in names:
        path = examples / "models" / f"{name}.onnx"
        if path.is_file():
            out.append((name, path))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def attack_check(network: Any, job: Job, eps: list[float], k: int, restarts: int, steps: int,
                 seed: int = 0) -> dict:
    """A strong PGD attack (``restarts`` x ``steps``) inside the neighborhood of ``eps``: the best margin found and
    whether a counterexample was confirmed."""
    nbhd = LayeredNeighborhood.build(job.pixels(), job.mask, network.sample_shape)
    box = nbhd.box(np.asarray(eps, dtype=np.float64))
    result = pgd(network, box, TopKProperty(int(job.target), int(k)), restarts=restarts, steps=steps, seed=seed,
                 stop_on_violation=True)
    best = result.best
    cex = result.counterexample
    return {"margin": None if best is None else float(best.margin), "broken": cex is not None,
            "restarts": restarts, "steps": steps, "seconds": result.seconds}


def run_reference(examples: Path, work: Path, *, n_images: int, methods: list[str], time_limit: float,
                  query_time_limit: float | None, delta: float | None, k: int = 2, workers: int = 1,
                  attack_restarts: int = 32, attack_steps: int = 100, models: list[str] | None = None,
                  log=print) -> dict:
    """Run the experiment; returns ``{"rows": [...], "violations": [...], "settings": {...}}``."""
    from mlrobust.batch.worker import ModelRef

    jobs = load_jobs(examples, limit=n_images)
    defaults = BatchSettings()  # the search defaults of mlrobust.maximize, where the suite sets none
    delta = defaults.delta if delta is None else delta
    query_time_limit = defaults.query_time_limit if query_time_limit is None else query_time_limit
    rows: list[dict] = []
    violations: list[dict] = []
    shipped = shipped_models(examples)
    if models:
        shipped = [(n, p) for n, p in shipped if n in models]
    for name, path in shipped:
        ref = ModelRef.from_file(path)
        network = ref.network()
        for key in methods:
            m = METHODS[key]
            settings = BatchSettings(k=k, method=m.method, cutting=m.cutting, time_limit=time_limit,
                                     query_time_limit=query_time_limit, delta=delta)
            out = work / f"{_slug(name)}__{key}.jsonl"
            log(f"reference: {name} / {key} on {len(jobs)} image(s) -> {out}")
            run = run_batch(ref, jobs, out, settings, workers=workers)
            by_id = {j.id: j for j in jobs}
            for line in run.lines:
                row: dict[str, Any] = {"model": name, "model_label": model_label(name), "method": key,
                                       "image": line["id"], "target": line["target"], "status": line["status"]}
                if line["status"] != "done":
                    row["error"] = line.get("error")
                    rows.append(row)
                    continue
                r = line["result"]
                st = r["statistics"]
                row.update(size=r["size"], epsilons=r["epsilons"], layer_counts=r["layer_counts"],
                           verified=r["verified"], proof_tier=r["proof_tier"], layers=len(r["epsilons"]),
                           certified_layers=r["certified_layers"],
                           maximality=_count(m_["status"] for m_ in r["maximality"]),
                           seconds=r["timings"]["total"], search_seconds=r["timings"]["search"],
                           queries=st["queries"], by_tier=st["by_tier"], verifier_calls=st["verifier_calls"],
                           milp_calls=st["milp_calls"], stop_reason=r["stop_reason"],
                           seconds_by_tier=st.get("seconds_by_tier", {}))
                check = attack_check(network, by_id[line["id"]], r["epsilons"], k, attack_restarts, attack_steps)
                row["attack"] = check
                if check["broken"] and r["verified"]:
                    violations.append({"kind": "attack broke a proven neighborhood", "model": name, "method": key,
                                       "image": line["id"], "size": r["size"], "attack_margin": check["margin"]})
                rows.append(row)
    return {"rows": rows, "violations": violations,
            "settings": {"images": [j.id for j in jobs], "methods": methods, "time_limit": time_limit,
                         "query_time_limit": query_time_limit, "delta": delta, "k": k, "workers": workers,
                         "attack": {"restarts": attack_restarts, "steps": attack_steps},
                         "models": [n for n, _ in shipped]}}


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# --- aggregates ---------------------------------------------------------------------------------------------------
def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (model, method): images, mean/median size, median time, mean calls, certified layers."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"]), []).append(r)
    out = []
    for (model, method), rs in groups.items():
        done = [r for r in rs if r["status"] == "done"]
        sizes = np.array([r["size"] for r in done]) if done else np.zeros(0)
        out.append({
            "model": model, "model_label": model_label(model), "method": method, "images": len(rs),
            "done": len(done), "verified": sum(1 for r in done if r["verified"]),
            "size_mean": float(sizes.mean()) if sizes.size else None,
            "size_median": float(np.median(sizes)) if sizes.size else None,
            "seconds_median": float(np.median([r["seconds"] for r in done])) if done else None,
            "verifier_calls_mean": float(np.mean([r["verifier_calls"] for r in done])) if done else None,
            "milp_calls_mean": float(np.mean([r["milp_calls"] for r in done])) if done else None,
            "certified_layers": sum(r["certified_layers"] for r in done),
            "layers": sum(r["layers"] for r in done),
            "attack_max_margin": max((r["attack"]["margin"] for r in done if r["attack"]["margin"] is not None),
                                     default=None),
        })
    return out


def cascade_rates(rows: list[dict]) -> list[dict]:
    """Per model, who answered the search's queries: caches (no verifier call), attack, bounds, MILP."""
    per: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["status"] != "done":
            continue
        acc = per.setdefault(r["model"], {})
        for tier, n in r["by_tier"].items():
            acc[tier] = acc.get(tier, 0) + int(n)
    out = []
    for model, tiers in per.items():
        total = sum(tiers.values())
        verifier = sum(n for t, n in tiers.items() if t in ("attack", "bounds", "milp"))
        out.append({"model": model, "model_label": model_label(model), "queries": total, "by_tier": tiers,
                    "verifier_calls": verifier,
                    "rates": ({t: tiers.get(t, 0) / verifier for t in ("attack", "bounds", "milp")}
                              if verifier else {}),
                    "answered_without_verifier": (total - verifier) / total if total else None})
    return out


def which_model(rows: list[dict], method: str) -> dict:
    """The answer to "which model yields the largest robust neighborhoods?" from the rows of ``method``: models
    ranked by mean size over the images every model finished, and per-image wins."""
    done = [r for r in rows if r["method"] == method and r["status"] == "done" and r["verified"]]
    models = sorted({r["model"] for r in done})
    by_image: dict[str, dict[str, float]] = {}
    for r in done:
        by_image.setdefault(r["image"], {})[r["model"]] = r["size"]
    common = sorted(i for i, d in by_image.items() if len(d) == len(models))
    if not models or not common:
        return {"method": method, "models": models, "images": 0, "ranking": [], "wins": {}}
    means = {m: float(np.mean([by_image[i][m] for i in common])) for m in models}
    wins = {m: 0 for m in models}
    for i in common:
        best = max(by_image[i].values())
        for m in models:
            if by_image[i][m] == best:
                wins[m] += 1
    ranking = sorted(models, key=lambda m: -means[m])
    return {"method": method, "models": models, "images": len(common), "ranking": ranking, "means": means,
            "wins": wins, "per_image": {i: by_image[i] for i in common}}
