"""What a worker does with one job: load the model (once per process), search the maximal robust neighborhood
with :func:`mlrobust.maximize`, and return the job's JSON line as a dict.

Everything here is picklable and self-contained (the model travels as ONNX bytes with its hash), so the same
function runs in the calling process, in a local process pool, or on a Dask worker on another machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlrobust.batch.dataset import Job
from mlrobust.batch.store import SCHEMA
from mlrobust.errors import InputError, MlrobustError
from mlrobust.jsonvalues import jsonable

_NETWORKS: dict[str, Any] = {}  # model sha256 -> Network, per worker process


@dataclass(frozen=True)
class ModelRef:
    """An ONNX model as bytes, with its file name and SHA-256 (the worker's cache key)."""

    name: str
    sha256: str
    data: bytes

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelRef":
        p = Path(path)
        if not p.is_file():
            from mlrobust.errors import ModelLoadError

            raise ModelLoadError(f"model file {str(p)!r} does not exist")
        data = p.read_bytes()
        return cls(str(p), hashlib.sha256(data).hexdigest(), data)

    def network(self):
        """The loaded network (parsed once per process)."""
        net = _NETWORKS.get(self.sha256)
        if net is None:
            import onnx
            from google.protobuf.message import DecodeError

            from mlrobust.errors import ModelLoadError
            from mlrobust.ir.onnx_import import load_onnx

            try:
                proto = onnx.load_from_string(self.data)
            except (DecodeError, ValueError) as exc:
                raise ModelLoadError(f"{self.name}: not an ONNX file ({exc})") from None
            net = load_onnx(proto)
            net.source = self.name
            _NETWORKS[self.sha256] = net
        return net


def _maximize_defaults() -> dict[str, Any]:
    """The defaults of :func:`mlrobust.maximize`, so a batch searches exactly as ``mlrobust verify`` does."""
    import inspect

    from mlrobust.api import maximize

    return {name: p.default for name, p in inspect.signature(maximize).parameters.items()
            if p.default is not inspect.Parameter.empty}


_D = _maximize_defaults()


@dataclass(frozen=True)
class BatchSettings:
    """The search settings of a batch run (one per run; they are part of its fingerprint). Defaults are those of
    :func:`mlrobust.maximize`."""

    k: int = _D["k"]
    method: str = _D["method"]
    cutting: str = _D["cutting"]
    weights: str = _D["weights"]
    solver: str = _D["solver"]
    verifier: str = "cascade"
    time_limit: float | None = _D["time_limit"]
    query_time_limit: float | None = _D["query_time_limit"]
    max_queries: int | None = _D["max_queries"]
    delta: float | None = _D["delta"]  # None: automatic
    certify: bool = _D["certify"]
    # Resident memory (MiB) each image's search aims to stay within (each worker process runs one image at a time).
    # A resource, like the number of workers: not part of the fingerprint, so a run resumed with another limit keeps
    # its lines (the limit can only turn a branch-and-bound query Unknown, never change a proven answer).
    memory_limit_mib: float | None = _D["memory_limit_mib"]

    def validate(self) -> "BatchSettings":
        """Fail before any job runs on settings every job would reject."""
        from mlrobust.api import VERIFIERS
        from mlrobust.search.cegis import CUTTINGS
        from mlrobust.search.run import METHODS

        if self.method not in METHODS:
            raise InputError(f"unknown search method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.cutting not in CUTTINGS:
            raise InputError(f"unknown cutting weights {self.cutting!r}; choose one of {', '.join(CUTTINGS)}")
        if self.verifier not in VERIFIERS:
            raise InputError(f"unknown verifier {self.verifier!r}; choose one of {', '.join(VERIFIERS)}")
        if self.k < 1:
            raise InputError(f"k must be at least 1, got {self.k}")
        from mlrobust.memory import memory_target_bytes

        memory_target_bytes(self.memory_limit_mib, "--memory-limit")
        from mlrobust.backends.registry import get_backend

        get_backend(self.solver)  # a missing solver is one clear error now, not one per image
        return self

    def fingerprint(self, model_sha256: str) -> str:
        """12 hex digits naming the model and the settings: lines of another configuration are not resumed."""
        question = asdict(self)
        question.pop("memory_limit_mib")  # a resource, not part of the question (see the field)
        text = json.dumps({"model": model_sha256, **question}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]



def result_record(result: Any) -> dict:
    """The compact JSON of a search result for a batch line: no counterexample images, no mask rows (the job's
    source names the mask; its pixel count and hash stay), no improvement trace; of the search's details only the
    uniform radius it probed first (``baseline``, where the automatic tolerance measured it)."""
    data = result.to_json(with_counterexamples=False)
    obj = data.get("object", {})
    mask = np.asarray(obj.pop("mask", []), dtype=np.uint8)
    if mask.size:
        obj["mask_sha256"] = hashlib.sha256(np.packbits(mask.astype(bool)).tobytes()).hexdigest()
    data.pop("trace", None)
    details = data.pop("details", None) or {}
    # the uniform radius the search probed first (proven on the cheap bound tiers): the report's baseline
    radius = details.get("delta_auto", {}).get("uniform_radius")
    if radius is not None:
        data["baseline"] = {"uniform_radius": radius}
    return data


def run_job(model: ModelRef, job: Job, settings: BatchSettings, fingerprint: str) -> dict:
    """Search one image and return its line (status ``done``, or ``error`` with the message on bad input)."""
    from mlrobust.api import maximize

    start = time.perf_counter()
    record: dict[str, Any] = {"schema": SCHEMA, "id": job.id, "config": fingerprint, "target": int(job.target),
                              "source": job.source}
    k = settings.k if job.k is None else int(job.k)  # an image that names its own top-k (its object count) keeps it
    if job.k is not None:
        record["k"] = k
    try:
        network = model.network()
        result = maximize(network, job.pixels(), int(job.target), object_mask=np.asarray(job.mask, dtype=bool),
                          k=k, weights=settings.weights, method=settings.method, cutting=settings.cutting,
                          verifier=settings.verifier, solver=settings.solver, time_limit=settings.time_limit,
                          query_time_limit=settings.query_time_limit, max_queries=settings.max_queries,
                          delta=settings.delta, certify=settings.certify,
                          memory_limit_mib=settings.memory_limit_mib,
                          workers=1)  # the batch's own processes are the parallelism: none inside a job
        if getattr(result, "interrupted", False):
            # Ctrl-C reached the search, which stops with what it had proven; in a batch that is not this image's
            # answer but the run's end: no line (a resumed run searches the image again), and the runner says 130.
            raise KeyboardInterrupt
        data = result_record(result)
        data["model"] = {"path": model.name, "sha256": model.sha256}
        record.update(status="done", result=data)
    except MlrobustError as exc:  # bad input for this image (target not in the top-k, ...): recorded, not retried
        record.update(status="error", error={"type": type(exc).__name__, "message": str(exc)})
    except Exception as exc:  # a bug must not stop the other images; the line keeps the traceback to report it
        record.update(status="error", error={"type": type(exc).__name__, "message": str(exc),
                                             "traceback": traceback.format_exc(limit=8)})
    record["seconds"] = time.perf_counter() - start
    record["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return jsonable(record)


def init_process(threads: int = 1) -> None:
    """Pool initializer: one BLAS and torch thread per worker process (the processes are the parallelism)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
