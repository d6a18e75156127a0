"""The Prune tab's computations without a browser: the plan preview is the library's plan (same call, same
numbers), the per-layer rows add up exactly, bad input gives one message on the field it belongs to."""
from __future__ import annotations

import numpy as np
import pytest

from viz import plan_preview as PP
from viz.model_view import load
from viz.views import prune as PV

DEFAULT = {"ratio": 0.2, "kinds": ["attention", "mlp"], "allocation": "global", "layers": None, "align": None,
           "knowledge": None, "gamma": None}


def _mv(app_state):
    return load(app_state.registry.get(app_state.model_job))


def test_preview_is_the_librarys_plan(app_state, model_dir):
    from lorashear.prune.preview import plan_model

    mv = _mv(app_state)
    for values in (DEFAULT, {**DEFAULT, "ratio": 0.35, "allocation": "uniform", "layers": "1:5"},
                   {**DEFAULT, "kinds": ["attention", "mlp", "hidden"], "align": "8"},
                   {**DEFAULT, "kinds": ["attention", "query_heads", "mlp"]}):
        data, errors, msg = PV.compute(app_state, mv, values)
        assert data is not None and not errors and not msg, (errors, msg)
        lib = plan_model(str(model_dir), ratio=float(values["ratio"]), kinds=tuple(values["kinds"]),
                         allocation=values["allocation"], layers=values["layers"],
                         align=int(values["align"]) if values["align"] else None)
        assert data["plan"]["removal"] == lib.removal
        assert (data["plan"]["params_total"], data["plan"]["params_removed"]) == (lib.params_total, lib.params_removed)
        rows = data["layers"]
        assert sum(r["removed"] for r in rows) == lib.params_removed  # exact: shared elements counted once
        assert sum(r["before"] for r in rows) == lib.params_total == mv.n_params
        for r in rows[:-1]:
            heads = lib.groups.get(f"model.layers.{r['layer']}.self_attn:heads")
            if heads:
                assert r["heads"] == (heads["kept"], heads["n_units"])
    # the summary shows the exact numbers
    data, _, _ = PV.compute(app_state, mv, DEFAULT)
    text = str(PV.summary(data))
    assert f"{data['plan']['params_total']:,} → {data['plan']['params_after']:,}" in text


def test_figures_mark_the_planned_units(app_state):
    mv = _mv(app_state)
    data, _, _ = PV.compute(app_state, mv, {**DEFAULT, "ratio": 0.3})
    bars, heads, channels = PV.figures(mv, data)
    before, after = bars.data
    assert list(before.y) == [r["before"] for r in data["layers"]] and list(after.y) == [r["after"] for r in data["layers"]]
    z = np.asarray(heads.data[0].z, dtype=float)
    for i, layer in enumerate(heads.data[0].y):
        removed = data["plan"]["removal"].get(f"model.layers.{layer}.self_attn:heads", [])
        assert sorted(np.nonzero(z[i] == 1)[0].tolist()) == removed
    zc = np.asarray(channels.data[0].z, dtype=float)
    layers, full, _ = PP.unit_maps(mv, data["plan"], "mlp")
    assert np.isclose(np.nanmean(zc), np.nanmean(full), atol=0.02)  # binned fractions keep the removed share


@pytest.mark.parametrize("values, field, text", [
    ({"layers": "abc"}, "layers", "START:STOP"),
    ({"layers": "3:99"}, "layers", "outside the model"),
    ({"ratio": "x"}, "ratio", "must be a number"),
    ({"ratio": 1.0}, "ratio", "must be in (0, 1)"),
    ({"ratio": 0.95}, "ratio", "unreachable"),
    ({"kinds": []}, "kinds", "at least one"),
    ({"align": "2.5"}, "align", "whole number"),
    ({"gamma": "0.2"}, "gamma", "needs a knowledge report"),
])
def test_bad_input_gives_one_message_on_its_field(app_state, values, field, text):
    data, errors, msg = PV.compute(app_state, _mv(app_state), {**DEFAULT, **values})
    assert data is None and list(errors) == [field] and text in errors[field] and not msg, (errors, msg)
    assert "\n" not in errors[field]


def test_prune_params_are_the_plan_settings(app_state):
    mv = _mv(app_state)
    data, _, _ = PV.compute(app_state, mv, {**DEFAULT, "layers": "1:5", "align": "4"})
    params = PV.prune_params(mv, data, {"method": "magnitude", "steps": "3", "device": "cpu", "eval_tokens": ""})
    assert params == {"model": mv.source, "ratio": 0.2, "kinds": ["attention", "mlp"], "allocation": "global",
                      "layers": "1:5", "align": 4, "gamma_level": "group", "method": "magnitude", "steps": "3",
                      "device": "cpu"}
    from lorashear.jobs.kinds import PRUNE, validate

    validate(PRUNE, params)  # the form's values are valid prune-job parameters


def test_preview_resolves_the_methods_defaults_as_the_run_does(app_state):
    """llm-pruner with a blank layer range and allocation: the preview plans every layer uniformly, as the run does
    (the app used to drop the blank allocation and preview globally)."""
    from lorashear.jobs.kinds import PRUNE, validate

    mv = _mv(app_state)
    values = {**DEFAULT, "allocation": None, "method": "llm-pruner"}
    data, errors, _ = PV.compute(app_state, mv, values)
    assert not errors
    assert data["inputs"]["layers"] is None and data["inputs"]["allocation"] == "uniform"
    assert data["plan"]["spec"]["layers"] is None and data["plan"]["spec"]["allocation"] == "uniform"
    params = PV.prune_params(mv, data, {"method": "llm-pruner", "steps": "0"})
    settings = PRUNE.make_settings(validate(PRUNE, params))
    assert (settings.layers, settings.allocation) == (None, "uniform")
    assert settings.plan_args() == {k: data["inputs"][k] if k != "kinds" else tuple(data["inputs"][k])
                                    for k in settings.plan_args()}


def test_the_untouched_form_previews_the_default_run(app_state, model_dir):
    """The Prune tab starts at the schema's defaults (llm-pruner, MLP channels, the method's allocation): its
    preview is the plan of ``lorashear plan --ratio 0.2``."""
    from lorashear.prune.preview import plan_model
    from lorashear.prune.settings import PlanSettings

    mv = _mv(app_state)
    values = {**DEFAULT, "kinds": list(PV._DEFAULTS["kinds"]), "allocation": "method", "method": PV._DEFAULTS["method"]}
    data, errors, _ = PV.compute(app_state, mv, values)
    assert not errors and (values["method"], values["kinds"]) == ("llm-pruner", ["mlp"])
    lib = plan_model(str(model_dir), **PlanSettings(ratio=0.2).plan_args())
    assert data["plan"]["removal"] == lib.removal and data["plan"]["spec"]["allocation"] == "uniform"


def test_hand_selection_is_checked_against_the_browsed_model(app_state):
    from viz.views.groups import add_unit, check_selection

    mv = _mv(app_state)
    text = add_unit(add_unit("", "model.layers.1.self_attn:heads", 2), "model.layers.1.self_attn:heads", 0)
    assert check_selection(mv, text) == ({"model.layers.1.self_attn:heads": [0, 2]}, "")
    for text, msg in (('{"model.layers.1.self_attn:heads": [0, 1, 2, 3]}', "keep at least one"),
                      ('{"model.layers.1.self_attn:heads": [7]}', "has units 0..3"),
                      ('{"nope": [1]}', "no group 'nope'"),
                      ('{"lm_head:vocab": [1]}', "not prunable"), ("{x", "not valid JSON")):
        removal, why = check_selection(mv, text)
        assert removal is None and msg in why and "\n" not in why, (text, why)


def test_groups_grid_marks_the_planned_groups(app_state):
    from viz.views.groups import planned_rows

    mv = _mv(app_state)
    data, _, _ = PV.compute(app_state, mv, DEFAULT)
    rows = planned_rows(mv.group_rows(), data["plan"])
    marked = {r["id"]: r["planned"] for r in rows if r["planned"]}
    assert set(marked) == set(data["plan"]["removal"])
    for gid, text in marked.items():
        assert text == f"{len(data['plan']['removal'][gid])} of {mv.group_by_id[gid].n_units}"


def test_recover_form_defaults_are_valid_recover_parameters(app_state, model_dir):
    from lorashear.jobs.kinds import RECOVER, validate

    from viz.views.prune import RECOVER_FIELDS

    form = dict(zip(RECOVER_FIELDS, (str(model_dir), "102400", "25", "100", "16384")))
    assert validate(RECOVER, form)["pruned"] == str(model_dir)


def test_page_says_which_numbers_are_the_runs(app_state):
    """The preview scores by weight magnitude; LHSPG / LoRAPrune / llm-pruner / flap rank units by what only the
    run computes, so the page marks the per-layer choice as an estimate and names the run's scores; magnitude
    without a report is the run's plan; uniform allocation fixes the counts whatever the scores."""
    mv = _mv(app_state)
    for method, words in (("lhspg", "LoRA saliency"), ("loraprune", "LoRA-Taylor"), ("llm-pruner", "Taylor scores"),
                          ("flap", "fluctuation"), ("random", "random")):
        data, errors, _ = PV.compute(app_state, mv, {**DEFAULT, "method": method})
        assert data is not None, errors
        rows = {part: (status, why) for part, status, why in PP.fidelity(data)}
        assert rows["which units (maps, selection)"][0] == "estimate" and words in rows["which units (maps, selection)"][1]
        assert rows["parameters before"][0] == "exact"
        text = str(PV.summary(data))
        assert "estimate" in text and words in text
    data, _, _ = PV.compute(app_state, mv, {**DEFAULT, "method": "lhspg"})  # global: the total is within one step
    rows = {part: (status, why) for part, status, why in PP.fidelity(data)}
    assert rows["parameters removed / after"][0] == "estimate" and f"{PP.largest_unit(data['plan']):,}" in rows["parameters removed / after"][1]
    assert abs(data["plan"]["params_removed"] - data["plan"]["params_target"]) <= PP.largest_unit(data["plan"])
    data, _, _ = PV.compute(app_state, mv, {**DEFAULT, "method": "magnitude"})
    assert {s for _, s, _ in PP.fidelity(data)} == {"exact"} and "this is the run's plan" in str(PV.summary(data))
    data, _, _ = PV.compute(app_state, mv, {**DEFAULT, "allocation": "method", "method": "llm-pruner"})  # uniform
    rows = {part: status for part, status, _ in PP.fidelity(data)}
    assert rows["per-layer counts"] == "exact" and rows["which units (maps, selection)"] == "estimate"


def test_ratio_box_moves_the_slider_and_back():
    """Typing 35 (%) + Enter commits the box (debounce), which moves the slider — the preview's input; a slider
    move writes the box; a blank box changes nothing."""
    from dash import no_update

    assert PV.sync_ratio("plan-ratio-text", 0.2, 35) == (0.35, no_update)
    assert PV.sync_ratio("plan-ratio-text", 0.35, 35) == (no_update, no_update)
    assert PV.sync_ratio("plan-ratio-text", 0.2, None) == (no_update, no_update)
    assert PV.sync_ratio("plan-ratio", 0.3, 20) == (no_update, 30.0)
    assert PV.sync_ratio("plan-ratio", 0.3, 30) == (no_update, no_update)


def test_the_prune_tab_exports_a_plan_in_the_chosen_format(app_state, model_dir, tmp_path):
    """The app's Export button offers the format (issue 23): its parameters are valid export-job parameters."""
    from lorashear.jobs.kinds import EXPORT, validate

    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    for fmt, expect in (("hf", ("hf", "f32")), ("gguf", ("gguf", "f16"))):
        params = {"model": str(model_dir), "plan": str(plan), **PV.export_format(fmt)}
        st = EXPORT.make_settings(validate(EXPORT, params))
        assert (st.format, st.dtype) == expect
