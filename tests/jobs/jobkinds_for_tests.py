"""Job kinds used only by the tests: a job that takes as long as asked, so progress, cancel and a killed
worker can be observed without depending on how fast a real model job happens to be."""
from __future__ import annotations

import time
from pathlib import Path

from lorashear.jobs import JobKind, Param

HERE = Path(__file__).resolve().parent


def run_steps(params, ctx):
    """Sleep ``steps`` × ``delay``, reporting each step; a checkpoint (the number of steps done) after each step,
    from which a resumed attempt continues — as a prune run resumes from its newest checkpoint."""
    steps, delay = params["steps"], params["delay"]
    ckpt = ctx.out_dir / "checkpoint.txt"
    start = int(ckpt.read_text()) if ctx.resume and ckpt.exists() else 0
    for i in range(start, steps):
        ctx.progress(i / steps, f"step {i + 1}/{steps}")
        ctx.metric(i, steps_done=float(i))
        time.sleep(delay)
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(str(i + 1))
        tmp.replace(ckpt)  # atomic: a worker killed here leaves the old checkpoint, not half a file
    (ctx.out_dir / "done.txt").write_text(str(steps))
    return {"artifacts": {"done": ctx.out_dir / "done.txt"}, "result": {"steps": steps}}


STEPS = JobKind(
    name="steps", label="Steps (test)", description="test-only: sleeps `steps` × `delay` seconds",
    params=(Param("steps", "Steps", "int", default=5, min=1, max=100000),
            Param("delay", "Delay per step (s)", "float", default=0.1, min=0.0, max=60.0)),
    entry="jobkinds_for_tests:run_steps", resumable=True,
)


def env_with_test_kinds() -> dict:
    """Environment for workers that must import this module."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return env
