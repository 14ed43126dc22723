"""Run many jobs and write their lines: in this process, in a pool of local processes, or on a Dask cluster.

The calling process is the only writer of the results file: workers return lines, the runner appends each one as
soon as it arrives (:mod:`mlrobust.batch.store`). Jobs whose line is already in the file are skipped, so an
interrupted run continues where it stopped. Dask is used only as a client of an existing scheduler
(``dask.distributed.Client(address)``); mlrobust runs no scheduler of its own.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mlrobust.batch.dataset import Job
from mlrobust.batch.store import ResultStore, StoreState
from mlrobust.batch.worker import BatchSettings, ModelRef, init_process, run_job
from mlrobust.errors import InputError, MlrobustError

#: Called after every written line with (line, lines written in this run, jobs to run in this run).
LineCallback = Callable[[dict, int, int], None]


@dataclass
class BatchRun:
    """What a run did: jobs in the data set, skipped (already finished), written now, and every line of the file."""

    out: Path
    total: int
    skipped: int
    written: int
    lines: list[dict]
    wall_seconds: float
    executor: str
    truncated_bytes: int = 0
    unreadable: int = 0
    interrupted: bool = False
    new_ids: list[str] = field(default_factory=list)


def plan(jobs: list[Job], state: StoreState, fingerprint: str, retry_errors: bool = False) -> list[Job]:
    """The jobs still to run. A finished line written with other settings or another model is an error: mixing
    two configurations in one file would make its summary meaningless."""
    ids = {j.id for j in jobs}
    foreign = [i for i, line in state.lines.items() if i in ids and line.get("config") != fingerprint]
    if foreign:
        raise InputError(f"the results file already holds {len(foreign)} line(s) (e.g. {foreign[0]!r}) written "
                         "with another model or other settings; use another --out file (or delete it) to start "
                         "afresh")
    done = state.finished(retry_errors)
    return [j for j in jobs if j.id not in done]


# --- executors: each yields finished lines as they arrive ---------------------------------------------------------
def _serial(model: ModelRef, jobs: list[Job], settings: BatchSettings, fp: str) -> Iterator[dict]:
    for job in jobs:
        yield run_job(model, job, settings, fp)


def _processes(model: ModelRef, jobs: list[Job], settings: BatchSettings, fp: str, workers: int) -> Iterator[dict]:
    # spawn, not fork: a forked child inherits torch's and BLAS's thread pools in whatever state they are in
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_process)
    pending: set[Future] = set()
    queue = iter(jobs)
    try:
        # Keep at most two jobs per worker in flight: an interrupt then loses little queued work.
        for job in queue:
            pending.add(pool.submit(run_job, model, job, settings, fp))
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                for job in queue:
                    pending.add(pool.submit(run_job, model, job, settings, fp))
                    break
                try:
                    line = fut.result()
                except BrokenProcessPool:
                    raise MlrobustError("a worker process died (out of memory?); the lines written so far are "
                                        "kept: run the same command again to resume") from None
                yield line
    finally:
        # On an interrupt or an error, do not wait for searches whose lines would not be written anyway.
        pool.shutdown(wait=not pending, cancel_futures=True)


def _dask(model: ModelRef, jobs: list[Job], settings: BatchSettings, fp: str, address: str,
          connect_timeout: float) -> Iterator[dict]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MlrobustError("--dask needs Dask's distributed scheduler client: pip install 'mlrobust[dask]' "
                            "(or: pip install 'dask[distributed]')") from None
    try:
        client = Client(address, timeout=f"{connect_timeout}s")
    except (OSError, TimeoutError) as exc:
        raise MlrobustError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    try:
        # The model goes to every worker once; jobs refer to it.
        model_future = client.scatter(model, broadcast=True)
        futures = [client.submit(run_job, model_future, job, settings, fp, key=f"mlrobust-{fp}-{job.id}",
                                 pure=False) for job in jobs]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            client.cancel([f for f in futures if not f.done()])
    finally:
        client.close()


def run_batch(model: str | Path | ModelRef, jobs: list[Job], out: str | Path, settings: BatchSettings | None = None,
              *, workers: int = 1, dask_address: str | None = None, dask_timeout: float = 20.0,
              retry_errors: bool = False,
              on_start: Callable[[int, int], None] | None = None, on_line: LineCallback | None = None) -> BatchRun:
    """Run every job of ``jobs`` that ``out`` does not already hold, appending one line per job.

    ``workers`` > 1 runs local processes; ``dask_address`` submits to that Dask scheduler instead (waiting at
    most ``dask_timeout`` seconds to connect). ``on_start``
    gets (jobs in total, jobs to run); ``on_line`` is called after each line is written. An interrupt (Ctrl-C)
    stops the run after the lines already written; running the same command again resumes it.
    """
    settings = (settings or BatchSettings()).validate()
    ref = model if isinstance(model, ModelRef) else ModelRef.from_file(model)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    ref.network()  # a model that cannot be loaded is one clear error before any job
    fp = settings.fingerprint(ref.sha256)
    store = ResultStore(out)
    state = store.read(repair=True)
    todo = plan(jobs, state, fp, retry_errors)
    if on_start is not None:
        on_start(len(jobs), len(todo))
    start = time.perf_counter()
    if dask_address:
        stream: Iterable[dict] = _dask(ref, todo, settings, fp, dask_address, dask_timeout)
        executor = f"dask ({dask_address})"
    elif workers > 1 and len(todo) > 1:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # inherited by the spawned workers before they import numpy
        stream = _processes(ref, todo, settings, fp, workers)
        executor = f"{workers} local processes"
    else:
        stream = _serial(ref, todo, settings, fp)
        executor = "this process"
    written: list[str] = []
    interrupted = False
    try:
        for line in stream:
            store.append(line)
            written.append(line["id"])
            state.lines[line["id"]] = line
            if on_line is not None:
                on_line(line, len(written), len(todo))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    ids = [j.id for j in jobs]
    lines = [state.lines[i] for i in ids if i in state.lines]
    return BatchRun(Path(out), len(jobs), len(jobs) - len(todo), len(written), lines, time.perf_counter() - start,
                    executor, state.truncated_bytes, state.unreadable, interrupted, written)
