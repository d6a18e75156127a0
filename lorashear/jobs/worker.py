"""The worker process: ``python -m lorashear.jobs DB JOB_ID`` runs one job and records its outcome.

It runs in its own session (process group), started by ``launcher.launch``; its stdout/stderr are the job's
``log.txt``. SIGTERM (cancel) becomes a ``Cancelled`` exception so the job ends through the normal path.
Whatever happens, the registry ends with a final status: succeeded, failed (with the error), or cancelled.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import LorashearError
from .registry import CANCELLED, FAILED, QUEUED, SUCCEEDED, Job, Registry


class Cancelled(BaseException):
    """Raised inside the worker when the job is cancelled (SIGTERM); BaseException so library code's
    ``except Exception`` cannot swallow it."""


class JobContext:
    """What a job function gets besides its parameters: progress, metrics, log lines, its output folder."""

    def __init__(self, registry: Registry, job: Job):
        self.registry = registry
        self.job = job
        self.out_dir = job.out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume = job.attempts > 1
        self._last_progress = 0.0
        self._last_stage: str | None = None

    def progress(self, fraction: float, stage: str | None = None) -> None:
        """Report progress in [0, 1]; writes are throttled to 5/s except stage changes and completion."""
        now = time.monotonic()
        if stage == self._last_stage and fraction < 1.0 and now - self._last_progress < 0.2:
            return
        self._last_progress, self._last_stage = now, stage
        self.registry.set_progress(self.job.id, fraction, stage)
        if stage:
            self.log(f"[{fraction * 100:5.1f}%] {stage}")

    def metric(self, step: int, **values: float) -> None:
        """Record metric values at a step (loss, group sparsity, per-source deviation ...)."""
        self.registry.add_metrics(self.job.id, step, values)

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def resolve(entry: str) -> Callable[[dict[str, Any], JobContext], dict[str, Any] | None]:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Cancelled()


def run_job(registry: Registry, job_id: int) -> int:
    """Run one job to a final status; returns the process exit code."""
    job = registry.get(job_id)
    if job.status != QUEUED:
        print(f"job {job_id} is {job.status}, not queued; nothing to do", flush=True)
        return 0
    if not registry.mark_running(job_id):
        return 0
    ctx = JobContext(registry, registry.get(job_id))
    ctx.log(f"job {job_id} ({job.kind}) started in pid {os.getpid()} with {job.params}")
    ctx.progress(0.0, "starting")
    try:
        fn = resolve(job.entry)
        out = fn(dict(job.params), ctx) or {}
    except Cancelled:
        ctx.log("cancelled")
        registry.finish(job_id, CANCELLED, "cancelled")
        return 130
    except LorashearError as exc:
        ctx.log(f"error: {exc}")
        registry.finish(job_id, FAILED, str(exc))
        return 2
    except BaseException as exc:  # a bug: keep the traceback in the log, a one-line reason in the registry
        traceback.print_exc()
        sys.stderr.flush()
        registry.finish(job_id, FAILED, f"{exc.__class__.__name__}: {exc}")
        return 1
    artifacts = {k: str(v) for k, v in (out.get("artifacts") or {}).items()}
    result = out.get("result") or {}
    registry.finish(job_id, SUCCEEDED, None, result=result, artifacts=artifacts)
    ctx.log(f"finished: {result}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lorashear.jobs REGISTRY_DB JOB_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    registry = Registry(Path(args[0]))
    return run_job(registry, int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
