"""The worker process: ``python -m lorashear.jobs DB JOB_ID [ATTEMPT]`` runs one job and records its outcome.

It runs in its own session (process group), started by ``launcher.launch``; its stdout/stderr are the job's
``log.txt``. SIGTERM (cancel) becomes a ``Cancelled`` exception so the job ends through the normal path.
Whatever happens, the registry ends with a final status: succeeded, failed (with the error), or cancelled.

Two safeguards make the registry's record hold even when messages are lost or a worker is wrongly given up on:

- **the outcome file**: before reporting its end, the job writes it to ``<job folder>/outcome.<attempt>.json``
  (atomically). A reaper that finds no heartbeat reads it before declaring the worker dead, so a success whose
  report was lost (a Redis restart, a database locked too long) is still recorded as a success.
- **the stop check**: every progress or metric report (the prune and recover loops report at every optimizer
  step) asks, at most once per ``STOP_CHECK_EVERY_S``, whether this attempt should stop — the job was cancelled,
  declared dead, or resumed as a newer attempt — and raises ``Cancelled`` if so. An attempt that was only cut off
  (a network partition, a stopped process) thus stops itself instead of writing the job folder beside its
  successor.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import LorashearError
from .registry import CANCELLED, FAILED, QUEUED, SUCCEEDED, Job, Registry


#: how often (at most) a running job asks whether it should stop
STOP_CHECK_EVERY_S = 1.0


class Cancelled(BaseException):
    """Raised inside the worker when the job is cancelled (SIGTERM, or its stop check); BaseException so
    library code's ``except Exception`` cannot swallow it."""


def outcome_path(workdir: str | Path, attempt: int) -> Path:
    return Path(workdir) / f"outcome.{int(attempt)}.json"


def write_outcome(workdir: str | Path, attempt: int, status: str, message: str | None = None,
                  result: dict[str, Any] | None = None, artifacts: dict[str, str] | None = None) -> None:
    """Write an attempt's final status into its job folder (temp file, then rename: never half a file).

    Best effort: a job folder that cannot be written must not turn a success into a failure; the registry
    report still goes out."""
    path = outcome_path(workdir, attempt)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"attempt": int(attempt), "status": status, "message": message,
                                   "result": result or {}, "artifacts": artifacts or {}, "t": time.time()}))
        os.replace(tmp, path)
    except OSError as exc:
        print(f"could not write {path}: {exc}", flush=True)


def read_outcome(workdir: str | Path, attempt: int) -> dict[str, Any] | None:
    """The outcome an attempt wrote into its job folder, or None (not written, unreadable, another attempt's)."""
    try:
        out = json.loads(outcome_path(workdir, attempt).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(out, dict) or out.get("attempt") != int(attempt) or out.get("status") not in (
            SUCCEEDED, FAILED, CANCELLED):
        return None
    return out


class JobContext:
    """What a job function gets besides its parameters: progress, metrics, log lines, its output folder."""

    def __init__(self, registry: Registry, job: Job):
        self.registry = registry
        self.job = job
        self.out_dir = job.out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume = job.attempts > 1
        self.attempt = job.attempts
        self._last_progress = 0.0
        self._last_stage: str | None = None
        self._last_check = time.monotonic()

    def check_stop(self, force: bool = False) -> None:
        """Raise ``Cancelled`` when this attempt should stop (cancelled, declared dead, superseded). Asks the
        registry at most once per ``STOP_CHECK_EVERY_S``; when the registry cannot be asked (locked database,
        unreachable Redis) the job goes on — it is stopped on evidence, never on silence."""
        now = time.monotonic()
        if not force and now - self._last_check < STOP_CHECK_EVERY_S:
            return
        self._last_check = now
        try:
            stop = self.registry.stopped(self.job.id, self.attempt)
        except Exception:
            return
        if stop:
            self.log(f"stopping: attempt {self.attempt} of job {self.job.id} was cancelled, declared dead or resumed")
            raise Cancelled()

    def progress(self, fraction: float, stage: str | None = None) -> None:
        """Report progress in [0, 1]; writes are throttled to 5/s except stage changes and completion."""
        self.check_stop()
        now = time.monotonic()
        if stage == self._last_stage and fraction < 1.0 and now - self._last_progress < 0.2:
            return
        self._last_progress, self._last_stage = now, stage
        self.registry.set_progress(self.job.id, fraction, stage, attempt=self.attempt)
        if stage:
            self.log(f"[{fraction * 100:5.1f}%] {stage}")

    def metric(self, step: int, **values: float) -> None:
        """Record metric values at a step (loss, group sparsity, per-source deviation ...)."""
        self.check_stop()
        self.registry.add_metrics(self.job.id, step, values, attempt=self.attempt)

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def resolve(entry: str) -> Callable[[dict[str, Any], JobContext], dict[str, Any] | None]:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def on_sigterm(signum, frame):  # noqa: ARG001
    raise Cancelled()


def end_attempt(registry: Registry, job: Job, status: str, message: str | None = None,
         result: dict[str, Any] | None = None, artifacts: dict[str, str] | None = None) -> None:
    """Record an attempt's end: first the outcome file in the job folder, then the registry (or its events)."""
    to_app = getattr(registry, "app_path", None)  # a pool worker reports the app's paths
    shown = {k: to_app(v) for k, v in artifacts.items()} if (to_app and artifacts) else artifacts
    write_outcome(job.workdir, job.attempts, status, message, result, shown)
    registry.finish(job.id, status, message, result=result, artifacts=artifacts, attempt=job.attempts)


def run_job(registry: Registry, job_id: int, attempt: int | None = None) -> int:
    """Run one job to a final status; returns the process exit code. With ``attempt`` (what the launcher
    numbered it), a process whose attempt is no longer the job's current one does nothing."""
    job = registry.get(job_id)
    if job.status != QUEUED:
        print(f"job {job_id} is {job.status}, not queued; nothing to do", flush=True)
        return 0
    if attempt is not None and job.attempts != attempt:
        print(f"job {job_id}: attempt {attempt} was superseded by attempt {job.attempts}; nothing to do", flush=True)
        return 0
    if not registry.mark_running(job_id, attempt=job.attempts):
        return 0
    job = registry.get(job_id)
    ctx = JobContext(registry, job)
    ctx.log(f"job {job_id} ({job.kind}) attempt {job.attempts} started in pid {os.getpid()} with {job.params}")
    try:
        ctx.progress(0.0, "starting")
        fn = resolve(job.entry)
        out = fn(dict(job.params), ctx) or {}
    except Cancelled:
        ctx.log("cancelled")
        end_attempt(registry, job, CANCELLED, "cancelled")
        return 130
    except LorashearError as exc:
        ctx.log(f"error: {exc}")
        end_attempt(registry, job, FAILED, str(exc))
        return 2
    except BaseException as exc:  # a bug: keep the traceback in the log, a one-line reason in the registry
        traceback.print_exc()
        sys.stderr.flush()
        end_attempt(registry, job, FAILED, f"{exc.__class__.__name__}: {exc}")
        return 1
    artifacts = {k: str(v) for k, v in (out.get("artifacts") or {}).items()}
    result = out.get("result") or {}
    end_attempt(registry, job, SUCCEEDED, None, result=result, artifacts=artifacts)
    ctx.log(f"finished: {result}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m lorashear.jobs REGISTRY_DB JOB_ID [ATTEMPT]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    registry = Registry(Path(args[0]))
    return run_job(registry, int(args[1]), int(args[2]) if len(args) == 3 else None)


if __name__ == "__main__":
    sys.exit(main())
