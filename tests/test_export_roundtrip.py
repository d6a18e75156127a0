"""save_pruned proves its round trip; every pruned folder reloads with identical logits — hidden-only,
heads + MLP + hidden, non-uniform dense and MoE, GQA, tied embeddings, LoRA merged and kept."""
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import build, traced, traced_extra
from transformers import AutoModelForCausalLM

from lorashear import LorashearError, compress, find_groups, load_pruned, save_pruned, trace


def logits(model):
    x = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(input_ids=x).logits


def model_groups(name, lora=False):
    return traced_extra(name) if name in ("olmo2", "granite", "mixtral", "qwen2-moe", "olmoe", "xglm") else traced(name, lora)


def round_trip(small, report, path, **kw):
    side = save_pruned(small, path, report=report, **kw)
    back = AutoModelForCausalLM.from_pretrained(path).eval() if side["case"] == "stock" else load_pruned(path)
    return side, back


@pytest.mark.parametrize("name", ["qwen2", "olmo2", "granite", "llama"])
def test_hidden_only_pruning_reloads_with_the_head_size_and_rotary_it_was_made_with(name, tmp_path):
    model, _, groups = model_groups(name)
    small, report = compress(model, groups, {"model:hidden": [0, 5, 6, 17]})
    side, back = round_trip(small, report, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["hidden_size"] == 28 and cfg["head_dim"] == 8
    assert torch.equal(logits(back), logits(small))
    assert torch.equal(back.model.rotary_emb.inv_freq, small.model.rotary_emb.inv_freq)


@pytest.mark.parametrize("name", ["qwen2", "llama-gqa", "llama-tied", "mistral", "granite"])
def test_heads_mlp_and_hidden_together(name, tmp_path):
    model, _, groups = model_groups(name)
    removal = {g.id: [0] if g.n_units <= 2 else [0, 2] for g in groups if g.prunable and g.kind in ("attention", "mlp")}
    removal["model:hidden"] = [1, 3, 8, 9]
    small, report = compress(model, groups, removal)
    _, back = round_trip(small, report, tmp_path / "m")
    assert torch.equal(logits(back), logits(small))


@pytest.mark.parametrize("name,kind", [("llama", "mlp"), ("llama-gqa", "attention"), ("mixtral", "attention"),
                                       ("qwen2-moe", "mlp"), ("qwen2-moe", "attention"), ("olmoe", "attention")])
def test_non_uniform_removal_in_one_layer_only(name, kind, tmp_path):
    model, _, groups = model_groups(name)
    g = next(g for g in groups if g.prunable and g.kind == kind and g.layer == 0)
    small, report = compress(model, groups, {g.id: [0]})
    side, back = round_trip(small, report, tmp_path / "m")
    assert side["case"] == "lorashear" and not report.uniform
    assert side["checks"]["compress_verified"] and side["checks"]["round_trip_verified"]
    assert torch.equal(logits(back), logits(small))


def test_tied_embeddings_stay_tied_after_hidden_pruning(tmp_path):
    model, _, groups = model_groups("llama-tied")
    small, report = compress(model, groups, {"model:hidden": [2, 3, 30, 31]})
    _, back = round_trip(small, report, tmp_path / "m")
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(back), logits(small))


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2"])
def test_lora_merged_and_kept(arch, tmp_path):
    model, _, groups = traced(arch, lora=True)
    removal = {g.id: [1] for g in groups if g.prunable}
    small, report = compress(model, groups, removal)
    _, merged = round_trip(small, report, tmp_path / "merged")
    assert (logits(merged) - logits(small)).abs().max() <= 1e-5
    side = save_pruned(small, tmp_path / "kept", report=report, merge_lora=False)
    assert side["adapter"] == "adapter"
    base = load_pruned(tmp_path / "kept")
    kept = PeftModel.from_pretrained(base, tmp_path / "kept" / "adapter").eval()
    assert torch.equal(logits(kept), logits(small))
    assert hasattr(kept, "peft_config") and not hasattr(base, "lora_A")


def test_lora_bias_on_a_bias_free_layer_is_a_one_line_refusal(tmp_path):
    model = get_peft_model(build("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_bias=True,
                                                       init_lora_weights=False)).eval()
    groups = find_groups(trace(model))
    small, report = compress(model, groups, {g.id: [0] for g in groups if g.prunable})
    with pytest.raises(LorashearError, match="cannot merge the LoRA adapter.*lora_bias") as info:
        save_pruned(small, tmp_path / "m", report=report)
    assert "\n" not in str(info.value) and not (tmp_path / "m").exists()
    save_pruned(small, tmp_path / "kept", report=report, merge_lora=False)  # kept unmerged, it saves


def test_dora_stays_refused_with_its_reason():
    model = get_peft_model(build("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"], use_dora=True,
                                                       init_lora_weights=False)).eval()
    groups = find_groups(trace(model))
    touched = [g for g in groups if g.kind in ("attention", "mlp")]
    assert touched and not any(g.prunable for g in touched)
    assert all("lora_magnitude_vector" in g.reason for g in touched)
    with pytest.raises(LorashearError, match="not prunable"):
        compress(model, groups, {touched[0].id: [0]})


def test_a_config_that_misses_a_size_is_caught_before_anything_is_written(tmp_path):
    model, _, groups = model_groups("qwen2")
    small, report = compress(model, groups, {"model:hidden": [0, 1, 2, 3]})
    del small.config.head_dim  # what save_pruned wrote before: the config implies head size 28 / 4 = 7
    with pytest.raises(LorashearError, match="inv_freq"):
        save_pruned(small, tmp_path / "m", report=report)
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())
