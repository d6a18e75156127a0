"""The Celery application: one task, ``lorashear.run_job``, that runs a registry job on a worker of the pool.

The task calls ``worker.run_job`` — the same function a local ``python -m lorashear.jobs`` process runs — with a
``queue.RemoteRegistry``, so every job kind runs unchanged wherever it runs. Messages are JSON only (pickle is
never accepted: a message must not be able to run code by being decoded). A worker only runs the entry points of
the built-in job kinds and those it was started with (``--allow-entry``): whoever can write to the broker cannot
make it import arbitrary modules.

Each job runs in a fresh pool process (``max_tasks_per_child=1``): GPU memory is given back when the job ends and
``revoke(terminate=True)`` signals exactly that job. The pool process gets SIGKILL when the worker's main process
dies (Celery sets PDEATHSIG), so a killed worker stops its jobs and their heartbeats stop with them.

Before running a message the task checks that its attempt is current, not flagged, and not claimed by another
worker (``queue.RemoteRegistry``): a message handed out twice, re-sent, or superseded by a resume is skipped.
The settings (JSON only, late acks, no reservations beyond the free slots) are ``queue.make_celery``'s; this
module imports ``queue``, never the other way round.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import LorashearError
from . import kinds as kinds_mod
from .queue import (FLUSH_FOR_S, HEARTBEAT_EVERY_S, QUEUE_NAME, TASK_NAME, RemoteRegistry, check_url, make_celery,
                    persistence_warning, ping, redact, redis_client)
from .registry import CANCELLED, FAILED

#: options of the worker this process belongs to; set before the pool forks, so pool processes inherit them
WORKER_OPTIONS: dict[str, Any] = {"runs": None, "allow": (), "gpus": ()}


def make_app(url: str):
    """The pool's Celery app (``queue.make_celery``) with its one task, for workers."""
    app = make_celery(url)

    @app.task(name=TASK_NAME, bind=True)
    def run_job_task(self, message: dict[str, Any]) -> int:  # noqa: ARG001
        return execute(message, app.conf.broker_url)

    return app


def allowed_entries() -> set[str]:
    """Entry points this worker runs: the built-in kinds' and the ones given with ``--allow-entry``."""
    return {k.entry for k in kinds_mod.BUILTIN.values() if k.entry} | set(WORKER_OPTIONS["allow"])


class _LogTo:
    """Send this process's stdout/stderr (file descriptors too, for subprocesses and C code) to the job's
    log.txt for the duration of the job, as a local worker process does."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "_LogTo":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2), sys.stdout, sys.stderr)
        os.dup2(self.fh.fileno(), 1)
        os.dup2(self.fh.fileno(), 2)
        sys.stdout = sys.stderr = self.fh
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.flush()
        out, err, sys.stdout, sys.stderr = self.saved
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        self.fh.close()


def execute(message: dict[str, Any], url: str) -> int:
    """Run one job from a task message; returns ``run_job``'s exit code. Never raises for a job's own failure:
    the outcome is reported to the app as events (and written into the job folder)."""
    from .worker import Cancelled, end_attempt, on_sigterm, run_job

    reg = RemoteRegistry(redis_client(url), message, WORKER_OPTIONS["runs"])
    job = reg._job
    try:
        skip = reg.cancelled()  # cancelled or declared dead before it started, or superseded by a resume
        holder = None if skip else reg.claim()
    except Exception as exc:  # Redis went away between handing out the message and now: give it back
        from celery.exceptions import Reject

        print(f"job {job.id} attempt {job.attempts}: Redis unreachable ({exc.__class__.__name__}); message requeued",
              flush=True)
        raise Reject(requeue=True) from None
    if skip:
        print(f"job {job.id} attempt {job.attempts}: cancelled or superseded; skipped", flush=True)
        return 0
    if holder is not None:  # another copy of this message runs (or ran) elsewhere
        print(f"job {job.id} attempt {job.attempts}: already taken by {holder}; skipped", flush=True)
        return 0
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                reg.beat()
            except Exception:  # never let the heartbeat thread die: the app would declare the job dead
                pass
            stop.wait(HEARTBEAT_EVERY_S)

    previous = signal.signal(signal.SIGTERM, on_sigterm)  # revoke(terminate=True) -> Cancelled -> "cancelled"
    beater = threading.Thread(target=beat, name="lorashear-heartbeat", daemon=True)
    reg.beat()
    beater.start()
    try:
        with _LogTo(Path(job.log_path)):
            if job.entry not in allowed_entries():
                end_attempt(reg, job, FAILED, f"worker {reg.worker} does not run {job.entry!r} (start it with "
                                       f"--allow-entry {job.entry})")
                return 2
            print(f"job {job.id} attempt {job.attempts} taken by Celery worker {reg.worker}"
                  + (f" (GPUs {os.environ.get('CUDA_VISIBLE_DEVICES')})" if WORKER_OPTIONS["gpus"] else ""), flush=True)
            try:
                return run_job(reg, job.id)
            except Cancelled:  # SIGTERM outside the job function (while reporting): still a cancel
                end_attempt(reg, job, CANCELLED, "cancelled")
                return 130
            finally:
                # deliver what Redis could not take yet, still beating (the app must not declare us dead)
                deadline = time.monotonic() + FLUSH_FOR_S
                while not reg.flush() and time.monotonic() < deadline:
                    time.sleep(HEARTBEAT_EVERY_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        beater.join(timeout=2)
        try:
            reg.stop_beating()
        except Exception:  # Redis away: the key expires by itself
            pass


def _pin_gpu(**_: Any) -> None:
    """Give each pool process one of ``--gpus`` (by its pool index), so N concurrent jobs use N GPUs."""
    gpus = WORKER_OPTIONS["gpus"]
    if not gpus:
        return
    from billiard.process import current_process

    index = getattr(current_process(), "index", 0) or 0
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])


def run_worker(url: str, concurrency: int | None = None, gpus: tuple[str, ...] = (), runs: str | None = None,
               allow: tuple[str, ...] = (), hostname: str | None = None, loglevel: str = "INFO") -> int:
    """Start a Celery worker on the pool's queue (blocks until it is stopped); returns its exit code."""
    from celery.signals import worker_process_init

    check_url(url)
    ping(url)  # a wrong host or password: one line now, not a reconnect loop
    warning = persistence_warning(url)
    if warning:
        print(f"lorashear worker: {warning}", file=sys.stderr, flush=True)
    if concurrency is not None and concurrency < 1:
        raise LorashearError(f"--concurrency must be >= 1, got {concurrency}")
    if runs is not None and not Path(runs).is_dir():
        raise LorashearError(f"--runs {runs} is not a folder")
    for entry in allow:
        if ":" not in entry:
            raise LorashearError(f"--allow-entry must be MODULE:FUNCTION, got {entry!r}")
    WORKER_OPTIONS.update(runs=str(Path(runs).resolve()) if runs else None, allow=tuple(allow), gpus=tuple(gpus))
    worker_process_init.connect(_pin_gpu, weak=False)
    app = make_app(url)
    n = concurrency or max(1, len(gpus))
    print(f"lorashear worker: {n} job slot(s) on {redact(url)} queue {QUEUE_NAME!r}"
          + (f", GPUs {','.join(gpus)}" if gpus else "") + (f", runs folder {runs}" if runs else ""), flush=True)
    worker = app.Worker(concurrency=n, queues=[QUEUE_NAME], pool="prefork", loglevel=loglevel,
                        hostname=hostname or f"lorashear@{os.uname().nodename}", max_tasks_per_child=1,
                        without_gossip=True, without_mingle=True)
    worker.start()
    return int(worker.exitcode or 0)


__all__ = ["make_app", "execute", "run_worker", "allowed_entries", "WORKER_OPTIONS"]
