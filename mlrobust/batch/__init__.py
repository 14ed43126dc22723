"""Batch runs: the maximal robust neighborhood of every image of a data set, one resumable JSON line per image,
in this process, in local worker processes, or on an existing Dask cluster."""

from mlrobust.batch.dataset import SIDE_RULES, Job, load_jobs
from mlrobust.batch.runner import BatchRun, run_batch
from mlrobust.batch.store import ResultStore, StoreState
from mlrobust.batch.summary import BatchSummary, render_summary, summarize
from mlrobust.batch.worker import BatchSettings, ModelRef, run_job

__all__ = ["Job", "load_jobs", "SIDE_RULES", "BatchSettings", "ModelRef", "run_job", "run_batch", "BatchRun",
           "ResultStore", "StoreState", "BatchSummary", "summarize", "render_summary"]
