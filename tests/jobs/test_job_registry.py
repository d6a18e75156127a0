"""Job registry and worker processes, without a browser."""
import os
import signal
import threading
import time

import psutil
import pytest

from lorashear import LorashearError
from lorashear.jobs.kinds import JobKind
from lorashear.jobs import (CANCELLED, FAILED, RUNNING, SUCCEEDED, JobParamError, Registry, cancel, reap,
                            resume, submit, validate, wait, worker_alive)
from lorashear.jobs import kinds as kinds_mod


def test_steps_job_runs_in_its_own_process_and_records_everything(registry, tmp_path, test_kinds, worker_env):
    job = submit(registry, "steps", {"steps": "4", "delay": "0.05"}, tmp_path / "runs", kinds=test_kinds,
                 env=worker_env)
    assert job.pid and job.pid != os.getpid()
    done = wait(registry, job.id, timeout_s=60)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text())
    assert done.progress == 1.0 and done.result == {"steps": 4}
    assert open(done.artifacts["done"]).read() == "4"
    assert [v for _, v in registry.metrics(job.id)["steps_done"]] == [0.0, 1.0, 2.0, 3.0]
    assert "step 4/4" in done.log_path.read_text()
    assert done.started >= done.created and done.finished >= done.started


def test_concurrent_submissions_get_distinct_jobs(registry, tmp_path, test_kinds, worker_env):
    ids, errors = [], []

    def go(n):
        try:
            ids.append(submit(registry, "steps", {"steps": n, "delay": 0.02}, tmp_path / "runs",
                              kinds=test_kinds, env=worker_env).id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(n,)) for n in (2, 3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 4
    results = {wait(registry, i, timeout_s=120).result["steps"] for i in ids}
    assert results == {2, 3, 4, 5}
    assert all(registry.get(i).status == SUCCEEDED for i in ids)
    for i in ids:  # each job's metrics are its own
        assert len(registry.metrics(i)["steps_done"]) == registry.get(i).result["steps"]


def test_cancel_kills_the_worker_process(registry, tmp_path, test_kinds, worker_env):
    job = submit(registry, "steps", {"steps": 1000, "delay": 0.1}, tmp_path / "runs", kinds=test_kinds,
                 env=worker_env)
    deadline = time.time() + 30
    while registry.get(job.id).status != RUNNING and time.time() < deadline:
        time.sleep(0.05)
    pid = job.pid
    assert psutil.pid_exists(pid)
    assert cancel(registry, job.id)
    after = registry.get(job.id)
    assert after.status == CANCELLED and not worker_alive(after)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not cancel(registry, job.id)  # already final


def test_killed_worker_is_detected_as_failed_and_can_resume(registry, tmp_path, test_kinds, worker_env):
    job = submit(registry, "steps", {"steps": 1000, "delay": 0.1}, tmp_path / "runs", kinds=test_kinds,
                 env=worker_env)
    while registry.get(job.id).progress <= 0.0:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)  # the worker dies without a word
    deadline = time.time() + 10
    while worker_alive(registry.get(job.id)) and time.time() < deadline:
        time.sleep(0.05)
    assert registry.get(job.id).status == RUNNING  # nothing told the registry
    assert reap(registry) == [job.id]
    dead = registry.get(job.id)
    assert dead.status == FAILED and "died" in dead.message and "resumable" in dead.message
    # a fresh registry object (an app restart) sees the same
    assert Registry(registry.path).get(job.id).status == FAILED
    resumed = resume(registry, job.id, env=worker_env)
    assert resumed.attempts == 2
    cancel(registry, job.id)


def test_invalid_parameters_are_rejected_field_by_field(tmp_path, test_kinds):
    steps = test_kinds["steps"]
    with pytest.raises(JobParamError) as e:
        validate(steps, {"steps": "0", "delay": "soon", "colour": "red"})
    assert e.value.errors == {"steps": "must be in [1, 100,000], got 0", "delay": "must be a number",
                              "colour": "unknown parameter for steps jobs"}
    with pytest.raises(JobParamError) as e:
        validate(steps, {"steps": "2.5"})
    assert e.value.errors == {"steps": "must be a whole number"}
    assert validate(steps, {"steps": " 7 "}) == {"steps": 7, "delay": 0.1}

    graph = kinds_mod.GRAPH
    with pytest.raises(JobParamError) as e:
        validate(graph, {})
    assert e.value.errors == {"source": "required"}
    with pytest.raises(JobParamError) as e:
        validate(graph, {"source": str(tmp_path / "nope")})
    assert "does not exist" in e.value.errors["source"]
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    with pytest.raises(JobParamError) as e:
        validate(graph, {"source": str(cfg), "meta": False})
    assert "meta" in e.value.errors
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(JobParamError) as e:
        validate(graph, {"source": str(empty)})
    assert "no config.json" in e.value.errors["source"]
    assert validate(graph, {"source": str(cfg), "meta": ["meta"]})["meta"] is True


def test_bad_submissions_create_no_job(registry, tmp_path, test_kinds):
    with pytest.raises(JobParamError):
        submit(registry, "steps", {"steps": -1}, tmp_path / "runs", kinds=test_kinds)
    with pytest.raises(LorashearError, match="unknown job kind"):
        submit(registry, "nope", {}, tmp_path / "runs", kinds=test_kinds)
    future = JobKind("future", "Future", "a kind without an entry point",
                     unavailable_reason="not available yet: lorashear.future has not landed")
    with pytest.raises(LorashearError, match="not available yet"):
        submit(registry, "future", {}, tmp_path / "runs", kinds={**test_kinds, "future": future})
    assert registry.list() == []


def test_failing_job_records_the_error(registry, tmp_path, test_kinds, worker_env):
    bad = kinds_mod.JobKind(name="bad", label="Bad", description="", entry="jobkinds_for_tests:no_such_fn")
    job = submit(registry, "bad", {}, tmp_path / "runs", kinds={"bad": bad}, env=worker_env)
    done = wait(registry, job.id, timeout_s=60)
    assert done.status == FAILED and "AttributeError" in done.message
    assert "Traceback" in done.log_path.read_text()


def test_eval_job_on_the_demo_model(registry, tmp_path):
    from lorashear.data import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / "config.json").exists():
        pytest.skip("demo model not built")
    job = submit(registry, "eval", {"model": str(DEMO_MODEL_DIR), "data": "demo", "protocol": "short",
                                    "max_tokens": "300", "cost": [], "device": "cpu", "threads": "1"}, tmp_path / "runs")
    done = wait(registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])
    assert done.params["threads"] == 1 and done.result["threads"] == 1  # the form's threads field is what ran
    rows = done.result["perplexity"]
    assert {r["source"] for r in rows} == {"docs", "docstrings", "code"}
    assert all(r["protocol"] == "short" and r["window"] == 128 and r["ppl"] > 1 for r in rows)
    assert done.result["cost"] is None and os.path.exists(done.artifacts["eval"])
    # the Compare view lists it (dense: the demo folder has no export sidecar)
    from viz.session import AppState
    from viz.views.compare import entries

    rows = entries(AppState(registry, tmp_path / "runs"))
    assert [(r["job"], r["role"]) for r in rows] == [(job.id, "dense")]


def test_a_batch_commits_together_or_not_at_all(tmp_path):
    reg = Registry(tmp_path / "jobs.sqlite")
    job = reg.create("steps", "x:y", {}, tmp_path)
    other = Registry(tmp_path / "jobs.sqlite")  # another process's view of the same file
    with reg.batch():
        reg.mark_running(job.id, worker="w")
        reg.add_metrics(job.id, 0, {"loss": 1.0})
        assert reg.get(job.id).status == RUNNING and other.get(job.id).status != RUNNING  # not yet committed
    assert other.get(job.id).status == RUNNING and other.metrics(job.id) == {"loss": [(0, 1.0)]}
    with pytest.raises(RuntimeError):
        with reg.batch():
            reg.set_progress(job.id, 0.5)
            raise RuntimeError("boom")
    assert other.get(job.id).progress == 0.0


def test_a_resumed_attempt_replaces_the_metrics_from_its_step_on(tmp_path):
    reg = Registry(tmp_path / "jobs.sqlite")
    job = reg.create("steps", "x:y", {}, tmp_path, resumable=True)
    assert reg.begin_local_attempt(job.id) == 1 and reg.mark_running(job.id, attempt=1)
    for step in range(6):
        reg.add_metrics(job.id, step, {"loss": 1.0}, attempt=1)
    reg.add_metrics(job.id, 5, {"loss": 1.5}, attempt=1)  # a replayed event: replaced, not added
    assert reg.finish(job.id, FAILED, "worker died", attempt=1) and reg.requeue(job.id)
    assert reg.begin_local_attempt(job.id) == 2 and reg.mark_running(job.id, attempt=2)
    reg.add_metrics(job.id, 3, {"loss": 2.0}, attempt=2)  # resumed from the step-3 checkpoint
    reg.add_metrics(job.id, 9, {"loss": 9.0}, attempt=1)  # the old attempt, still running somewhere: ignored
    assert reg.metrics(job.id) == {"loss": [(0, 1.0), (1, 1.0), (2, 1.0), (3, 2.0)]}
    assert not reg.finish(job.id, SUCCEEDED, attempt=1) and reg.get(job.id).status == RUNNING
    assert reg.stopped(job.id, 1) and not reg.stopped(job.id, 2)


def test_an_older_registry_file_gets_one_row_per_step(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as con:  # the metrics table as files written before attempts existed
        con.execute("CREATE TABLE metrics (job_id INTEGER NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, "
                    "value REAL NOT NULL, t REAL NOT NULL)")
        con.executemany("INSERT INTO metrics VALUES (1, ?, 'loss', ?, 0)", [(0, 1.0), (1, 1.0), (1, 2.0)])
    assert Registry(path).metrics(1) == {"loss": [(0, 1.0), (1, 2.0)]}


def test_a_lost_final_write_is_recovered_from_the_outcome_file(registry, tmp_path):
    from lorashear.jobs.worker import write_outcome

    job = registry.create("steps", "x:y", {}, tmp_path / "runs")
    attempt = registry.begin_local_attempt(job.id)
    registry.record_process(job.id, 2 ** 22 + 12345, None, attempt)  # a pid that no longer exists
    registry.mark_running(job.id, attempt=attempt)
    write_outcome(job.workdir, attempt, SUCCEEDED, result={"steps": 2}, artifacts={"done": "x"})
    assert reap(registry) == []  # not declared dead: it ended, and said so in its folder
    done = registry.get(job.id)
    assert done.status == SUCCEEDED and done.result == {"steps": 2} and done.artifacts == {"done": "x"}


def test_the_reaper_runs_on_a_timer(registry, tmp_path, test_kinds, worker_env):
    from lorashear.jobs.launcher import start_reaper

    job = submit(registry, "steps", {"steps": 1000, "delay": 0.1}, tmp_path / "runs", kinds=test_kinds,
                 env=worker_env)
    while registry.get(job.id).status != RUNNING:
        time.sleep(0.05)
    reaper = start_reaper(registry, every_s=0.2)
    try:
        assert start_reaper(registry) is reaper
        os.kill(job.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while registry.get(job.id).status == RUNNING and time.time() < deadline:
            time.sleep(0.05)  # nobody calls reap here
        assert registry.get(job.id).status == FAILED
    finally:
        reaper.stop()


def test_a_local_attempt_the_registry_gave_up_on_stops_itself(registry, tmp_path, test_kinds, worker_env):
    job = submit(registry, "steps", {"steps": 1000, "delay": 0.05}, tmp_path / "runs", kinds=test_kinds,
                 env=worker_env)
    while registry.get(job.id).progress <= 0.0:
        time.sleep(0.05)
    assert registry.finish(job.id, FAILED, "declared dead")  # no signal: the process must notice by itself
    deadline = time.time() + 20
    while worker_alive(registry.get(job.id)) and time.time() < deadline:
        time.sleep(0.05)
    assert not worker_alive(registry.get(job.id))
    assert "stopping: attempt 1" in job.log_path.read_text()
    assert registry.get(job.id).status == FAILED and registry.get(job.id).message == "declared dead"


def test_a_finished_worker_is_collected_without_a_next_job(registry, tmp_path, test_kinds, worker_env):
    """With the app's timer running, a worker process that ended is waited for: no zombie stays until the next
    launch (issue 25, item 6)."""
    from lorashear.jobs.launcher import start_reaper

    reaper = start_reaper(registry, every_s=0.2)
    try:
        job = submit(registry, "steps", {"steps": "1", "delay": "0.01"}, tmp_path / "runs", kinds=test_kinds,
                     env=worker_env)
        assert wait(registry, job.id, timeout_s=60).status == SUCCEEDED
        deadline = time.time() + 10
        while psutil.pid_exists(job.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(job.pid), psutil.Process(job.pid).status()
    finally:
        reaper.stop()
