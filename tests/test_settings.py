"""One schema per capability: the CLI flags, the job form and the validation come from the settings dataclass, and
an error names its field (issue 21, item 1)."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from lorashear.evaluate_settings import EvalSettings
from lorashear.jobs.kinds import BUILTIN, validate
from lorashear.knowledge.settings import AnalyzeSettings
from lorashear.prune.settings import PlanSettings, PruneSettings
from lorashear.recover.settings import RecoverSettings
from lorashear.settings import SettingsError, add_arguments, from_args, job_params, options, parse

SCHEMAS = (PlanSettings, PruneSettings, RecoverSettings, AnalyzeSettings, EvalSettings)


@pytest.mark.parametrize("cls", SCHEMAS)
def test_every_field_is_declared_with_its_option(cls):
    assert {f.name for f in dataclasses.fields(cls)} == set(options(cls))


@pytest.mark.parametrize("cls", SCHEMAS)
def test_cli_flags_are_generated_from_the_schema(cls):
    p = argparse.ArgumentParser()
    add_arguments(p, cls)
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests == {n for n, (o, _) in options(cls).items() if o.cli}


@pytest.mark.parametrize("kind, cls", [("prune", PruneSettings), ("recover", RecoverSettings),
                                       ("analyze", AnalyzeSettings), ("eval", EvalSettings)])
def test_job_forms_are_generated_from_the_schema(kind, cls):
    form = {p.name for p in BUILTIN[kind].params}
    assert {p.name for p in job_params(cls)} <= form
    assert BUILTIN[kind].settings is cls


def test_no_flag_given_means_the_librarys_defaults():
    p = argparse.ArgumentParser()
    add_arguments(p, PruneSettings)
    assert from_args(PruneSettings, p.parse_args(["--ratio", "0.2"])) == PruneSettings()


def test_an_error_names_its_field_and_every_bad_field_at_once():
    with pytest.raises(SettingsError) as e:
        parse(PruneSettings, {"ratio": "1.5", "lr": "-1", "kinds": "mlp,heads", "colour": "red"})
    assert set(e.value.errors) == {"ratio", "lr", "kinds", "colour"}
    assert e.value.errors["colour"] == "unknown setting"


def test_cli_errors_name_the_flag():
    p = argparse.ArgumentParser()
    add_arguments(p, PruneSettings)
    with pytest.raises(SettingsError) as e:
        from_args(PruneSettings, p.parse_args(["--ratio", "0.2", "--method", "flap", "--no-merge-survivors"]))
    assert str(e.value) == "--no-merge-survivors: does not apply to method flap (it applies to: lhspg)"


def test_blank_form_values_take_the_default():
    assert parse(PruneSettings, {"ratio": "0.3", "layers": "", "align": "  ", "seed": None}) == PruneSettings(ratio=0.3)


def test_method_defaults_resolve_in_one_place():
    st = PruneSettings(method="llm-pruner")
    assert (st.layers, st.allocation, st.calib_samples, st.taylor_variant) == ("0.125:0.9375", "uniform", 10, "first")
    assert PlanSettings(method="llm-pruner").plan_args()["layers"] == "0.125:0.9375"
    assert PruneSettings(method="llm-pruner", layers="0:2", allocation="global").layers == "0:2"


def test_a_method_option_for_another_method_is_refused():
    with pytest.raises(SettingsError) as e:
        PruneSettings(method="magnitude", calib_samples=4)
    assert list(e.value.errors) == ["calib_samples"]


def test_estimator_options_follow_the_estimator():
    with pytest.raises(SettingsError) as e:
        AnalyzeSettings(estimator="ablation", variant="second")
    assert "estimator ablation" in e.value.errors["variant"]
    assert AnalyzeSettings(estimator="ablation", bins="mlp=4").estimator_options()["bins"] == {"mlp": 4}


def test_the_schedule_must_fit_the_step_budget():
    with pytest.raises(SettingsError) as e:
        PruneSettings(steps=10, periods=4, period_steps=5)
    assert "more than 10" in e.value.errors["steps"]


def test_auto_device_is_not_given():
    assert PruneSettings(device="auto").device is None and EvalSettings(device="auto").device is None


def test_required_fields_are_asked_for_on_forms(tmp_path):
    with pytest.raises(SettingsError) as e:
        validate(BUILTIN["prune"], {"model": "demo"})
    assert e.value.errors == {"ratio": "required"}


def test_stored_job_parameters_rebuild_the_same_settings():
    from lorashear.data import DEMO_MODEL_DIR

    kind = BUILTIN["prune"]
    clean = validate(kind, {"model": str(DEMO_MODEL_DIR), "ratio": "0.25", "kinds": "mlp", "method": "llm-pruner",
                            "steps": "0"})
    assert kind.make_settings(clean) == PruneSettings(ratio=0.25, kinds=("mlp",), method="llm-pruner", steps=0)
