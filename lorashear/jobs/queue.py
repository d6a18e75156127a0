"""Jobs on a Celery worker pool with a Redis broker: the app's side and the worker's side of the same job.

The SQLite registry stays on the app's machine and stays the record of every job. Nothing on a second machine
opens that file (SQLite in WAL mode must not be shared over a network filesystem), so what a remote job reports
travels through Redis, next to the Celery queue, as JSON:

- **events** (``lorashear:<registry id>:events``, a list): running, progress, metrics, finish. The app drains
  the list into SQLite (a bridge thread, and every ``reap``), through the same conditional updates a local
  worker uses, so a late event can never resurrect a cancelled or failed job. Events carry the attempt number:
  an event of an earlier attempt of a resumed job is dropped.
- **heartbeat** (``…:alive:<job id>``, a key with a 30 s expiry, refreshed every second by the process that runs
  the job): a missing key while the registry says running means the worker died (SIGKILL, OOM killer, machine
  lost); ``reap`` marks the job failed with that reason within seconds.
- **cancel flag** (``…:cancel:<job id>``): set on cancel together with Celery's ``revoke(terminate=True)``, and
  when the app declares a job's worker dead, so a message still in the queue — or one Redis hands out again after
  its worker died — is skipped by whichever worker takes it;
- **current attempt** (``…:attempt:<job id>``): a worker runs a message only if it is the job's current attempt,
  so an old message of a resumed job never runs beside the new one.

Log lines and artifacts are files in the job's folder under the runs folder, which must be the same folder on
every machine (a shared filesystem; ``lorashear worker --runs`` when it is mounted at another path). See
``docs/scale.md``.

The worker runs the job through ``worker.run_job`` — the very function a local worker process runs — with a
``RemoteRegistry`` in place of the SQLite one.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import LorashearError
from .registry import ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, Registry

#: Celery task name (the app sends it by name, so the app needs no task code)
TASK_NAME = "lorashear.run_job"
#: Celery queue the app sends to and workers consume
QUEUE_NAME = "lorashear"
#: a running job whose heartbeat key is older than this is declared dead
HEARTBEAT_TTL_S = 30.0  # a loaded 2-core machine starved a 10 s beat in tests
HEARTBEAT_EVERY_S = 1.0


def redact(url: str) -> str:
    """The URL with its password (and user) replaced by ``***``: the only form of a queue URL that is ever
    printed, logged, stored or shown on a page."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> str:
    """Validate a queue URL (``redis://[:password@]host:port/db`` or ``rediss://``); one-line error otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LorashearError(f"bad queue URL {redact(url)}: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise LorashearError(f"queue URL must start with redis:// or rediss://, got {redact(url)}")
    if not parts.hostname:
        raise LorashearError(f"queue URL has no host: {redact(url)}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise LorashearError(f"queue URL database must be a number (redis://HOST:PORT/DB), got {redact(url)}")
    del port
    return url


def redis_client(url: str, timeout_s: float = 5.0):
    """A redis-py client for ``url`` that fails fast (the default would wait forever on a dead host)."""
    try:
        import redis
    except ImportError as exc:
        raise LorashearError(f"the job queue needs the [queue] extra (pip install 'lorashear[queue]'): {exc}") from None
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                health_check_interval=30)


def ping(url: str, timeout_s: float = 5.0) -> None:
    """Raise a one-line ``LorashearError`` (password redacted) when Redis at ``url`` cannot be reached."""
    import redis

    try:
        redis_client(url, timeout_s).ping()
    except redis.exceptions.AuthenticationError:
        raise LorashearError(f"Redis at {redact(url)} refused the password") from None
    except redis.exceptions.ResponseError as exc:
        msg = str(exc)
        if "NOAUTH" in msg or "AUTH" in msg:
            raise LorashearError(f"Redis at {redact(url)} needs a password (redis://:PASSWORD@HOST:PORT/DB)") from None
        raise LorashearError(f"Redis at {redact(url)}: {msg}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise LorashearError(f"cannot reach Redis at {redact(url)}: {exc.__class__.__name__}") from None


def _keys(ns: str) -> dict[str, str]:
    base = f"lorashear:{ns}"
    return {"events": f"{base}:events", "alive": f"{base}:alive:", "cancel": f"{base}:cancel:",
            "attempt": f"{base}:attempt:"}

#: how long flags and attempt numbers are kept in Redis (longer than any job waits or runs)
FLAG_TTL_S = 30 * 24 * 3600


# ============================================================================================ app side
class JobQueue:
    """The app's handle on the pool: send a job, revoke it, tell whether its worker is alive, and drain what
    workers report into the registry."""

    def __init__(self, url: str, runs_dir: str | Path | None = None):
        self.url = check_url(url)
        self.runs_dir = Path(runs_dir).resolve() if runs_dir is not None else None
        self._redis = redis_client(url)
        self._celery = None
        self._drain_lock = threading.Lock()
        self._bridge: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:  # never the password
        return f"JobQueue({redact(self.url)})"

    @property
    def celery(self):
        if self._celery is None:
            from .celery_app import make_app

            self._celery = make_app(self.url)
        return self._celery

    def ping(self) -> None:
        ping(self.url)

    # ------------------------------------------------------------------------------------------- send
    def send(self, registry: Registry, job: Job) -> Job:
        """Put a queued job on the Celery queue (attempts + 1); the job stays queued until a worker starts it."""
        from celery.utils import uuid

        task_id = uuid()
        keys = _keys(registry.uid)
        if not registry.set_task(job.id, task_id):
            raise LorashearError(f"job {job.id} is no longer queued")
        job = registry.get(job.id)
        message = {
            "job": {"id": job.id, "kind": job.kind, "entry": job.entry, "params": job.params,
                    "workdir": job.workdir, "attempts": job.attempts, "resumable": job.resumable},
            "ns": registry.uid,
            "runs": str(Path(job.workdir).parent.parent),
        }
        try:
            self._redis.delete(keys["cancel"] + str(job.id))
            self._redis.set(keys["attempt"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)
            self.celery.send_task(TASK_NAME, args=[message], task_id=task_id, queue=QUEUE_NAME)
        except Exception as exc:  # redis-py's and kombu's errors vary; the reason is one line, the URL redacted
            registry.finish(job.id, FAILED, f"could not queue the job on {redact(self.url)}: {exc.__class__.__name__}")
            raise LorashearError(f"could not queue job {job.id} on {redact(self.url)}: {exc.__class__.__name__}") from None
        registry.set_progress_queued(job.id, "waiting for a worker")
        return registry.get(job.id)

    # ----------------------------------------------------------------------------------------- cancel
    def revoke(self, registry: Registry, job: Job) -> None:
        """Stop a job wherever it is: flag it (a worker that picks it up later skips it) and revoke the Celery
        task with terminate (the process running it gets SIGTERM, which ends the job as cancelled)."""
        self.flag_stopped(registry, job)
        if job.task_id:
            self.celery.control.revoke(job.task_id, terminate=True, signal="SIGTERM")

    def flag_stopped(self, registry: Registry, job: Job) -> None:
        """Make sure no worker (re)starts this attempt: the app has declared it cancelled or dead."""
        self._redis.set(_keys(registry.uid)["cancel"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)

    # ------------------------------------------------------------------------------------------ alive
    def heartbeat(self, registry: Registry, job: Job) -> dict[str, Any] | None:
        """The job's live heartbeat (worker, pid, attempt) or None when its worker stopped beating."""
        raw = self._redis.get(_keys(registry.uid)["alive"] + str(job.id))
        if raw is None:
            return None
        beat = json.loads(raw)
        return beat if int(beat.get("attempt", -1)) == job.attempts else None

    # ------------------------------------------------------------------------------------------ drain
    def drain(self, registry: Registry, limit: int = 10000) -> int:
        """Apply the worker events pending now (at most ``limit``) to the registry; returns how many were applied.

        Bounded by what is queued when it starts, so a caller (``reap`` in a page refresh) returns even while
        busy jobs keep reporting; each LPOP batch is one SQLite transaction."""
        key = _keys(registry.uid)["events"]
        n = 0
        with self._drain_lock:
            todo = min(limit, int(self._redis.llen(key)))
            while todo > 0:
                batch = self._redis.lpop(key, min(200, todo))
                if not batch:
                    break
                todo -= len(batch)
                with registry.batch():
                    for raw in batch:
                        try:
                            apply_event(registry, json.loads(raw), self.runs_dir)
                        except (ValueError, KeyError, LorashearError):
                            continue  # a malformed or stale event must not stop the others
                        n += 1
        return n

    def start_bridge(self, registry: Registry, every_s: float = 0.2) -> None:
        """Drain events in a daemon thread, so the registry is current even when no job list is refreshed.

        It polls (a few cheap LPOPs a second) instead of blocking on Redis, so it never holds the drain lock
        while waiting and ``reap`` can drain at any time: one lock, events applied in the order sent."""
        if self._bridge is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    if self.drain(registry) == 0:
                        self._stop.wait(every_s)
                except Exception:  # Redis restarting: try again shortly, the events wait in the list
                    self._stop.wait(1.0)

        self._bridge = threading.Thread(target=loop, name="lorashear-queue-bridge", daemon=True)
        self._bridge.start()

    def stop_bridge(self) -> None:
        self._stop.set()
        if self._bridge is not None:
            self._bridge.join(timeout=3)
        self._bridge = None
        self._stop = threading.Event()


def apply_event(registry: Registry, ev: dict[str, Any], app_runs: Path | None = None) -> None:
    """Apply one worker event to the registry (ignoring events of an earlier attempt)."""
    job_id = int(ev["job"])
    job = registry.get(job_id)
    if int(ev.get("attempt", -1)) != job.attempts:
        return
    kind = ev["type"]
    if kind == "running":
        registry.mark_running(job_id, worker=ev.get("worker"), started=ev.get("t"))
    elif kind == "progress":
        registry.set_progress(job_id, float(ev["fraction"]), ev.get("stage"))
    elif kind == "metrics":
        registry.add_metrics(job_id, int(ev["step"]), {k: float(v) for k, v in ev["values"].items()}, t=ev.get("t"))
    elif kind == "finish":
        status = ev["status"]
        if status not in (SUCCEEDED, FAILED, CANCELLED):
            raise ValueError(status)
        registry.finish(job_id, status, ev.get("message"), result=ev.get("result"), artifacts=ev.get("artifacts"))


# ========================================================================================= worker side
class RemoteRegistry:
    """What ``worker.run_job`` and ``JobContext`` need of a registry, for a job that came off the queue: reads
    come from the task message, writes become events in Redis (the app applies them to its SQLite file)."""

    def __init__(self, redis, message: dict[str, Any], worker_runs: str | None = None):
        self._redis = redis
        j = message["job"]
        self.ns = message["ns"]
        self.keys = _keys(self.ns)
        self.app_runs = message["runs"]
        self.worker_runs = str(Path(worker_runs).resolve()) if worker_runs else self.app_runs
        self.attempt = int(j["attempts"])
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.path = f"redis-events:{self.ns}"
        self._job = Job(id=int(j["id"]), kind=j["kind"], entry=j["entry"], params=j["params"], status=QUEUED,
                        created=time.time(), workdir=self.local_path(j["workdir"]), resumable=bool(j.get("resumable")),
                        attempts=self.attempt)

    # paths: the app's runs folder <-> where the same shared folder is mounted here
    def local_path(self, app_path: str) -> str:
        return _swap_root(app_path, self.app_runs, self.worker_runs)

    def app_path(self, local_path: str) -> str:
        return _swap_root(local_path, self.worker_runs, self.app_runs)

    def cancelled(self) -> bool:
        """True when the app cancelled this job (or declared it dead), or resumed it as a newer attempt."""
        jid = str(self._job.id)
        if self._redis.exists(self.keys["cancel"] + jid):
            return True
        current = self._redis.get(self.keys["attempt"] + jid)
        return current is not None and int(current) != self.attempt

    def _push(self, type_: str, **values: Any) -> None:
        ev = {"type": type_, "job": self._job.id, "attempt": self.attempt, "t": time.time(), **values}
        self._redis.rpush(self.keys["events"], json.dumps(ev))

    # --- the registry interface used by run_job / JobContext
    def get(self, job_id: int) -> Job:
        if self._job.status == QUEUED and self.cancelled():
            self._job.status = CANCELLED
        return self._job

    def mark_running(self, job_id: int) -> bool:
        if self.cancelled():
            return False
        self._job.status = RUNNING
        self._push("running", worker=self.worker)
        return True

    def set_progress(self, job_id: int, fraction: float, stage: str | None = None) -> bool:
        self._push("progress", fraction=float(fraction), stage=stage)
        return True

    def add_metrics(self, job_id: int, step: int, values: dict[str, float]) -> None:
        self._push("metrics", step=int(step), values={k: float(v) for k, v in values.items()})

    def finish(self, job_id: int, status: str, message: str | None = None, result: dict[str, Any] | None = None,
               artifacts: dict[str, str] | None = None) -> bool:
        if self._job.status not in ACTIVE:
            return False
        self._job.status = status
        arts = {k: self.app_path(str(v)) for k, v in (artifacts or {}).items()} if artifacts is not None else None
        self._push("finish", status=status, message=message, result=result, artifacts=arts)
        return True

    # --- heartbeat
    def beat(self) -> None:
        self._redis.set(self.keys["alive"] + str(self._job.id),
                        json.dumps({"worker": self.worker, "attempt": self.attempt}), px=int(HEARTBEAT_TTL_S * 1000))

    def stop_beating(self) -> None:
        self._redis.delete(self.keys["alive"] + str(self._job.id))


def _swap_root(path: str, old_root: str, new_root: str) -> str:
    if old_root == new_root:
        return path
    try:
        rel = Path(path).relative_to(old_root)
    except ValueError:
        return path
    return str(Path(new_root) / rel)


__all__ = ["JobQueue", "RemoteRegistry", "apply_event", "check_url", "ping", "redact", "TASK_NAME", "QUEUE_NAME",
           "HEARTBEAT_TTL_S"]
