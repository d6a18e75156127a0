"""Jobs on a Celery worker pool with a Redis broker: the app's side and the worker's side of the same job.

The SQLite registry stays on the app's machine and stays the record of every job. Nothing on a second machine
opens that file (SQLite in WAL mode must not be shared over a network filesystem), so what a remote job reports
travels through Redis, next to the Celery queue. What each piece guarantees, and why:

- **events** (``lorashear:<registry id>:stream``, a Redis Stream read by a consumer group): running, progress,
  metrics, finish. The app reads a batch, applies it to SQLite in one transaction, and acknowledges (and deletes)
  the entries only after the COMMIT; a batch whose transaction fails (a database locked past its busy timeout)
  stays pending and is read again. Delivery is therefore *at least once*, and applying is idempotent: status
  changes are conditional updates, a metric step written twice is replaced, and every event carries its attempt
  number, so events of a superseded attempt are dropped. A worker that cannot reach Redis keeps its events in
  memory and sends them, in order, when Redis is back.
- **outcome file** (``<job folder>/outcome.<attempt>.json``, written by the worker before its ``finish`` event):
  the reaper reads it before declaring a worker dead, so a lost ``finish`` event never turns a success into
  "worker died".
- **heartbeat** (``…:alive:<job id>``, refreshed every ``HEARTBEAT_EVERY_S`` with a sequence number, expiring
  after ``ALIVE_TTL_S``): a job is declared dead only on evidence — the reaper saw no new beat on at least
  three looks spanning ``dead_after_s`` (default ``DEAD_AFTER_S``, at least three beats). A Redis restart that
  wiped the key is not evidence: the worker's next beat brings it back.
- **claim** (``…:claim:<job id>:<attempt>``): the first worker to take an attempt's message claims it; a second
  copy of the message (a re-send, or one Redis hands out again) is skipped. The running worker re-asserts its
  claim with every beat (so a wiped Redis gets it back), and stops if another worker holds it.
- **sent marker** (``…:sent:<job id>``): set after the message is queued. A queued job whose marker is gone
  (Redis restarted without persistence) and that nobody heartbeats for is re-sent — same attempt, same task id;
  the claim makes a duplicate harmless.
- **cancel flag** (``…:cancel:<job id>``, holding the attempt it stops): set on cancel together with Celery's
  ``revoke(terminate=True)``, and when the app declares a job's worker dead. A worker that takes the message
  later skips it, and a running attempt polls it (``worker.JobContext.check_stop``) and stops itself.
- **current attempt** (``…:attempt:<job id>``): a worker runs a message only if it is the job's current attempt,
  so an old message of a resumed job never runs beside the new one.

Without Redis persistence (AOF) a Redis restart still loses the events not yet applied (metrics steps, progress)
and the Celery queue; the pieces above recover jobs and outcomes, not those steps: run Redis with
``--appendonly yes --appendfsync everysec`` (``docs/scale.md``; ``lorashear worker`` warns otherwise).

Log lines and artifacts are files in the job's folder under the runs folder, which must be the same folder on
every machine (a shared filesystem; ``lorashear worker --runs`` when it is mounted at another path).

The worker runs the job through ``worker.run_job`` — the very function a local worker process runs — with a
``RemoteRegistry`` in place of the SQLite one. This module does not import ``celery_app`` (which imports it):
the app's side only sends tasks by name.
"""
from __future__ import annotations

import collections
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
from .worker import read_outcome

#: Celery task name (the app sends it by name, so the app needs no task code)
TASK_NAME = "lorashear.run_job"
#: Celery queue the app sends to and workers consume
QUEUE_NAME = "lorashear"
#: how often the process running a job beats
HEARTBEAT_EVERY_S = 1.0
#: a heartbeat key expires this long after its last beat (Resume refuses while it exists)
ALIVE_TTL_S = 5.0
#: default window without a new beat after which a running job is declared dead ($LORASHEAR_DEAD_AFTER_S);
#: generous because a loaded machine can starve a beat for seconds
DEAD_AFTER_S = 30.0
#: how long a finished job's worker keeps trying to deliver its last events while Redis is unreachable
FLUSH_FOR_S = 60.0


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



def dead_after_default() -> float:
    """The death window: ``$LORASHEAR_DEAD_AFTER_S`` or ``DEAD_AFTER_S``; at least three beats."""
    raw = os.environ.get("LORASHEAR_DEAD_AFTER_S")
    try:
        value = float(raw) if raw else DEAD_AFTER_S
    except ValueError:
        raise LorashearError(f"LORASHEAR_DEAD_AFTER_S must be a number of seconds, got {raw!r}") from None
    return check_dead_after(value)


def check_dead_after(value: float) -> float:
    if value < 3 * HEARTBEAT_EVERY_S:
        raise LorashearError(f"the death window must span at least 3 heartbeats ({3 * HEARTBEAT_EVERY_S:g} s), "
                             f"got {value:g} s")
    return float(value)


def _keys(ns: str) -> dict[str, str]:
    base = f"lorashear:{ns}"
    return {"stream": f"{base}:stream", "alive": f"{base}:alive:", "cancel": f"{base}:cancel:",
            "attempt": f"{base}:attempt:", "claim": f"{base}:claim:", "sent": f"{base}:sent:"}


#: the consumer group (and its one consumer) through which the app reads the event stream
GROUP = "lorashear-app"
CONSUMER = "app"
#: how long flags, claims and attempt numbers are kept in Redis (longer than any job waits or runs)
FLAG_TTL_S = 30 * 24 * 3600


def make_celery(url: str):
    """A Celery app on the Redis broker at ``url`` with the pool's settings, and no tasks: what the app needs
    to send and revoke (``celery_app.make_app`` adds the task for workers).

    JSON only; no result backend (results travel as events). Acknowledged late, and a worker reserves no more
    messages than it has free slots — also after a reconnect (``worker_disable_prefetch``: Celery's own
    prefetch reduction is skipped on Redis after a connection restart, and a busy worker would then take a
    message an idle worker should get)."""
    try:
        from celery import Celery
    except ImportError as exc:
        raise LorashearError(f"the job queue needs the [queue] extra (pip install 'lorashear[queue]'): {exc}") from None
    check_url(url)
    app = Celery("lorashear", broker=url, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        event_serializer="json", task_ignore_result=True, task_default_queue=QUEUE_NAME,
        worker_prefetch_multiplier=1, worker_disable_prefetch=True, task_acks_late=True,
        task_reject_on_worker_lost=False, worker_max_tasks_per_child=1, worker_redirect_stdouts=False,
        worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
        # keep running jobs running when Redis restarts (their heartbeats and events survive it)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # > the longest job: a message is not handed out twice while its worker runs it (the claim would skip it)
        broker_transport_options={"visibility_timeout": 7 * 24 * 3600},
        worker_send_task_events=False, task_send_sent_event=False,
    )
    return app


def persistence_warning(url: str) -> str | None:
    """One line when the Redis at ``url`` would lose data on a restart (no append-only file, or one synced
    less than every second), else None. What ``lorashear worker`` prints at start-up."""
    import redis

    try:
        r = redis_client(url)
        info = r.info("persistence")
        fsync = None
        if info.get("aof_enabled"):
            try:
                fsync = r.config_get("appendfsync").get("appendfsync")
            except redis.exceptions.ResponseError:  # CONFIG renamed or disabled: trust the AOF
                fsync = None
    except (redis.exceptions.RedisError, OSError):
        return None  # ping() reports an unreachable Redis in its own words
    fix = "start it with --appendonly yes --appendfsync everysec (docs/scale.md)"
    if not info.get("aof_enabled"):
        return (f"warning: Redis at {redact(url)} has no append-only file: a restart loses queued jobs and "
                f"undelivered events; {fix}")
    if fsync == "no":
        return f"warning: Redis at {redact(url)} syncs its append-only file only when the OS does; {fix}"
    return None


# ============================================================================================ app side
class JobQueue:
    """The app's handle on the pool: send a job, revoke it, tell whether its worker is alive, drain what
    workers report into the registry, and reap: declare dead on evidence, re-send lost messages."""

    def __init__(self, url: str, runs_dir: str | Path | None = None, dead_after_s: float | None = None):
        self.url = check_url(url)
        self.runs_dir = Path(runs_dir).resolve() if runs_dir is not None else None
        self.dead_after_s = dead_after_default() if dead_after_s is None else check_dead_after(dead_after_s)
        self._redis = redis_client(url)
        self._celery = None
        self._drain_lock = threading.Lock()
        self._reap_lock = threading.Lock()
        #: (job, attempt, what) -> [last value seen, when it last changed, looks since]: the evidence of death
        self._watch: dict[tuple[int, int, str], list[Any]] = {}
        self._group_ready = False
        self._bridge: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:  # never the password
        return f"JobQueue({redact(self.url)})"

    @property
    def celery(self):
        if self._celery is None:
            self._celery = make_celery(self.url)
        return self._celery

    def ping(self) -> None:
        ping(self.url)

    # ------------------------------------------------------------------------------------------- send
    def _message(self, registry: Registry, job: Job) -> dict[str, Any]:
        return {
            "job": {"id": job.id, "kind": job.kind, "entry": job.entry, "params": job.params,
                    "workdir": job.workdir, "attempts": job.attempts, "resumable": job.resumable},
            "ns": registry.uid,
            "runs": str(Path(job.workdir).parent.parent),
        }

    def send(self, registry: Registry, job: Job) -> Job:
        """Put a queued job on the Celery queue (attempts + 1); the job stays queued until a worker starts it."""
        from celery.utils import uuid

        task_id = uuid()
        keys = _keys(registry.uid)
        if not registry.set_task(job.id, task_id):
            raise LorashearError(f"job {job.id} is no longer queued")
        job = registry.get(job.id)
        try:
            self._redis.delete(keys["cancel"] + str(job.id))
            self._redis.set(keys["attempt"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)
            self.celery.send_task(TASK_NAME, args=[self._message(registry, job)], task_id=task_id, queue=QUEUE_NAME)
            # after the message: a marker without its message would hide a lost message from the re-send
            self._redis.set(keys["sent"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)
        except Exception as exc:  # redis-py's and kombu's errors vary; the reason is one line, the URL redacted
            registry.finish(job.id, FAILED, f"could not queue the job on {redact(self.url)}: {exc.__class__.__name__}")
            raise LorashearError(f"could not queue job {job.id} on {redact(self.url)}: {exc.__class__.__name__}") from None
        registry.set_progress_queued(job.id, "waiting for a worker")
        return registry.get(job.id)

    def resend(self, registry: Registry, job: Job) -> None:
        """Queue a queued job's message again — same attempt, same task id — when Redis lost it. If the first
        copy still exists somewhere, whichever worker takes a copy first claims the attempt, the other skips."""
        keys = _keys(registry.uid)
        self._redis.set(keys["attempt"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)
        self.celery.send_task(TASK_NAME, args=[self._message(registry, job)], task_id=job.task_id, queue=QUEUE_NAME)
        self._redis.set(keys["sent"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)

    # ----------------------------------------------------------------------------------------- cancel
    def revoke(self, registry: Registry, job: Job) -> None:
        """Stop a job wherever it is: flag it (a worker that picks it up later skips it, a running attempt
        stops at its next step) and revoke the Celery task with terminate (SIGTERM ends the job as cancelled)."""
        self.flag_stopped(registry, job)
        if job.task_id:
            self.celery.control.revoke(job.task_id, terminate=True, signal="SIGTERM")

    def flag_stopped(self, registry: Registry, job: Job) -> None:
        """Make sure no worker (re)starts this attempt, and that a running one stops: the app declared it
        cancelled or dead."""
        self._redis.set(_keys(registry.uid)["cancel"] + str(job.id), str(job.attempts), ex=FLAG_TTL_S)

    # ------------------------------------------------------------------------------------------ alive
    def heartbeat(self, registry: Registry, job: Job) -> dict[str, Any] | None:
        """The live heartbeat (worker, attempt, seq) of the job's current attempt, or None when there is none
        (no beat for ``ALIVE_TTL_S``)."""
        raw = self._redis.get(_keys(registry.uid)["alive"] + str(job.id))
        if raw is None:
            return None
        beat = json.loads(raw)
        return beat if int(beat.get("attempt", -1)) == job.attempts else None

    def _unchanged_for(self, key: tuple[int, int, str], value: Any) -> float:
        """Seconds ``value`` has stayed the same for ``key``, by this app's clock, counting only once it was
        seen on at least three looks (a single look proves nothing); 0 while it changes."""
        now = time.monotonic()
        w = self._watch.get(key)
        if w is None or w[0] != value:
            self._watch[key] = [value, now, 1]
            return 0.0
        w[2] += 1
        return now - w[1] if w[2] >= 3 else 0.0

    # ------------------------------------------------------------------------------------------- reap
    def reap(self, registry: Registry) -> list[int]:
        """Apply what workers reported, then check every active job of the pool: a running job whose beats
        stopped for ``dead_after_s`` is failed ("worker died") unless its outcome file says how it ended; a
        queued job whose message Redis lost is re-sent; a queued job that beats is running (its "running"
        event was lost). Returns the ids declared dead. Redis unreachable: nothing is decided, and the
        evidence gathered so far is forgotten (a gap is not evidence)."""
        dead: list[int] = []
        with self._reap_lock:
            try:
                self.drain(registry)
                jobs = [j for st in (RUNNING, QUEUED) for j in registry.list(limit=100000, status=st)
                        if j.backend == "celery"]
                current = {(j.id, j.attempts) for j in jobs}
                self._watch = {k: v for k, v in self._watch.items() if k[:2] in current}
                for job in jobs:
                    if self._check(registry, job):
                        dead.append(job.id)
            except Exception:  # Redis (or the database) unreachable: decide nothing on no evidence
                self._watch.clear()
        return dead

    def _check(self, registry: Registry, job: Job) -> bool:
        keys = _keys(registry.uid)
        raw = self._redis.get(keys["alive"] + str(job.id))
        beat = json.loads(raw) if raw is not None else None
        if beat is not None and int(beat.get("attempt", -1)) != job.attempts:
            beat, raw = None, None
        if job.status == QUEUED:
            if beat is not None:  # it runs: its "running" event was lost (or is still on its way)
                registry.mark_running(job.id, worker=beat.get("worker"), attempt=job.attempts)
                return False
            sent = self._redis.get(keys["sent"] + str(job.id))
            missing = sent is None or int(sent) != job.attempts
            if missing and self._unchanged_for((job.id, job.attempts, "queued"), None) >= self.dead_after_s:
                self.resend(registry, job)
                self._watch.pop((job.id, job.attempts, "queued"), None)
            elif not missing:
                self._watch.pop((job.id, job.attempts, "queued"), None)
            return False
        silent = self._unchanged_for((job.id, job.attempts, "beat"), raw)
        if silent < self.dead_after_s:
            return False
        self.drain(registry)  # the worker reports its end before it stops beating: was it just that?
        now = registry.get(job.id)
        if not now.active or now.attempts != job.attempts:
            return False
        out = read_outcome(job.workdir, job.attempts)
        if out is not None:  # it ended and said so in its folder; the event was lost
            registry.finish(job.id, out["status"], out.get("message"), result=out.get("result"),
                            artifacts=out.get("artifacts"), attempt=job.attempts)
            return False
        where = f" {job.worker}" if job.worker else ""
        reason = f"worker{where} died (no heartbeat for {silent:.0f} s)" + (" (resumable)" if job.resumable else "")
        if registry.finish(job.id, FAILED, reason, attempt=job.attempts):
            self.flag_stopped(registry, job)  # should it be alive after all (a partition), it stops itself
            return True
        return False

    # ------------------------------------------------------------------------------------------ drain
    def _ensure_group(self, key: str) -> None:
        import redis

        try:
            self._redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, key: str, start: str, count: int) -> list[tuple[bytes, dict]]:
        import redis

        for _ in range(2):
            if not self._group_ready:
                self._ensure_group(key)
            try:
                got = self._redis.xreadgroup(GROUP, CONSUMER, {key: start}, count=count)
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._group_ready = False  # Redis restarted without persistence: the group is gone
                continue
            return got[0][1] if got else []
        return []

    def drain(self, registry: Registry, limit: int = 10000) -> int:
        """Apply the worker events pending now (at most ``limit``) to the registry; returns how many were applied.

        Each batch (up to 200 events) is one SQLite transaction, and is acknowledged in Redis only after its
        COMMIT: a batch that could not be committed stays pending and is read again first next time. Bounded
        by what is queued when it starts, so a caller (``reap`` in a page refresh) returns while busy jobs
        keep reporting."""
        key = _keys(registry.uid)["stream"]
        n = 0
        with self._drain_lock:
            todo = min(limit, int(self._redis.xlen(key)))
            start = "0"  # first what an earlier drain read but did not acknowledge
            while todo > 0:
                batch = self._read(key, start, min(200, todo))
                if not batch:
                    if start == "0":
                        start = ">"
                        continue
                    break
                todo -= len(batch)
                with registry.batch():
                    for _, fields in batch:
                        try:
                            apply_event(registry, json.loads(fields[b"e"]), self.runs_dir)
                        except (ValueError, KeyError, TypeError, LorashearError):
                            continue  # a malformed or stale event must not stop the others
                        n += 1
                ids = [i for i, _ in batch]
                pipe = self._redis.pipeline()
                pipe.xack(key, GROUP, *ids)
                pipe.xdel(key, *ids)
                pipe.execute()
        return n

    def start_bridge(self, registry: Registry, every_s: float = 0.2, reap_every_s: float = 1.0) -> None:
        """In a daemon thread: drain events (so the registry is current even when no job list is refreshed)
        and reap (so a dead worker is noticed, and a lost message re-sent, with no page open).

        It polls (a few cheap reads a second) instead of blocking on Redis, so it never holds the drain lock
        while waiting and a page can drain at any time: one lock, events applied in the order sent."""
        if self._bridge is not None:
            return

        def loop() -> None:
            last_reap = 0.0
            while not self._stop.is_set():
                try:
                    if time.monotonic() - last_reap >= reap_every_s:
                        last_reap = time.monotonic()
                        self.reap(registry)
                    if self.drain(registry) == 0:
                        self._stop.wait(every_s)
                except Exception:  # Redis restarting, database locked: try again shortly, the events wait
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
    """Apply one worker event to the registry; idempotent, and an event of a superseded attempt is dropped."""
    job_id = int(ev["job"])
    attempt = int(ev.get("attempt", -1))
    job = registry.get(job_id)
    if attempt != job.attempts:
        return
    kind = ev["type"]
    if kind == "running":
        registry.mark_running(job_id, worker=ev.get("worker"), started=ev.get("t"), attempt=attempt)
    elif kind == "progress":
        registry.set_progress(job_id, float(ev["fraction"]), ev.get("stage"), attempt=attempt)
    elif kind == "metrics":
        registry.add_metrics(job_id, int(ev["step"]), {k: float(v) for k, v in ev["values"].items()}, t=ev.get("t"),
                             attempt=attempt)
    elif kind == "finish":
        status = ev["status"]
        if status not in (SUCCEEDED, FAILED, CANCELLED):
            raise ValueError(status)
        registry.finish(job_id, status, ev.get("message"), result=ev.get("result"), artifacts=ev.get("artifacts"),
                        attempt=attempt)


# ========================================================================================= worker side
class RemoteRegistry:
    """What ``worker.run_job`` and ``JobContext`` need of a registry, for a job that came off the queue: reads
    come from the task message, writes become events in Redis (the app applies them to its SQLite file).

    Events go through an in-memory outbox, in order: when Redis is unreachable they wait there (the job goes
    on) and the heartbeat thread delivers them once it is back."""

    def __init__(self, redis, message: dict[str, Any], worker_runs: str | None = None):
        self._redis = redis
        j = message["job"]
        self.ns = message["ns"]
        self.keys = _keys(self.ns)
        self.app_runs = message["runs"]
        self.worker_runs = str(Path(worker_runs).resolve()) if worker_runs else self.app_runs
        self.attempt = int(j["attempts"])
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._token = f"{self.worker}#{os.urandom(4).hex()}"  # this copy of the message, whoever runs it
        self.path = f"redis-events:{self.ns}"
        self._job = Job(id=int(j["id"]), kind=j["kind"], entry=j["entry"], params=j["params"], status=QUEUED,
                        created=time.time(), workdir=self.local_path(j["workdir"]), resumable=bool(j.get("resumable")),
                        attempts=self.attempt)
        self._outbox: collections.deque[str] = collections.deque()
        self._out_lock = threading.Lock()
        self._healthy = True  # the last exchange with Redis worked
        self._seq = 0
        #: another worker holds this attempt's claim: this copy must stop
        self.claim_lost = False

    # paths: the app's runs folder <-> where the same shared folder is mounted here
    def local_path(self, app_path: str) -> str:
        return _swap_root(app_path, self.app_runs, self.worker_runs)

    def app_path(self, local_path: str) -> str:
        return _swap_root(local_path, self.worker_runs, self.app_runs)

    def cancelled(self) -> bool:
        """True when the app cancelled this attempt (or declared it dead), resumed it as a newer attempt, or
        another worker claimed it."""
        if self.claim_lost:
            return True
        jid = str(self._job.id)
        flag, current = self._redis.mget(self.keys["cancel"] + jid, self.keys["attempt"] + jid)
        if flag is not None and int(flag) >= self.attempt:
            return True
        return current is not None and int(current) != self.attempt

    def claim(self) -> str | None:
        """Claim this attempt for this process; returns None when claimed, else who holds it."""
        key = f"{self.keys['claim']}{self._job.id}:{self.attempt}"
        if self._redis.set(key, self._token, nx=True, ex=FLAG_TTL_S):
            return None
        holder = self._redis.get(key)
        holder = holder.decode() if isinstance(holder, bytes) else holder
        return None if holder == self._token else (holder or "another worker").split("#")[0]

    # --- events
    def _push(self, type_: str, **values: Any) -> None:
        ev = {"type": type_, "job": self._job.id, "attempt": self.attempt, "t": time.time(), **values}
        with self._out_lock:
            self._outbox.append(json.dumps(ev))
        if self._healthy:  # while Redis is away, only the heartbeat thread tries (the job must not wait on it)
            self.flush()

    def flush(self) -> bool:
        """Send the outbox, in order; True when it is empty. A send whose reply was lost may be sent again:
        the app applies events idempotently."""
        import redis

        with self._out_lock:
            try:
                while self._outbox:
                    self._redis.xadd(self.keys["stream"], {"e": self._outbox[0]})
                    self._outbox.popleft()
                self._healthy = True
                return True
            except (redis.exceptions.RedisError, OSError):
                self._healthy = False
                return False

    def stopped(self, job_id: int, attempt: int) -> bool:  # noqa: ARG002
        """``JobContext``'s stop check. While Redis is unreachable: no (a job is not stopped on silence)."""
        if self.claim_lost:
            return True
        if not self._healthy:
            return False
        return self.cancelled()

    # --- the registry interface used by run_job / JobContext
    def _cancelled_or_unknown(self) -> bool:
        """``cancelled()``, or False when Redis cannot be asked (this copy already holds the claim)."""
        try:
            return self.cancelled()
        except Exception:
            return False

    def get(self, job_id: int) -> Job:
        if self._job.status == QUEUED and self._cancelled_or_unknown():
            self._job.status = CANCELLED
        return self._job

    def mark_running(self, job_id: int, attempt: int | None = None, **_: Any) -> bool:
        if self._cancelled_or_unknown():
            return False
        self._job.status = RUNNING
        self._push("running", worker=self.worker)
        return True

    def set_progress(self, job_id: int, fraction: float, stage: str | None = None, **_: Any) -> bool:
        self._push("progress", fraction=float(fraction), stage=stage)
        return True

    def add_metrics(self, job_id: int, step: int, values: dict[str, float], **_: Any) -> None:
        self._push("metrics", step=int(step), values={k: float(v) for k, v in values.items()})

    def finish(self, job_id: int, status: str, message: str | None = None, result: dict[str, Any] | None = None,
               artifacts: dict[str, str] | None = None, **_: Any) -> bool:
        if self._job.status not in ACTIVE:
            return False
        self._job.status = status
        arts = {k: self.app_path(str(v)) for k, v in (artifacts or {}).items()} if artifacts is not None else None
        self._push("finish", status=status, message=message, result=result, artifacts=arts)
        return True

    # --- heartbeat
    def beat(self) -> None:
        """Beat (a new sequence number each time: the app looks for change), re-assert the claim (a Redis
        that lost it gets it back; one that another worker holds means this copy must stop), and deliver
        waiting events."""
        import redis

        self._seq += 1
        key = f"{self.keys['claim']}{self._job.id}:{self.attempt}"
        try:
            pipe = self._redis.pipeline()
            pipe.set(self.keys["alive"] + str(self._job.id),
                     json.dumps({"worker": self.worker, "attempt": self.attempt, "seq": self._seq}),
                     px=int(ALIVE_TTL_S * 1000))
            pipe.set(key, self._token, nx=True, ex=FLAG_TTL_S)
            pipe.get(key)
            _, _, holder = pipe.execute()
        except (redis.exceptions.RedisError, OSError):
            self._healthy = False
            return
        holder = holder.decode() if isinstance(holder, bytes) else holder
        if holder is not None and holder != self._token:
            self.claim_lost = True
        self.flush()

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


__all__ = ["JobQueue", "RemoteRegistry", "apply_event", "check_url", "ping", "redact", "make_celery",
           "persistence_warning", "TASK_NAME", "QUEUE_NAME", "HEARTBEAT_EVERY_S", "ALIVE_TTL_S", "DEAD_AFTER_S"]
