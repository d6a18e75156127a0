"""``prune --lr-schedule cosine``: the learning rate stays at ``--lr`` while the structure is decided and decays
(cosine, to 0) over the steps after it is final — from step 0 for a one-shot method, after LHSPG's last period —
under LoRA and under ``--train full``; a pure function of the step, so an interrupted run resumes to the same end;
refused in one line when no step follows the final structure. On the tiny GQA LLaMA folder (conftest)."""
from __future__ import annotations

import math

import pytest

from lorashear import LorashearError
from lorashear.prune import prune
from lorashear.prune.run import PruneSettings
from lorashear.runs import scheduled_lr
from tests.prune.interrupt import same_saved_model, stop_at

LR = 1e-3
# LHSPG: warm-up 2, two periods of 3 steps: the structure is final at step 8, steps 8..11 decay
LHSPG = dict(method="lhspg", ratio=0.05, kinds=("attention", "mlp"), steps=12, warmup_steps=2, periods=2, period_steps=3)
MAGNITUDE = dict(method="magnitude", ratio=0.05, kinds=("attention", "mlp"), allocation="uniform", steps=5)
COMMON = dict(batch_size=2, seq_len=32, eval_tokens=256, measure_latency=False, checkpoint_every=4, distill=0.0, lr=LR,
              lr_schedule="cosine")


def _lrs(rep):
    return [row["lr"] for row in rep["history"]]


def _cosine(t, start, end):
    return LR * 0.5 * (1 + math.cos(math.pi * (t - start) / (end - start)))


@pytest.mark.parametrize("train", ["lora", "full"])
def test_lhspg_decays_only_after_its_last_period(tiny_dir, tmp_path, train):
    rep = prune(tiny_dir, tmp_path / "o", **LHSPG, **COMMON, train=train)
    lrs = _lrs(rep)
    assert lrs[:8] == [LR] * 8
    assert lrs[8:] == pytest.approx([_cosine(t, 8, 12) for t in range(8, 12)])
    assert lrs[8] == LR and lrs[-1] < 0.2 * LR


def test_a_one_shot_method_decays_from_step_zero(tiny_dir, tmp_path):
    rep = prune(tiny_dir, tmp_path / "o", **MAGNITUDE, **COMMON)
    assert _lrs(rep) == pytest.approx([_cosine(t, 0, 5) for t in range(5)])


def test_interrupted_cosine_run_resumes_to_the_same_end(tiny_dir, tmp_path):
    kw = {**LHSPG, **COMMON, "train": "full", "checkpoint_every": 2}
    whole = prune(tiny_dir, tmp_path / "whole", **kw)

    with pytest.raises(KeyboardInterrupt):
        prune(tiny_dir, tmp_path / "cut", progress=stop_at(11), **kw)
    resumed = prune(tiny_dir, tmp_path / "cut", resume=True, **kw)
    assert resumed["history"] == whole["history"] and same_saved_model(tmp_path / "whole", tmp_path / "cut")


def test_cosine_with_no_step_after_the_structure_is_refused():
    with pytest.raises(LorashearError, match="^lr_schedule: ") as err:
        PruneSettings(method="lhspg", lr_schedule="cosine", train="lora", steps=10, warmup_steps=2, periods=2,
                      period_steps=4)
    assert "leaves none after step 10" in str(err.value) and "\n" not in str(err.value)


def test_constant_is_the_default_and_changes_nothing():
    assert PruneSettings().lr_schedule == "constant"
    assert [scheduled_lr(LR, "constant", t, 0, 5) for t in range(5)] == [LR] * 5


def test_the_corrected_teacher_keeps_a_constant_lr(tiny_dir, tmp_path, monkeypatch):
    """The teacher is the dense + same LoRA budget reference, trained at a constant lr whatever the student's
    schedule: a cosine run finds the teacher a constant run trained (same cache key, reused)."""
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    kw = {**MAGNITUDE, **COMMON, "distill": 1.0}
    constant = prune(tiny_dir, tmp_path / "constant", **{**kw, "lr_schedule": "constant"})
    cosine = prune(tiny_dir, tmp_path / "cosine", **kw)
    assert not constant["teacher"]["reused"] and cosine["teacher"]["reused"]
    assert cosine["teacher"]["key"] == constant["teacher"]["key"]
    assert _lrs(cosine) != _lrs(constant)
