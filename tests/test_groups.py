"""lorashear.groups: the groups found by dimension propagation, per architecture, derived not tabled."""
import pytest
import torch
from tiny_models import ARCHS, build, traced

from lorashear import find_groups, load_groups, save_groups, trace


def by_id(groups):
    return {g.id: g for g in groups}


def test_llama_gqa_attention_unit_is_a_kv_head_with_its_query_heads():
    _, _, groups = traced("llama-gqa")
    g = by_id(groups)["model.layers.0.self_attn:heads"]
    assert g.kind == "attention" and g.prunable and g.n_units == 2 and g.layer == 0
    m = {x.param.split(".")[-2]: x for x in g.members}
    assert {k: x.role for k, x in m.items()} == {"q_proj": "producer", "k_proj": "producer", "v_proj": "producer", "o_proj": "consumer"}
    # unit 1 = kv head 1 = query heads 2 and 3 (head_dim 8): q rows 16..31, k/v rows 8..15, o columns 16..31
    assert m["q_proj"].unit_indices([1]).tolist() == list(range(16, 32))
    assert m["k_proj"].unit_indices([1]).tolist() == list(range(8, 16))
    assert m["v_proj"].unit_indices([1]).tolist() == list(range(8, 16))
    assert m["o_proj"].unit_indices([1]).tolist() == list(range(16, 32)) and m["o_proj"].axis == 1


def test_llama_gqa_query_head_unit_is_proven_by_its_o_proj_columns():
    _, _, groups = traced("llama-gqa")
    rep = by_id(groups)["model.layers.0.self_attn:query_heads"]
    assert rep.kind == "query_heads" and rep.n_units == 2 and rep.prunable, rep.reason
    assert [m.param.split(".")[-2] for m in rep.producers()] == ["o_proj"]  # the zero set is on the consumer side


def test_mha_attention_unit_is_one_head():
    _, _, groups = traced("llama")
    g = by_id(groups)["model.layers.1.self_attn:heads"]
    assert g.n_units == 4 and g.prunable and g.params_per_unit == 4 * 8 * 32


def test_mlp_unit_is_one_intermediate_channel():
    _, _, groups = traced("llama-gqa")
    g = by_id(groups)["model.layers.1.mlp:channels"]
    roles = {x.param.split(".")[-2]: (x.role, x.axis) for x in g.members}
    assert roles == {"gate_proj": ("producer", 0), "up_proj": ("producer", 0), "down_proj": ("consumer", 1)}
    assert g.n_units == 48 and g.params_per_unit == 3 * 32


def test_hidden_group_spans_the_network_and_is_compensated_at_every_rmsnorm():
    _, _, groups = traced("llama-gqa")
    g = by_id(groups)["model:hidden"]
    assert g.kind == "hidden" and g.prunable and g.layer is None and g.n_units == 32
    producers = sorted(x.param for x in g.members if x.role == "producer")
    assert producers == ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                         "model.layers.1.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"]
    assert sorted(c["weight"] for c in g.compensation) == sorted(
        [f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")] + ["model.norm.weight"])
    assert all(c["eps"] == pytest.approx(1e-6) for c in g.compensation)


def test_lm_head_vocab_rows_and_rope_head_dim_are_unprunable_with_reasons():
    _, _, groups = traced("llama-gqa")
    vocab = by_id(groups)["lm_head:vocab"]
    assert not vocab.prunable and "model output" in vocab.reason
    head_dims = [g for g in groups if g.kind == "head_dim"]
    assert head_dims and not any(g.prunable for g in head_dims)
    assert any("rotary_emb.inv_freq" in g.reason for g in head_dims)


def test_qwen2_qkv_bias_rows_go_with_their_head():
    _, _, groups = traced("qwen2")
    g = by_id(groups)["model.layers.0.self_attn:heads"]
    bias = {x.param.split(".")[-2]: x for x in g.members if x.param.endswith("bias")}
    assert set(bias) == {"q_proj", "k_proj", "v_proj"} and all(x.role == "producer" for x in bias.values())


def test_gpt2_fused_c_attn_head_takes_rows_from_q_k_and_v_thirds():
    _, _, groups = traced("gpt2")
    g = by_id(groups)["transformer.h.0.attn:heads"]
    c_attn = next(x for x in g.members if x.param == "transformer.h.0.attn.c_attn.weight")
    assert c_attn.axis == 1 and c_attn.role == "producer"  # Conv1D stores [in, out]
    assert c_attn.unit_indices([1]).tolist() == [*range(8, 16), *range(40, 48), *range(72, 80)]


def test_gpt2_hidden_is_refused_because_layernorm_centres_it():
    _, _, groups = traced("gpt2")
    g = next(g for g in groups if g.kind == "hidden")
    assert not g.prunable and "layer_norm" in g.reason


def test_tied_embedding_counts_once():
    model, og, groups = traced("gpt2")
    vocab = [g for g in groups if g.kind == "vocab"]
    assert all(not g.prunable for g in vocab)
    tied = {n: i["tied_to"] for n, i in og.params.items() if "tied_to" in i}
    assert len(tied) == 1 and set(tied.items()) <= {("lm_head.weight", "transformer.wte.weight"), ("transformer.wte.weight", "lm_head.weight")}
    assert og.n_params == sum(p.numel() for p in model.parameters())


def test_opt_relu_mlp_and_heads_are_prunable():
    _, _, groups = traced("opt")
    ids = {g.id for g in groups if g.prunable}
    assert {"model.decoder.layers.0:channels", "model.decoder.layers.0.self_attn:heads"} <= ids


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_rows_follow_their_base_rows_and_rank_is_never_pruned(arch):
    _, _, plain = traced(arch)
    _, _, lora = traced(arch, lora=True)
    assert sorted(g.id for g in plain if g.prunable) == sorted(g.id for g in lora if g.prunable)
    for g in lora:
        # a GQA query-head unit is zeroed on its consumer side (o_proj columns, their LoRA-A columns included)
        prod, cons = ("consumer", "producer") if g.kind == "query_heads" else ("producer", "consumer")
        for x in g.members:
            if ".lora_B." in x.param and g.prunable:
                assert x.axis == 0 and x.role == prod
            if ".lora_A." in x.param and g.prunable:
                assert x.axis == 1 and x.role == cons
    ranks = [g for g in lora if g.kind == "lora_rank"]
    assert ranks and not any(g.prunable for g in ranks)


def test_group_ids_are_stable_across_traces():
    ids1 = [g.id for g in find_groups(trace(build("mistral")))]
    ids2 = [g.id for g in find_groups(trace(build("mistral", seed=5)))]
    assert ids1 == ids2 and len(set(ids1)) == len(ids1)


def test_unknown_op_marks_its_group_unprunable_naming_op_and_node():
    model = build("llama-gqa")

    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.special.erfinv(torch.tanh(x))

    model.model.layers[0].mlp.act_fn = Odd()
    groups = by_id(find_groups(trace(model)))
    g = groups["model.layers.0.mlp:channels"]
    assert not g.prunable and "aten.special_erfinv.default" in g.reason and "model.layers.0.mlp.act_fn" in g.reason
    assert groups["model.layers.1.mlp:channels"].prunable


def test_groups_json_round_trip(tmp_path):
    _, _, groups = traced("qwen2")
    back = load_groups(save_groups(groups, tmp_path / "groups.json"))
    assert back == groups


def _gate_only_mlp(act):
    """LLaMA with layer 1's MLP rewired to down(act(gate(x))): the activation alone decides zero-invariance."""
    model = build("llama-gqa")
    mlp = model.model.layers[1].mlp
    mlp.forward = lambda x: mlp.down_proj(act(mlp.gate_proj(x)))
    return by_id(find_groups(trace(model)))


def test_activation_that_does_not_keep_zero_makes_the_mlp_refuse():
    """clamp(x, min=0.5) maps a zeroed channel to 0.5, which down_proj would still read: not removable."""
    g = _gate_only_mlp(lambda x: torch.clamp(x, min=0.5))["model.layers.1.mlp:channels"]
    assert not g.prunable and "reaches linear" in g.reason and "without being zero" in g.reason


def test_activation_that_keeps_zero_leaves_the_mlp_prunable():
    assert _gate_only_mlp(torch.relu)["model.layers.1.mlp:channels"].prunable
