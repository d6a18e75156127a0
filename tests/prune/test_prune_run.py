"""The prune run end to end (library, CLI, resume after kill -9) and its refusals, on a tiny real LLaMA folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorashear import LorashearError, load_pruned
from lorashear.prune import prune
from lorashear.prune.run import PruneSettings
from tests.prune.interrupt import same_saved_model, stop_at

# a whole run in ~1 s on the tiny model: LHSPG, warm-up 2, two periods of 3 steps, 2 steps after, in LoRA, no distillation
FAST = dict(method="lhspg", distill=0.0, train="lora", kinds=("attention", "mlp", "hidden"), steps=10, warmup_steps=2, periods=2, period_steps=3, batch_size=2, seq_len=32, eval_tokens=512,
            measure_latency=False, checkpoint_every=4)


def random_ids(vocab: int, seed: int = 0, batch: int = 2, seq: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lorashear", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _cli_args(model, out, **kw):
    s = {**FAST, **kw}
    args = [ "prune", model, "--out", out, "--ratio", s.pop("ratio", 0.2), "--no-progress", "--no-latency"]
    for k, v in s.items():
        if k == "measure_latency":
            continue
        args += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, tuple) else v]
    return args


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    report = prune(tiny_dir, out, ratio=0.25, **FAST)
    return out, report


def test_run_writes_model_plan_report(finished):
    out, report = finished
    for name in ("model/config.json", "model/lorashear.json", "plan.json", "report.json", "run.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert set(report["eval_before"]) >= {"mean_short", "mean_long", "perplexity"}
    assert report["history"] and all("loss" in r and "removed_params" in r for r in report["history"])


def test_parameters_removed_are_the_plan_and_within_one_unit(finished):
    out, report = finished
    plan = json.loads((out / "plan.json").read_text())
    assert report["params_removed"] == plan["params_removed"]
    per_unit = max(g["params_per_unit"] for g in plan["groups"].values())
    assert abs(plan["params_removed"] - plan["params_target"]) <= per_unit


def test_saved_model_reloads_and_runs(finished, tiny_dir):
    out, report = finished
    model = load_pruned(out / "model")
    assert sum(p.numel() for p in model.parameters() if True) >= report["params_after"]
    ids = random_ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    side = json.loads((out / "model" / "lorashear.json").read_text())
    assert side["provenance"]["method"] == "lhspg" and side["provenance"]["settings"]["ratio"] == 0.25


def test_same_seed_gives_the_same_weights(tiny_dir, tmp_path):
    a = prune(tiny_dir, tmp_path / "a", **FAST)
    b = prune(tiny_dir, tmp_path / "b", **FAST)
    assert a["history"] == b["history"]
    assert same_saved_model(tmp_path / "a", tmp_path / "b")


def test_resume_after_kill_reproduces_the_uninterrupted_run(tiny_dir, tmp_path):
    """kill -9 after the first checkpoint, then --resume: the same final weights as a run never interrupted."""
    slow = dict(method="lhspg", distill=0.0, train="lora", kinds=("attention", "mlp", "hidden"), steps=60,
                warmup_steps=4, periods=2, period_steps=8, batch_size=4, seq_len=64, eval_tokens=512, checkpoint_every=5,
                threads=1)
    full = _cli(*_cli_args(tiny_dir, tmp_path / "full", **slow))
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "lorashear", *map(str, _cli_args(tiny_dir, tmp_path / "cut", **slow))],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (tmp_path / "cut/checkpoints/step-10").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "cut/run.json").read_text())["status"] == "running"  # really cut mid-run
    assert not (tmp_path / "cut/model").exists()
    resumed = _cli(*_cli_args(tiny_dir, tmp_path / "cut", **slow), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert same_saved_model(tmp_path / "full", tmp_path / "cut")


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.5"], "--ratio: must be in (0, 1), got 1.5"),
    (["--ratio", "0"], "--ratio: must be in (0, 1), got 0"),
    (["--kinds", "attention,heads"], "--kinds: unknown 'heads'"),
    (["--method", "lhspg", "--steps", "0"], "--steps: 0 steps (no training) only for one-shot methods"),
    (["--gamma", "0.2"], "--gamma: γ needs a knowledge report"),
])
def test_bad_options_exit_2_with_one_line(tiny_dir, tmp_path, capsys, args, message):
    from lorashear.cli import main

    assert main(["prune", str(tiny_dir), "--out", str(tmp_path / "o"), "--ratio", "0.2", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_knowledge_report_of_another_model_is_refused(tiny_dir, tmp_path):
    from lorashear.knowledge import analyze

    from lorashear.loading import load_model

    demo, _ = load_model("demo", device="cpu")
    report = analyze(demo, None, estimator="magnitude", source="demo")
    path = report.save(tmp_path / "demo.parquet")
    with pytest.raises(LorashearError, match="model"):
        prune(tiny_dir, tmp_path / "o", knowledge=str(path), gamma=0.2, **FAST)
    assert not (tmp_path / "o/model").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path):
    r = _cli(*_cli_args(tiny_dir, tmp_path / "o", lr=1e30, steps=12, checkpoint_every=1))
    assert r.returncode == 2
    assert "loss became" in r.stderr and "last good checkpoint" in r.stderr, r.stderr
    assert list((tmp_path / "o/checkpoints").glob("step-*"))
    assert not (tmp_path / "o/model").exists()
    assert json.loads((tmp_path / "o/run.json").read_text())["status"] == "failed"


def test_output_folder_with_another_run_is_refused(finished, tiny_dir):
    out, _ = finished
    before = (out / "report.json").read_bytes()
    with pytest.raises(LorashearError, match="already holds a different run"):
        prune(tiny_dir, out, **{**FAST, "ratio": 0.3})
    assert (out / "report.json").read_bytes() == before


def test_a_finished_run_is_not_resumed(finished, tiny_dir):
    out, _ = finished
    before = (out / "report.json").read_bytes()
    with pytest.raises(LorashearError, match="that run already finished; nothing to resume"):
        prune(tiny_dir, out, ratio=0.25, resume=True, **FAST)
    assert (out / "report.json").read_bytes() == before


def test_an_interrupted_run_is_recorded_and_resumes_to_the_same_end(finished, tiny_dir, tmp_path):
    """Ctrl-C after step 5 (checkpoint step-4 written): run.json says interrupted; --resume ends where the
    uninterrupted run ended, with the same history and weights."""
    out_full, full = finished

    with pytest.raises(KeyboardInterrupt):
        prune(tiny_dir, tmp_path / "cut", ratio=0.25, progress=stop_at(5), **FAST)
    info = json.loads((tmp_path / "cut/run.json").read_text())
    assert info["status"] == "interrupted" and info["message"] == "KeyboardInterrupt"
    assert [p.name for p in (tmp_path / "cut/checkpoints").iterdir()] == ["step-4"]
    resumed = prune(tiny_dir, tmp_path / "cut", ratio=0.25, resume=True, **FAST)
    assert resumed["history"] == full["history"] and resumed["events"] == full["events"]
    assert json.loads((tmp_path / "cut/plan.json").read_text()) == json.loads((out_full / "plan.json").read_text())
    assert same_saved_model(out_full, tmp_path / "cut")


def test_settings_check_the_schedule_fits_the_steps():
    with pytest.raises(LorashearError, match="schedule needs"):
        PruneSettings(method="lhspg", steps=10, warmup_steps=5, periods=2, period_steps=5)


def test_default_lhspg_schedule_is_warmup_10_pruning_30_after_60_percent():
    """The defaults chosen in docs/lhspg.md ("Investigation"): a short pruning phase, most steps to recover."""
    st = PruneSettings(method="lhspg", steps=200)
    assert (st.warmup_steps, st.periods, st.period_steps) == (20, 4, 15)
    assert st.steps - st.warmup_steps - st.periods * st.period_steps == 120


# ------------------------------------------------------------------------------------------- distillation
def test_distilled_run_uses_the_cached_finetuned_teacher_and_resumes_to_the_same_end(tiny_dir, tmp_path, monkeypatch):
    """The default teacher is the dense model after the same LoRA budget (``finetune_dense``'s model, trained once
    and cached); a run interrupted after step 5 resumes to the uninterrupted run's history and weights."""
    from lorashear.prune.run import finetune_dense

    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    kw = {**FAST, "ratio": 0.25, "distill": 1.0}
    full = prune(tiny_dir, tmp_path / "full", **kw)
    teacher = full["teacher"]
    assert teacher["kind"] == "finetuned" and not teacher["reused"] and full["settings"]["teacher"] == "finetuned"
    assert json.loads((tmp_path / "full/run.json").read_text())["teacher"]["key"] == teacher["key"]
    ref = finetune_dense(tiny_dir, PruneSettings(**kw))  # the honest reference is the teacher, not a second copy
    assert ref["teacher"]["key"] == teacher["key"] and ref["teacher"]["reused"]
    assert ref["eval_after"] == teacher["eval"] and len(ref["losses"]) == FAST["steps"]

    with pytest.raises(KeyboardInterrupt):
        prune(tiny_dir, tmp_path / "cut", progress=stop_at(5), **kw)
    resumed = prune(tiny_dir, tmp_path / "cut", resume=True, **kw)
    assert resumed["teacher"]["reused"] and resumed["history"] == full["history"]
    assert same_saved_model(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("method", ["lhspg", "llm-pruner", "loraprune", "flap", "magnitude", "random"])
def test_every_method_trains_through_the_distillation_loss(tiny_dir, tmp_path, method):
    """Pure KD from the dense teacher: at the first step a LoRA student (B = 0) of the unpruned model *is* the
    teacher (loss 0), and a one-shot pruned one is close to it — far below next-token loss (≈ ln vocab)."""
    extra = {"llm-pruner": dict(calib_samples=4), "flap": dict(calib_samples=8), "loraprune": dict(mask_every=2),
             "lhspg": dict(warmup_steps=1, periods=2, period_steps=2)}.get(method, {})
    rep = prune(tiny_dir, tmp_path / method, method=method, kinds=("attention", "mlp"), ratio=0.05,
                allocation="uniform", steps=6, batch_size=2, seq_len=32, eval_tokens=512, measure_latency=False,
                checkpoint_every=100, distill=1.0, teacher="dense", pure_kd=True, train="lora", **extra)
    assert rep["teacher"]["kind"] == "dense" and rep["teacher"]["eval"] == rep["eval_before"]
    first = rep["history"][0]["loss"]
    assert first < 0.5, first
    if method in ("lhspg", "loraprune"):  # nothing pruned before the first step
        assert first == pytest.approx(0.0, abs=1e-5)
