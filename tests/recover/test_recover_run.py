"""Recovery end to end on a pruned demo model: budget, trajectory, improvement, resume, instruction stage, refusals."""
from __future__ import annotations

import json

import pytest
import torch

from lorashear import LorashearError
from lorashear.recover import recover

SMALL = dict(tokens=24 * 4 * 64, round_steps=8, seq_len=64, val_tokens=2048, eval_tokens=2048, instruct_steps=0)


@pytest.fixture(scope="module")
def dynamic(pruned_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "out"
    return out, recover(pruned_demo, out, **SMALL)


def test_token_budget_is_never_exceeded(dynamic):
    out, rep = dynamic
    assert rep["tokens_stage1"] <= SMALL["tokens"]
    assert all(r["tokens"] <= SMALL["tokens"] for r in rep["rounds"])
    traj = json.loads((out / "trajectory.json").read_text())
    assert [r["tokens"] for r in traj["rounds"]] == [0, 2048, 4096, 6144]


def test_the_most_degraded_source_gets_more_weight(dynamic):
    _, rep = dynamic
    first = rep["rounds"][0]
    worst = max(first["deviation"], key=first["deviation"].get)
    assert rep["rounds"][1]["weights"][worst] > 1 / 3
    assert all(w >= 0.1 / 3 - 1e-12 for r in rep["rounds"] for w in r["weights"].values())


def test_perplexity_improves_on_every_source(dynamic):
    _, rep = dynamic
    for p in ("short", "long"):
        before = {r["source"]: r["ppl"] for r in rep["eval_before"]["perplexity"] if r["protocol"] == p}
        after = {r["source"]: r["ppl"] for r in rep["eval_after"]["perplexity"] if r["protocol"] == p}
        assert all(after[s] < before[s] for s in before), (p, before, after)


def test_recovered_model_reloads_with_chained_provenance(dynamic, pruned_demo):
    from lorashear import load_pruned

    out, _ = dynamic
    side = json.loads((out / "model/lorashear.json").read_text())
    assert side["provenance"]["method"] == "recover" and side["provenance"]["pruned_model"] == str(pruned_demo)
    assert side["provenance"]["pruned_provenance"]["method"] == "test"
    model = load_pruned(out / "model")
    assert sum(p.numel() for p in model.parameters()) == side["n_params"]


def test_static_mixture_keeps_uniform_weights(pruned_demo, tmp_path):
    rep = recover(pruned_demo, tmp_path / "s", **{**SMALL, "tokens": 8 * 4 * 64, "mixture": "static"})
    assert all(abs(w - 1 / 3) < 1e-12 for r in rep["rounds"] for w in r["weights"].values())


def test_resume_after_interruption_reproduces_the_uninterrupted_run(pruned_demo, dynamic, tmp_path):
    out_full, full = dynamic
    calls = {"n": 0}

    def stop_after_two_rounds(fraction, stage):
        if stage.startswith("round 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recover(pruned_demo, tmp_path / "cut", progress=stop_after_two_rounds, **SMALL)
    assert json.loads((tmp_path / "cut/run.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in (tmp_path / "cut/checkpoints").iterdir()) == ["step-8"]  # round 2 was cut before its checkpoint
    rep = recover(pruned_demo, tmp_path / "cut", resume=True, **SMALL)
    assert [r["weights"] for r in rep["rounds"]] == [r["weights"] for r in full["rounds"]]
    from safetensors.torch import load_file

    a, b = load_file(str(out_full / "model/model.safetensors")), load_file(str(tmp_path / "cut/model/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    del calls


def test_a_finished_recovery_is_not_resumed(dynamic, pruned_demo):
    out, _ = dynamic
    before = (out / "report.json").read_bytes()
    with pytest.raises(LorashearError, match="that recovery already finished; nothing to resume"):
        recover(pruned_demo, out, resume=True, **SMALL)
    assert (out / "report.json").read_bytes() == before
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_instruction_stage_stops_early_when_validation_loss_does_not_improve(pruned_demo, tmp_path):
    rep = recover(pruned_demo, tmp_path / "i", **{**SMALL, "tokens": 4 * 4 * 64, "round_steps": 4, "instruct_steps": 50,
                                                  "instruct_eval_every": 3, "instruct_patience": 2, "lr": 1e-30,
                                                  "instruct_val_examples": 8})
    ins = rep["instruct"]
    assert ins["stopped"] and "early stop" in ins["stopped"]
    assert ins["step"] == 6 and [h["step"] for h in ins["history"]] == [0, 3, 6]


def test_instruction_loss_counts_response_tokens_only(demo_model, demo_tokenizer):
    from lorashear.data import collate_instructions, demo_instructions, tokenize_instructions

    feats = tokenize_instructions(demo_instructions("validation")[:2], demo_tokenizer, 128)
    b = collate_instructions(feats, demo_tokenizer.eos_token_id)
    with torch.no_grad():
        loss = demo_model(**b).loss
        logits = demo_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    labels = b["labels"][:, 1:]
    keep = labels != -100
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[keep])
    assert torch.allclose(loss, manual, atol=1e-5)
    prompt_len = len(feats[0]["labels"]) - sum(1 for x in feats[0]["labels"] if x != -100)
    assert prompt_len > 10 and all(x == -100 for x in feats[0]["labels"][:prompt_len])


# ------------------------------------------------------------------------------------------- bad input
def test_source_without_validation_split_is_refused(pruned_demo, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"text": "hello world"}\n')
    with pytest.raises(LorashearError, match="no validation split"):
        recover(pruned_demo, tmp_path / "o", data=("demo", f"mine={data}"), **{k: v for k, v in SMALL.items()})


def test_dense_model_that_is_not_the_origin_is_refused(pruned_demo, tmp_path, demo_tokenizer):
    from transformers import LlamaConfig

    from lorashear.loading import model_from_config

    other = tmp_path / "other"
    cfg = LlamaConfig(vocab_size=len(demo_tokenizer), hidden_size=32, intermediate_size=48, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=256)
    model_from_config(cfg).save_pretrained(other)
    demo_tokenizer.save_pretrained(other)
    with pytest.raises(LorashearError, match="not the origin"):
        recover(pruned_demo, tmp_path / "o", dense=other, **SMALL)
    assert not (tmp_path / "o/model").exists()


@pytest.mark.parametrize("content, message", [("", "empty|no record|no instruction"), ('{"instruction": "x"\n', "malformed|line 1")])
def test_empty_or_malformed_instruction_file_is_refused(pruned_demo, tmp_path, content, message):
    f = tmp_path / "ins.jsonl"
    f.write_text(content)
    with pytest.raises(LorashearError, match=message):
        recover(pruned_demo, tmp_path / "o", **{**SMALL, "instructions": str(f), "instruct_steps": 5})


def test_zero_budget_is_refused_before_anything_runs(pruned_demo, tmp_path):
    with pytest.raises(LorashearError, match="tokens: must be ≥ 1, got 0"):
        recover(pruned_demo, tmp_path / "o", **{**SMALL, "tokens": 0})
    assert not (tmp_path / "o").exists()


def test_final_evaluation_reads_eval_tokens_not_the_round_prefix(pruned_demo, tmp_path):
    """The rounds steer by a val_tokens prefix; the before/after figures use eval_tokens of the validation split,
    the same tokens the dense model and a pruning run are evaluated on."""
    from lorashear.data import demo_corpus
    from lorashear.evaluate import evaluate_perplexity
    from lorashear.loading import load_model

    rep = recover(pruned_demo, tmp_path / "out", **{**SMALL, "tokens": 2 * 4 * 64, "round_steps": 2,
                                                    "val_tokens": 512, "eval_tokens": 2048})
    model, tok = load_model(pruned_demo, device="cpu")
    direct = evaluate_perplexity(model, tok, demo_corpus("validation"), protocols=("short", "long"), max_tokens=2048)
    got = {(r["source"], r["protocol"]): r for r in rep["eval_before"]["perplexity"]}
    for r in direct:
        assert got[(r.source, r.protocol)]["n_tokens"] == r.n_tokens
        assert got[(r.source, r.protocol)]["ppl"] == pytest.approx(r.ppl, rel=1e-5)


# ------------------------------------------------------------------------------- distillation, full training
def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _cut_and_resume(pruned, out, **kw):
    """Interrupt after round 2's steps (its checkpoint not yet written), then resume to the end."""
    def stop(fraction, stage):
        if stage.startswith("round 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recover(pruned, out, progress=stop, **kw)
    return recover(pruned, out, resume=True, **kw)


DISTILL = {**SMALL, "tokens": 8 * 4 * 64, "round_steps": 4, "val_tokens": 512, "eval_tokens": 512, "distill": 1.0}


def test_recovery_with_distillation_records_its_teacher_and_resumes_bit_exactly(pruned_demo, tmp_path, monkeypatch):
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    full = recover(pruned_demo, tmp_path / "full", **DISTILL)
    teacher = full["teacher"]
    assert teacher["kind"] == "finetuned" and not teacher["reused"] and teacher["steps"] == 8
    assert teacher["eval"]["mean_short"] > 0 and full["settings"]["teacher"] == "finetuned"
    assert json.loads((tmp_path / "full/run.json").read_text())["teacher"]["key"] == teacher["key"]
    resumed = _cut_and_resume(pruned_demo, tmp_path / "cut", **DISTILL)
    assert resumed["teacher"]["reused"] and resumed["teacher"]["key"] == teacher["key"]
    a, b = _weights(tmp_path / "full/model"), _weights(tmp_path / "cut/model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = recover(pruned_demo, tmp_path / "plain", **{**DISTILL, "distill": 0.0})
    c = _weights(tmp_path / "plain/model")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the distillation term changed the training
    assert plain["teacher"] is None


def test_full_training_changes_base_weights_reloads_and_resumes(pruned_demo, tmp_path):
    from lorashear import load_pruned

    kw = {**SMALL, "tokens": 8 * 4 * 64, "round_steps": 4, "val_tokens": 512, "eval_tokens": 512, "train": "full", "lr": 1e-3}
    rep = recover(pruned_demo, tmp_path / "full", **kw)
    assert rep["train"] == "full"
    before, after = _weights(pruned_demo), _weights(tmp_path / "full/model")
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every tensor trained, norms included
    side = json.loads((tmp_path / "full/model/lorashear.json").read_text())
    assert sum(p.numel() for p in load_pruned(tmp_path / "full/model").parameters()) == side["n_params"]
    _cut_and_resume(pruned_demo, tmp_path / "cut", **kw)
    resumed = _weights(tmp_path / "cut/model")
    assert all(torch.equal(after[k], resumed[k]) for k in after)


def test_cosine_schedule_changes_stage_one_and_resumes_bit_exactly(pruned_demo, tmp_path):
    """--lr-schedule cosine decays stage 1's lr: another model than the constant schedule's, and an interrupted
    run resumes to the same weights (the rate is a function of the step, no scheduler state)."""
    kw = {**SMALL, "tokens": 8 * 4 * 64, "round_steps": 4, "val_tokens": 512, "eval_tokens": 512, "lr": 1e-3,
          "lr_schedule": "cosine"}
    rep = recover(pruned_demo, tmp_path / "cos", **kw)
    assert rep["settings"]["lr_schedule"] == "cosine"
    recover(pruned_demo, tmp_path / "const", **{**kw, "lr_schedule": "constant"})
    a, c = _weights(tmp_path / "cos/model"), _weights(tmp_path / "const/model")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    _cut_and_resume(pruned_demo, tmp_path / "cut", **kw)
    b = _weights(tmp_path / "cut/model")
    assert all(torch.equal(a[k], b[k]) for k in a)
