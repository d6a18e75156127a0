"""compress verifies itself: masked and compressed logits are compared on a seeded batch by default."""
import copy

import pytest
import torch
from tiny_models import build, traced, traced_extra

from lorashear import CompressionNotExact, LorashearError, compress


def heads(groups):
    return [g for g in groups if g.kind == "attention" and g.prunable]


def over_claimed(groups):
    """CodeGen's groups as a rule that claims too much would give them: the heads marked prunable. The group
    rules refuse them at discovery (tests/test_groups_refused.py); the self-check must still catch such a claim."""
    out = copy.deepcopy(groups)
    for g in out:
        if g.kind == "attention":
            g.prunable, g.reason = True, None
    return out


def test_codegen_mp_num_split_is_caught_and_named():
    # CodeGen splits qkv_proj with a constant mp_num the graph shows as -1: heads claimed prunable are not exact
    model, _, groups = traced_extra("codegen")
    groups = over_claimed(groups)
    g = heads(groups)[0]
    with pytest.raises(CompressionNotExact, match="not exact") as info:
        compress(model, groups, {g.id: [0]})
    assert g.id in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, LorashearError)


def test_codegen_bisect_names_the_offending_groups_only():
    model, _, groups = traced_extra("codegen")
    groups = over_claimed(groups)
    mlps = [g for g in groups if g.kind == "mlp" and g.prunable]
    removal = {heads(groups)[0].id: [1], mlps[0].id: [0, 5]}
    with pytest.raises(CompressionNotExact) as info:
        compress(model, groups, removal)
    msg = str(info.value)
    assert f"on its own, not exact: {heads(groups)[0].id}" in msg and mlps[0].id not in msg.split("on its own")[1]


def test_verify_false_skips_the_check():
    model, _, groups = traced_extra("codegen")
    groups = over_claimed(groups)
    _, report = compress(model, groups, {heads(groups)[0].id: [0]}, verify=False)
    assert not report.verified and report.max_diff is None


@pytest.mark.parametrize("arch,lora", [("llama-gqa", False), ("llama-gqa", True), ("gpt2", True), ("opt", False)])
def test_exact_compression_is_reported_verified(arch, lora):
    model, _, groups = traced(arch, lora)
    removal = {g.id: [0] for g in groups if g.prunable}
    _, report = compress(model, groups, removal)
    assert report.verified and report.max_diff <= report.tolerance and 1e-4 <= report.tolerance < 1e-2


def test_inplace_verification_masks_the_model_itself_peft_too():
    model = build("llama-gqa", lora=True)
    _, _, groups = traced("llama-gqa", lora=True)
    ref = copy.deepcopy(model)
    removal = {"model.layers.0.mlp:channels": [0, 1], "model.layers.1.self_attn:heads": [1]}
    small, report = compress(model, groups, removal, inplace=True)
    assert small is model and report.verified
    other, _ = compress(ref, groups, removal, verify=False)
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (small(input_ids=x).logits - other(input_ids=x).logits).abs().max() <= 1e-5


def test_bf16_model_is_verified_with_a_half_precision_tolerance():
    _, _, groups = traced("llama")
    model = build("llama").to(torch.bfloat16)
    _, report = compress(model, groups, {g.id: [0, 2] for g in groups if g.prunable})
    assert report.verified and report.tolerance >= 5e-2 and report.max_diff <= report.tolerance


def test_meta_model_compresses_without_a_numeric_check():
    from lorashear.loading import model_from_config
    from tiny_models import CONFIGS

    _, _, groups = traced("llama")
    meta = model_from_config(CONFIGS["llama"](), meta=True)
    small, report = compress(meta, groups, {"model.layers.0.mlp:channels": [0, 1]})
    assert not report.verified and small.model.layers[0].mlp.down_proj.weight.shape == (32, 46)
