"""SQLite job registry: the one place that remembers every job, across app restarts.

The Dash app and every worker process open the same database file. Each call opens its own short-lived
connection (WAL mode, busy timeout), so the threaded Dash server and several workers can write at once
without sharing a connection object; ``batch()`` lets one thread apply many writes in one transaction (one
fsync instead of one per write: what keeps draining a worker pool's events cheap). Status changes are conditional
updates (``... WHERE status IN``), so a late write from a worker can never resurrect a job that was already
cancelled or declared dead; writes that name an attempt are also fenced on it (``... AND attempts = ?``), so a
superseded attempt that is still running cannot touch the current one.

Metrics are keyed by (job, name, step): writing a step again replaces it, which is what makes replayed events
harmless (the worker pool delivers them at least once), and the first metric of a resumed attempt at step *s*
drops what earlier attempts recorded from *s* on, so a step never appears twice.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import LorashearError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINAL = (SUCCEEDED, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    entry TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    pid_created REAL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    message TEXT,
    workdir TEXT NOT NULL DEFAULT '',
    artifacts TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    resumable INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS metrics (
    job_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# columns added after the first release: (name, SQL type and default); added to older files on open
_ADDED_COLUMNS = (
    ("backend", "TEXT NOT NULL DEFAULT 'local'"),  # local (a worker process here) or celery (a worker pool)
    ("task_id", "TEXT"),  # the Celery task id of the current attempt
    ("worker", "TEXT"),  # host:pid of the process running it (celery jobs)
)

#: seconds a write waits for another writer's lock before failing (SQLite's busy timeout)
BUSY_TIMEOUT_S = 30.0


@dataclass
class Job:
    """One row of the registry, decoded."""

    id: int
    kind: str
    entry: str
    params: dict[str, Any]
    status: str
    created: float
    started: float | None = None
    finished: float | None = None
    pid: int | None = None
    pid_created: float | None = None
    progress: float = 0.0
    stage: str = ""
    message: str | None = None
    workdir: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    resumable: bool = False
    attempts: int = 0
    backend: str = "local"
    task_id: str | None = None
    worker: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def log_path(self) -> Path:
        return Path(self.workdir) / "log.txt"

    @property
    def out_dir(self) -> Path:
        return Path(self.workdir) / "out"

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


def _row_to_job(row: sqlite3.Row) -> Job:
    d = dict(row)
    for key in ("params", "artifacts", "result"):
        d[key] = json.loads(d[key])
    d["resumable"] = bool(d["resumable"])
    return Job(**d)


class Registry:
    """Jobs and their metrics in one SQLite file (created on first use)."""

    def __init__(self, path: str | Path, queue: Any = None, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: a ``queue.JobQueue`` when jobs go to a Celery worker pool, None for local worker processes
        self.queue = queue
        self._local = threading.local()  # this thread's open batch connection, if any
        with self._connect() as con:
            con.executescript(_SCHEMA)
            have = {r["name"] for r in con.execute("PRAGMA table_info(jobs)")}
            for name, decl in _ADDED_COLUMNS:
                if name not in have:
                    try:
                        con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
                    except sqlite3.OperationalError:  # another process added it first
                        pass
            _migrate_metrics(con)
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('uid', ?)", (secrets.token_hex(8),))
            self.uid: str = con.execute("SELECT value FROM meta WHERE key='uid'").fetchone()["value"]

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run this thread's registry reads and writes inside one transaction, committed at the end (rolled
        back if the block raises). Other threads and processes keep their own connections."""
        if getattr(self._local, "con", None) is not None:  # nested: the outer batch commits
            yield
            return
        with self._open() as con:
            con.execute("BEGIN IMMEDIATE")
            self._local.con = con
            try:
                yield
            except BaseException:
                con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")
            finally:
                self._local.con = None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        held = getattr(self._local, "con", None)
        if held is not None:
            yield held
            return
        with self._open() as con:
            yield con

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            con.execute("PRAGMA journal_mode=WAL")
            yield con
        finally:
            con.close()

    # ------------------------------------------------------------------------------------------ create
    def create(self, kind: str, entry: str, params: dict[str, Any], runs_dir: str | Path,
               resumable: bool = False) -> Job:
        """Insert a queued job and give it its own work directory ``runs_dir/jobs/<id>``."""
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO jobs (kind, entry, params, status, created, resumable) VALUES (?,?,?,?,?,?)",
                (kind, entry, json.dumps(params, sort_keys=True), QUEUED, time.time(), int(resumable)),
            )
            job_id = int(cur.lastrowid)
            workdir = Path(runs_dir).resolve() / "jobs" / str(job_id)
            workdir.mkdir(parents=True, exist_ok=True)
            con.execute("UPDATE jobs SET workdir=? WHERE id=?", (str(workdir), job_id))
        return self.get(job_id)

    # ------------------------------------------------------------------------------------------- read
    def get(self, job_id: int) -> Job:
        with self._connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        if row is None:
            raise LorashearError(f"no job {job_id} in {self.path}")
        return _row_to_job(row)

    def list(self, limit: int = 500, kind: str | None = None, status: str | None = None) -> list[Job]:
        """Newest first."""
        sql, args = "SELECT * FROM jobs", []
        where = []
        if kind:
            where.append("kind=?")
            args.append(kind)
        if status:
            where.append("status=?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        with self._connect() as con:
            return [_row_to_job(r) for r in con.execute(sql, args).fetchall()]

    def metrics(self, job_id: int) -> dict[str, list[tuple[int, float]]]:
        """``name -> [(step, value), ...]`` in step order."""
        out: dict[str, list[tuple[int, float]]] = {}
        with self._connect() as con:
            for r in con.execute("SELECT name, step, value FROM metrics WHERE job_id=? ORDER BY name, step",
                                 (int(job_id),)):
                out.setdefault(r["name"], []).append((int(r["step"]), float(r["value"])))
        return out

    # ------------------------------------------------------------------------------------------ write
    def _update(self, job_id: int, where_status: tuple[str, ...] | None, _attempt: int | None = None,
                **values: Any) -> bool:
        cols = ", ".join(f"{k}=?" for k in values)
        args = [json.dumps(v, sort_keys=True) if k in ("artifacts", "result", "params") else v
                for k, v in values.items()]
        sql = f"UPDATE jobs SET {cols} WHERE id=?"
        args.append(int(job_id))
        if where_status:
            sql += f" AND status IN ({','.join('?' * len(where_status))})"
            args.extend(where_status)
        if _attempt is not None:
            sql += " AND attempts=?"
            args.append(int(_attempt))
        with self._connect() as con:
            return con.execute(sql, args).rowcount > 0

    def set_process(self, job_id: int, pid: int, pid_created: float | None) -> bool:
        """Record the worker's process (done by the launcher right after spawning)."""
        with self._connect() as con:
            return con.execute(
                "UPDATE jobs SET pid=?, pid_created=?, backend='local', task_id=NULL, attempts=attempts+1 "
                "WHERE id=? AND status IN (?,?)",
                (pid, pid_created, int(job_id), *ACTIVE),
            ).rowcount > 0

    def begin_local_attempt(self, job_id: int) -> int | None:
        """Start a new attempt of a queued job on a local worker process; returns its number (None when the job
        is no longer queued). Numbered *before* the process starts, so the process is told its attempt and every
        write it makes is fenced on it."""
        with self._connect() as con:
            if con.execute("UPDATE jobs SET backend='local', task_id=NULL, worker=NULL, pid=NULL, pid_created=NULL, "
                           "attempts=attempts+1 WHERE id=? AND status=?", (int(job_id), QUEUED)).rowcount == 0:
                return None
            return int(con.execute("SELECT attempts FROM jobs WHERE id=?", (int(job_id),)).fetchone()["attempts"])

    def record_process(self, job_id: int, pid: int, pid_created: float | None, attempt: int) -> bool:
        """Record the process running ``attempt`` (the launcher, right after spawning it)."""
        return self._update(job_id, ACTIVE, _attempt=attempt, pid=pid, pid_created=pid_created)

    def stopped(self, job_id: int, attempt: int) -> bool:
        """True when ``attempt`` should stop: the job is final (cancelled, declared dead) or a newer attempt
        replaced it. A running job asks this at its progress and metric reports."""
        job = self.get(job_id)
        return not job.active or job.attempts != int(attempt)

    def set_task(self, job_id: int, task_id: str) -> bool:
        """Record that a queued job was sent to the worker pool as Celery task ``task_id`` (a new attempt)."""
        with self._connect() as con:
            return con.execute(
                "UPDATE jobs SET backend='celery', task_id=?, worker=NULL, pid=NULL, pid_created=NULL, "
                "attempts=attempts+1 WHERE id=? AND status=?", (task_id, int(job_id), QUEUED),
            ).rowcount > 0

    def set_progress_queued(self, job_id: int, stage: str) -> bool:
        """The stage line of a job that waits in the queue (e.g. "waiting for a worker")."""
        return self._update(job_id, (QUEUED,), stage=stage)

    def mark_running(self, job_id: int, worker: str | None = None, started: float | None = None,
                     attempt: int | None = None) -> bool:
        values: dict[str, Any] = {"status": RUNNING, "started": started or time.time(), "message": None}
        if worker is not None:
            values["worker"] = worker
        return self._update(job_id, ACTIVE, _attempt=attempt, **values)

    def set_progress(self, job_id: int, fraction: float, stage: str | None = None,
                     attempt: int | None = None) -> bool:
        values: dict[str, Any] = {"progress": max(0.0, min(1.0, float(fraction)))}
        if stage is not None:
            values["stage"] = stage
        return self._update(job_id, (RUNNING,), _attempt=attempt, **values)

    def add_metrics(self, job_id: int, step: int, values: dict[str, float], t: float | None = None,
                    attempt: int | None = None) -> None:
        """Record metric values at ``step``; a step written again is replaced (replayed events are harmless).

        With ``attempt``: nothing is written unless that attempt is the job's current one and it is running,
        and what earlier attempts recorded from ``step`` on is dropped first (a resumed attempt continues from
        its checkpoint's step, and the steps after it that the old attempt reported are superseded)."""
        now = t or time.time()
        jid, st = int(job_id), int(step)
        with self._connect() as con:
            if attempt is not None:
                if con.execute("SELECT 1 FROM jobs WHERE id=? AND attempts=? AND status=?",
                               (jid, int(attempt), RUNNING)).fetchone() is None:
                    return
                con.execute("DELETE FROM metrics WHERE job_id=? AND attempt<? AND step>=?", (jid, int(attempt), st))
            con.executemany("INSERT OR REPLACE INTO metrics (job_id, step, name, value, t, attempt) VALUES (?,?,?,?,?,?)",
                            [(jid, st, k, float(v), now, int(attempt or 0)) for k, v in values.items()])

    def set_artifacts(self, job_id: int, artifacts: dict[str, str]) -> bool:
        return self._update(job_id, None, artifacts=artifacts)

    def finish(self, job_id: int, status: str, message: str | None = None,
               result: dict[str, Any] | None = None, artifacts: dict[str, str] | None = None,
               attempt: int | None = None) -> bool:
        """Move an active job to a final status; returns False if it was already final (or, with ``attempt``,
        when that attempt is not the current one)."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        values: dict[str, Any] = {"status": status, "finished": time.time(), "message": message}
        if status == SUCCEEDED:
            values["progress"] = 1.0
            values["stage"] = "done"
        if result is not None:
            values["result"] = result
        if artifacts is not None:
            values["artifacts"] = artifacts
        return self._update(job_id, ACTIVE, _attempt=attempt, **values)

    def requeue(self, job_id: int) -> bool:
        """Make a failed or cancelled resumable job queued again (the launcher then starts a worker)."""
        return self._update(job_id, (FAILED, CANCELLED), status=QUEUED, finished=None, message=None, pid=None,
                            pid_created=None, worker=None)


def _migrate_metrics(con: sqlite3.Connection) -> None:
    """Give the metrics table its attempt column and its one-row-per-(job, name, step) key (files written before
    both existed may hold a step twice: the newest row is kept)."""
    have = {r["name"] for r in con.execute("PRAGMA table_info(metrics)")}
    if "attempt" not in have:
        try:
            con.execute("ALTER TABLE metrics ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError:  # another process added it first
            pass
    if con.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name='metrics_step'").fetchone() is None:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("DELETE FROM metrics WHERE rowid NOT IN (SELECT MAX(rowid) FROM metrics GROUP BY job_id, name, step)")
            con.execute("DROP INDEX IF EXISTS metrics_job")
            con.execute("CREATE UNIQUE INDEX IF NOT EXISTS metrics_step ON metrics (job_id, name, step)")
            con.execute("CREATE INDEX IF NOT EXISTS metrics_attempt ON metrics (job_id, attempt, step)")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
