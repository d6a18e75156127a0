"""Block reconstruction (``--reconstruct``): the refit lowers the block-output error against the dense model on the
calibration tokens and the loss on held-out tokens of the demo model; nothing removed is a no-op; masked =
compressed still holds and the saved model still reloads (plain and PEFT models, bias and block modes); and it runs
inside the one prune run for a one-shot method and for LHSPG, its refits in the run report."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from lorashear import LorashearError, find_groups, load_pruned, trace
from lorashear.compress import compress
from lorashear.prune import PlanSpec, prune
from lorashear.prune.plan import candidate_groups, make_plan
from lorashear.prune.reconstruct import block_mse, reconstruct
from lorashear.prune.units import unit_slices, zero_units
from lorashear.settings import SettingsError
from tiny_models import build

FAST = dict(kinds=("attention", "mlp"), ratio=0.05, allocation="uniform", batch_size=2, seq_len=32, eval_tokens=512,
            measure_latency=False, checkpoint_every=100, reconstruct_samples=4, distill=0.0, train="lora")


def _calib(vocab: int, n: int = 8, seq: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def _masked(model, kinds=("attention", "mlp"), ratio=0.3, groups=None):
    """(groups, removal) of a magnitude plan whose units are now zero in ``model``."""
    from lorashear.knowledge.estimators import magnitude

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    groups = groups or find_groups(trace(base))
    spec = PlanSpec(ratio=ratio, kinds=kinds, allocation="uniform")
    cands = candidate_groups(groups, spec)
    plan = make_plan(base, groups, spec, magnitude(base, cands, kinds=spec.kinds).units)
    zero_units(unit_slices(model, cands), plan.removal)
    return groups, {g: u for g, u in plan.removal.items() if u}


def test_block_lowers_every_refit_linears_output_error_on_the_calibration_tokens():
    model = build("llama-gqa")
    dense = copy.deepcopy(model)
    groups, removal = _masked(model)
    ids = _calib(64)
    rep = reconstruct(model, dense, groups, removal, ids, "block")
    paths = [r["linear"] for r in rep["refit"]]
    assert {p.rsplit(".", 1)[-1] for p in paths} == {"o_proj", "down_proj"}
    after = block_mse(model, dense, paths, ids)
    for r in rep["refit"]:
        assert r["mse_after"] < r["mse_before"]
        assert after[r["linear"]] == pytest.approx(r["mse_after"], rel=1e-3)  # the report's number is the model's


def test_block_lowers_the_held_out_loss_of_the_demo_model(demo_model, demo_tokenizer):
    from lorashear.knowledge.calibration import calibration_data

    model = copy.deepcopy(demo_model)
    groups, removal = _masked(model, ratio=0.2)
    calib, _ = calibration_data(demo_tokenizer, ["demo"], n_samples=16, seq_len=128, seed=0, split="train")
    held, _ = calibration_data(demo_tokenizer, ["demo"], n_samples=8, seq_len=128, seed=1, split="validation")

    def loss(m):
        with torch.no_grad():
            return float(m(input_ids=held, labels=held).loss)

    before = loss(model)
    rep = reconstruct(model, demo_model, groups, removal, calib, "block")
    assert rep["mse_after"] < rep["mse_before"]
    assert loss(model) < before - 0.05


def test_nothing_removed_is_a_no_op():
    model = build("llama-gqa")
    ref = copy.deepcopy(model.state_dict())
    groups = find_groups(trace(model))
    rep = reconstruct(model, copy.deepcopy(model), groups, {}, _calib(64), "block")
    assert rep["refit"] == [] and rep["skipped"] == {}
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kinds", [("attention", "mlp"), ("query_heads", "mlp"), ("hidden", "mlp")])
def test_masked_equals_compressed_after_reconstruction_and_the_export_reloads(kinds, tmp_path):
    from lorashear.export import save_pruned

    model = build("llama-gqa")
    dense = copy.deepcopy(model)
    groups, removal = _masked(model, kinds=kinds)
    rep = reconstruct(model, dense, groups, removal, _calib(64), "block")
    assert rep["refit"]
    if "hidden" in kinds:
        assert any("hidden" in why for why in rep["skipped"].values())
    small, creport = compress(model, groups, removal)  # verify=True: raises when masked and compressed differ
    save_pruned(small, tmp_path / "m", report=creport)
    back = load_pruned(tmp_path / "m")
    ids = _calib(64, n=2, seq=12, seed=5)
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_peft_model_fits_the_effective_weight_and_merges_its_lora():
    from peft import LoraConfig, get_peft_model

    plain = build("llama-gqa")
    dense = copy.deepcopy(plain)
    traced_groups = find_groups(trace(plain))  # groups come from the base model, as in a run
    torch.manual_seed(1)
    model = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                              "gate_proj", "up_proj", "down_proj"],
                                             init_lora_weights=False))  # non-zero B everywhere
    groups, removal = _masked(model, kinds=("query_heads", "mlp"), groups=traced_groups)
    ids = _calib(64)
    rep = reconstruct(model, dense, groups, removal, ids, "block")
    assert rep["lora_merged"] and set(rep["lora_merged"]) == {r["linear"] for r in rep["refit"]}
    after = block_mse(model, dense, [r["linear"] for r in rep["refit"]], ids)
    for r in rep["refit"]:
        assert r["mse_after"] < r["mse_before"]
        assert after[r["linear"]] == pytest.approx(r["mse_after"], rel=1e-3)
    merged = model.merge_and_unload()
    compress(merged, groups, removal)  # masked = compressed after the merge


def test_bias_mode_moves_only_biases_and_lowers_the_error():
    from lorashear.prune.flap import add_biases

    model = build("llama-gqa")
    add_biases(model, ("attention", "mlp"))
    dense = copy.deepcopy(model)
    groups, removal = _masked(model)
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight")}
    ids = _calib(64)
    rep = reconstruct(model, dense, groups, removal, ids, "bias")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items() if k.endswith("weight"))
    for r in rep["refit"]:
        assert r["mse_after"] < r["mse_before"]
    compress(model, groups, removal)


def test_bias_mode_without_a_bias_leaves_the_linear_and_says_why():
    model = build("llama-gqa")
    groups, removal = _masked(model)
    ref = copy.deepcopy(model.state_dict())
    rep = reconstruct(model, copy.deepcopy(model), groups, removal, _calib(64), "bias")
    assert all("no bias" in r["skipped"] for r in rep["refit"])
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_unknown_mode_is_one_line():
    model = build("llama-gqa")
    with pytest.raises(LorashearError, match="unknown reconstruction mode"):
        reconstruct(model, model, find_groups(trace(model)), {}, _calib(64), "full")
    with pytest.raises(SettingsError, match="reconstruct"):
        from lorashear.prune.settings import PruneSettings

        PruneSettings(reconstruct="full")


def test_bias_mode_is_refused_when_the_config_cannot_carry_a_bias():
    from types import SimpleNamespace

    from lorashear.prune.methods import get_method, prepare_method

    model = build("mistral")  # MistralConfig has no attention_bias / mlp_bias
    st = SimpleNamespace(reconstruct="bias", reconstruct_ridge=1e-3, kinds=("attention", "mlp"))
    with pytest.raises(LorashearError, match="cannot carry"):
        prepare_method(get_method("magnitude"), model, st, None)


# ------------------------------------------------------------------------------------------- in the run
def _refits(report):
    runs = report["method_info"]["reconstruct"]["runs"]
    return [r for run in runs for r in run["refit"]]


def test_one_shot_run_with_block_reconstruction(tiny_dir, tmp_path):
    report = prune(tiny_dir, tmp_path / "r", method="llm-pruner", steps=0, calib_samples=4, reconstruct="block", **FAST)
    rec = report["method_info"]["reconstruct"]
    assert rec["mode"] == "block" and rec["calibration"]["n_samples"] == 4 and len(rec["runs"]) == 1
    rows = _refits(report)
    assert rows and all(r["mse_after"] < r["mse_before"] for r in rows)
    json.dumps(report)  # the report stays JSON
    assert load_pruned(tmp_path / "r" / "model") is not None  # save_pruned proved the reload


def test_one_shot_run_with_bias_reconstruction_adds_biases_through_the_config(tiny_dir, tmp_path):
    report = prune(tiny_dir, tmp_path / "r", method="magnitude", steps=0, reconstruct="bias", **FAST)
    assert "mlp_bias" in report["method_info"]["reconstruct"]["biases"]["biases"]
    assert all(r["mse_after"] < r["mse_before"] for r in _refits(report))
    m = load_pruned(tmp_path / "r" / "model")
    assert m.config.mlp_bias and m.model.layers[0].mlp.down_proj.bias is not None


def test_lhspg_run_refits_at_every_period_end(tiny_dir, tmp_path):
    kw = dict(FAST, method="lhspg", steps=6, warmup_steps=1, periods=2, period_steps=2, reconstruct="block")
    report = prune(tiny_dir, tmp_path / "r", **kw)
    runs = report["method_info"]["reconstruct"]["runs"]
    assert [r["when"] for r in runs] == ["end of period 1", "end of period 2"]
    assert all(r["mse_after"] < r["mse_before"] for r in _refits(report))
    assert sum("reconstruct block" in e[1] for e in report["events"]) == 2
    assert load_pruned(tmp_path / "r" / "model") is not None


def _lhspg_with_reference(**kw):
    from lorashear.adapters import add_lora
    from lorashear.prune.lhspg import LHSPG
    from lorashear.prune.reconstruct import Reference

    plain = build("llama-gqa")
    dense = copy.deepcopy(plain)
    groups = find_groups(trace(plain))
    peft = add_lora(plain, 4, 8, "all-linear", 0)
    ref = Reference(dense, _calib(64), "block", 1e-3, {})
    opt = LHSPG(peft, groups, PlanSpec(ratio=0.2, kinds=("attention", "mlp")), warmup_steps=1, periods=2,
                period_steps=2, reconstruction=ref, **kw)
    return peft, opt, ref


def _step(peft, opt, t):
    ids = _calib(64, n=2, seq=12, seed=100 + t)
    opt.zero_grad()
    peft(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def test_lhspg_resumes_exactly_across_a_reconstruction():
    """A checkpoint holds what a refit wrote (``changed_tensors``) and the refits done so far (the schedule)."""
    peft, opt, ref = _lhspg_with_reference()
    for t in range(3):  # warm-up + period 1: one refit
        _step(peft, opt, t)
    assert [r["when"] for r in ref.record["runs"]] == ["end of period 1"]
    names = {id(p): n for n, p in peft.named_parameters()}
    saved = {names[id(p)]: p.detach().clone() for p in opt.changed_tensors()}
    saved.update({n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad})
    state = copy.deepcopy(opt.state_dict())
    for t in range(3, 5):
        _step(peft, opt, t)
    assert ref.dense is None  # released after the last period

    peft2, opt2, ref2 = _lhspg_with_reference()
    with torch.no_grad():
        for n, p in peft2.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    opt2.load_state_dict(state)
    assert [r["when"] for r in ref2.record["runs"]] == ["end of period 1"]
    for t in range(3, 5):
        _step(peft2, opt2, t)
    assert [r["when"] for r in ref2.record["runs"]] == ["end of period 1", "end of period 2"]
    a, b = dict(peft.named_parameters()), dict(peft2.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_bias_mode_is_flaps_mean_compensation_when_the_kept_inputs_are_dense():
    """First refit of the model (layer 0's o_proj): its kept inputs are the dense ones, so the least-squares bias
    shift is exactly FLAP's ``W[:, removed] @ mean(x_removed)`` of the dense inputs."""
    from lorashear.prune.flap import add_biases

    model = build("llama-gqa")
    add_biases(model, ("attention",))
    dense = copy.deepcopy(model)
    groups = find_groups(trace(model))
    g = next(g for g in groups if g.kind == "attention" and g.layer == 0)
    removal = {g.id: [0]}
    o = dense.model.layers[0].self_attn.o_proj
    ids = _calib(64)
    xs = []
    h = o.register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1]).double()))
    with torch.no_grad():
        dense(input_ids=ids)
    h.remove()
    cols = [c for c in range(o.in_features) if c // 8 in (0, 1)]  # kv head 0 of 2 carries query heads 0 and 1 (head_dim 8)
    want = o.weight.double()[:, cols] @ torch.cat(xs).mean(0)[cols]
    zero_units(unit_slices(model, [g]), removal)
    before = model.model.layers[0].self_attn.o_proj.bias.detach().double().clone()
    reconstruct(model, dense, groups, removal, ids, "bias")
    got = model.model.layers[0].self_attn.o_proj.bias.detach().double() - before
    assert torch.allclose(got, want, atol=1e-5)


def test_ridge_zero_is_plain_least_squares_and_fits_at_least_as_well():
    model = build("llama-gqa")
    dense = copy.deepcopy(model)
    groups, removal = _masked(model)
    other = copy.deepcopy(model)
    ids = _calib(64, n=16)
    r0 = reconstruct(model, dense, groups, removal, ids, "block", ridge=0.0)
    r1 = reconstruct(other, dense, groups, removal, ids, "block", ridge=0.1)
    first0, first1 = r0["refit"][0], r1["refit"][0]  # same inputs (layer 0's o_proj): a comparable fit
    assert first0["mse_after"] <= first1["mse_after"] + 1e-9
    with pytest.raises(LorashearError, match="ridge"):
        reconstruct(model, dense, groups, removal, ids, "block", ridge=-1.0)


def test_loraprune_run_refits_once_after_its_last_mask_update(tiny_dir, tmp_path):
    report = prune(tiny_dir, tmp_path / "r", method="loraprune", steps=6, mask_every=2, reconstruct="block", **FAST)
    runs = report["method_info"]["reconstruct"]["runs"]
    assert len(runs) == 1 and runs[0]["when"].startswith("after the last mask update")
    assert all(r["mse_after"] < r["mse_before"] for r in _refits(report))
    assert load_pruned(tmp_path / "r" / "model") is not None


def test_lhspg_without_merging_survivors_merges_the_refit_layers_and_resets_their_state():
    from lorashear.prune.reconstruct import lora_factors

    peft, opt, ref = _lhspg_with_reference(merge_survivors=False)
    for t in range(3):
        _step(peft, opt, t)
    merged = ref.record["runs"][0]["lora_merged"]
    assert merged and {r["linear"] for r in ref.record["runs"][0]["refit"]} == set(merged)
    for p in lora_factors(peft, merged):
        assert p not in opt.state  # AdamW starts afresh on the merged factors
        if p.shape[0] != 4:  # B (out × r): zero, so the model computes exactly the fitted base weight
            assert float(p.abs().sum()) == 0.0
