"""Jobs on a Celery worker pool with a real redis-server and real worker processes (docs/scale.md)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from jobkinds_for_tests import STEPS
from queue_fixtures import REPO, RedisServer, Worker, needs_redis, worker_env

from lorashear import LorashearError
from lorashear.jobs import CANCELLED, FAILED, KINDS, RUNNING, SUCCEEDED, Registry, cancel, reap, resume, submit, wait

# Real redis-server + Celery worker processes. The worker and app run at the tests' own priority (a niced worker
# starved beside -n 2 test workers and a benchmark), and waits for results are on conditions, not fixed sleeps.
pytestmark = [needs_redis]
TEST_KINDS = {**KINDS, STEPS.name: STEPS}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pool(redis_server, tmp_path_factory):
    """One worker with two job slots on database 0, shared by the tests that do not kill it."""
    w = Worker(redis_server.url(0), tmp_path_factory.mktemp("worker") / "worker.log", concurrency=2)
    yield w
    w.stop()


#: the death window of these tests' app: short, so a killed worker is noticed quickly (the default is 30 s)
DEAD_AFTER_S = 6.0


def queued_registry(url, runs, **registry_options):
    from lorashear.jobs.queue import JobQueue

    q = JobQueue(url, runs, dead_after_s=DEAD_AFTER_S)
    return Registry(runs / "jobs.sqlite", queue=q, **registry_options)


def wait_for(pred, timeout_s=30.0, what="condition", why=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} {why()}")
        time.sleep(0.05)


def test_graph_and_eval_jobs_run_on_the_pool(redis_server, pool, tmp_path):
    from lorashear.data import DEMO_MODEL_DIR

    runs = tmp_path / "runs"
    reg = queued_registry(redis_server.url(0), runs)
    g = submit(reg, "graph", {"source": str(DEMO_MODEL_DIR), "meta": False}, runs)
    e = submit(reg, "eval", {"model": str(DEMO_MODEL_DIR), "data": "demo", "protocol": "short", "max_tokens": "300",
                             "cost": [], "device": "cpu"}, runs)
    assert g.backend == "celery" and g.task_id and g.pid is None and g.attempts == 1
    g, e = wait(reg, g.id, timeout_s=240), wait(reg, e.id, timeout_s=240)
    assert g.status == SUCCEEDED, (g.message, g.log_path.read_text()[-3000:])
    assert e.status == SUCCEEDED, (e.message, e.log_path.read_text()[-3000:])
    # what the Jobs view shows: result, artifacts (files in the job folder), progress, log, where it ran
    assert g.result["groups"] > 0 and g.progress == 1.0 and g.worker and ":" in g.worker
    assert json.loads(open(g.artifacts["graph"]).read()) and str(runs) in g.artifacts["groups"]
    assert {r["source"] for r in e.result["perplexity"]} == {"docs", "docstrings", "code"}
    log = g.log_path.read_text()
    assert "taken by Celery worker" in log and "finding groups" in log
    # the same job function as a local worker: the log is the worker's own output
    assert f"job {g.id} (graph) attempt 1 started in pid" in log


def test_progress_metrics_and_cancel_through_revoke(redis_server, pool, tmp_path):
    runs = tmp_path / "runs"
    reg = queued_registry(redis_server.url(0), runs)
    reg.queue.start_bridge(reg)
    try:
        job = submit(reg, "steps", {"steps": 400, "delay": 0.05}, runs, kinds=TEST_KINDS)
        wait_for(lambda: reg.get(job.id).status == RUNNING and reg.get(job.id).progress > 0.02, 60, "progress")
        assert reg.metrics(job.id)["steps_done"][0] == (0, 0.0)  # per-step metrics through the bridge
        pid = int(reg.get(job.id).worker.split(":")[1])
        t0 = time.monotonic()
        assert cancel(reg, job.id)
        done = reg.get(job.id)
        assert done.status == CANCELLED and done.message == "cancelled by user"
        assert time.monotonic() - t0 < 10
        # revoke(terminate) reached the process running it: it stopped and said so in the job's log
        wait_for(lambda: "cancelled" in done.log_path.read_text().splitlines()[-1], 15, "the job to stop")
        import psutil

        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
                 or reg.queue.heartbeat(reg, done) is None, 15, "the job's process to stop")
        assert reg.get(job.id).status == CANCELLED  # a late event cannot resurrect it
        # the slot is free again for the next job
        short = submit(reg, "steps", {"steps": 3, "delay": 0.01}, runs, kinds=TEST_KINDS)
        assert wait(reg, short.id, timeout_s=60).status == SUCCEEDED
    finally:
        reg.queue.stop_bridge()


def test_cancel_while_waiting_in_the_queue(redis_server, pool, tmp_path):
    runs = tmp_path / "runs"
    reg = queued_registry(redis_server.url(0), runs)
    # fill both slots, then queue a third job and cancel it before any worker takes it
    busy = [submit(reg, "steps", {"steps": 200, "delay": 0.05}, runs, kinds=TEST_KINDS) for _ in range(2)]
    wait_for(lambda: (reap(reg), all(reg.get(j.id).status == RUNNING for j in busy))[1], 60, "both running",
             lambda: f"{[(j.id, reg.get(j.id).status, reg.get(j.id).stage) for j in busy]} {pool.log.read_text()[-3000:]}")
    third = submit(reg, "steps", {"steps": 2, "delay": 0.01}, runs, kinds=TEST_KINDS)
    assert reg.get(third.id).stage == "waiting for a worker"
    assert cancel(reg, third.id)
    for j in busy:
        cancel(reg, j.id)
    time.sleep(3)  # a window in which the freed slots could (wrongly) take the cancelled message
    reap(reg)
    assert reg.get(third.id).status == CANCELLED and not (reg.get(third.id).out_dir / "done.txt").exists()
    assert resume(reg, third.id).attempts == 2
    done = wait(reg, third.id, timeout_s=60)
    assert done.status == SUCCEEDED and done.attempts == 2


def test_restarted_app_sees_the_history_and_what_finished_meanwhile(redis_server, pool, tmp_path):
    runs = tmp_path / "runs"
    reg = queued_registry(redis_server.url(0), runs)
    first = wait(reg, submit(reg, "steps", {"steps": 2, "delay": 0.01}, runs, kinds=TEST_KINDS).id, timeout_s=60)
    assert first.status == SUCCEEDED
    # the app goes away while a job runs: the worker keeps reporting into Redis
    second = submit(reg, "steps", {"steps": 5, "delay": 0.05}, runs, kinds=TEST_KINDS)
    out = second.out_dir / "done.txt"
    del reg
    wait_for(out.exists, 120, "the job to finish while no app is running")
    reg2 = queued_registry(redis_server.url(0), runs)  # what the app does at start-up: open and reap
    # the success event follows the job's last file by a moment; the app's next polls pick it up
    wait_for(lambda: (reap(reg2), reg2.get(second.id).status == SUCCEEDED)[1], 30, "the finished job's event")
    jobs = {j.id: j for j in reg2.list()}
    assert jobs[first.id].status == SUCCEEDED and jobs[first.id].result == {"steps": 2}
    assert jobs[second.id].status == SUCCEEDED, jobs[second.id].message
    assert [v for _, v in reg2.metrics(second.id)["steps_done"]] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_password_never_printed(redis_server, pool, tmp_path):
    from lorashear.jobs.queue import JobQueue, redact

    url = redis_server.url(0)
    assert redis_server.password not in redact(url) and redact(url).startswith("redis://***@127.0.0.1:")
    assert redis_server.password not in repr(JobQueue(url))
    assert redis_server.password not in pool.log.read_text()
    # a wrong password or a dead port: one line, exit 2, no traceback, no password
    for bad in (url.replace(redis_server.password, "wrong-" + redis_server.password),
                f"redis://:{redis_server.password}@127.0.0.1:1/0", "http://example.org/"):
        r = subprocess.run([sys.executable, "-m", "lorashear", "worker", "--queue", bad], capture_output=True,
                           text=True, env=worker_env(), cwd=str(REPO), timeout=60)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert redis_server.password not in r.stderr and "Traceback" not in r.stderr


def test_a_worker_refuses_entry_points_it_was_not_given(redis_server, pool, tmp_path):
    from lorashear.jobs import JobKind

    runs = tmp_path / "runs"
    reg = queued_registry(redis_server.url(0), runs)
    rogue = JobKind(name="rogue", label="Rogue", description="", entry="os:system")
    job = wait(reg, submit(reg, "rogue", {}, runs, kinds={"rogue": rogue}).id, timeout_s=60)
    assert job.status == FAILED and "does not run 'os:system'" in job.message


def test_submit_without_a_reachable_queue_is_one_line():
    from lorashear.jobs.queue import JobQueue, check_url

    with pytest.raises(LorashearError, match="redis://"):
        check_url("amqp://guest@localhost//")
    with pytest.raises(LorashearError, match="cannot reach Redis at redis://\\*\\*\\*@127.0.0.1:1/0"):
        JobQueue("redis://:topsecret@127.0.0.1:1/0").ping()


def test_app_beyond_loopback_with_a_queue(redis_server, pool, tmp_path):
    """``lorashear app --host 0.0.0.0 --queue redis://:PASSWORD@…``: the start-up graph job runs on the pool,
    the token is printed once and required, and the password appears in neither the output nor the page."""
    import urllib.error
    import urllib.request

    from queue_fixtures import free_port

    port = free_port()
    url = redis_server.url(0)
    out = tmp_path / "app.log"
    proc = subprocess.Popen([sys.executable, "-m", "lorashear", "app", "--host", "0.0.0.0",
                             "--port", str(port), "--runs", str(tmp_path / "runs"), "--queue", url],
                            stdout=open(out, "wb"), stderr=subprocess.STDOUT, env=worker_env(), cwd=str(REPO),
                            start_new_session=True)
    try:
        wait_for(lambda: "?token=" in out.read_text() or proc.poll() is not None, 180, "the app to start",
                 lambda: out.read_text()[-3000:])
        text = out.read_text()
        assert proc.poll() is None, text
        token = text.split("?token=")[1].split()[0]
        # one line carries the token (its URLs: loopback and the host's name, never 0.0.0.0)
        assert sum(token in line for line in text.splitlines()) == 1 and "lorashear app on http://0.0.0.0" not in text
        assert redis_server.password not in text and "redis://***@127.0.0.1" in text

        def get(path, headers=None):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        def listening() -> bool:  # the token is printed just before the server binds its port
            try:
                return get("/_dash-layout")[0] == 403
            except urllib.error.URLError:
                return False

        wait_for(listening, 60, "the server")
        assert get("/")[0] == 403
        status, layout = get("/_dash-layout", {"Authorization": f"Bearer {token}"})
        assert status == 200 and "LlamaForCausalLM" in layout, layout[:500]
        assert redis_server.password not in layout
        reg = queued_registry(url, tmp_path / "runs")
        graph = reg.list(kind="graph")[0]
        assert graph.backend == "celery" and graph.status == SUCCEEDED
    finally:
        import os

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_a_superseded_or_flagged_message_is_skipped(redis_server, tmp_path):
    """A message Redis hands out again after its worker died, or an old message of a resumed job, never runs."""
    import redis as redis_mod

    from lorashear.jobs.celery_app import WORKER_OPTIONS, execute
    from lorashear.jobs.queue import _keys

    url = redis_server.url(2)
    r = redis_mod.Redis.from_url(url)
    runs = tmp_path / "runs"
    message = {"job": {"id": 7, "kind": "steps", "entry": "jobkinds_for_tests:run_steps", "workdir": str(runs / "jobs/7"),
                       "params": {"steps": 1, "delay": 0.0}, "attempts": 1, "resumable": True}, "ns": "t", "runs": str(runs)}
    keys = _keys("t")
    WORKER_OPTIONS["allow"] = ("jobkinds_for_tests:run_steps",)
    try:
        r.set(keys["attempt"] + "7", "2")  # the job was resumed: attempt 2 is current
        assert execute(message, url) == 0
        r.set(keys["attempt"] + "7", "1")
        r.set(keys["cancel"] + "7", "1")  # the app declared attempt 1 dead (or cancelled it)
        assert execute(message, url) == 0
        assert r.xlen(keys["stream"]) == 0  # nothing ran, nothing reported
        assert not (runs / "jobs/7/out/done.txt").exists()
        r.delete(keys["cancel"] + "7")
        assert execute(message, url) == 0 and (runs / "jobs/7/out/done.txt").read_text() == "1"
        assert json.loads(r.xrevrange(keys["stream"], count=1)[0][1][b"e"])["status"] == SUCCEEDED
        assert json.loads((runs / "jobs/7/outcome.1.json").read_text())["status"] == SUCCEEDED
        n = r.xlen(keys["stream"])
        assert execute(message, url) == 0 and r.xlen(keys["stream"]) == n  # a second copy: claimed, skipped
    finally:
        WORKER_OPTIONS["allow"] = ()
