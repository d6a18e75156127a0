"""Data-parallel pruning under ``accelerate launch`` (lorashear/parallel.py): two CPU processes over gloo, with
gradient accumulation, on the same global batch as one process, give the same plan, the same zero set and the same
weights; and a checkpoint written by the two-process run resumes (here in one process) to the same end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorashear import LorashearError
from lorashear.prune import prune

ROOT = Path(__file__).resolve().parents[2]
# LHSPG in LoRA without distillation: warm-up 2, two periods of 2 steps, 2 steps after; a global batch of 4 rows =
# 2 processes × 2 micro-batches × 1
RUN = dict(method="lhspg", distill=0.0, train="lora", ratio=0.25, kinds=("attention", "mlp", "hidden"), steps=6,
           warmup_steps=2, periods=2, period_steps=2, batch_size=4, seq_len=32, eval_tokens=256, measure_latency=False,
           checkpoint_every=2, device="cpu")

needs_accelerate = pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")


def cli_args(model, out) -> list[str]:
    args = ["prune", str(model), "--out", str(out), "--no-progress", "--no-latency"]
    for k, v in RUN.items():
        if k != "measure_latency":
            args += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, tuple) else str(v)]
    return args


def launch(n: int, accumulation: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
               OMP_NUM_THREADS="1", ACCELERATE_GRADIENT_ACCUMULATION_STEPS=str(accumulation))
    # (accelerate launch's --gradient_accumulation_steps only reaches DeepSpeed; the Accelerator reads this variable)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lorashear", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, tol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].shape == wb[k].shape, k  # the same units removed: the same shapes
        assert (wa[k] - wb[k]).abs().max().item() <= tol, k


@needs_accelerate
def test_two_processes_match_one_and_resume(tiny_dir, tmp_path):
    one = tmp_path / "one"
    ref = prune(tiny_dir, one, **RUN)  # one process, the whole batch at once
    two = tmp_path / "two"
    r = launch(2, 2, *cli_args(tiny_dir, two))
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("parameters ") == 1  # process 0 reports, the other is silent
    rep = json.loads((two / "report.json").read_text())
    assert rep["processes"] == 2 and rep["gradient_accumulation_steps"] == 2
    plan1, plan2 = json.loads((one / "plan.json").read_text()), json.loads((two / "plan.json").read_text())
    assert plan1 == plan2  # same plan, same zero set
    assert plan2["removal"] and ref["params_after"] == rep["params_after"]
    assert_same_weights(one, two)
    for a, b in zip(ref["history"], rep["history"]):
        assert a["removed_params"] == b["removed_params"] and abs(a["loss"] - b["loss"]) < 1e-5

    # cut the two-process run after its step-4 checkpoint, resume it (in one process): the same end
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    for p in ("model", "checkpoints/step-6"):
        shutil.rmtree(cut / p)
    for p in ("plan.json", "report.json"):
        (cut / p).unlink()
    info = json.loads((cut / "run.json").read_text())
    (cut / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    assert (cut / "checkpoints/step-4").is_dir()
    resumed = prune(tiny_dir, cut, resume=True, **RUN)
    assert resumed["history"][-1]["step"] == 6
    assert json.loads((cut / "plan.json").read_text()) == plan2
    assert_same_weights(two, cut)


def test_a_batch_that_does_not_split_is_one_line(tiny_dir, tmp_path, monkeypatch):
    from lorashear import parallel

    class Three(parallel.Solo):
        num_processes = 3

    with pytest.raises(LorashearError, match="multiple of processes × gradient accumulation steps = 3 × 1"):
        parallel.rows_per_micro_batch(4, Three())
    parts = parallel.micro_batches(torch.arange(12).reshape(6, 2), type("P1", (Three,), {"process_index": 1})())
    assert [p[:, 0].tolist() for p in parts] == [[4, 6]]
    monkeypatch.setattr(parallel, "accelerator", lambda device=None: Three())
    with pytest.raises(LorashearError, match="--batch-size 4 must be a multiple"):
        prune(tiny_dir, tmp_path / "o", **RUN)
    assert not (tmp_path / "o").exists()  # refused before anything was written


RANK_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
from lorashear import parallel
acc = parallel.accelerator(None)  # no --device: the default
out = {out!r}
with open(os.path.join(out, f"rank-{{acc.process_index}}"), "w") as f:
    f.write(f"{{acc.process_index}}/{{acc.num_processes}} {{acc.device.type}} {{os.getpid()}}")
time.sleep(float({sleep!r}))
"""


def _rank_launch(tmp_path, sleep: float) -> subprocess.Popen:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(root=str(ROOT), out=str(tmp_path), sleep=sleep))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # a host without a GPU
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True)


@needs_accelerate
def test_two_processes_without_device_on_a_cpu_host_are_one_run(tmp_path):
    """Without --device on a host with no GPU, the two processes form one data-parallel run on CPU (not two
    independent one-process runs)."""
    proc = _rank_launch(tmp_path, 0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    ranks = sorted((tmp_path / f"rank-{i}").read_text().rsplit(" ", 1)[0] for i in range(2))
    assert ranks == ["0/2 cpu", "1/2 cpu"]


@needs_accelerate
def test_ranks_stop_when_the_launcher_dies(tmp_path):
    import signal
    import time

    import psutil

    proc = _rank_launch(tmp_path, 300)
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / f"rank-{i}").exists() for i in range(2)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        time.sleep(0.2)
        pids = [int((tmp_path / f"rank-{i}").read_text().split()[-1]) for i in range(2)]
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only
        proc.wait(10)
        deadline = time.monotonic() + 20
        alive = lambda: [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
