"""find_groups on families beyond the core ones: rule bugs become refusals, never crashes; views that hide a
constant factor behind -1 are refused; a failed torch.export reports one line."""
import copy

import pytest
import torch
from tiny_models import build, traced, traced_extra

from lorashear import LorashearError, compress, find_groups, mask_units, trace
from lorashear.trace import export_model


def exact(model, groups, removal):
    masked = copy.deepcopy(model)
    mask_units(masked, groups, removal)
    small, _ = compress(model, groups, removal, verify=False)
    x = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (masked(input_ids=x).logits - small(input_ids=x).logits).abs().max().item()


@pytest.mark.parametrize("name", ["xglm", "apertus"])
def test_max_min_other_are_elementwise_not_reductions(name):
    model, og, groups = traced_extra(name)
    assert any(a.get("target") in ("aten.max.other", "aten.min.other") for _, a in og.graph.nodes(data=True))
    heads = [g for g in groups if g.kind == "attention"]
    assert heads and all(g.prunable for g in heads), [(g.id, g.reason) for g in heads]
    assert not any("failed" in (g.reason or "") for g in groups)
    assert exact(model, groups, {g.id: [1] for g in groups if g.prunable}) <= 1e-4


def test_an_exception_inside_a_rule_refuses_only_what_that_op_touches():
    _, og, before = traced("llama")
    og = copy.deepcopy(og)
    # break the first RMS norm's mean: its dims argument becomes something no rule expects
    node = next(n for n, a in og.graph.nodes(data=True) if a.get("op") == "mean")
    og.graph.nodes[node]["args"][1] = {"repr": "not a dim"}
    groups = find_groups(og)
    hidden = next(g for g in groups if g.kind == "hidden")
    assert not hidden.prunable
    assert f"rule for aten.mean.dim failed at node {node}" in hidden.reason and "TypeError" in hidden.reason
    assert {g.id for g in groups if g.prunable} == {g.id for g in before if g.prunable and g.kind != "hidden"}


def test_inferred_view_split_with_heads_in_the_fixed_factor_is_refused():
    _, _, groups = traced_extra("codegen-8")
    heads = [g for g in groups if g.kind == "attention"]
    assert heads and not any(g.prunable for g in heads)
    assert all("inferred (-1)" in g.reason for g in heads)


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2", "opt"])
def test_the_usual_minus_one_head_split_stays_prunable(arch):
    _, _, groups = traced(arch)
    assert any(g.kind == "attention" and g.prunable for g in groups)


def test_failed_export_is_one_line_without_the_program_dump(capfd):
    model = build("llama")
    mlp = model.model.layers[0].mlp
    orig = mlp.forward
    mlp.forward = lambda x: orig(x) if x.sum() > 0 else 2 * orig(x)  # data-dependent branch: export cannot trace it
    with pytest.raises(LorashearError, match="torch.export failed for LlamaForCausalLM") as info:
        export_model(model)
    out, err = capfd.readouterr()
    assert "\n" not in str(info.value) and "def forward" not in out + err and len((out + err).splitlines()) <= 2
