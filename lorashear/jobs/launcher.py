"""Start, cancel, resume and watch worker processes; detect workers that died.

Every job is a separate ``python -m lorashear.jobs`` process in its own session, so the app (or any
caller) never runs model code itself, a crash in a job cannot take the app down, and cancel can signal the
whole process group (a job's own subprocesses included). The pid and its start time are stored in the
registry, so after an app restart a job whose worker is gone is recognised and marked failed, and a cancel
still reaches a worker started by an earlier app process.

When the registry has a queue (``Registry.queue``, a ``queue.JobQueue``: ``lorashear app --queue``), the same
calls send the job to a Celery worker pool instead, and cancel / dead-worker detection / resume go through
Celery's revoke and the job's Redis heartbeat (``JobQueue.reap``). Callers (the app's views, the CLI) do not change.

Death is declared on evidence only: a local worker whose process is gone (same pid and start time), or a pool
worker that did not beat for the queue's window; in both cases the job's outcome file is read first, so a job
that ended but whose report was lost is recorded as it ended. ``start_reaper`` runs ``reap`` on a timer, so this
happens with no page open.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ..errors import LorashearError
from . import kinds as kinds_mod
from .registry import ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, Job, Registry
from .worker import read_outcome

# Children started by this process, kept so they can be reaped (no zombies) and waited on.
_CHILDREN: dict[int, subprocess.Popen] = {}
_LOCK = threading.Lock()

#: a queued job with no worker pid after this long was never started (the launcher died mid-submit)
NEVER_STARTED_AFTER_S = 60.0


def _process_created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def worker_alive(job: Job) -> bool:
    """True while the job's worker process exists (same pid *and* same start time, not a zombie)."""
    _poll_children()
    if job.pid is None:
        return False
    try:
        proc = psutil.Process(job.pid)
        if job.pid_created is not None and abs(proc.create_time() - job.pid_created) > 0.5:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _poll_children() -> None:
    with _LOCK:
        for pid, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                del _CHILDREN[pid]


def launch(registry: Registry, job: Job, env: dict[str, str] | None = None) -> subprocess.Popen | Job:
    """Start the worker for a queued job; its output goes to the job's log.txt. With a queue on the registry,
    send it to the worker pool instead (returns the updated job)."""
    if registry.queue is not None:
        return registry.queue.send(registry, job)
    Path(job.workdir).mkdir(parents=True, exist_ok=True)
    attempt = registry.begin_local_attempt(job.id)  # numbered before the process exists: it is told its attempt
    if attempt is None:
        raise LorashearError(f"job {job.id} is no longer queued")
    log = open(job.log_path, "ab", buffering=0)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lorashear.jobs", str(registry.path.resolve()), str(job.id), str(attempt)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env,
            start_new_session=True, cwd=os.getcwd(),
        )
    finally:
        log.close()
    with _LOCK:
        _CHILDREN[proc.pid] = proc
    registry.record_process(job.id, proc.pid, _process_created(proc.pid), attempt)
    return proc


def submit(registry: Registry, kind: str, params: dict[str, Any], runs_dir: str | Path,
           kinds: dict[str, kinds_mod.JobKind] | None = None, env: dict[str, str] | None = None) -> Job:
    """Validate, record and start a job. Raises ``JobParamError`` (per-field messages) on bad parameters
    and ``LorashearError`` when the kind cannot run yet."""
    spec = kinds_mod.get(kind, kinds)
    ok, why = spec.availability()
    if not ok:
        raise LorashearError(f"{spec.label}: {why}")
    clean = kinds_mod.validate(spec, params)
    job = registry.create(spec.name, spec.entry or "", clean, runs_dir, resumable=spec.resumable)
    launch(registry, job, env=env)
    return registry.get(job.id)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own session: pgid == pid
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def cancel(registry: Registry, job_id: int, grace_s: float = 5.0) -> bool:
    """Cancel an active job: mark it cancelled, SIGTERM its process group, SIGKILL after ``grace_s``.

    Returns False if the job was not active. On return the worker process is gone."""
    job = registry.get(job_id)
    if not job.active:
        return False
    if job.backend == "celery":
        return _cancel_queued(registry, job, grace_s)
    alive = worker_alive(job)
    registry.finish(job_id, CANCELLED, "cancelled by user")
    if not alive or job.pid is None:
        return True
    _signal_group(job.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not worker_alive(job):
            break
        time.sleep(0.05)
    else:
        _signal_group(job.pid, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while worker_alive(job) and time.monotonic() < end:
            time.sleep(0.05)
    _poll_children()
    return True


def _cancel_queued(registry: Registry, job: Job, grace_s: float) -> bool:
    """Cancel a job of the worker pool: mark it cancelled, flag it and revoke its task with terminate; wait up
    to ``grace_s`` for the process running it to stop beating."""
    if registry.queue is None:
        raise LorashearError(f"job {job.id} runs on a worker pool: start the app with --queue to cancel it")
    registry.finish(job.id, CANCELLED, "cancelled by user")
    try:
        registry.queue.revoke(registry, job)
        deadline = time.monotonic() + grace_s
        while job.status == RUNNING and time.monotonic() < deadline:
            if registry.queue.heartbeat(registry, job) is None:
                break
            time.sleep(0.05)
        registry.queue.drain(registry)
    except Exception as exc:  # Redis unreachable: the job is cancelled here, the worker was not told
        from .queue import redact

        raise LorashearError(f"job {job.id} is marked cancelled, but the worker pool at {redact(registry.queue.url)} "
                             f"could not be told ({exc.__class__.__name__}): its worker may still be running it") from None
    return True


def reap(registry: Registry) -> list[int]:
    """Mark active jobs whose worker is gone as failed (or as their outcome file says they ended); returns
    the ids declared dead. Cheap enough to call on every refresh of a job list and on a timer. With a queue,
    the pool's jobs are checked by ``JobQueue.reap`` (events drained first)."""
    dead = []
    now = time.time()
    if registry.queue is not None:
        dead.extend(registry.queue.reap(registry))
    for job in registry.list(limit=100000, status=RUNNING) + registry.list(limit=100000, status=QUEUED):
        if job.backend == "celery":
            continue
        if job.pid is None:
            if job.status == QUEUED and now - job.created < NEVER_STARTED_AFTER_S:
                continue
            reason = "worker never started"
        elif worker_alive(job):
            continue
        else:
            out = read_outcome(job.workdir, job.attempts) if job.attempts else None
            if out is not None:  # it ended, but its last registry write did not land
                registry.finish(job.id, out["status"], out.get("message"), result=out.get("result"),
                                artifacts=out.get("artifacts"), attempt=job.attempts)
                continue
            reason = f"worker process {job.pid} died"
            if job.resumable:
                reason += " (resumable)"
        if registry.finish(job.id, FAILED, reason, attempt=job.attempts):
            dead.append(job.id)
    return dead


class Reaper:
    """``reap`` every ``every_s`` seconds in a daemon thread (``start_reaper``); ``stop()`` ends it."""

    def __init__(self, registry: Registry, every_s: float):
        self.registry, self.every_s = registry, every_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="lorashear-reaper", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            _poll_children()  # collect finished worker processes, so none stays a zombie until the next launch
            try:
                reap(self.registry)
            except Exception:  # a locked database, Redis away: the next tick tries again
                pass

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


def start_reaper(registry: Registry, every_s: float = 2.0) -> Reaper:
    """Run ``reap`` on a timer for this registry (once per registry: a second call returns the first reaper),
    so a job whose worker died is marked failed even when nobody looks at the job list. The app calls it at
    start-up; with a queue, the queue's bridge thread also reaps the pool's jobs every second."""
    with _LOCK:
        existing = getattr(registry, "_reaper", None)
        if existing is not None and existing.thread.is_alive():
            return existing
        reaper = Reaper(registry, every_s)
        registry._reaper = reaper
        reaper.thread.start()
        return reaper


def _still_running(registry: Registry, job: Job) -> str | None:
    """Where the job's last attempt still runs (it heartbeats, or its local process exists), else None."""
    if job.backend == "celery":
        if registry.queue is None:
            raise LorashearError(f"job {job.id} ran on a worker pool: start the app with --queue to resume it")
        try:
            beat = registry.queue.heartbeat(registry, job)
        except Exception as exc:
            from .queue import redact

            raise LorashearError(f"cannot tell whether job {job.id}'s last attempt still runs: the worker pool at "
                                 f"{redact(registry.queue.url)} is unreachable ({exc.__class__.__name__})") from None
        return None if beat is None else str(beat.get("worker") or "a worker")
    return f"process {job.pid}" if job.pid is not None and worker_alive(job) else None


def resume(registry: Registry, job_id: int, env: dict[str, str] | None = None) -> Job:
    """Restart a failed or cancelled job of a resumable kind in its own work directory. Refused while its
    last attempt still runs (a worker declared dead that was only cut off): two attempts must never write the
    same folder at once."""
    job = registry.get(job_id)
    if not job.resumable:
        raise LorashearError(f"{job.kind} jobs cannot be resumed; submit a new one")
    if not job.active:
        where = _still_running(registry, job)
        if where is not None:
            raise LorashearError(f"job {job_id}: attempt {job.attempts} still runs on {where} (it has been told to "
                                 "stop and will at its next step); resume once it has stopped")
    if job.active or not registry.requeue(job_id):
        raise LorashearError(f"job {job_id} is {job.status}; only failed or cancelled jobs can be resumed")
    launch(registry, registry.get(job_id), env=env)
    return registry.get(job_id)


def wait(registry: Registry, job_id: int, timeout_s: float = 600.0, poll_s: float = 0.1) -> Job:
    """Block until the job is final (reaping a dead worker on the way); raises on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = registry.get(job_id)
        if not job.active:
            return job
        if job.backend == "celery":
            reap(registry)
            if not registry.get(job_id).active:
                continue
        elif job.status == RUNNING or job.pid is not None:
            if not worker_alive(job):
                reap(registry)
                continue
        if time.monotonic() > deadline:
            raise LorashearError(f"job {job_id} still {job.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


__all__ = ["launch", "submit", "cancel", "reap", "resume", "wait", "worker_alive", "start_reaper", "Reaper", "ACTIVE"]
