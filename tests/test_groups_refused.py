"""Group rules that would claim too much are refused at discovery, with a reason naming the op and node — not
left to compress's self-check at the very end: GQA query heads whose q rows a norm reads across all heads
(OLMo-2/3, OLMoE) and CodeGen's heads (a constant ``mp_num`` split). What stays prunable is exact."""
import copy

import pytest
import torch
from tiny_models import ids, traced_extra

from lorashear import compress, mask_units

WHOLE_Q_NORM = ["olmo2", "olmo3", "olmoe"]


def masked_vs_compressed(model, groups, removal) -> float:
    masked = copy.deepcopy(model)
    mask_units(masked, groups, removal)
    small, report = compress(model, groups, removal)  # verify=True: the self-check stays the last line
    assert report.verified
    x = ids(seed=3)
    with torch.no_grad():
        return (masked(input_ids=x).logits - small(input_ids=x).logits).abs().max().item()


@pytest.mark.parametrize("name", WHOLE_Q_NORM)
def test_query_heads_under_a_norm_over_all_heads_are_refused_naming_the_norm(name):
    _, _, groups = traced_extra(name)
    qh = [g for g in groups if g.kind == "query_heads"]
    assert len(qh) == 2 and not any(g.prunable for g in qh)
    for g in qh:
        assert f"model.layers.{g.layer}.self_attn.q_norm" in g.reason and "read across query heads" in g.reason, g.reason
        assert "reduced by mean at node" in g.reason


@pytest.mark.parametrize("name", WHOLE_Q_NORM)
def test_kv_heads_under_a_norm_over_all_heads_stay_prunable(name):
    _, _, groups = traced_extra(name)
    heads = [g for g in groups if g.kind == "attention"]
    assert heads and all(g.prunable for g in heads), [(g.id, g.reason) for g in heads]


def test_per_head_q_norm_keeps_query_heads_prunable_and_exact():
    model, _, groups = traced_extra("qwen3")
    qh = [g for g in groups if g.kind == "query_heads"]
    assert len(qh) == 2 and all(g.prunable for g in qh), [(g.id, g.reason) for g in qh]
    assert masked_vs_compressed(model, groups, {g.id: [g.layer % 2] for g in qh}) <= 1e-4


@pytest.mark.parametrize("name", ["codegen", "codegen-8"])
def test_codegen_heads_are_refused_naming_the_mp_num_split(name):
    _, _, groups = traced_extra(name)
    heads = [g for g in groups if g.kind == "attention"]
    assert heads and not any(g.prunable for g in heads)
    for g in heads:
        assert "CodeGenAttention holds the outer factor constant (mp_num = 4" in g.reason, g.reason
        assert f"at node view{'_1' if g.layer else ''} (transformer.h.{g.layer}.attn)" in g.reason, g.reason
    assert [g for g in groups if g.kind == "mlp" and g.prunable]


@pytest.mark.parametrize("name", [*WHOLE_Q_NORM, "qwen3", "codegen"])
def test_every_group_still_marked_prunable_is_exact_alone(name):
    model, _, groups = traced_extra(name)
    prunable = [g for g in groups if g.prunable]
    assert prunable
    for g in prunable:
        units = [0] if g.n_units <= 2 else [0, g.n_units - 1]
        assert masked_vs_compressed(model, groups, {g.id: units}) <= 1e-4, g.id


@pytest.mark.parametrize("name", [*WHOLE_Q_NORM, "qwen3", "codegen"])
def test_every_group_still_marked_prunable_is_exact_together(name):
    model, _, groups = traced_extra(name)
    removal = {g.id: [1] for g in groups if g.prunable}
    assert masked_vs_compressed(model, groups, removal) <= 1e-4
