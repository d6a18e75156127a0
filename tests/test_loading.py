"""One loader behind every command and job: pruned folders open everywhere; non-causal-LMs are refused."""
import json

import pytest
import torch
from tiny_models import build, build_extra, traced
from transformers import BertConfig, BertLMHeadModel

from lorashear import LorashearError, compress, find_groups, load_pruned, save_pruned, trace
from lorashear.cli import main
from lorashear.data import DEMO_MODEL_DIR
from lorashear.jobs import Registry, submit, wait
from lorashear.jobs.registry import SUCCEEDED
from lorashear.export import read_sidecar
from lorashear.loading import check_model_source, load_causal_lm, load_model

needs_demo = pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").exists(), reason="demo model not built")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    build_extra("bert").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pruned_demo(tmp_path_factory):
    """The demo model, non-uniformly pruned (heads in layer 0, channels in layer 2, hidden), with its tokenizer."""
    from transformers import AutoTokenizer

    model = load_causal_lm("demo")
    groups = find_groups(trace(model))
    removal = {"model.layers.0.self_attn:heads": [1], "model.layers.2.mlp:channels": list(range(0, 640, 7)),
               "model:hidden": [5, 6]}
    small, report = compress(model, groups, removal)
    d = tmp_path_factory.mktemp("pruned") / "demo-pruned"
    side = save_pruned(small, d, report=report, tokenizer=AutoTokenizer.from_pretrained(DEMO_MODEL_DIR))
    assert side["case"] == "lorashear"
    return d, small


def test_bert_model_folder_is_refused_by_the_loader(bert_dir):
    with pytest.raises(LorashearError, match=r"\(BertModel\) is an encoder.*not a decoder language model") as info:
        load_causal_lm(bert_dir)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # untied heads (a tied head is the embedding: complete)
def test_decoder_folder_without_its_lm_head_is_refused(arch, tmp_path):
    build(arch).base_model.save_pretrained(tmp_path)  # LlamaModel / GPT2Model: no head saved
    with pytest.raises(LorashearError, match="the saved weights do not cover .*not a causal-LM checkpoint"):
        load_causal_lm(tmp_path)
    assert main(["graph", str(tmp_path), "--out", str(tmp_path / "g")]) == 2


def test_encoder_with_full_lm_head_weights_is_still_not_a_decoder(tmp_path):
    torch.manual_seed(0)
    BertLMHeadModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=48)).save_pretrained(tmp_path)
    with pytest.raises(LorashearError, match="is an encoder.*not a decoder language model"):
        load_causal_lm(tmp_path)
    with pytest.raises(LorashearError, match="is an encoder"):
        load_causal_lm(tmp_path / "config.json", meta=True)


def test_in_memory_bert_model_is_refused_before_tracing():
    with pytest.raises(LorashearError, match="a BertModel is not a causal LM"):
        trace(build_extra("bert"))


@pytest.mark.parametrize("cmd", [["graph", "{d}", "--out", "{o}"], ["analyze", "{d}", "--estimator", "magnitude", "--out", "{o}/k.json"],
                                 ["eval", "{d}", "--max-tokens", "300", "--no-cost"]])
def test_every_command_refuses_a_bert_folder_in_one_line(cmd, bert_dir, tmp_path, capsys):
    argv = [a.format(d=bert_dir, o=tmp_path) for a in cmd]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lorashear {cmd[0]}: error: ") and "not a decoder language model" in err and "\n" not in err


def test_eval_job_refuses_a_bert_folder_before_it_launches(bert_dir, tmp_path):
    """The form's check reads the config: the job is refused on its model field, no worker is started."""
    from lorashear.jobs import JobParamError

    registry = Registry(tmp_path / "runs" / "jobs.sqlite")
    with pytest.raises(JobParamError) as e:
        submit(registry, "eval", {"model": str(bert_dir), "data": "demo", "protocol": "short", "max_tokens": "300",
                                  "cost": [], "device": "cpu"}, tmp_path / "runs")
    assert list(e.value.errors) == ["model"] and "not a decoder language model" in e.value.errors["model"]
    assert registry.list() == []


def test_load_model_gives_model_and_tokenizer_of_a_pruned_folder(tmp_path):
    model, _, groups = traced("qwen2")
    small, report = compress(model, groups, {"model.layers.1.mlp:channels": [0, 1], "model:hidden": [4]})
    save_pruned(small, tmp_path / "m", report=report)
    (tmp_path / "m" / "tokenizer.json").write_text((DEMO_MODEL_DIR / "tokenizer.json").read_text())
    (tmp_path / "m" / "tokenizer_config.json").write_text((DEMO_MODEL_DIR / "tokenizer_config.json").read_text())
    back, tok = load_model(tmp_path / "m", device="cpu", dtype=torch.float32)
    x = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, small(input_ids=x).logits)
    assert tok is not None


def test_kept_adapter_folder_opens_through_the_loader(tmp_path):
    model, _, groups = traced("llama-gqa", lora=True)
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [3]})
    save_pruned(small, tmp_path / "m", report=report, merge_lora=False)
    back = load_causal_lm(tmp_path / "m" / "adapter")
    x = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, small(input_ids=x).logits)


@needs_demo
def test_pruned_demo_folder_is_traced_analysed_evaluated_and_pruned_again(pruned_demo, tmp_path, capsys):
    d, small = pruned_demo
    assert main(["graph", str(d), "--out", str(tmp_path / "g")]) == 0
    groups = json.loads((tmp_path / "g" / "groups.json").read_text())["groups"]
    heads0 = next(g for g in groups if g["id"] == "model.layers.0.self_attn:heads")
    assert heads0["n_units"] == 3 and heads0["prunable"]
    assert main(["analyze", str(d), "--estimator", "magnitude", "--out", str(tmp_path / "k.json"), "--no-progress"]) == 0
    assert main(["eval", str(d), "--max-tokens", "300", "--protocol", "short", "--no-cost", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out
    # pruned again: trace the reloaded folder, remove more, and the result still saves and reloads exactly
    again = load_causal_lm(d)
    g2 = find_groups(trace(again))
    smaller, report = compress(again, g2, {"model.layers.0.self_attn:heads": [0], "model.layers.3.mlp:channels": [1, 2]})
    side = save_pruned(smaller, tmp_path / "again", report=report)
    assert side["layer_sizes"]["0"]["attention"] == 2 and report.verified


@needs_demo
def test_graph_job_on_a_pruned_folder(pruned_demo, tmp_path):
    d, _ = pruned_demo
    registry = Registry(tmp_path / "runs" / "jobs.sqlite")
    job = submit(registry, "graph", {"source": str(d), "meta": False}, tmp_path / "runs")
    done = wait(registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-2000:])
    assert done.result["prunable_groups"] > 0


def test_meta_trace_of_a_non_uniformly_pruned_folder_has_the_pruned_shapes(tmp_path):
    model, _, groups = traced("llama-gqa")
    small, report = compress(model, groups, {"model.layers.1.self_attn:heads": [0], "model.layers.0.mlp:channels": [1, 2, 3]})
    assert save_pruned(small, tmp_path / "m", report=report)["case"] == "lorashear"
    real = {g.id: g.n_units for g in find_groups(trace(tmp_path / "m"))}
    meta = {g.id: g.n_units for g in find_groups(trace(tmp_path / "m", meta=True))}
    assert meta == real and real["model.layers.0.mlp:channels"] == 45 and real["model.layers.0.self_attn:heads"] == 2
    assert "model.layers.1.self_attn:heads" not in real  # one kv head left: nothing to choose from


# ------------------------------------------------------------------------- refusals before any weight is read
def test_a_missing_path_is_model_folder_not_found(tmp_path, capsys):
    with pytest.raises(LorashearError, match=r"^model folder not found: .*nope \(no such file or directory\)$"):
        check_model_source(tmp_path / "nope")
    assert main(["eval", str(tmp_path / "nope"), "--no-cost"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model folder not found" in err and "\n" not in err


def test_a_file_where_a_folder_belongs_says_it_is_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(LorashearError, match="is a file, not a model folder"):
        check_model_source(f)
    with pytest.raises(LorashearError, match="is a file, not a model folder"):
        load_model(f)


def test_a_config_file_is_no_model_with_a_tokenizer(tmp_path):
    build("llama").config.to_json_file(tmp_path / "config.json")
    assert check_model_source(tmp_path / "config.json") == tmp_path / "config.json"
    with pytest.raises(LorashearError, match="is a config file, not a model folder"):
        load_model(tmp_path / "config.json")


def test_a_bert_config_is_refused_from_the_config_alone(tmp_path):
    """Only config.json, no weights: the refusal cannot have read any."""
    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    with pytest.raises(LorashearError, match="is an encoder.*not a decoder language model"):
        check_model_source(tmp_path)
    with pytest.raises(LorashearError, match="is an encoder.*not a decoder language model"):
        load_model(tmp_path)


def test_a_config_without_weights_is_refused_unless_meta(tmp_path):
    build("llama").config.save_pretrained(tmp_path)
    with pytest.raises(LorashearError, match="has a config but no weights"):
        check_model_source(tmp_path)
    assert check_model_source(tmp_path, meta=True) == tmp_path


def test_the_public_load_model_is_the_one_loader():
    import lorashear
    from lorashear import evaluate

    assert lorashear.load_model is load_model and evaluate.load_model is load_model


# ---------------------------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """What `lorashear prune --out RUN` leaves: RUN/run.json and the pruned model in RUN/model (with a tokenizer)."""
    model, _, groups = traced("llama-gqa")
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [1, 2, 3]})
    run = tmp_path_factory.mktemp("runs") / "run"
    save_pruned(small, run / "model", report=report, provenance={"source": "tiny", "method": "test"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (run / "model" / name).write_text((DEMO_MODEL_DIR / name).read_text())
    (run / "run.json").write_text(json.dumps({"format": "lorashear.prune-run/1", "status": "done"}))
    return run, small


def test_a_run_folder_loads_its_model_and_says_so(run_folder, capsys):
    run, small = run_folder
    x = torch.randint(0, 64, (1, 7))
    for load in (lambda: load_causal_lm(run), lambda: load_pruned(run), lambda: load_model(run, device="cpu")[0]):
        back = load()
        with torch.no_grad():
            assert torch.equal(back(input_ids=x).logits, small(input_ids=x).logits)
    assert check_model_source(run) == run / "model"
    assert read_sidecar(run)["provenance"]["source"] == "tiny"
    assert f"{run} is a run folder; using its model {run / 'model'}" in capsys.readouterr().err


def test_commands_take_a_run_folder(run_folder, tmp_path, capsys):
    run, _ = run_folder
    assert main(["graph", str(run), "--out", str(tmp_path / "g")]) == 0
    groups = json.loads((tmp_path / "g" / "groups.json").read_text())["groups"]
    assert next(g for g in groups if g["id"] == "model.layers.0.mlp:channels")["n_units"] == 45


def test_a_folder_with_run_json_but_no_model_is_not_a_run_folder(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(LorashearError, match="not a Hugging Face model folder"):
        check_model_source(tmp_path)
