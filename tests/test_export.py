"""lorashear.export: save → load round trips give identical logits; stock vs lorashear cases."""
import random

import pytest
import torch
from tiny_models import ARCHS, ids, traced
from transformers import AutoModelForCausalLM

from lorashear import LorashearError, compress, load_pruned, save_pruned
from lorashear.export import read_sidecar


def logits(model):
    with torch.no_grad():
        return model(input_ids=ids(seed=7)).logits


@pytest.mark.parametrize("arch,lora", [(a, lora) for a in ARCHS for lora in (False, True)])
def test_save_load_round_trip_gives_identical_logits(arch, lora, tmp_path):
    model, _, groups = traced(arch, lora)
    rng = random.Random(arch)
    removal = {g.id: sorted(rng.sample(range(g.n_units), 1)) for g in groups if g.prunable}
    small, report = compress(model, groups, removal)
    side = save_pruned(small, tmp_path / "m", report=report, provenance={"source": arch, "method": "test"})
    back = load_pruned(tmp_path / "m")
    # LoRA is merged on save: the same function up to float rounding
    assert (logits(small) - logits(back)).abs().max().item() <= (1e-5 if lora else 0.0)
    assert side["n_params"] == sum(p.numel() for p in back.parameters())
    assert read_sidecar(tmp_path / "m")["provenance"] == {"source": arch, "method": "test"}


def test_uniform_pruning_that_a_config_describes_is_stock_loadable(tmp_path):
    model, _, groups = traced("llama-gqa")
    removal = {f"model.layers.{i}.self_attn:heads": [0] for i in range(2)} | {f"model.layers.{i}.mlp:channels": [3, 9] for i in range(2)}
    small, report = compress(model, groups, removal)
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] == "stock"
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(logits(stock), logits(small))


def test_hidden_size_that_heads_do_not_divide_is_saved_as_lorashear_case(tmp_path):
    model, _, groups = traced("llama-gqa")
    small, report = compress(model, groups, {"model:hidden": [4]})
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] == "lorashear" and "not a multiple of the number of attention heads" in side["case_reason"]
    assert torch.equal(logits(load_pruned(tmp_path / "m")), logits(small))
    with pytest.raises(Exception):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_non_uniform_layers_are_saved_as_lorashear_case(tmp_path):
    model, _, groups = traced("mistral")
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [1, 2, 3]})
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] == "lorashear" and "model.layers.0.mlp" in side["case_reason"]
    assert side["layer_sizes"]["0"]["mlp"] == 45 and side["layer_sizes"]["1"]["mlp"] == 48
    assert torch.equal(logits(load_pruned(tmp_path / "m")), logits(small))


def test_export_writes_no_pickles(tmp_path):
    model, _, groups = traced("opt")
    small, report = compress(model, groups, {"model.decoder.layers.1.self_attn:heads": [2]})
    save_pruned(small, tmp_path / "m", report=report)
    assert {p.suffix for p in (tmp_path / "m").iterdir()} <= {".safetensors", ".json"}


def test_failed_save_leaves_nothing_behind(tmp_path):
    model, _, groups = traced("llama-gqa")
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [0]})

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_pruned(small, tmp_path / "m", report=report, tokenizer=Broken())
    assert list(tmp_path.iterdir()) == []


def test_load_pruned_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(LorashearError, match="no such model directory"):
        load_pruned(tmp_path / "nope")


def test_hidden_pruning_that_heads_divide_is_stock_with_scaled_eps(tmp_path):
    model, _, groups = traced("llama-gqa")
    small, report = compress(model, groups, {"model:hidden": [1, 2, 3, 4]})
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] == "stock", side["case_reason"]
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert stock.config.rms_norm_eps == pytest.approx(1e-6 * 32 / 28)
    assert torch.equal(logits(stock), logits(small))


def test_config_field_shared_with_other_modules_is_not_trusted(tmp_path):
    """Qwen3's rms_norm_eps also sets its per-head q/k norms, which hidden pruning must leave alone."""
    from transformers import Qwen3Config

    from lorashear import find_groups, trace
    from lorashear.loading import model_from_config

    model = model_from_config(Qwen3Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=8, num_hidden_layers=2, vocab_size=64, max_position_embeddings=64))
    groups = find_groups(trace(model))
    small, report = compress(model, groups, {"model:hidden": [0, 1, 2, 3]})
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] == "lorashear" and "q_norm" in side["case_reason"]
    assert torch.equal(logits(load_pruned(tmp_path / "m")), logits(small))


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2"])
def test_a_model_cast_to_bf16_saves_and_reloads(arch, tmp_path):
    """A bf16 model holds a bf16-rounded rotary inv_freq that the reload rebuilds in fp32: the same buffer,
    not a config that fails to describe it (issue 25, item 8)."""
    from lorashear import find_groups, trace
    from lorashear.loading import model_from_config
    from tiny_models import CONFIGS

    model = model_from_config(CONFIGS[arch](), seed=0).to(torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    groups = find_groups(trace(model))
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [1, 2]})
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["checks"]["round_trip_verified"]
    back = load_pruned(tmp_path / "m", dtype=torch.bfloat16)
    assert next(back.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(logits(back).float(), logits(small).float(), atol=5e-2, rtol=0)


def test_the_load_hint_says_which_loader_works(tmp_path):
    """Printed at the end of every prune, recover and export (issue 25, item 4): stock from_pretrained when the
    layers kept the config's sizes, lorashear.load_pruned when they differ."""
    from lorashear.data import DEMO_MODEL_DIR
    from lorashear.export import load_hint

    assert "from_pretrained" in load_hint(DEMO_MODEL_DIR) and "load_pruned" not in load_hint(DEMO_MODEL_DIR)
    model, _, groups = traced("llama")
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [0, 1]})  # layer 0 only: non-uniform
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] != "stock"
    hint = load_hint(tmp_path / "m")
    assert hint.startswith(f"load with lorashear.load_pruned('{tmp_path / 'm'}')") and "\n" not in hint
