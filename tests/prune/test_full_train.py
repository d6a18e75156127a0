"""``prune --train full`` (lorashear/prune/full.py): once the structure is final — after LHSPG's last period, after
LoRAPrune's last mask update, from step 0 for a one-shot method — LoRA is merged and every parameter of the masked
model trains, the removed units held at exactly zero, so that compress stays exact; checkpoints resume across the
switch; the default (``train="auto"``) trains in full on a small model with steps after the final structure, in LoRA
otherwise (``train_mode``); settings that would leave an asked-for full phase empty are refused in one line. On the
tiny GQA LLaMA folder (conftest)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorashear import LorashearError, load_pruned
from lorashear.prune import prune
from lorashear.prune.run import PruneSettings
from lorashear.prune.settings import train_mode
from tests.prune.interrupt import same_saved_model, stop_at

ROOT = Path(__file__).resolve().parents[2]

# LHSPG: warm-up 2, two periods of 3 steps (the structure is final at step 8), 2 steps after
LHSPG = dict(method="lhspg", ratio=0.25, kinds=("attention", "mlp", "hidden"), steps=10, warmup_steps=2, periods=2,
             period_steps=3)
# a one-shot method: its plan is applied before step 0 (attention + MLP, uniform: a stock-loadable result)
MAGNITUDE = dict(method="magnitude", ratio=0.05, kinds=("attention", "mlp"), allocation="uniform", steps=4)
# LoRAPrune: mask updates at steps 2 and 3 (the last), final from step 4; two cooldown steps train in full
LORAPRUNE = dict(method="loraprune", ratio=0.05, kinds=("attention", "mlp"), allocation="uniform", steps=6, mask_every=2,
                 cooldown_steps=2)
COMMON = dict(batch_size=2, seq_len=32, eval_tokens=512, measure_latency=False, checkpoint_every=4, distill=0.0)
CASES = {"lhspg": LHSPG, "magnitude": MAGNITUDE, "loraprune": LORAPRUNE}


def _run(tiny_dir, out, case: str, **kw):
    return prune(tiny_dir, out, **{**CASES[case], **COMMON, **kw})


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """{(case, train): (folder, report)}; ``default`` is the run without ``train`` given (lhspg only)."""
    root = tmp_path_factory.mktemp("fulltrain")
    out = {}
    for case in CASES:
        for train in ("default", "lora", "full"):
            if case != "lhspg" and train == "default":
                continue
            kw = {} if train == "default" else {"train": train}
            folder = root / f"{case}-{train}"
            out[case, train] = (folder, _run(tiny_dir, folder, case, **kw))
    return out


def _masked(tiny_dir, folder, steps):
    """The trained, masked, not yet compressed model: the run's last checkpoint (every parameter, in full) loaded
    into the dense model; and its groups."""
    from lorashear.groups import find_groups
    from lorashear.loading import load_model
    from lorashear.trace import trace

    model, _ = load_model(tiny_dir, device="cpu")
    ck = folder / "checkpoints" / f"step-{steps}"
    assert json.loads((ck / "state.json").read_text())["train"] == "full"
    tensors = load_file(str(ck / "weights.safetensors"))
    params = dict(model.named_parameters())
    assert {n for n, _ in model.named_parameters()} <= set(tensors) | {"lm_head.weight"}  # every parameter (tied once)
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return model.eval(), find_groups(trace(model))


def _ids(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, 16), generator=g)


# ------------------------------------------------------------------------------------------------- default
def test_default_on_a_small_model_is_full_and_gives_the_same_run_as_train_full(runs):
    (a, ra), (b, rb) = runs["lhspg", "default"], runs["lhspg", "full"]
    assert ra["settings"]["train"] == "auto" and ra["train_requested"] == "auto"
    assert ra["train"] == "full" and ra["full_from_step"] == 8 and ra["train_reason"].startswith("auto: full — ")
    assert ra["history"] == rb["history"] and ra["events"] == rb["events"]
    assert same_saved_model(a, b)
    assert [r["trained"] for r in ra["training"]] == ["lora", "full"]


def test_an_asked_for_mode_is_recorded_as_asked(runs):
    rep = runs["lhspg", "lora"][1]
    assert (rep["train"], rep["train_requested"], rep["full_from_step"]) == ("lora", "lora", None)
    assert rep["train_reason"] == "lora (--train lora)"


def test_the_bare_defaults_train_a_small_model_in_full_distilled_and_the_saved_model_reloads(tiny_dir, tmp_path,
                                                                                             monkeypatch):
    """Every setting at its default (llm-pruner, MLP, distilled from the corrected teacher, --train auto) on the tiny
    model: every parameter trains from step 0 (the one-shot structure is final there), the report says so and why,
    and the saved model reloads at the reported size and computes what the masked model does."""
    from lorashear.compress import verify_tolerance

    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    rep = prune(tiny_dir, tmp_path / "o", ratio=0.05, steps=4, batch_size=2, seq_len=32, eval_tokens=512,
                measure_latency=False)
    assert (rep["method"], rep["settings"]["kinds"], rep["settings"]["distill"]) == ("llm-pruner", ["mlp"], 1.0)
    assert rep["teacher"]["kind"] == "finetuned"
    assert (rep["train"], rep["train_requested"], rep["full_from_step"]) == ("full", "auto", 0)
    assert rep["train_reason"].startswith("auto: full — ")
    masked, _ = _masked(tiny_dir, tmp_path / "o", 4)
    small = load_pruned(tmp_path / "o" / "model")
    assert sum(p.numel() for p in small.parameters()) == rep["params_after"]
    ids = _ids(masked.config.vocab_size)
    with torch.no_grad():
        ref, out = masked(input_ids=ids).logits, small(input_ids=ids).logits
    assert (out - ref).abs().max().item() <= verify_tolerance(ref)


# ------------------------------------------------------------------------------------------------ train_mode
def test_auto_trains_a_small_model_in_full_after_the_structure_is_final():
    mode, why = train_mode(PruneSettings(steps=120, train="auto"), 134_515_008)
    assert mode == "full"
    assert why == "auto: full — 134.5 M parameters ≤ 0.5 B and 120 steps after the structure is final"


def test_auto_trains_a_model_above_half_a_billion_with_lora():
    mode, why = train_mode(PruneSettings(steps=120, train="auto"), 1_235_814_400)
    assert mode == "lora" and why == "auto: lora — 1.236 B parameters > 0.5 B"


def test_auto_trains_lora_when_no_step_follows_the_final_structure():
    st = PruneSettings(method="lhspg", steps=10, warmup_steps=2, periods=2, period_steps=4, train="auto")
    assert train_mode(st, 1000) == ("lora", "auto: lora — no step after the structure is final (step 10 of 10)")


@pytest.mark.parametrize("train, n_params", [("lora", 1000), ("full", 10**10)])
def test_an_explicit_mode_is_taken_as_asked(train, n_params):
    assert train_mode(PruneSettings(train=train), n_params)[0] == train


# ---------------------------------------------------------------------------------------------- full phase
@pytest.mark.parametrize("case, switch", [("lhspg", 8), ("magnitude", 0), ("loraprune", 4)])
def test_report_says_which_steps_trained_what(runs, case, switch):
    _, rep = runs[case, "full"]
    assert rep["train"] == "full" and rep["full_from_step"] == switch
    want = ([{"from_step": 0, "to_step": switch, "trained": "lora"}] if switch else []) + \
           [{"from_step": switch, "to_step": CASES[case]["steps"], "trained": "full"}]
    assert [{k: r[k] for k in ("from_step", "to_step", "trained")} for r in rep["training"]] == want
    assert [switch, "LoRA merged into the base weights; every parameter trains from here (--train full)"] in rep["events"]
    assert len(rep["history"]) == CASES[case]["steps"]


@pytest.mark.parametrize("case", CASES)
def test_removed_units_are_exactly_zero_after_full_training(runs, tiny_dir, case):
    from lorashear.prune.units import unit_slices

    folder, rep = runs[case, "full"]
    model, groups = _masked(tiny_dir, folder, CASES[case]["steps"])
    removal = json.loads((folder / "plan.json").read_text())["removal"]
    removal = {g: u for g, u in removal.items() if u}
    assert removal
    slices = unit_slices(model, [g for g in groups if g.id in removal])
    for gid, units in removal.items():
        for us in slices[gid]:
            rows = us.base.detach().index_select(us.axis, us.indices(units))
            assert rows.numel() and bool((rows == 0).all()), (gid, us.source.param if us.source else None)


@pytest.mark.parametrize("case", CASES)
def test_masked_model_logits_equal_the_saved_compressed_model(runs, tiny_dir, case):
    """Every weight moved, yet the saved smaller model computes what the masked model computes (without masking it
    again: the held zeros alone make compress exact)."""
    from lorashear.compress import verify_tolerance

    folder, _ = runs[case, "full"]
    masked, _ = _masked(tiny_dir, folder, CASES[case]["steps"])
    small = load_pruned(folder / "model")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    ids = _ids(masked.config.vocab_size)
    with torch.no_grad():
        ref, out = masked(input_ids=ids).logits, small(input_ids=ids).logits
    assert (out - ref).abs().max().item() <= verify_tolerance(ref)


@pytest.mark.parametrize("case", CASES)
def test_full_phase_trains_weights_lora_never_touches(runs, case):
    """The same structure as the LoRA run (the same plan before the switch), but the surviving norm weights —
    frozen under LoRA — moved in every entry."""
    wl = load_file(str(runs[case, "lora"][0] / "model/model.safetensors"))
    wf = load_file(str(runs[case, "full"][0] / "model/model.safetensors"))
    assert wl.keys() == wf.keys() and all(wl[k].shape == wf[k].shape for k in wl)
    norms = [k for k in wl if k.endswith("norm.weight")]
    assert norms and all(bool((wl[k] != wf[k]).all()) for k in norms), norms
    assert not torch.equal(wl["model.embed_tokens.weight"], wf["model.embed_tokens.weight"])


# ------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("case, stop, full_checkpoint", [
    ("lhspg", 9, False),  # the newest checkpoint is LoRA's, at the switch step: the resumed run switches itself
    ("lhspg", 11, True),  # the newest checkpoint is after the switch: every parameter and the full optimizer
    ("magnitude", 3, True),
])
def test_interrupted_full_run_resumes_to_the_same_end(tiny_dir, tmp_path, case, stop, full_checkpoint):
    kw = dict(train="full", steps=CASES[case]["steps"] + 2, checkpoint_every=2)
    whole = _run(tiny_dir, tmp_path / "whole", case, **kw)

    with pytest.raises(KeyboardInterrupt):
        _run(tiny_dir, tmp_path / "cut", case, progress=stop_at(stop), **kw)
    newest = max((tmp_path / "cut/checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    assert (json.loads((newest / "state.json").read_text()).get("train") == "full") == full_checkpoint
    resumed = _run(tiny_dir, tmp_path / "cut", case, resume=True, **kw)
    assert resumed["history"] == whole["history"] and resumed["events"] == whole["events"]
    assert same_saved_model(tmp_path / "whole", tmp_path / "cut")


# ------------------------------------------------------------------------------------------- distillation
def test_full_phase_trains_through_the_distillation_loss(tiny_dir, tmp_path):
    """Pure KD from the dense teacher: the one-shot pruned model (every parameter training from step 0) starts close
    to its teacher — far below next-token loss (≈ ln vocab)."""
    rep = _run(tiny_dir, tmp_path / "o", "magnitude", train="full", distill=1.0, teacher="dense", pure_kd=True)
    assert rep["full_from_step"] == 0 and rep["teacher"]["kind"] == "dense"
    losses = [r["loss"] for r in rep["history"]]
    assert losses[0] < 0.5 and all(x < 0.5 for x in losses), losses


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("settings, message", [
    (dict(method="lhspg", steps=10, warmup_steps=2, periods=2, period_steps=4), "leaves no step after it"),
    (dict(method="loraprune", steps=20, cooldown_steps=0), "leaves no step after it"),
    (dict(method="magnitude", steps=0), "--train full trains the pruned model after the one-shot plan: give --steps > 0"),
])
def test_an_empty_full_phase_is_refused(settings, message):
    with pytest.raises(LorashearError, match="^train: ") as err:
        PruneSettings(train="full", **settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_an_empty_full_phase_in_one_line(tiny_dir, tmp_path, capsys):
    from lorashear.cli import main

    args = ["prune", str(tiny_dir), "--out", str(tmp_path / "o"), "--ratio", "0.2", "--no-progress", "--method", "lhspg",
            "--steps", "10",
            "--warmup-steps", "2", "--periods", "2", "--period-steps", "4", "--train", "full"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--train: --train full trains only once the structure is final" in err, err
    assert not (tmp_path / "o").exists()


def test_full_with_room_after_the_schedule_is_accepted():
    st = PruneSettings(method="lhspg", train="full", steps=11, warmup_steps=2, periods=2, period_steps=4)
    assert st.final_step() == 10 and st.to_dict()["train"] == "full"
    assert PruneSettings(method="loraprune", steps=20, train="full").final_step() == 18  # cooldown 10% of the steps


# ---------------------------------------------------------------------------------------------- accelerate
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")
def test_two_processes_train_every_parameter_as_one(tiny_dir, tmp_path):
    """Under ``accelerate launch`` the merged model is prepared again after the switch: every parameter's gradient is
    all-reduced, so two processes × two micro-batches end where one process does."""
    run = dict(method="lhspg", ratio=0.25, kinds=("attention", "mlp", "hidden"), steps=8, warmup_steps=2, periods=2,
               period_steps=2, batch_size=4, seq_len=32, eval_tokens=256, checkpoint_every=2, device="cpu", train="full",
               distill=0.0)
    one = prune(tiny_dir, tmp_path / "one", measure_latency=False, **run)
    args = ["prune", str(tiny_dir), "--out", str(tmp_path / "two"), "--no-progress", "--no-latency"]
    for k, v in run.items():
        args += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, tuple) else str(v)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
               OMP_NUM_THREADS="1", ACCELERATE_GRADIENT_ACCUMULATION_STEPS="2")
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "-m", "lorashear", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    two = json.loads((tmp_path / "two/report.json").read_text())
    assert two["processes"] == 2 and two["full_from_step"] == one["full_from_step"] == 6
    wa, wb = load_file(str(tmp_path / "one/model/model.safetensors")), load_file(str(tmp_path / "two/model/model.safetensors"))
    assert wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
