"""lorashear.trace: torch.export graph → networkx, node attributes, JSON round trip, meta device."""
import json

import pytest
from tiny_models import build, traced

from lorashear import LorashearError, load_graph, module_tree, trace


def test_op_nodes_carry_module_shape_params_and_flops():
    _, og, _ = traced("llama-gqa")
    q = [a for _, a in og.graph.nodes(data=True) if a.get("module") == "model.layers.0.self_attn.q_proj" and a["op"] == "linear"]
    assert len(q) == 1
    assert q[0]["module_class"] == "Linear"
    assert q[0]["params"] == ["model.layers.0.self_attn.q_proj.weight"]
    assert q[0]["shape"] == [2, 16, 32] and q[0]["dtype"] == "float32"
    assert q[0]["flops"] == 2 * 2 * 16 * 32 * 32


def test_every_parameter_is_recorded_with_its_shape():
    model, og, _ = traced("llama-gqa")
    assert og.params.keys() == {n for n, _ in model.named_parameters()}
    assert og.n_params == sum(p.numel() for p in model.parameters())


def test_graph_json_round_trip(tmp_path):
    _, og, _ = traced("gpt2")
    back = load_graph(og.save(tmp_path / "graph.json"))
    assert sorted(back.graph.nodes) == sorted(og.graph.nodes)
    assert back.graph.number_of_edges() == og.graph.number_of_edges()
    assert back.graph.nodes["output"]["kind"] == "output"
    assert back.params == og.params


def test_peft_lora_model_traces_with_adapter_parameters():
    _, og, _ = traced("llama", lora=True)
    names = [n for n in og.params if "lora_B" in n]
    assert names and all(n.startswith("base_model.model.") for n in names)
    assert og.model_class == "PeftModel(LlamaForCausalLM)"


def test_meta_device_trace_from_config_file(tmp_path):
    cfg = build("llama-gqa").config
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json_string())
    og = trace(path, meta=True)
    assert og.n_params == sum(p.numel() for p in build("llama-gqa").parameters())
    assert any(a["op"] == "scaled_dot_product_attention" for _, a in og.graph.nodes(data=True))


def test_module_tree_counts_ops_and_params():
    model, og, _ = traced("llama-gqa")
    tree = module_tree(og)
    assert tree["n_params"] == og.n_params
    layers = next(c for c in next(c for c in tree["children"] if c["path"] == "model")["children"] if c["path"] == "model.layers")
    assert [c["path"] for c in layers["children"]] == ["model.layers.0", "model.layers.1"]
    layer0 = layers["children"][0]
    assert layer0["n_params"] == sum(p.numel() for p in model.model.layers[0].parameters())
    assert layer0["n_ops"] > 0 and layer0["class"] == "LlamaDecoderLayer"


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(LorashearError, match="no such file"):
        trace(tmp_path / "nope", meta=True)


def test_malformed_config_json_names_the_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(LorashearError, match=r"malformed config JSON \(line 2"):
        trace(tmp_path, meta=True)


def test_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(LorashearError, match="not a causal LM"):
        trace(tmp_path / "config.json", meta=True)


def test_export_failure_is_reported_not_raised_raw():
    model = build("llama-gqa")

    def broken(*a, **k):
        raise RuntimeError("data-dependent control flow")

    model.model.forward = broken
    with pytest.raises(LorashearError, match="torch.export failed for LlamaForCausalLM: RuntimeError: data-dependent"):
        trace(model)


def test_graph_file_that_is_not_a_graph_is_refused(tmp_path):
    p = tmp_path / "g.json"
    p.write_text("[]")
    with pytest.raises(LorashearError, match="not a lorashear graph"):
        load_graph(p)


def test_real_weights_trace_has_no_meta_tensors():
    og = trace(build("opt"))
    assert all(info["numel"] > 0 and info["dtype"] == "float32" for info in og.params.values())
    assert og.example_shape == [2, 16]


def test_peft_adapter_directory_traces_with_its_base(tmp_path):
    base = build("llama-gqa")
    base.save_pretrained(tmp_path / "base")
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build("llama-gqa"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    peft_model.save_pretrained(tmp_path / "adapter")
    og = trace(tmp_path / "adapter")
    assert any(".lora_B." in n for n in og.params)
    with pytest.raises(LorashearError, match="needs real base weights"):
        trace(tmp_path / "adapter", meta=True)
