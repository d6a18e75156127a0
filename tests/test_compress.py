"""lorashear.compress: the masked model and the physically smaller model give the same logits (fp32, ≤ 1e-4)."""
import copy
import random

import pytest
import torch
from tiny_models import ARCHS, ids, traced

from lorashear import LorashearError, compress, mask_units

TOL = 1e-4
CASES = [(a, lora) for a in ARCHS for lora in (False, True)]


def max_diff(model, groups, removal):
    masked = copy.deepcopy(model)
    mask_units(masked, groups, removal)
    small, report = compress(model, groups, removal)
    x = ids(seed=3)
    with torch.no_grad():
        return (masked(input_ids=x).logits - small(input_ids=x).logits).abs().max().item(), small, report


def random_units(g, rng, k=None):
    k = k or rng.randint(1, max(1, g.n_units // 2))
    return sorted(rng.sample(range(g.n_units), k))


@pytest.mark.parametrize("arch,lora", CASES)
def test_every_prunable_group_is_exact_for_seeded_unit_sets(arch, lora):
    model, _, groups = traced(arch, lora)
    prunable = [g for g in groups if g.prunable]
    assert prunable
    for g in prunable:
        for seed in (0, 1):
            removal = {g.id: random_units(g, random.Random(f"{arch}{g.id}{seed}"))}
            diff, _, _ = max_diff(model, groups, removal)
            assert diff <= TOL, (g.id, removal, diff)


@pytest.mark.parametrize("arch,lora", CASES)
def test_mixed_set_across_all_groups_is_exact(arch, lora):
    model, _, groups = traced(arch, lora)
    rng = random.Random(f"mixed-{arch}-{lora}")
    removal = {g.id: random_units(g, rng) for g in groups if g.prunable}
    diff, small, report = max_diff(model, groups, removal)
    assert diff <= TOL
    assert report.params_after < report.params_before
    assert report.params_after == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("arch,lora", CASES)
def test_parameter_count_drops_by_params_per_unit(arch, lora):
    model, _, groups = traced(arch, lora)
    for g in (g for g in groups if g.prunable):
        k = min(3, g.n_units - 1)
        _, report = compress(model, groups, {g.id: list(range(k))})
        assert report.params_before - report.params_after == k * g.params_per_unit, g.id


def test_lora_b_rows_are_cut_with_their_base_rows():
    model, _, groups = traced("llama-gqa", lora=True)
    small, _ = compress(model, groups, {"model.layers.0.self_attn:heads": [0]})
    q = small.base_model.model.model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.shape == (16, 32) and q.lora_B["default"].weight.shape == (16, 4)
    o = small.base_model.model.model.layers[0].self_attn.o_proj
    assert o.base_layer.weight.shape == (32, 16) and o.lora_A["default"].weight.shape == (4, 16)
    assert q.lora_A["default"].weight.shape == (4, 32)  # the rank axis is untouched


def test_config_follows_uniform_removal():
    model, _, groups = traced("llama-gqa")
    removal = {f"model.layers.{i}.self_attn:heads": [1] for i in range(2)} | {f"model.layers.{i}.mlp:channels": list(range(8)) for i in range(2)}
    small, report = compress(model, groups, removal)
    cfg = small.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 8, 40)
    assert report.uniform and report.layer_sizes["0"] == {"attention": 1, "query_heads": 2, "mlp": 40}


def test_compress_leaves_the_input_model_untouched():
    model, _, groups = traced("mistral")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compress(model, groups, {"model:hidden": [0, 5]})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unprunable_group_is_refused_with_its_reason():
    model, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match="lm_head:vocab' is not prunable: is an axis of the model output"):
        compress(model, groups, {"lm_head:vocab": [0]})


def test_out_of_range_unit_is_refused():
    model, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match=r"has units 0..47; got \[48\]"):
        compress(model, groups, {"model.layers.0.mlp:channels": [48]})


def test_removing_every_unit_is_refused():
    model, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match="keep at least one"):
        compress(model, groups, {"model.layers.0.self_attn:heads": [0, 1]})


def test_unknown_group_is_refused():
    model, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match="unknown group 'nope'"):
        mask_units(model, groups, {"nope": [0]})
