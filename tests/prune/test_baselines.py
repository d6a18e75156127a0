"""The baselines inside the one prune run (``--method``): every method hits the ratio within one unit and exports a
model that reloads exactly (stock class under uniform allocation); LLM-Pruner's scores equal a direct autograd
computation of the published formula; LoRAPrune's masks follow the cubic schedule; FLAP's bias compensation is in
the exported model; same seed, same result; and the refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from lorashear import load_pruned
from lorashear.prune import PlanSpec, prune
from lorashear.prune.methods import METHODS, REGISTRY, LoRAPrune
from lorashear.prune.run import PruneSettings
from tests.prune.interrupt import same_saved_model
from tiny_models import build, traced

# attention + MLP only at ρ = 0.05 (the tiny model is mostly embedding): uniform allocation keeps it stock-loadable;
# LoRA recovery without distillation, so the methods' own steps are what is tested
FAST = dict(kinds=("attention", "mlp"), ratio=0.05, allocation="uniform", steps=6, batch_size=2, seq_len=32,
            eval_tokens=512, measure_latency=False, checkpoint_every=100, distill=0.0, train="lora")
EXTRA = {"llm-pruner": dict(calib_samples=4), "flap": dict(calib_samples=8), "loraprune": dict(mask_every=2),
         "lhspg": dict(warmup_steps=1, periods=2, period_steps=2)}


def _ids(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, 16), generator=g)


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    out = {}
    for m in METHODS:
        out[m] = (root / m, prune(tiny_dir, root / m, method=m, **{**FAST, **EXTRA.get(m, {})}))
    return out


def test_registry_is_the_one_list():
    from lorashear.jobs.kinds import BUILTIN
    from lorashear.prune.names import METHODS as NAMES

    assert METHODS == NAMES == tuple(REGISTRY)
    method_param = next(p for p in BUILTIN["prune"].params if p.name == "method")
    assert tuple(method_param.choices) == METHODS


@pytest.mark.parametrize("method", METHODS)
def test_each_method_hits_the_ratio_and_reloads_exactly(runs, method):
    out, report = runs[method]
    plan = json.loads((out / "plan.json").read_text())
    per_unit = max(g["params_per_unit"] for g in plan["groups"].values())
    assert abs(plan["params_removed"] - plan["params_target"]) <= per_unit
    assert report["params_removed"] == plan["params_removed"]
    assert report["method"] == method and report["method_info"]["method"] == method
    # the same report fields for every method
    assert set(report) == set(runs["lhspg"][1])
    side = json.loads((out / "model" / "lorashear.json").read_text())
    assert side["provenance"]["method"] == method
    assert side["case"] == "stock", side["case_reason"]
    from transformers import AutoModelForCausalLM

    ours = load_pruned(out / "model")
    stock = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ids = _ids(ours.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, stock(input_ids=ids).logits)
    # what was evaluated is what reloads: perplexity of the reloaded model equals the report's
    from lorashear.prune.run import _data, _evaluate

    st = PruneSettings(**{**FAST, **EXTRA.get(method, {}), "method": method})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "model")
    _, sources = _data(st, tok, ours)
    again = _evaluate(ours, tok, sources, st, lambda f, s: None, 0.0, "reloaded")
    assert again["mean_short"] == pytest.approx(report["eval_after"]["mean_short"], rel=1e-5)


def test_flap_bias_compensation_is_in_the_exported_model(runs):
    out, report = runs["flap"]
    info = report["method_info"]
    assert info["prepare"]["params_added"] > 0 and info["bias_compensation"]["compensated"]
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["attention_bias"] is True and cfg["mlp_bias"] is True
    model = load_pruned(out / "model")
    biases = [m.o_proj.bias for m in (layer.self_attn for layer in model.model.layers)] + \
             [layer.mlp.down_proj.bias for layer in model.model.layers]
    assert any(float(b.detach().abs().sum()) > 0 for b in biases)


def test_flap_without_training(tiny_dir, tmp_path):
    r = prune(tiny_dir, tmp_path / "o", method="flap", **{**FAST, "steps": 0, "calib_samples": 8})
    assert r["tokens_trained"] == 0 and r["history"] == []
    assert load_pruned(tmp_path / "o" / "model") is not None


def test_llm_pruner_defaults_only_when_unset():
    st = PruneSettings(method="llm-pruner")
    assert (st.allocation, st.layers, st.calib_samples, st.taylor_variant, st.aggregate) == \
        ("uniform", None, 64, "first", "sum")
    st = PruneSettings(method="llm-pruner", allocation="global", layers="0:2")
    assert (st.allocation, st.layers) == ("global", "0:2")
    assert PruneSettings(method="lhspg").allocation == "global"
    assert PruneSettings(method="loraprune").allocation == "uniform"


def test_llm_pruner_scores_in_chunks_of_the_training_batch(tiny_dir, tmp_path, monkeypatch):
    """Scoring memory is a training step's, however many calibration windows: no forward sees more rows."""
    from lorashear.knowledge import calibration

    rows = []
    real = calibration.token_nll_sum
    monkeypatch.setattr(calibration, "token_nll_sum", lambda model, ids: rows.append(ids.shape[0]) or real(model, ids))
    prune(tiny_dir, tmp_path / "o", method="llm-pruner", **{**FAST, "steps": 0, "calib_samples": 5})
    assert rows[:3] == [2, 2, 1]


def test_llm_pruner_scores_the_models_own_samples_with_calib_data_self(tiny_dir, tmp_path, monkeypatch):
    """``calib_data="self"``: the windows scored are exactly ``self_generated``'s from the dense model, not the data's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorashear.knowledge import calibration

    seen = []
    real = calibration.token_nll_sum
    monkeypatch.setattr(calibration, "token_nll_sum", lambda model, ids: seen.append(ids.clone()) or real(model, ids))
    rep = prune(tiny_dir, tmp_path / "o", method="llm-pruner", **{**FAST, "steps": 0, "calib_samples": 4,
                                                                   "calib_data": "self"})
    want, _ = calibration.self_generated(AutoModelForCausalLM.from_pretrained(tiny_dir),
                                         AutoTokenizer.from_pretrained(tiny_dir), n_samples=4, seq_len=32, seed=0)
    assert torch.equal(torch.cat(seen[:2]), want)
    assert rep["method_info"]["calibration"]["specs"] == ["self"]


# ------------------------------------------------------------------------------- LLM-Pruner's formula
@pytest.mark.parametrize("variant", ["first", "vector", "second"])
def test_llm_pruner_scores_equal_direct_autograd(variant):
    """MLP channel u of layer 0: producers gate[u, :], up[u, :], consumer down[:, u]; the published formula with
    the gradient of the mean next-token loss on the calibration samples, computed here with plain autograd."""
    from lorashear.knowledge.estimators import taylor

    _, _, groups = traced("llama-gqa")
    g = next(g for g in groups if g.kind == "mlp" and g.layer == 0)
    samples = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(5))
    got = taylor(build("llama-gqa"), [g], samples, variant=variant, aggregate="sum").units[g.id]

    def grads(model, ids):
        mlp = model.model.layers[0].mlp
        ws = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
        loss = model(input_ids=ids, labels=ids).loss
        return ws, torch.autograd.grad(loss, ws)

    model = build("llama-gqa")
    ws, gs = grads(model, samples)
    terms = [w.detach().double() * gr.double() for w, gr in zip(ws, gs)]
    if variant == "second":
        fisher = [torch.zeros_like(t) for t in terms]
        for i in range(samples.shape[0]):
            _, gi = grads(model, samples[i:i + 1])
            for f, gg in zip(fisher, gi):
                f += gg.double() ** 2 / samples.shape[0]
        terms = [t - 0.5 * w.detach().double() * f * w.detach().double() for t, w, f in zip(terms, ws, fisher)]
    gate, up, down = terms
    if variant == "vector":
        want = gate.sum(1).abs() + up.sum(1).abs() + down.sum(0).abs()
    else:
        want = gate.abs().sum(1) + up.abs().sum(1) + down.abs().sum(0)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------------------ LoRAPrune's schedule
def test_loraprune_masks_follow_the_cubic_schedule():
    _, _, groups = traced("llama-gqa")
    model = build("llama-gqa")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    opt = LoRAPrune(model, groups, PlanSpec(0.2, kinds=("attention", "mlp")), steps=30, warmup_steps=3,
                    cooldown_steps=3, mask_every=4, lr=1e-3)
    counts = []
    model.train()
    for t in range(30):
        ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(t))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        counts.append({gid: len(u) for gid, u in opt.removal().items()})
    quota = opt.sched["quota"]
    tw, te = 3, 26
    assert opt.update_steps() == [7, 11, 15, 19, 23, 26]
    for t in range(30):
        x = min(1.0, max(0.0, (t - tw) / (te - tw)))
        f = 1 - (1 - x) ** 3
        assert opt.target_fraction(t) == pytest.approx(f)
        last = max([u for u in opt.update_steps() if u <= t], default=None)
        for gid, q in quota.items():
            want = 0 if last is None else min(q, math.floor(q * opt.target_fraction(last) + 0.5))
            assert counts[t].get(gid, 0) == want, (t, gid)
    assert opt.removal() == opt.plan.removal and sum(quota.values()) > 0
    # masked units stay exactly zero (base rows and LoRA-B rows) while LoRA keeps training
    for gid, sls in opt.slices.items():
        for us in sls:
            idx = us.indices(opt.removal().get(gid, []))
            assert float(us.rows(idx).abs().sum()) == 0.0
            if us.lora_b is not None:
                assert float(us.lora_b[idx].abs().sum()) == 0.0


def test_loraprune_state_dict_resumes_exactly():
    _, _, groups = traced("llama-gqa")
    spec = PlanSpec(0.2, kinds=("attention", "mlp"))

    def make():
        torch.manual_seed(0)
        m = get_peft_model(build("llama-gqa"), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
        return m, LoRAPrune(m, groups, spec, steps=20, warmup_steps=2, cooldown_steps=2, mask_every=3, lr=1e-3)

    def train(m, o, a, b):
        for t in range(a, b):
            ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(t))
            m(input_ids=ids, labels=ids).loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)

    a, oa = make()
    train(a, oa, 0, 20)
    b, ob = make()
    train(b, ob, 0, 9)
    import copy

    state, weights = copy.deepcopy(ob.state_dict()), {n: p.detach().clone() for n, p in b.named_parameters()}
    c, oc = make()
    with torch.no_grad():
        for n, p in c.named_parameters():
            p.copy_(weights[n])
    oc.load_state_dict(state)
    train(c, oc, 9, 20)
    for (n, pa), (_, pc) in zip(a.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pc), n


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("method", ["random", "loraprune"])
def test_same_seed_same_result(tiny_dir, tmp_path, method):
    kw = {**FAST, **EXTRA.get(method, {})}
    a = prune(tiny_dir, tmp_path / "a", method=method, **kw)
    b = prune(tiny_dir, tmp_path / "b", method=method, **kw)
    assert a["history"] == b["history"]
    assert json.loads((tmp_path / "a/plan.json").read_text())["removal"] == json.loads((tmp_path / "b/plan.json").read_text())["removal"]
    assert same_saved_model(tmp_path / "a", tmp_path / "b")


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, message", [
    (["--method", "obs"], "--method: unknown 'obs'"),
    (["--method", "flap", "--periods", "3"], "--periods: does not apply to method flap"),
    (["--method", "lhspg", "--taylor-variant", "second"], "--taylor-variant: does not apply to method lhspg"),
    (["--method", "magnitude", "--calib-samples", "4"], "--calib-samples: does not apply to method magnitude"),
    (["--method", "loraprune", "--no-bias-compensation"], "--no-bias-compensation: does not apply to method loraprune"),
    (["--method", "loraprune", "--steps", "0"], "--steps: 0 steps (no training) only for one-shot methods"),
    (["--method", "llm-pruner", "--taylor-variant", "third"], "--taylor-variant: unknown 'third'"),
    (["--method", "flap", "--steps", "-1"], "--steps: must be in [0, 10,000,000], got -1"),
])
def test_bad_method_options_exit_2_with_one_line(tiny_dir, tmp_path, capsys, args, message):
    from lorashear.cli import main

    assert main(["prune", str(tiny_dir), "--out", str(tmp_path / "o"), "--ratio", "0.05", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_layer_range_outside_the_model(tiny_dir, tmp_path, capsys):
    from lorashear.cli import main

    assert main(["prune", str(tiny_dir), "--out", str(tmp_path / "o"), "--ratio", "0.05", "--no-progress",
                 "--method", "llm-pruner", "--layers", "1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (the model loader's progress bar comes first)
    assert err.startswith("lorashear prune: error:") and "outside the model's 2 layers" in err, err
    assert not (tmp_path / "o" / "model").exists()


def test_job_form_checks_steps_zero_per_method(tiny_dir):
    from lorashear.jobs.kinds import PRUNE, JobParamError, validate

    for method in ("lhspg", "loraprune"):
        with pytest.raises(JobParamError) as e:
            validate(PRUNE, {"model": str(tiny_dir), "ratio": 0.2, "method": method, "steps": 0})
        assert list(e.value.errors) == ["steps"]
    assert validate(PRUNE, {"model": str(tiny_dir), "ratio": 0.2, "method": "flap", "steps": "0"})["steps"] == 0


@pytest.mark.parametrize("method", ["flap", "loraprune"])
def test_resume_after_interruption_reproduces_the_run(tiny_dir, tmp_path, method):
    """Stopped after the step-4 checkpoint, then resumed: the same weights as the run never interrupted (the
    one-shot scores, plan and FLAP's compensation are recomputed identically; the schedule state is restored)."""
    kw = {**FAST, **EXTRA.get(method, {}), "steps": 8, "checkpoint_every": 2}
    prune(tiny_dir, tmp_path / "full", method=method, **kw)

    class Stop(Exception):
        pass

    def stop(fraction, stage):
        if stage.startswith("step 5/"):
            raise Stop()

    with pytest.raises(Stop):
        prune(tiny_dir, tmp_path / "cut", method=method, progress=stop, **kw)
    assert json.loads((tmp_path / "cut/run.json").read_text())["status"] == "failed"
    prune(tiny_dir, tmp_path / "cut", method=method, resume=True, **kw)
    assert same_saved_model(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("method", METHODS)
def test_each_method_prunes_gqa_query_heads_and_reloads(tiny_dir, tmp_path, method):
    """Query-head units (o_proj columns as the zero set) work with every method: removed, exported, reloaded."""
    kw = {**FAST, **EXTRA.get(method, {}), "kinds": ("query_heads",), "ratio": 0.01, "allocation": "global"}
    report = prune(tiny_dir, tmp_path / "run", method=method, **kw)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    removed = {gid: g["removed"] for gid, g in plan["groups"].items() if g["kind"] == "query_heads"}
    assert sum(removed.values()) >= 1 and report["params_removed"] == plan["params_removed"]
    small = load_pruned(tmp_path / "run" / "model")
    q_rows = [layer.self_attn.q_proj.out_features for layer in small.model.layers]
    assert sum(q_rows) == 2 * 32 - 16 * sum(removed.values())  # 2 query heads of 8 rows per unit
