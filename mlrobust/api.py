"""The Python API: ``maximize`` (search the maximal robust layered neighborhood) and ``check`` (one given
neighborhood), from a model and an image given as files or objects.

Both accept a custom verifier (any object with ``name`` and ``verify(network, box, target, k, mode, time_limit)``)
or a solver backend (a name such as ``"highs"``, ``"cbc"``, ``"scip"``, ``"gurobi"``, or a backend object) for the
default verification cascade.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlrobust.errors import InputError, ModelLoadError
from mlrobust.ir.graph import Network
from mlrobust.memory import DEFAULT_MEMORY_LIMIT_MIB, memory_target_bytes
from mlrobust.neighborhood.image_io import fit_channels, load_image
from mlrobust.neighborhood.layout import ImageLayout, as_chw
from mlrobust.neighborhood.neighborhood import LayeredNeighborhood, WeightSpec, check_pixel_range
from mlrobust.neighborhood.objects import ObjectChoice, resolve_object
from mlrobust.search.optimizer import OptimizerOptions
from mlrobust.search.problem import Budget, SearchProblem, status_of
from mlrobust.search.progress import ProgressCallback
from mlrobust.search.result import CheckResult, Provenance, SearchResult, network_hash, sha256_array, sha256_file
from mlrobust.search.run import SearchOptions, run_search
from mlrobust.verify.base import Verifier
from mlrobust.verify.margin import topk_labels, topk_margin
from mlrobust.verify.spec import TopK

VERIFIERS = ("cascade", "milp", "bounds", "attack", "bab", "cascade-bab")


# --- inputs -----------------------------------------------------------------------------------------------------
def load_model(model: str | Path | Network) -> tuple[Network, str | None, str]:
    """A network from an ONNX path or a Network, with its path (or None) and a hash."""
    if isinstance(model, Network):
        return model, None, network_hash(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model file {str(path)!r} does not exist")
        from mlrobust.ir.onnx_import import load_onnx

        return load_onnx(path), str(path), sha256_file(path)
    raise InputError(f"model must be an ONNX file path or a mlrobust Network, not {type(model).__name__}")


def load_input_image(network: Network, image: str | Path | np.ndarray) -> tuple[np.ndarray, ImageLayout,
                                                                                str | None, str | None]:
    """The image as (C, H, W) in [0, 1] for ``network``, its layout, its path and file hash (None for arrays)."""
    if isinstance(image, (str, Path)):
        chw, layout = load_image(image, network.sample_shape)
        return chw, layout, str(image), sha256_file(image)
    try:
        arr = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"image must be a file path or an array, not {type(image).__name__}") from None
    sample = tuple(network.sample_shape)
    if arr.shape == sample:  # already in the model's own layout (flat, channels-last, ...)
        layout = ImageLayout.infer(sample)
        chw = layout.to_chw(arr)
    else:
        chw = as_chw(arr)
        layout = ImageLayout.infer(sample, image_hw=chw.shape[1:])
        if chw.shape[1:] != layout.hw:
            raise InputError(f"image is {chw.shape[2]}x{chw.shape[1]} pixels (W x H) but the model expects "
                             f"{layout.width}x{layout.height}")
        chw = fit_channels(chw, layout.channels)
    return check_pixel_range(chw), layout, None, None


def clean_prediction(network: Network, x: np.ndarray, target: int, k: int) -> tuple[float, list[int]]:
    """The clean image's top-k margin of ``target`` and the top-k labels; an error if the target is not among them."""
    TopK(int(target), int(k)).validate(network.num_classes)
    logits = network.logits(np.asarray(x)[None])
    margin = float(topk_margin(logits, target, k)[0])
    labels = topk_labels(logits, k)[0]
    if margin >= 0:
        scores = ", ".join(f"{c}: {logits[0, c]:.3g}" for c in topk_labels(logits, min(k + 1, logits.shape[1]))[0])
        raise InputError(f"label {target} is not among the top-{k} labels on the clean image: the network predicts "
                         f"{labels} (scores {scores}; label {target}: {logits[0, target]:.3g})")
    return margin, labels


def make_verifier(verifier: Verifier | str | None = None, solver: Any = "highs", device: str = "cpu") -> Verifier:
    """A verifier object: a given one as is, or one of ``VERIFIERS`` by name (default: the cascade) on ``solver``;
    ``device`` ("cpu" or "cuda") is where the branch and bound of "bab" and "cascade-bab" runs its α/β bounds."""
    if verifier is not None and not isinstance(verifier, str):
        if not callable(getattr(verifier, "verify", None)):
            raise InputError("a custom verifier needs a verify(network, box, target, k, mode, time_limit) method")
        return verifier
    name = verifier or "cascade"
    if name == "cascade":
        from mlrobust.verify.cascade import Cascade

        return Cascade(solver=solver)
    if name == "cascade-bab":
        from mlrobust.verify.bab import BabVerifier
        from mlrobust.verify.cascade import STALL_SHARE, Cascade

        return Cascade(solver=solver, use_bab=True, bab=BabVerifier(stall_share=STALL_SHARE, device=device))
    if name == "bab":
        from mlrobust.verify.bab import BabVerifier

        return BabVerifier(device=device)
    if name == "milp":
        from mlrobust.verify.milp_verifier import MilpVerifier

        return MilpVerifier(solver)
    if name == "bounds":
        from mlrobust.verify.bound_check import BoundCheck

        return BoundCheck()
    if name == "attack":
        from mlrobust.verify.attack import PgdAttack

        return PgdAttack()
    raise InputError(f"unknown verifier {name!r}; choose one of {', '.join(VERIFIERS)} or pass a verifier object")


@dataclass
class Prepared:
    """A loaded model, image, object and neighborhood, ready for a search or a check."""

    network: Network
    nbhd: LayeredNeighborhood
    choice: ObjectChoice
    clean_margin: float
    clean_topk: list[int]
    provenance: Provenance


def prepare(model: str | Path | Network, image: str | Path | np.ndarray, target: int, *, k: int = 2,
            object_mask: str | Path | np.ndarray | Sequence[np.ndarray] | None = None,
            object_box: Sequence[int] | str | None = None, object_label: int | None = None) -> Prepared:
    """Load and check everything a search needs; every problem with the inputs is an InputError here."""
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InputError(f"target must be a label index, got {target!r}")
    network, model_path, model_sha = load_model(model)
    chw, layout, image_path, image_sha = load_input_image(network, image)
    x = layout.to_sample(chw)
    clean_margin, clean_topk = clean_prediction(network, x, int(target), int(k))
    if isinstance(object_mask, (list, tuple)) and object_mask and not isinstance(object_mask[0], (int, float)):
        masks = [resolve_object(chw, mask=m).mask for m in object_mask]
        choice = ObjectChoice(np.logical_or.reduce(masks), object_label, "masks")
    else:
        one_mask = (object_mask if object_mask is None or isinstance(object_mask, (str, Path, np.ndarray))
                    else np.asarray(object_mask))  # a nested list of 0/1 rows
        choice = resolve_object(chw, mask=one_mask, box=object_box, logits_fn=network.logits, target=int(target),
                                object_label=object_label, sample_shape=network.sample_shape)
    nbhd = LayeredNeighborhood(chw, choice.mask, layout)
    prov = Provenance(model_path, model_sha, image_path, image_sha or sha256_array(chw), sha256_array(chw))
    return Prepared(network, nbhd, choice, clean_margin, clean_topk, prov)


# --- the two entry points -----------------------------------------------------------------------------------------
def maximize(model: str | Path | Network, image: str | Path | np.ndarray, target: int, *,
             object_mask: str | Path | np.ndarray | None = None, object_box: Sequence[int] | str | None = None,
             object_label: int | None = None, k: int = 2, weights: WeightSpec = "uniform",
             method: str = "boundary", cutting: str = "fixed", verifier: Verifier | str | None = None,
             solver: Any = "highs", time_limit: float | None = 300.0, query_time_limit: float | None = 30.0,
             max_queries: int | None = None, delta: float | None = None, certify: bool = True, grow: bool | None = None,
             init: str = "best", optimizer: OptimizerOptions | None = None, object_share: float = 0.5,
             progress: ProgressCallback | None = None, device: str = "cpu",
             workers: int | None = None, memory_limit_mib: float | None = DEFAULT_MEMORY_LIMIT_MIB) -> SearchResult:
    """The maximal robust layered neighborhood of ``target`` around the perturbed object.

    ``model``: ONNX path or Network. ``image``: a file or an array ((H, W), (C, H, W) or the model's input shape)
    in [0, 1]. The object: ``object_mask`` (file or (H, W) array, non-zero = object), ``object_box``
    (x0, y0, x1, y1), or found automatically (``object_label`` picks the object's label). ``method``:
    "boundary" (the default: along the CROWN certificate, then every layer pushed to its boundary between proven
    and refuted epsilons, see :mod:`mlrobust.search.boundary`), "optimize" (optimizer + CEGIS with ``cutting``
    "fixed" or "sensitivity"), "certificate" (along the CROWN
    certificate first, see :mod:`mlrobust.search.certificate`), "layer-search" or "uniform".
    ``verifier``: a Verifier object or "cascade" (default) / "milp" / "bounds" / "attack"; ``solver``: the MILP
    backend of the default verifiers. ``time_limit`` bounds the whole search, ``query_time_limit`` each verifier
    call, ``max_queries`` the calls that reach the verifier; ``delta`` is the tolerance of steps and maximality
    (None: an eighth of the uniform robust radius, within [1e-4, 1e-2]). ``object_share``: the object's epsilon
    keeps at least this share of the object's own robust radius (0: the weights alone decide). ``device``: where
    the branch and bound of "bab"/"cascade-bab" runs its α/β bounds ("cpu" or "cuda", see :func:`make_verifier`).
    ``workers``: processes that answer the search's independent queries together (None: $MLROBUST_WORKERS, else
    the cores this process may use; 1: every query in this process, no worker started; see
    :mod:`mlrobust.search.pool`). ``memory_limit_mib``: the resident memory (MiB) the search's process aims to stay
    within (None: no target): the branch and bound of the push, the part whose memory grows with its work, sizes
    its α/β rounds and caps its open domains from what the process holds, and gives up a query (Unknown) that
    would need more (see :mod:`mlrobust.verify.bab.memory`); the rest of the search is sized by the image.

    Ctrl-C (KeyboardInterrupt) during the search returns the largest vector proven so far, with
    ``result.interrupted`` set. Every layer's answer is two-sided: ``result.maximality[d].refuted_eps`` is the
    smallest epsilon of the layer at which a confirmed counterexample is known (with it), or None.
    """
    entered = time.perf_counter()
    from mlrobust.search.pool import QueryPool, check_workers, default_workers

    n_workers = default_workers() if workers is None else check_workers(workers, "workers")
    prep = prepare(model, image, target, k=k, object_mask=object_mask, object_box=object_box,
                   object_label=object_label)
    options = SearchOptions(method=method, cutting=cutting, delta=delta, certify=certify, grow=grow, init=init,
                            optimizer=optimizer or OptimizerOptions(), object_share=object_share,
                            memory_target=memory_target_bytes(memory_limit_mib))
    ver = make_verifier(verifier, solver, device=device)
    budget = Budget(time_limit=time_limit, max_queries=max_queries, query_time_limit=query_time_limit)
    from mlrobust.search.tiers import cheap_tiers

    problem = SearchProblem(prep.network, prep.nbhd, int(target), ver, k=int(k), weights=weights, budget=budget,
                            progress=progress, cheap=cheap_tiers(ver, attack=False))
    problem.start = entered  # the time limit counts from the call: loading the model and image is part of it
    # the workers start only when the search first has two independent queries, and never outlive the call
    with QueryPool(prep.network, n_workers) as pool:
        problem.pool = pool
        try:
            result = run_search(problem, options)
        finally:
            problem.pool = None
    result.object_source = prep.choice.source
    result.object_label = prep.choice.label
    result.provenance = prep.provenance
    return result


def check(model: str | Path | Network, image: str | Path | np.ndarray, target: int,
          eps: float | Sequence[float] | np.ndarray, *, object_mask: str | Path | np.ndarray | None = None,
          object_box: Sequence[int] | str | None = None, object_label: int | None = None, k: int = 2,
          weights: WeightSpec = "uniform", verifier: Verifier | str | None = None, solver: Any = "highs",
          time_limit: float | None = 300.0, device: str = "cpu") -> CheckResult:
    """Is the layered neighborhood ``eps`` (one epsilon for all layers, or one per layer 0..r) robust? ``device``:
    as in :func:`maximize`."""
    entered = time.perf_counter()
    prep = prepare(model, image, target, k=k, object_mask=object_mask, object_box=object_box,
                   object_label=object_label)
    nbhd = prep.nbhd
    eps_vec = nbhd.eps_vector(eps)
    ver = make_verifier(verifier, solver, device=device)
    problem = SearchProblem(prep.network, nbhd, int(target), ver, k=int(k), weights=weights,
                            budget=Budget(time_limit=time_limit, query_time_limit=time_limit))
    problem.start = entered  # the time limit counts from the call, loading included
    spent = time.perf_counter() - entered
    from mlrobust.search.deadline import TimeLimitReached, hard_stop
    from mlrobust.verify.verdict import Unknown

    try:
        # a verifier stage that overruns the limit is cut: the verdict is unknown
        with hard_stop(None if time_limit is None else time_limit - spent):
            verdict = problem.query(eps_vec, purpose="check")
    except TimeLimitReached:
        verdict = Unknown(tier="budget", reason=f"time limit ({time_limit:g} s) reached before a verdict")
    status = status_of(verdict)
    size = problem.size(eps_vec)
    return CheckResult(
        status=status, tier=verdict.tier, target=int(target), k=int(k), epsilons=eps_vec,
        weights=problem.weights, layer_counts=nbhd.counts.copy(), mask=np.asarray(nbhd.mask).copy(), size=size,
        seconds=dict(verdict.seconds), bound=getattr(verdict, "bound", None) if verdict.is_robust else None,
        counterexample=getattr(verdict, "counterexample", None), margin=getattr(verdict, "margin", None),
        reason=getattr(verdict, "reason", ""), clean_margin=prep.clean_margin, clean_topk=prep.clean_topk,
        verifier=getattr(ver, "name", type(ver).__name__), verdict=verdict, provenance=prep.provenance,
        image=np.asarray(nbhd.image).copy(), object_source=prep.choice.source, object_label=prep.choice.label)
