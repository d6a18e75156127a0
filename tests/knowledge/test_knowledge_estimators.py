"""Each estimator computes what its formula says, on the real demo model and its real groups, and leaves the
model as it found it."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lorashear
from lorashear.knowledge import ablation, lora_taylor, magnitude, taylor
from lorashear.knowledge import estimators as est_mod
from lorashear.knowledge.scoring import lora_importance
from lorashear.adapters import is_lora_param


def _group(groups, gid):
    return next(g for g in groups if g.id == gid)


def _ce(model, ids):
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _unit_sum(elem, member, n_units):
    """Sum an element-wise tensor over one member's slice of each unit (independent of the library's reduce)."""
    out = np.zeros(n_units)
    for u in range(n_units):
        idx = torch.as_tensor(member.unit_indices([u]))
        out[u] = float(elem.index_select(member.axis, idx).sum())
    return out


def test_model_is_unchanged_after_every_estimator(kmodel, kgroups, ksamples):
    from transformers import AutoModelForCausalLM

    samples = ksamples[0][:2, :16]
    layer1 = [g for g in kgroups if g.prunable and g.layer in (None, 1)]
    ablation(kmodel, layer1, samples, bins={"mlp": 320, "hidden": 128})
    lora_taylor(kmodel, kgroups, samples)
    taylor(kmodel, layer1, samples, variant="second")
    magnitude(kmodel, kgroups)
    pristine = AutoModelForCausalLM.from_pretrained(lorashear.DEMO_MODEL_DIR, dtype=torch.float32)
    mine, ref = dict(kmodel.named_parameters()), dict(pristine.named_parameters())
    assert mine.keys() == ref.keys()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    assert all(p.grad is None and p.requires_grad for p in kmodel.parameters())
    assert type(kmodel.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # LoRA adapters removed again


def test_ablation_prefix_cache_gives_the_same_losses_as_full_forwards(kmodel, kgroups, ksamples):
    samples = ksamples[0][:2, :32]
    gs = [_group(kgroups, "model.layers.3.self_attn:heads"), _group(kgroups, "model.layers.4.mlp:channels")]
    cached = ablation(kmodel, gs, samples, bins={"mlp": 320})
    full = ablation(kmodel, gs, samples, bins={"mlp": 320}, prefix_cache=False)
    for g in gs:
        np.testing.assert_allclose(cached.units[g.id], full.units[g.id], atol=1e-6)
    assert [b["delta"] for b in cached.blocks] == pytest.approx([b["delta"] for b in full.blocks], abs=1e-6)


def test_ablation_delta_is_the_loss_increase_of_the_masked_model(reports, kmodel, kgroups, ksamples):
    samples = ksamples[0]
    gid = "model.layers.2.self_attn:heads"
    masked = copy.deepcopy(kmodel)
    lorashear.mask_units(masked, kgroups, {gid: [1]})
    with torch.no_grad():
        expected = float(_ce(masked, samples)) - float(_ce(kmodel, samples))
    assert reports["ablation"].scores(gid)[1] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_ablation_whole_layer_blocks_are_recorded_apart_from_unit_scores(reports):
    blocks = reports["ablation"].blocks
    whole = blocks[blocks["level"] == "group"]
    assert set(whole["group"]) == {f"model.layers.{i}.{m}" for i in range(6) for m in ("self_attn:heads", "mlp:channels")}
    assert (whole["n_units"] > 1).all()
    # bins: 640 channels in bins of 128 -> 5 per MLP group, each unit carrying 1/128 of its bin's increase
    units = reports["ablation"].units
    mlp = units[units["group"] == "model.layers.0.mlp:channels"]
    assert mlp["block"].nunique() == 5 and (mlp["block_size"] == 128).all()
    bins = blocks[(blocks["group"] == "model.layers.0.mlp:channels") & (blocks["level"] == "bin")]
    assert mlp["score"].sum() == pytest.approx(bins["delta"].sum())


def test_full_taylor_first_order_and_aggregations_match_autograd(fresh_copy, kgroups, ksamples):
    samples = ksamples[0][:2, :32]
    g = _group(kgroups, "model.layers.1.self_attn:heads")
    params = dict(fresh_copy.named_parameters())
    loss = _ce(fresh_copy, samples)
    members = sorted([m for m in g.members if m.role == "producer"], key=lambda m: m.param) + [m for m in g.members if m.role == "consumer"]
    grads = torch.autograd.grad(loss, [params[m.param] for m in members])
    per = [_unit_sum((params[m.param] * gr).abs().detach(), m, g.n_units) for m, gr in zip(members, grads)]
    for how, expected in [("sum", np.sum(per, 0)), ("max", np.max(per, 0)), ("last", per[-1]), ("prod", np.prod(per, 0))]:
        got = taylor(fresh_copy, [g], samples, variant="first", aggregate=how).units[g.id]
        np.testing.assert_allclose(got, expected, rtol=1e-4, err_msg=how)
    vec = [np.abs(_unit_sum((params[m.param] * gr).detach(), m, g.n_units)) for m, gr in zip(members, grads)]
    np.testing.assert_allclose(taylor(fresh_copy, [g], samples, variant="vector").units[g.id], np.sum(vec, 0), rtol=1e-4)


def test_full_taylor_in_batches_equals_one_batch(fresh_copy, kgroups, ksamples):
    """Chunks add up to the gradient of the mean over all windows: the scores do not depend on the batch size."""
    samples = ksamples[0][:4, :32]
    g = _group(kgroups, "model.layers.1.mlp:channels")
    whole = taylor(fresh_copy, [g], samples).units[g.id]
    np.testing.assert_allclose(taylor(fresh_copy, [g], samples, batch_size=1).units[g.id], whole, rtol=1e-5)


def test_full_taylor_second_order_uses_the_diagonal_fisher(fresh_copy, kgroups, ksamples):
    samples = ksamples[0][:3, :32]
    g = _group(kgroups, "model.layers.4.mlp:channels")
    params = dict(fresh_copy.named_parameters())
    members = [m for m in g.members if m.role in ("producer", "consumer")]
    ws = [params[m.param] for m in members]
    fisher = [torch.zeros_like(w) for w in ws]
    for i in range(samples.shape[0]):
        for f, gr in zip(fisher, torch.autograd.grad(_ce(fresh_copy, samples[i:i + 1]), ws)):
            f += gr.pow(2) / samples.shape[0]
    grads = torch.autograd.grad(_ce(fresh_copy, samples), ws)
    expected = sum(_unit_sum((w * gr - 0.5 * w * f * w).abs().detach(), m, g.n_units)
                   for m, w, gr, f in zip(members, ws, grads, fisher))
    got = taylor(fresh_copy, [g], samples, variant="second").units[g.id]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert not np.allclose(got, taylor(fresh_copy, [g], samples, variant="first").units[g.id], rtol=1e-6)


def test_lora_taylor_on_a_peft_model_matches_the_loraprune_formula(fresh_copy, kgroups, ksamples):
    """Groups traced on the base model, scored on its PEFT copy with trained-looking (non-zero) adapters."""
    from peft import LoraConfig, get_peft_model

    samples = ksamples[0][:2, :32]
    torch.manual_seed(1)
    pm = get_peft_model(fresh_copy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                               init_lora_weights=False))
    g = _group(kgroups, "model.layers.2.self_attn:heads")
    lora_names = [n for n, _ in pm.named_parameters() if "lora_" in n]
    ps = dict(pm.named_parameters())
    grads = dict(zip(lora_names, torch.autograd.grad(_ce(pm, samples), [ps[n] for n in lora_names])))
    expected = np.zeros(g.n_units)
    for m in g.members:
        if m.role != "producer":
            continue
        path = "base_model.model." + m.param.rsplit(".", 1)[0]
        layer = pm.get_submodule(path)
        a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
        ga, gb = grads[f"{path}.lora_A.default.weight"], grads[f"{path}.lora_B.default.weight"]
        g_hat = s * (gb @ a + b @ ga - gb @ ga)
        w_eff = layer.base_layer.weight + s * b @ a
        expected += _unit_sum((g_hat * w_eff).abs().detach(), m, g.n_units)
    sc = lora_taylor(pm, [g], samples)
    np.testing.assert_allclose(sc.units[g.id], expected, rtol=1e-4)
    assert sc.settings["adapters"] == "model's own"


def test_lora_taylor_materialises_no_base_weight_gradient(monkeypatch, kmodel, kgroups, ksamples):
    seen = {}
    real = est_mod.backward_mean_loss

    def spy(model, *a, **k):
        out = real(model, *a, **k)
        seen["with_grad"] = [n for n, p in model.named_parameters() if p.grad is not None]
        seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["lora_modules"] = sum(1 for n, m in model.named_modules() if n.endswith(("lora_A", "lora_embedding_A")) and len(m))
        return out

    monkeypatch.setattr(est_mod, "backward_mean_loss", spy)
    gs = [g for g in kgroups if g.prunable]
    sc = lora_taylor(kmodel, gs, ksamples[0][:2, :32], rank=4, alpha=8)
    # real PEFT adapters on q/k/v/o/gate/up/down of each layer and on the embedding (not on the tied lm_head)
    assert seen["lora_modules"] == 6 * 7 + 1
    assert seen["with_grad"] and all(is_lora_param(n) for n in seen["with_grad"])
    assert any("embed_tokens.lora_embedding" in n for n in seen["with_grad"])
    assert seen["trainable"] == seen["with_grad"]
    assert sc.notes["uncovered"] == []
    assert all(np.isfinite(v).all() and (v > 0).any() for v in sc.units.values())


def test_fresh_adapter_estimate_is_an_unbiased_gradient_sketch(fresh_copy, kgroups, ksamples):
    """B = 0: Ĝ = s·∇B·A = s²·∇W·AᵀA, rescaled by in/(s²·‖A‖²) so that E_A[Ĝ] = ∇W in every module."""
    from peft import LoraConfig, get_peft_model

    samples = ksamples[0][:2, :32]
    torch.manual_seed(0)
    pm = get_peft_model(fresh_copy, LoraConfig(r=4, lora_alpha=8, target_modules=["model.embed_tokens", "q_proj"]))
    est_mod._fresh_embedding_adapters(pm)
    pm.train()
    _ce(pm, samples).backward()
    for path, transposed in (("model.layers.1.self_attn.q_proj", False), ("model.embed_tokens", True)):
        layer = pm.get_submodule("base_model.model." + path)
        w = layer.base_layer.weight
        if transposed:
            a, gb = layer.lora_embedding_A["default"], layer.lora_embedding_B["default"].grad
        else:
            a, gb = layer.lora_A["default"].weight, layer.lora_B["default"].weight.grad
        s = layer.scaling["default"]
        g_hat = s * gb @ a * (a.shape[1] / (s * s * a.pow(2).sum()))
        expected = ((g_hat.T if transposed else g_hat) * w).abs().detach()
        got = lora_importance(layer, w)  # per-index sums along each axis, never the full matrix
        torch.testing.assert_close(got[0], expected.sum(1), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(got[1], expected.sum(0), rtol=1e-4, atol=1e-9)


def test_magnitude_is_the_squared_l2_norm_of_the_producer_slices(kmodel, kgroups):
    """Squared, so that scores add up: a unit's score is the sum over its producer elements of w²."""
    g = _group(kgroups, "model.layers.5.mlp:channels")
    params = dict(kmodel.named_parameters())
    sq = sum(_unit_sum(params[m.param].detach().pow(2), m, g.n_units) for m in g.members if m.role == "producer")
    sc = magnitude(kmodel, [g])
    np.testing.assert_allclose(sc.units[g.id], sq, rtol=1e-5)
    assert sc.settings["squared"] and "squared" in sc.notes["score"]
