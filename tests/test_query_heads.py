"""GQA query-head units: the i-th query head of every kv group, proven by its consumer-side zero set (its
o_proj columns), exact under compress alone and together with kv-head, MLP and hidden units."""
import copy

import pytest
import torch
from tiny_models import build, ids, traced
from transformers import AutoModelForCausalLM

from lorashear import compress, mask_units, save_pruned
from lorashear.export import load_pruned
from lorashear.prune.plan import count_removed

GQA = ["llama-gqa", "mistral", "qwen2"]
TOL = 1e-4


def by_id(groups):
    return {g.id: g for g in groups}


def masked_vs_compressed(model, groups, removal):
    masked = copy.deepcopy(model)
    mask_units(masked, groups, removal)
    small, report = compress(model, groups, removal)
    x = ids(seed=5)
    with torch.no_grad():
        diff = (masked(input_ids=x).logits - small(input_ids=x).logits).abs().max().item()
    return diff, small, report


@pytest.mark.parametrize("arch", GQA)
def test_query_head_unit_is_prunable_with_its_o_proj_columns_as_zero_set(arch):
    _, _, groups = traced(arch)
    g = by_id(groups)["model.layers.0.self_attn:query_heads"]
    assert g.kind == "query_heads" and g.prunable and g.n_units == 2, g.reason
    roles = {(m.param.split(".")[-2], m.param.split(".")[-1]): (m.role, m.axis) for m in g.members}
    assert roles[("o_proj", "weight")] == ("producer", 1)
    assert roles[("q_proj", "weight")] == ("consumer", 0)
    if arch == "qwen2":
        assert roles[("q_proj", "bias")] == ("consumer", 0)
    assert not any(k[0] in ("k_proj", "v_proj") for k in roles)
    o = next(m for m in g.members if m.param.endswith("o_proj.weight"))
    q = next(m for m in g.members if m.param.endswith("q_proj.weight"))
    # unit 1 = query head 1 of kv group 0 and query head 1 of kv group 1 = heads 1 and 3 (head_dim 8)
    assert o.unit_indices([1]).tolist() == list(range(8, 16)) + list(range(24, 32))
    assert q.unit_indices([1]).tolist() == list(range(8, 16)) + list(range(24, 32))


def test_mha_has_no_query_head_group():
    _, _, groups = traced("llama")
    assert not [g for g in groups if g.kind == "query_heads"]


@pytest.mark.parametrize("arch", GQA)
@pytest.mark.parametrize("lora", [False, True])
def test_query_heads_alone_masked_equals_compressed(arch, lora):
    model, _, groups = traced(arch, lora)
    for layer in (0, 1):
        removal = {f"model.layers.{layer}.self_attn:query_heads": [layer % 2]}
        diff, small, report = masked_vs_compressed(model, groups, removal)
        assert diff <= TOL and report.verified, (arch, lora, layer, diff)
        attn = small.get_base_model().model.layers[layer].self_attn if lora else small.model.layers[layer].self_attn
        assert attn.num_key_value_groups == 1


@pytest.mark.parametrize("arch", GQA)
@pytest.mark.parametrize("lora", [False, True])
def test_query_heads_with_kv_head_mlp_and_hidden_units_is_exact_and_counted_once(arch, lora):
    model, _, groups = traced(arch, lora)
    removal = {
        "model.layers.0.self_attn:heads": [1],  # overlaps the query-head unit on q rows 24..31 / o columns 24..31
        "model.layers.0.self_attn:query_heads": [1],
        "model.layers.1.self_attn:query_heads": [0],
        "model.layers.1.mlp:channels": [0, 7, 11],
        "model:hidden": [2, 9],
    }
    diff, small, report = masked_vs_compressed(model, groups, removal)
    assert diff <= TOL, diff
    base = small.get_base_model() if lora else small
    q0 = base.model.layers[0].self_attn.q_proj
    assert (q0.base_layer if lora else q0).weight.shape[0] == 8  # 1 kv head × 1 query head × head_dim 8
    assert base.model.layers[0].self_attn.o_proj.in_features == 8
    assert report.params_after == sum(p.numel() for p in small.parameters())
    if not lora:  # ParamCounter (plan) counts removed indices per tensor axis as sets: the overlap once
        assert count_removed(model, groups, removal) == report.params_before - report.params_after


@pytest.mark.parametrize("arch", GQA)
def test_uniform_query_head_removal_reloads_stock(arch, tmp_path):
    model, _, groups = traced(arch)
    removal = {f"model.layers.{i}.self_attn:query_heads": [0] for i in (0, 1)}
    small, report = compress(model, groups, removal)
    assert report.uniform and small.config.num_attention_heads == 2 and small.config.num_key_value_heads == 2
    side = save_pruned(small, tmp_path / "m", report=report)
    assert side["case"] == "stock", side["case_reason"]
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    x = ids(seed=7)
    with torch.no_grad():
        assert torch.allclose(back(input_ids=x).logits, small(input_ids=x).logits, atol=1e-6, rtol=0)


def test_uniform_query_and_kv_heads_reload_stock_and_non_uniform_through_load_pruned(tmp_path):
    model, _, groups = traced("llama-gqa")
    both = {f"model.layers.{i}.self_attn:{k}": [1] for i in (0, 1) for k in ("heads", "query_heads")}
    small, report = compress(model, groups, both)
    assert small.config.num_attention_heads == 1 and small.config.num_key_value_heads == 1
    assert save_pruned(small, tmp_path / "u", report=report)["case"] == "stock"
    uneven, report = compress(model, groups, {"model.layers.0.self_attn:query_heads": [0]})
    side = save_pruned(uneven, tmp_path / "n", report=report)
    assert side["case"] == "lorashear" and side["layer_sizes"]["0"]["query_heads"] == 1
    back = load_pruned(tmp_path / "n")
    x = ids(seed=8)
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, uneven(input_ids=x).logits)


def test_retraced_compressed_model_has_the_smaller_query_head_group():
    from lorashear import find_groups, trace

    model = build("mistral")
    small, _ = compress(model, find_groups(trace(model)), {"model.layers.1.self_attn:heads": [0]})
    g = by_id(find_groups(trace(small)))
    assert g["model.layers.0.self_attn:query_heads"].prunable and g["model.layers.1.self_attn:query_heads"].n_units == 2
