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
    assert (st.layers, st.allocation, st.calib_samples, st.taylor_variant) == (None, "uniform", 64, "first")
    assert PlanSettings(method="llm-pruner").plan_args()["allocation"] == "uniform"
    assert PruneSettings(method="llm-pruner", layers="0:2", allocation="global").layers == "0:2"


def test_the_bare_settings_are_the_measured_recipe():
    """docs/lhspg.md on SmolLM2-135M: llm-pruner over MLP channels, uniform over all layers, distilled, training
    every parameter on a small model (auto)."""
    st = PruneSettings()
    assert (st.method, st.kinds, st.layers, st.allocation) == ("llm-pruner", ("mlp",), None, "uniform")
    assert (st.distill, st.teacher, st.train) == (1.0, "finetuned", "auto")


def test_distill_not_given_is_none_without_training():
    st = PruneSettings(steps=0)
    assert (st.distill, st.teacher) == (0.0, None)


def test_an_explicit_distill_0_means_no_distillation():
    p = argparse.ArgumentParser()
    add_arguments(p, PruneSettings)
    st = from_args(PruneSettings, p.parse_args(["--ratio", "0.2", "--distill", "0"]))
    assert (st.distill, st.teacher) == (0.0, None)
    assert parse(PruneSettings, {"ratio": "0.2", "distill": "0"}).distill == 0.0


def test_the_resolved_distill_round_trips_through_run_json_and_job_params():
    st = PruneSettings()
    assert PruneSettings(**st.to_dict()) == st
    kind = BUILTIN["prune"]
    assert kind.make_settings(validate(kind, {"model": "demo", "ratio": "0.2", "distill": ""})) == PruneSettings()
    assert kind.make_settings(validate(kind, {"model": "demo", "ratio": "0.2", "distill": "0"})).distill == 0.0


def test_recover_still_does_not_distill_by_default():
    assert (RecoverSettings().distill, RecoverSettings().teacher) == (0.0, None)


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
        PruneSettings(method="lhspg", steps=10, periods=4, period_steps=5)
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


def test_prune_help_shows_the_defaults(capsys, monkeypatch):
    from lorashear.cli import main

    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as e:
        main(["prune", "--help"])
    assert e.value.code == 0
    lines: dict[str, str] = {}  # option -> its help, joined over the lines it wraps to
    for ln in capsys.readouterr().out.splitlines():
        if ln.startswith("  --"):
            key = ln.split()[0]
            lines[key] = ln
        elif lines and ln.startswith("    "):
            lines[key] += " " + ln.strip()
    assert lines["--method"].endswith("(default: llm-pruner)") and lines["--kinds"].endswith("(default: mlp)")
    assert lines["--layers"].endswith("(default: all layers)") and lines["--train"].endswith("(default: auto)")
    assert lines["--distill"].endswith("(default: 1.0 (distil from the corrected teacher) when --steps > 0, else 0)")
