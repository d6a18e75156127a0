"""A real redis-server on a loopback port and real ``lorashear worker`` (Celery) processes, for the queue tests.

No mock broker: the tests are only worth something if Celery, kombu's Redis transport and our events go through
a real server. Without the Debian ``redis-server`` binary the tests are skipped with the reason (CI installs it).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None or __import__("importlib").util.find_spec("celery") is None,
    reason="queue tests need Debian's redis-server (apt-get install -y redis-server) and the [queue] extra "
           "(celery, redis)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1 with a password and its own data folder, persisting as docs/scale.md says
    (append-only file; ``fsync`` every second, or ``always`` where a test kills it and counts every event)."""

    def __init__(self, tmp: Path, fsync: str = "everysec"):
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)
        self.dir = tmp / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "redis.log"
        self.fsync = fsync
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", self.fsync, "--requirepass", self.password, "--dir", str(self.dir)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(self.url(0)).ping()
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)

    def restart(self, wipe: bool = False, down_s: float = 1.0) -> None:
        """SIGKILL the server and start it again on the same port; ``wipe``: without its data, as a Redis
        without persistence comes back."""
        self.proc.kill()
        self.proc.wait(10)
        if wipe:
            shutil.rmtree(self.dir)
            self.dir.mkdir()
        time.sleep(down_s)
        self.start()

    def url(self, db: int) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def worker_env() -> dict[str, str]:
    """The worker imports this checkout (not whatever copy is installed) and the test job kinds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(HERE), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """``lorashear worker`` in its own process group, its log in a file; the URL travels in the environment
    (LORASHEAR_QUEUE), as the docs advise for a password."""

    def __init__(self, url: str, log: Path, concurrency: int = 2):
        env = worker_env()
        self.url = url
        env["LORASHEAR_QUEUE"] = url
        self.log = log
        cmd = [sys.executable, "-m", "lorashear", "worker", "--concurrency", str(concurrency),
               "--allow-entry", "jobkinds_for_tests:run_steps", "--hostname", f"test-{secrets.token_hex(3)}@{socket.gethostname()}"]
        self.proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=str(REPO))
        from lorashear.jobs.celery_app import make_app

        app = make_app(url)
        deadline = time.monotonic() + 300  # seconds on a quiet machine; generous for a busy CI box
        try:
            while not app.control.ping(timeout=0.5):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {log.read_text()[-3000:]}")
        except BaseException:
            self.stop()  # no fixture teardown runs for a fixture that failed: do not leave the worker behind
            raise
        finally:
            app.close()

    def runs(self, job) -> bool:
        """True when ``job`` (a registry Job) runs, or ran, in one of this worker's pool processes."""
        import psutil

        pid = int(job.worker.split(":")[1])
        try:
            return psutil.Process(pid).ppid() == self.proc.pid
        except psutil.Error:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
