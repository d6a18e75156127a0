"""The app's server-side state: where jobs live, which job kinds exist, which graph is being browsed.

The browsed model is always the output of a "graph" job: at start-up the app finds a finished graph job for
the requested source (unless the source changed since) or runs one in a worker process and waits for it.
The Dash process only reads the resulting JSON files.
"""
from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorashear.errors import LorashearError
from lorashear.jobs import KINDS, SUCCEEDED, JobKind, Registry, reap, submit, wait
from lorashear.jobs.launcher import start_reaper


@dataclass
class AppState:
    registry: Registry
    runs_dir: Path
    kinds: dict[str, JobKind] = field(default_factory=lambda: dict(KINDS))
    model_job: int | None = None
    model_error: str | None = None
    cap: int = 1000
    worker_env: dict[str, str] | None = None
    form_defaults: dict[str, Any] = field(default_factory=dict)  # job form prefills (e.g. the browsed model)


def make_state(runs_dir: str | Path, kinds: dict[str, JobKind] | None = None,
               worker_env: dict[str, str] | None = None, cap: int = 1000) -> AppState:
    runs = Path(runs_dir).resolve()
    registry = Registry(runs / "jobs.sqlite")
    reap(registry)  # workers that died while no app was watching are failed from now on
    start_reaper(registry)  # and from now on whether or not a page asks (a timer thread; idempotent)
    state = AppState(registry, runs, dict(kinds) if kinds is not None else dict(KINDS), cap=cap,
                     worker_env=worker_env)
    demo, _ = demo_model_dir()
    if demo is not None:
        state.form_defaults = {"source": str(demo), "model": str(demo)}
    return state


def demo_model_dir() -> tuple[Path | None, str]:
    """The shipped demo model, or why there is none."""
    try:
        data = importlib.import_module("lorashear.data")
    except ImportError:
        return None, "the demo model is not available yet (lorashear.data has not landed)"
    path = getattr(data, "DEMO_MODEL_DIR", None)
    if path is None:
        return None, "the demo model is not available yet (lorashear.data.DEMO_MODEL_DIR is missing)"
    path = Path(path)
    if not (path / "config.json").is_file():
        return None, f"the demo model has not been built yet ({path} has no config.json)"
    return path, ""


def _mtime(source: Path) -> float:
    if source.is_file():
        return source.stat().st_mtime
    files = [source / "config.json", *source.glob("*.safetensors"), *source.glob("*.bin")]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def find_graph_job(state: AppState, source: Path, meta: bool):
    """The newest succeeded graph job for this exact source, if neither the source nor the tracing code
    changed since."""
    from lorashear.jobs.graph_job import code_fingerprint

    want = {"source": str(source.resolve()), "meta": bool(meta)}
    newer_than = _mtime(source)
    code = code_fingerprint()
    for job in state.registry.list(kind="graph", status=SUCCEEDED):
        if job.params == want and (job.finished or 0) >= newer_than and job.result.get("code") == code and all(
                Path(p).is_file() for p in job.artifacts.values()) and {"graph", "groups"} <= set(job.artifacts):
            return job
    return None


def ensure_graph(state: AppState, source: str | Path, meta: bool, retrace: bool = False,
                 echo: Callable[[str], None] = print, timeout_s: float = 3600.0):
    """Return a succeeded graph job for ``source`` (reused, or run now in a worker and waited for)."""
    src = Path(source).expanduser()
    if not src.exists():
        raise LorashearError(f"{source} does not exist")
    job = None if retrace else find_graph_job(state, src, meta)
    if job is not None:
        echo(f"using graph job {job.id} ({job.result.get('nodes', '?')} nodes, {job.result.get('groups', '?')} groups)")
        return job
    job = submit(state.registry, "graph", {"source": str(src), "meta": meta}, state.runs_dir, kinds=state.kinds,
                 env=state.worker_env)
    echo(f"tracing {src}{' (meta)' if meta else ''} in graph job {job.id} (log: {job.log_path})")
    t0 = time.monotonic()
    job = wait(state.registry, job.id, timeout_s=timeout_s)
    if job.status != SUCCEEDED:
        tail = job.log_path.read_text(errors="replace")[-2000:] if job.log_path.exists() else ""
        raise LorashearError(f"graph job {job.id} {job.status}: {job.message}\n{tail}")
    echo(f"graph job {job.id} done in {time.monotonic() - t0:.1f} s: {job.result}")
    return job


def default_runs_dir() -> Path:
    return Path(os.environ.get("LORASHEAR_RUNS", "runs"))
