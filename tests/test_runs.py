"""The run scaffold (lorashear/runs.py): run folder status and refusals, atomic checkpoints, the NaN stop, the one
training step and the one batch-seed formula — exercised through the real prune and recover entry points where a
rule is theirs to keep, on a tiny real PEFT LLaMA otherwise."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lorashear import LorashearError, runs
from lorashear.data import DEMO_MODEL_DIR
from tiny_models import build

ROOT = Path(__file__).resolve().parents[1]


def _peft(seed: int = 0):
    model = build("llama-gqa", seed=seed)
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))


def _batch(t: int) -> dict:
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(t))
    return {"input_ids": ids, "labels": ids}


def _opt(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _write_run(out: Path, fmt: str, settings: dict, status: str) -> None:
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"format": fmt, "settings": settings, "status": status}))


# ------------------------------------------------------------------------------------------------ run folder
def test_prune_refuses_to_resume_a_finished_run(tmp_path):
    from lorashear.prune.run import RUN_FORMAT, PruneSettings, prune

    st = PruneSettings(steps=10)
    _write_run(tmp_path / "o", RUN_FORMAT, st.to_dict(), "finished")
    with pytest.raises(LorashearError, match="already finished; nothing to resume"):
        prune("demo", tmp_path / "o", st, resume=True)
    assert json.loads((tmp_path / "o/run.json").read_text())["status"] == "finished"  # untouched


def test_recover_refuses_to_resume_a_finished_run(tmp_path):
    from lorashear.recover.run import RUN_FORMAT, RecoverSettings, recover

    st = RecoverSettings()
    shutil.copytree(DEMO_MODEL_DIR, tmp_path / "pruned")  # a model folder (the inputs are checked first)
    _write_run(tmp_path / "o", RUN_FORMAT, st.to_dict(), "finished")
    with pytest.raises(LorashearError, match="already finished; nothing to resume"):
        recover(tmp_path / "pruned", tmp_path / "o", st, dense="demo", resume=True)
    assert json.loads((tmp_path / "o/run.json").read_text())["status"] == "finished"


def test_recover_refuses_checkpoints_of_the_old_layout(tmp_path):
    """Before the scaffold, recover wrote checkpoints/ckpt-K/lora.safetensors; they are not read, and say why."""
    from lorashear.recover.run import RUN_FORMAT, RecoverSettings, recover

    st = RecoverSettings()
    shutil.copytree(DEMO_MODEL_DIR, tmp_path / "pruned")  # a model folder (the inputs are checked first)
    _write_run(tmp_path / "o", RUN_FORMAT, st.to_dict(), "failed")
    (tmp_path / "o/checkpoints/ckpt-3").mkdir(parents=True)
    (tmp_path / "o/checkpoints/ckpt-3/lora.safetensors").write_bytes(b"")
    with pytest.raises(LorashearError, match=r"checkpoints/ckpt-3\) are in the layout of an older lorashear"):
        recover(tmp_path / "pruned", tmp_path / "o", st, dense="demo", resume=True)


def test_resume_with_other_settings_names_them(tmp_path):
    _write_run(tmp_path / "o", "f/1", {"lr": 1.0, "seed": 0}, "failed")
    with pytest.raises(LorashearError, match=r"holds a run with other settings \(lr\); resume with the same options"):
        runs.open_run(tmp_path / "o", "f/1", {"lr": 2.0, "seed": 0}, resume=True)


def test_a_setting_added_since_the_run_counts_as_its_default(tmp_path):
    """A run started before an option existed behaved as the option's default: it resumes under the same options,
    and is refused (naming the option) when the option is now given another value."""
    _write_run(tmp_path / "o", "f/1", {"lr": 1.0}, "failed")
    folder = runs.open_run(tmp_path / "o", "f/1", {"lr": 1.0, "train": "lora"}, resume=True,
                           defaults={"lr": 3.0, "train": "lora"})
    assert folder.info["settings"] == {"lr": 1.0, "train": "lora"}
    with pytest.raises(LorashearError, match=r"other settings \(train\)"):
        runs.open_run(tmp_path / "o", "f/1", {"lr": 1.0, "train": "full"}, resume=True,
                      defaults={"lr": 3.0, "train": "lora"})


def test_resume_of_another_kind_of_run_is_refused(tmp_path):
    from lorashear.prune.run import RUN_FORMAT as PRUNE
    from lorashear.recover.run import RUN_FORMAT as RECOVER, RecoverSettings

    st = RecoverSettings().to_dict()
    _write_run(tmp_path / "o", PRUNE, st, "failed")
    with pytest.raises(LorashearError, match=f"holds a {PRUNE} run, not a recovery"):
        runs.open_run(tmp_path / "o", RECOVER, st, resume=True, what="recovery")


def test_a_folder_holding_other_files_is_refused_for_a_new_run(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o/notes.txt").write_text("mine")
    with pytest.raises(LorashearError, match="already holds other files; choose an empty --out"):
        runs.open_run(tmp_path / "o", "f/1", {}, resume=False)


def test_keyboard_interrupt_is_recorded_as_interrupted(tmp_path):
    folder = runs.open_run(tmp_path / "o", "f/1", {"a": 1}, resume=False, model="m")
    with pytest.raises(KeyboardInterrupt):
        with folder.running():
            assert json.loads((tmp_path / "o/run.json").read_text())["status"] == "running"
            (tmp_path / "o/checkpoints").mkdir()  # progress worth keeping
            raise KeyboardInterrupt
    info = json.loads((tmp_path / "o/run.json").read_text())
    assert info["status"] == "interrupted" and info["model"] == "m" and info["message"] == "KeyboardInterrupt"


def test_an_error_is_recorded_as_failed_with_its_first_line(tmp_path):
    folder = runs.open_run(tmp_path / "o", "f/1", {}, resume=False)
    with pytest.raises(ValueError):
        with folder.running():
            (tmp_path / "o/plan.json").write_text("{}")
            raise ValueError("bad thing\nmore detail")
    info = json.loads((tmp_path / "o/run.json").read_text())
    assert info["status"] == "failed" and info["message"] == "bad thing"


def test_a_resumed_run_keeps_its_start_time_and_finishes(tmp_path):
    folder = runs.open_run(tmp_path / "o", "f/1", {}, resume=False)
    with pytest.raises(KeyboardInterrupt), folder.running():
        (tmp_path / "o/checkpoints").mkdir()
        raise KeyboardInterrupt
    started = json.loads((tmp_path / "o/run.json").read_text())["started"]
    with runs.open_run(tmp_path / "o", "f/1", {}, resume=True).running():
        pass
    info = json.loads((tmp_path / "o/run.json").read_text())
    assert info["status"] == "finished" and info["started"] == started and info["message"] is None


def test_a_run_that_fails_before_any_progress_leaves_no_folder(tmp_path):
    """The corrected command can then start in the same --out, without --resume (issue 25, item 5)."""
    with pytest.raises(ValueError), runs.open_run(tmp_path / "o", "f/1", {"a": 1}, resume=False).running():
        raise ValueError("empty data file")
    assert not (tmp_path / "o").exists()
    (tmp_path / "given").mkdir()  # a folder the user made: kept, only run.json goes
    with pytest.raises(ValueError), runs.open_run(tmp_path / "given", "f/1", {}, resume=False).running():
        raise ValueError("bad")
    assert (tmp_path / "given").is_dir() and not any((tmp_path / "given").iterdir())
    with runs.open_run(tmp_path / "given", "f/1", {"a": 2}, resume=False).running():
        pass


def test_other_processes_write_nothing(tmp_path):
    with runs.open_run(tmp_path / "o", "f/1", {}, resume=False).running(main=False):
        pass
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model = _peft()
    opt = _opt(model)
    for t in range(2):
        runs.train_step(model, opt, _batch(t), t)
    base = model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight
    with torch.no_grad():
        base[:3] = 0.0  # as a pruning optimizer writes base rows: ``changed`` tensors are saved too
    ck = runs.save_checkpoint(tmp_path, 2, model, opt, {"history": [1, 2]}, changed=[base])
    assert ck == tmp_path / "checkpoints/step-2"
    assert sorted(p.name for p in ck.iterdir()) == ["optimizer.pt", "state.json", "weights.safetensors"]
    expect_next = torch.rand(3)  # the RNG draw after the checkpoint

    other = _peft()  # the same base model, as a resumed run loads it
    other_opt = _opt(other)
    runs.train_step(other, other_opt, _batch(9), 0)  # other LoRA weights and optimizer state, to be replaced
    step, state = runs.load_checkpoint(ck, other, other_opt)
    assert step == 2 and state == {"history": [1, 2]}
    assert torch.equal(torch.rand(3), expect_next)
    mine, theirs = dict(model.named_parameters()), dict(other.named_parameters())
    assert all(torch.equal(p, theirs[name]) for name, p in mine.items())
    # the two then train identically
    assert runs.train_step(model, opt, _batch(2), 2) == runs.train_step(other, other_opt, _batch(2), 2)


def test_only_the_newest_two_checkpoints_are_kept(tmp_path):
    model = _peft()
    opt = _opt(model)
    for step in (1, 2, 3):
        runs.save_checkpoint(tmp_path, step, model, opt, {})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert runs.latest_checkpoint(tmp_path) == tmp_path / "checkpoints/step-3"


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    model = _peft()
    ck = runs.save_checkpoint(tmp_path, 1, model, _opt(model), {})
    plain = build("llama-gqa")
    with pytest.raises(LorashearError, match="not in this model"):
        runs.load_checkpoint(ck, plain, torch.optim.AdamW(plain.parameters()))


# ------------------------------------------------------------------------------------------------- NaN stop
def _nan_loss(model, batch, reduction="mean"):
    return runs.causal_lm_loss(model, batch, reduction) * float("nan")


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    model = _peft()
    opt = _opt(model)
    runs.train_step(model, opt, _batch(0), 0, out=tmp_path)
    runs.save_checkpoint(tmp_path, 1, model, opt, {})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(LorashearError) as err:
        runs.train_step(model, opt, _batch(1), 1, loss_fn=_nan_loss, out=tmp_path)
    msg = str(err.value)
    assert msg.startswith("loss became nan at step 1: stopped")
    assert f"the last good checkpoint (step-1) is in {tmp_path / 'checkpoints'}" in msg and "--resume" in msg
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)  # no step taken


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    model = _peft()
    with pytest.raises(LorashearError, match="at step 0: stopped; no checkpoint had been written yet"):
        runs.train_step(model, _opt(model), _batch(0), 0, loss_fn=_nan_loss, out=tmp_path)


# ----------------------------------------------------------------------------------------------- train step
def test_train_step_is_backward_step_zero_grad():
    """Alone, one train_step is exactly the plain loop: the same loss and the same weights."""
    a, b = _peft(), _peft()
    oa, ob = _opt(a), _opt(b)
    for t in range(3):
        got = runs.train_step(a, oa, _batch(t), t)
        loss = b(**_batch(t), use_cache=False).loss
        loss.backward()
        ob.step()
        ob.zero_grad(set_to_none=True)
        assert got == float(loss.item())
    assert all(p.grad is None for p in a.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_causal_lm_loss_sum_is_the_mean_times_the_labelled_tokens():
    model = _peft()
    batch = _batch(0)
    batch["labels"] = batch["labels"].clone()
    batch["labels"][0, :5] = -100  # a prompt that carries no loss
    n = runs.labelled_tokens(batch)
    assert n == 2 * 11 - 4
    with torch.no_grad():
        mean = runs.causal_lm_loss(model, batch, "mean")
        total = runs.causal_lm_loss(model, batch, "sum")
    assert torch.allclose(total / n, mean, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- batch seeds
def test_batch_seed_is_written_once():
    """Every run draws its batches through runs.batch_seed: the formula appears nowhere else in the package."""
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "lorashear").rglob("*.py") if "1_000_003" in p.read_text()]
    assert found == ["lorashear/runs.py"]
    for stage in ("prune/run.py", "recover/run.py"):
        text = (ROOT / "lorashear" / stage).read_text()
        assert re.search(r"seed=runs\.batch_seed\(", text), stage


# ------------------------------------------------------------------------------------------- lr schedule
def test_cosine_lr_is_the_base_before_and_at_the_start_and_half_at_the_middle():
    from lorashear.runs import scheduled_lr

    assert scheduled_lr(2e-4, "cosine", 3, 4, 12) == 2e-4  # before the decay
    assert scheduled_lr(2e-4, "cosine", 4, 4, 12) == 2e-4  # its first step
    assert scheduled_lr(2e-4, "cosine", 8, 4, 12) == pytest.approx(1e-4)
    rates = [scheduled_lr(2e-4, "cosine", t, 4, 12) for t in range(4, 12)]
    assert all(a > b for a, b in zip(rates, rates[1:])) and 0 < rates[-1] < 1e-5


def test_an_unknown_lr_schedule_is_refused():
    from lorashear.runs import scheduled_lr

    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        scheduled_lr(1e-3, "step", 1, 0, 4)
