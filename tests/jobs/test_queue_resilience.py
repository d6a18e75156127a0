"""The worker pool's guarantees under failure (docs/scale.md, "What survives what"), with a real redis-server that
the tests kill and restart, and two real ``lorashear worker`` processes of one slot each.

Every test here runs the app's side as ``lorashear app`` does: a registry with a ``JobQueue`` whose bridge thread
drains events and reaps on its own timer — no test calls ``reap`` or refreshes a page to make something happen.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest

from jobkinds_for_tests import STEPS
from queue_fixtures import RedisServer, Worker, needs_redis

from lorashear import LorashearError
from lorashear.jobs import CANCELLED, FAILED, KINDS, QUEUED, RUNNING, SUCCEEDED, Registry, resume, submit, wait
from lorashear.jobs.queue import JobQueue, _keys, persistence_warning
from lorashear.jobs.worker import read_outcome

pytestmark = [needs_redis]
KINDS_ = {**KINDS, STEPS.name: STEPS}
DEAD_AFTER_S = 6.0  # the app's death window in these tests (default 30 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # fsync always: these tests SIGKILL Redis and then count every event
    srv = RedisServer(tmp_path_factory.mktemp("redis"), fsync="always")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def workers(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    ws = []
    try:
        for name in ("w1", "w2"):
            ws.append(Worker(server.url(0), tmp / f"{name}.log", concurrency=1))
        yield ws
    finally:
        for w in ws:
            w.stop()


@pytest.fixture
def app(server, tmp_path):
    """The app's side: registry + queue with its bridge (drain and reap on a timer), as ``attach_queue`` does."""
    opened = []

    def make(**registry_options):
        runs = tmp_path / "runs"
        reg = Registry(runs / "jobs.sqlite", queue=JobQueue(server.url(0), runs, dead_after_s=DEAD_AFTER_S),
                       **registry_options)
        reg.queue.start_bridge(reg)
        opened.append(reg)
        return reg, runs

    yield make
    for reg in opened:
        reg.queue.stop_bridge()


def wait_for(pred, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def running(reg, job_id, min_progress=0.0):
    j = reg.get(job_id)
    return j.status == RUNNING and j.progress > min_progress and j.worker is not None


def steps_recorded(reg, job_id):
    with sqlite3.connect(reg.path) as con:  # the rows themselves: a step recorded twice would show here
        return [r[0] for r in con.execute("SELECT step FROM metrics WHERE job_id=? AND name='steps_done' ORDER BY step",
                                          (job_id,))]


def test_events_survive_a_database_locked_past_its_busy_timeout(server, workers, app):
    reg, runs = app(busy_timeout_s=0.3)
    job = submit(reg, "steps", {"steps": 30, "delay": 0.1}, runs, kinds=KINDS_)
    wait_for(lambda: running(reg, job.id), 60, "the job to run")
    lock = sqlite3.connect(reg.path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for 10 × the busy timeout
    time.sleep(3)
    stream = _keys(reg.uid)["stream"]
    assert reg.queue._redis.xlen(stream) > 0  # events waited in Redis: the drain could not commit them
    lock.execute("ROLLBACK")
    lock.close()
    done = wait(reg, job.id, timeout_s=60)
    assert done.status == SUCCEEDED, done.message
    wait_for(lambda: reg.queue._redis.xlen(stream) == 0, 10, "the stream to be acknowledged")
    assert steps_recorded(reg, job.id) == list(range(30))


FLAGGED_STEPS = 100


def test_a_flagged_attempt_stops_itself_and_resume_waits_for_it(server, workers, app):
    reg, runs = app()
    # 10 s if never stopped: long enough that, on a loaded machine, the attempt is still running when it is flagged
    # (with 4 s it can end "succeeded" before the test flags it, instead of stopping itself)
    job = submit(reg, "steps", {"steps": FLAGGED_STEPS, "delay": 0.1}, runs, kinds=KINDS_)
    wait_for(lambda: running(reg, job.id, 0.05), 60, "the job to run")
    assert reg.finish(job.id, FAILED, "declared dead")  # the app believes it dead; the worker was not told yet
    with pytest.raises(LorashearError, match=f"job {job.id}: attempt 1 still runs on .*resume once it has stopped"):
        resume(reg, job.id)
    reg.queue.flag_stopped(reg, reg.get(job.id))
    wait_for(lambda: reg.queue.heartbeat(reg, reg.get(job.id)) is None, 15, "the attempt to stop")
    assert "stopping: attempt 1" in reg.get(job.id).log_path.read_text()
    assert read_outcome(job.workdir, 1)["status"] == CANCELLED
    assert reg.get(job.id).status == FAILED  # its late events changed nothing
    # resumed from its checkpoint: every step once. (The steps attempt 1 made after it was declared dead are
    # not recorded: the events of an attempt the app gave up on are dropped.)
    checkpoint = int((job.out_dir / "checkpoint.txt").read_text())
    assert resume(reg, job.id).attempts == 2
    done = wait(reg, job.id, timeout_s=90)
    assert done.status == SUCCEEDED and done.attempts == 2, done.message
    steps = steps_recorded(reg, job.id)
    assert steps == sorted(set(steps)) and steps[-(FLAGGED_STEPS - checkpoint):] == list(range(checkpoint, FLAGGED_STEPS))


def test_a_partitioned_attempt_declared_dead_stops_itself(server, workers, app):
    reg, runs = app()
    job = submit(reg, "steps", {"steps": 300, "delay": 0.05}, runs, kinds=KINDS_)
    wait_for(lambda: running(reg, job.id), 60, "the job to run")
    pid = int(reg.get(job.id).worker.split(":")[1])
    os.kill(pid, signal.SIGSTOP)  # cut off: no beats, no events, but alive
    try:
        t0 = time.monotonic()
        wait_for(lambda: reg.get(job.id).status == FAILED, DEAD_AFTER_S + 20, "the reaper")
        assert time.monotonic() - t0 >= DEAD_AFTER_S - 1.5  # one silent look is not evidence
        assert "died (no heartbeat for" in reg.get(job.id).message
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "stopping: attempt 1" in job.log_path.read_text(), 20, "the attempt to stop itself")
    wait_for(lambda: read_outcome(job.workdir, 1) is not None, 10, "its outcome")
    assert read_outcome(job.workdir, 1)["status"] == CANCELLED and not (job.out_dir / "done.txt").exists()
    assert reg.get(job.id).status == FAILED


@pytest.mark.parametrize("wipe", [False, True], ids=["aof", "no-persistence"])
def test_redis_restart_with_running_and_queued_jobs(server, workers, app, wipe):
    """Redis is SIGKILLed and restarted (with its append-only file, or empty as without persistence) while one
    job runs on each worker and a third waits: all three complete, none is declared dead, and the waiting job
    goes to the worker that becomes free, not to the busy one."""
    import redis

    from lorashear.jobs.queue import QUEUE_NAME, make_celery

    reg, runs = app()
    long = submit(reg, "steps", {"steps": 120, "delay": 0.1}, runs, kinds=KINDS_)
    wait_for(lambda: running(reg, long.id), 60, "the long job to run")
    short = submit(reg, "steps", {"steps": 60, "delay": 0.1}, runs, kinds=KINDS_)
    wait_for(lambda: running(reg, short.id), 60, "the short job to run")
    busy = next(w for w in workers if w.runs(reg.get(long.id)))
    free_soon = next(w for w in workers if w.runs(reg.get(short.id)))
    assert busy is not free_soon
    # long enough (~2 s) to be seen running: a job that ends within one drain of the bridge goes from queued to
    # succeeded in one batch, and its pool process (one task per child) is gone before anyone can ask who ran it
    queued = submit(reg, "steps", {"steps": 20, "delay": 0.1}, runs, kinds=KINDS_)
    assert reg.get(queued.id).status == QUEUED
    broker = redis.Redis.from_url(server.url(0))
    assert broker.llen(QUEUE_NAME) == 1  # both workers busy: nobody reserved the waiting message
    server.restart(wipe=wipe)
    if not wipe:
        # both workers reconnected, both still busy: neither takes the waiting message (Celery's prefetch limit is
        # not restored after a reconnect on Redis; the workers refuse reservations beyond their free slots)
        def both_reconnected() -> bool:
            ctl = make_celery(server.url(0))
            try:
                return len(ctl.control.ping(timeout=0.5)) == 2
            except Exception:  # the broker connection of a client that raced the restart
                return False
            finally:
                ctl.close()

        wait_for(both_reconnected, 30, "both workers to reconnect")
        time.sleep(1.0)
        broker = redis.Redis.from_url(server.url(0))  # a new connection to the restarted server
        assert reg.get(short.id).status == RUNNING and broker.llen(QUEUE_NAME) == 1
    wait_for(lambda: reg.get(queued.id).status == RUNNING, 240, "the queued job to start")  # slow under load
    assert free_soon.runs(reg.get(queued.id)) and not busy.runs(reg.get(queued.id))
    for job in (long, short, queued):
        done = wait(reg, job.id, timeout_s=120)
        assert done.status == SUCCEEDED and done.attempts == 1, (job.id, done.message)
    assert steps_recorded(reg, queued.id) == list(range(20))
    if not wipe:  # with persistence nothing is lost: every step of every job, once
        assert steps_recorded(reg, long.id) == list(range(120))
        assert steps_recorded(reg, short.id) == list(range(60))


def test_a_killed_worker_is_reaped_with_no_page_open_and_resumed_elsewhere(server, workers, app):
    reg, runs = app()
    job = submit(reg, "steps", {"steps": 40, "delay": 0.1}, runs, kinds=KINDS_)
    wait_for(lambda: running(reg, job.id, 0.1), 60, "the job to run")
    victim = next(w for w in workers if w.runs(reg.get(job.id)))
    other = next(w for w in workers if w is not victim)
    victim.kill(signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: reg.get(job.id).status == FAILED, DEAD_AFTER_S + 20, "the reaper")
    took = time.monotonic() - t0
    dead = reg.get(job.id)
    assert "died (no heartbeat for" in dead.message and "(resumable)" in dead.message
    assert DEAD_AFTER_S - 1.5 <= took < DEAD_AFTER_S + 15, took
    resume(reg, job.id)
    wait_for(lambda: running(reg, job.id), 60, "the resumed job to run")
    assert other.runs(reg.get(job.id))
    done = wait(reg, job.id, timeout_s=90)
    assert done.status == SUCCEEDED and done.attempts == 2
    assert steps_recorded(reg, job.id) == list(range(40))


def test_the_worker_warns_when_redis_has_no_persistence(server):
    import redis

    url = server.url(0)
    assert persistence_warning(url) is None
    r = redis.Redis.from_url(url)
    r.config_set("appendonly", "no")
    try:
        line = persistence_warning(url)
        assert "no append-only file" in line and "--appendonly yes --appendfsync everysec" in line
        assert "\n" not in line and server.password not in line
    finally:
        r.config_set("appendonly", "yes")
