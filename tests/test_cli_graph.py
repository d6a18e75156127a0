"""`lorashear graph`: writes graph and groups JSON, prints the table; user mistakes exit 2 without a traceback."""
import json
import subprocess
import sys

import pytest
from tiny_models import build


def run(*args):
    return subprocess.run([sys.executable, "-m", "lorashear", "graph", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(build("llama-gqa").config.to_json_string())
    return path


def test_graph_command_writes_json_and_prints_groups(tiny_config, tmp_path):
    r = run(str(tiny_config), "--meta", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "model.layers.0.self_attn:heads" in r.stdout and "model:hidden" in r.stdout
    groups = json.loads((tmp_path / "out" / "groups.json").read_text())["groups"]
    assert any(g["id"] == "model.layers.1.mlp:channels" and g["prunable"] for g in groups)
    assert json.loads((tmp_path / "out" / "graph.json").read_text())["format"] == "lorashear.graph/1"


@pytest.mark.parametrize("content,message", [
    (None, "no such file or directory"),
    ('{"model_type": "llama", "hidden_size": ', "malformed config JSON"),
    ('{"model_type": "vit"}', "is not a causal LM"),
    ('{"hidden_size": 8}', "not a Hugging Face config"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    r = run(str(path), "--meta", "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
