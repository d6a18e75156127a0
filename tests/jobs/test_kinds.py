"""Job forms check before they launch: what a job would refuse in its first seconds is refused in the form, next
to the field, with the message the CLI gives (issue: forms that check before they launch)."""
from __future__ import annotations

import json

import pytest

from lorashear.data import DEMO_MODEL_DIR
from lorashear.jobs import JobParamError, validate
from lorashear.jobs.kinds import BUILTIN


def _errors(kind: str, **params) -> dict[str, str]:
    with pytest.raises(JobParamError) as e:
        validate(BUILTIN[kind], params)
    return e.value.errors


@pytest.mark.parametrize("kind", ["eval", "analyze"])
def test_a_folder_without_config_json_is_refused(kind, tmp_path):
    assert _errors(kind, model=str(tmp_path)) == {"model": f"{tmp_path} is not a Hugging Face model folder (no config.json)"}


def test_a_malformed_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert "malformed config JSON" in _errors("eval", model=str(tmp_path))["model"]


@pytest.mark.parametrize("kind", ["eval", "analyze", "prune"])
def test_a_data_spec_that_names_nothing_is_refused(kind):
    assert "'nonsense' is not a local path" in _errors(kind, model=str(DEMO_MODEL_DIR), data="nonsense")["data"]
    assert _errors(kind, model=str(DEMO_MODEL_DIR), data="demo,X=/missing.jsonl")["data"] == \
        "data file not found: /missing.jsonl"
    assert "unknown split" in _errors(kind, model=str(DEMO_MODEL_DIR), data="demo:dev")["data"]


def test_seq_len_beyond_the_models_context_is_refused():
    ctx = json.loads((DEMO_MODEL_DIR / "config.json").read_text())["max_position_embeddings"]
    err = _errors("analyze", model=str(DEMO_MODEL_DIR), seq_len=str(ctx + 1))
    assert err == {"seq_len": f"sequence length {ctx + 1} is larger than the model's context ({ctx} tokens)"}
    assert _errors("analyze", model="demo", seq_len=str(ctx + 1)) == err


def test_valid_forms_pass(tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text('{"text": "hello"}\n')
    clean = validate(BUILTIN["eval"], {"model": str(DEMO_MODEL_DIR), "data": f"demo,notes={data}"})
    assert clean["data"] == ["demo", f"notes={data}"]
    assert validate(BUILTIN["analyze"], {"model": "demo", "seq_len": "128"})["seq_len"] == 128


def test_the_evaluate_form_takes_threads():
    """The timings' condition is set in the form (Compare shows it): blank = torch's default, else at least 1."""
    assert "threads" not in validate(BUILTIN["eval"], {"model": str(DEMO_MODEL_DIR)})
    assert validate(BUILTIN["eval"], {"model": str(DEMO_MODEL_DIR), "threads": "1"})["threads"] == 1
    assert _errors("eval", model=str(DEMO_MODEL_DIR), threads="0") == {"threads": "must be in [1, 1,024], got 0"}
