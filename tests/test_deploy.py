"""lorashear.deploy: the demo model and pruned variants written as llama.cpp GGUF files, read back with
``gguf.GGUFReader`` (every tensor's shape and type, every metadata key), and the refusals. That llama.cpp
itself runs these files and computes the same logits is proven by ``bench/gguf_roundtrip.py`` (slow)."""
import json

import numpy as np
import pytest
import torch

from lorashear import LorashearError, compress, find_groups, save_pruned, trace
from lorashear.data import DEMO_MODEL_DIR
from lorashear.deploy import export_gguf, export_model, find_source_gguf, read_metadata
from lorashear.loading import load_causal_lm, load_model

gguf = pytest.importorskip("gguf")
needs_demo = pytest.mark.skipif(not (DEMO_MODEL_DIR / "model.safetensors").exists(), reason="demo model not built")

# layer 1 loses kv head 1 (with its 2 query heads), layer 2 query head 0 of every kv group, layer 3 100 MLP channels
NON_UNIFORM = {"model.layers.1.self_attn:heads": [1], "model.layers.2.self_attn:query_heads": [0],
               "model.layers.3.mlp:channels": list(range(0, 200, 2))}
UNIFORM = {f"model.layers.{i}.self_attn:heads": [2] for i in range(6)} | {
    f"model.layers.{i}.mlp:channels": list(range(128)) for i in range(6)}


def _pruned(removal, out):
    model, tok = load_model("demo")
    small, report = compress(model, find_groups(trace(model)), removal)
    save_pruned(small, out, report=report, tokenizer=tok, provenance={"source": "demo", "method": "test"})
    return small


@pytest.fixture(scope="module")
def non_uniform(tmp_path_factory):
    d = tmp_path_factory.mktemp("nu") / "model"
    return d, _pruned(NON_UNIFORM, d)


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    d = tmp_path_factory.mktemp("u") / "model"
    return d, _pruned(UNIFORM, d)


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def expected_shapes(n_embd, n_vocab, layers, tied=True):
    """llama.cpp's tensor shapes (ne0 first) for a LLaMA block stack: what its loader creates."""
    want = {"token_embd.weight": [n_embd, n_vocab], "output_norm.weight": [n_embd]}
    if not tied:
        want["output.weight"] = [n_embd, n_vocab]
    for i, (nh, nkv, nff) in enumerate(layers):
        want |= {f"blk.{i}.attn_norm.weight": [n_embd], f"blk.{i}.ffn_norm.weight": [n_embd],
                 f"blk.{i}.attn_q.weight": [n_embd, 32 * nh], f"blk.{i}.attn_k.weight": [n_embd, 32 * nkv],
                 f"blk.{i}.attn_v.weight": [n_embd, 32 * nkv], f"blk.{i}.attn_output.weight": [32 * nh, n_embd],
                 f"blk.{i}.ffn_gate.weight": [n_embd, nff], f"blk.{i}.ffn_up.weight": [n_embd, nff],
                 f"blk.{i}.ffn_down.weight": [nff, n_embd]}
    return want


@needs_demo
def test_demo_model_exports_as_llama_with_every_tensor_and_key(tmp_path):
    out = tmp_path / "demo.gguf"
    info = export_model("demo", out, format="gguf", dtype="f32")
    assert info["architecture"] == "llama" and info["uniform"] and info["tied_embeddings"] and out.is_file()
    got = {n: [int(x) for x in t.shape] for n, t in tensors(out).items()}
    assert got == expected_shapes(256, 4096, [(8, 4, 640)] * 6)  # tied: no output.weight
    assert {t.tensor_type.name for t in tensors(out).values()} == {"F32"}
    meta = read_metadata(out)
    cfg = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert {k: meta[k] for k in meta if k.startswith("llama.")} == pytest.approx({
        "llama.context_length": 512, "llama.embedding_length": 256, "llama.block_count": 6,
        "llama.attention.head_count": 8, "llama.attention.head_count_kv": 4, "llama.feed_forward_length": 640,
        "llama.attention.key_length": 32, "llama.attention.value_length": 32, "llama.rope.dimension_count": 32,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": cfg["rms_norm_eps"],
        "llama.vocab_size": 4096})
    tj = json.loads((DEMO_MODEL_DIR / "tokenizer.json").read_text())
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == sorted(tj["model"]["vocab"], key=tj["model"]["vocab"].get)
    assert len(meta["tokenizer.ggml.merges"]) == len(tj["model"]["merges"])
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the demo tokenizer adds no BOS
    assert "llama-cli -m" in info["hint"] and info["stock_loaders"]


@needs_demo
def test_exported_demo_reads_back_through_transformers_with_equal_logits(tmp_path, monkeypatch):
    """transformers' GGUF reader undoes llama.cpp's q/k permutation: equal logits prove names and layouts."""
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo.gguf"
    export_model("demo", out, format="gguf")
    back, src = load_causal_lm(out), load_causal_lm("demo")
    x = torch.randint(0, 4096, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, src(input_ids=x).logits, atol=1e-5, rtol=0)


@needs_demo
def test_non_uniform_prune_exports_as_deci_with_per_layer_arrays(non_uniform, tmp_path):
    folder, _ = non_uniform
    out = tmp_path / "nu.gguf"
    info = export_model(folder, out, format="gguf")
    layers = [(8, 4, 640), (6, 3, 640), (4, 4, 640), (8, 4, 540), (8, 4, 640), (8, 4, 640)]
    assert info["architecture"] == "deci" and not info["uniform"]
    assert [(s["n_head"], s["n_head_kv"], s["n_ff"]) for s in info["layers"]] == layers
    meta = read_metadata(out)
    assert meta["general.architecture"] == "deci"
    assert meta["deci.attention.head_count"] == [8, 6, 4, 8, 8, 8]
    assert meta["deci.attention.head_count_kv"] == [4, 3, 4, 4, 4, 4]
    assert meta["deci.feed_forward_length"] == [640, 640, 640, 540, 640, 640]
    assert meta["deci.attention.key_length"] == 32 and meta["deci.rope.dimension_count"] == 32
    got = {n: [int(x) for x in t.shape] for n, t in tensors(out).items()}
    assert got == expected_shapes(256, 4096, layers)


@needs_demo
def test_non_uniform_prune_tensors_hold_the_pruned_weights_in_llama_cpp_order(non_uniform, tmp_path):
    folder, small = non_uniform
    out = tmp_path / "nu.gguf"
    export_model(folder, out, format="gguf")
    t = tensors(out)
    att = small.model.layers[1].self_attn
    k = att.k_proj.weight.detach().numpy()  # 3 kv heads of 32 rows: llama.cpp interleaves each head's halves
    want = k.reshape(3, 2, 16, 256).swapaxes(1, 2).reshape(96, 256)
    assert np.array_equal(np.asarray(t["blk.1.attn_k.weight"].data), want)
    assert np.array_equal(np.asarray(t["blk.3.ffn_down.weight"].data), small.model.layers[3].mlp.down_proj.weight.detach().numpy())


@needs_demo
def test_uniform_prune_exports_as_llama_with_scalars(uniform, tmp_path):
    folder, _ = uniform
    out = tmp_path / "u.gguf"
    info = export_model(folder, out, format="gguf", dtype="f16")
    meta = read_metadata(out)
    assert info["architecture"] == "llama" and meta["general.architecture"] == "llama"
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"], meta["llama.feed_forward_length"]) == (6, 3, 512)
    types = {n: t.tensor_type.name for n, t in tensors(out).items()}
    assert types["blk.0.ffn_up.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert info["notes"] == []  # nothing to say about an f16 file


@needs_demo
@pytest.mark.parametrize("dtype,qtype", [("q8_0", "Q8_0"), ("q4_0", "Q4_0")])
def test_quantized_export_uses_gguf_quantizers_and_falls_back_to_f16_on_partial_blocks(non_uniform, tmp_path, dtype, qtype):
    folder, small = non_uniform
    out = tmp_path / f"nu-{dtype}.gguf"
    info = export_model(folder, out, format="gguf", dtype=dtype)
    t = tensors(out)
    # 540 MLP channels are not a whole number of 32-value blocks: that row length (ffn_down's) stays F16
    assert info["quantization_fallback_f16"] == ["blk.3.ffn_down.weight"]
    assert len(info["notes"]) == 1 and "1 of " in info["notes"][0] and "(ffn_down)" in info["notes"][0]
    assert "--align 32" in info["notes"][0]
    assert t["blk.3.ffn_down.weight"].tensor_type.name == "F16" and t["blk.3.ffn_up.weight"].tensor_type.name == qtype
    assert t["token_embd.weight"].tensor_type.name == qtype and t["output_norm.weight"].tensor_type.name == "F32"
    w = small.model.layers[0].mlp.up_proj.weight.detach().numpy()
    back = gguf.quants.dequantize(t["blk.0.ffn_up.weight"].data, gguf.GGMLQuantizationType[qtype])
    assert back.shape == w.shape and np.abs(back - w).max() <= np.abs(w).max() * (0.01 if dtype == "q8_0" else 0.15)
    assert read_metadata(out)["general.file_type"] == int(getattr(gguf.LlamaFileType, "MOSTLY_" + qtype))


@needs_demo
def test_hf_format_is_a_verified_save_pruned_folder_keeping_the_record(non_uniform, tmp_path):
    from lorashear.export import read_sidecar

    folder, small = non_uniform
    info = export_model(folder, tmp_path / "hf", format="hf")
    side = read_sidecar(tmp_path / "hf")
    assert info["format"] == "hf" and info["case"] == "lorashear" and not info["stock_loaders"]
    assert side["removed"] == read_sidecar(folder)["removed"] and side["provenance"]["exported_from"] == str(folder)
    x = torch.randint(0, 4096, (1, 9))
    with torch.no_grad():
        assert torch.equal(load_causal_lm(tmp_path / "hf")(input_ids=x).logits, small(input_ids=x).logits)


def test_tokenizer_is_copied_from_the_source_gguf(tmp_path, monkeypatch):
    from test_gguf import tiny_llama, write_llama_gguf

    if not (DEMO_MODEL_DIR / "tokenizer.json").exists():
        pytest.skip("demo tokenizer not built")
    monkeypatch.setenv("LORASHEAR_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src.gguf"
    write_llama_gguf(tiny_llama(False), src)
    # a pruned folder whose provenance names the GGUF: the chain leads back to the file
    model, tok = load_model(src)
    small, report = compress(model, find_groups(trace(model)), {"model.layers.0.mlp:channels": [0, 1]})
    save_pruned(small, tmp_path / "p", report=report, tokenizer=tok, provenance={"source": str(src)})
    assert find_source_gguf(tmp_path / "p") == src
    out = tmp_path / "p.gguf"
    info = export_model(tmp_path / "p", out, format="gguf")
    assert info["tokenizer"] == f"copied from {src}" and info["architecture"] == "deci" and not info["tied_embeddings"]
    mine, theirs = read_metadata(out), read_metadata(src)
    assert {k: v for k, v in mine.items() if k.startswith("tokenizer.")} == {k: v for k, v in theirs.items() if k.startswith("tokenizer.")}
    assert "output.weight" in tensors(out)  # untied head kept


def test_a_layer_without_mlp_channels_is_written_as_one_zero_channel(tmp_path):
    """deci reads n_ff = 0 as 'skip the rest of the block' (dropping the attention output too): one zero channel
    adds exactly nothing instead."""
    from test_gguf import tiny_llama

    model = tiny_llama(True)
    mlp = model.model.layers[1].mlp
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = (torch.nn.Linear(32, 0, bias=False), torch.nn.Linear(32, 0, bias=False),
                                                 torch.nn.Linear(0, 32, bias=False))
    info = export_gguf(model, tmp_path / "z.gguf", tokenizer=_demo_tok())
    assert [(s["n_ff"], s["n_ff_model"]) for s in info["layers"]] == [(48, 48), (1, 0)]
    t = tensors(tmp_path / "z.gguf")
    assert [int(x) for x in t["blk.1.ffn_down.weight"].shape] == [1, 32] and not np.asarray(t["blk.1.ffn_down.weight"].data).any()
    assert read_metadata(tmp_path / "z.gguf")["deci.feed_forward_length"] == [48, 1]


def _demo_tok():
    from transformers import AutoTokenizer

    if not (DEMO_MODEL_DIR / "tokenizer.json").exists():
        pytest.skip("demo tokenizer not built")
    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


# -------------------------------------------------------------------------------------------- refusals
@needs_demo
def test_existing_output_is_refused_unless_force(tmp_path):
    out = tmp_path / "d.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(LorashearError, match="already exists; pass force=True") as info:
        export_model("demo", out, format="gguf")
    assert out.read_bytes() == b"keep me" and "\n" not in str(info.value)
    export_model("demo", out, format="gguf", dtype="q8_0", force=True)
    assert read_metadata(out)["general.architecture"] == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["d.gguf"]  # no temporary file left


def test_non_llama_family_model_is_refused_with_the_supported_list(tmp_path):
    from tiny_models import build

    with pytest.raises(LorashearError, match=r"supports LLaMA-family models \(llama, mistral\); this is 'gpt2'") as info:
        export_gguf(build("gpt2"), tmp_path / "g.gguf")
    assert "\n" not in str(info.value) and not (tmp_path / "g.gguf").exists()


def test_sliding_window_mistral_is_refused(tmp_path):
    from tiny_models import build

    model = build("mistral")
    model.config.sliding_window = 16
    with pytest.raises(LorashearError, match="sliding-window attention"):
        export_gguf(model, tmp_path / "m.gguf")


@pytest.mark.parametrize("kwargs,match", [
    ({"format": "onnx"}, "unknown export format 'onnx'"),
    ({"format": "gguf", "dtype": "q2_k"}, "unknown export dtype 'q2_k'"),
    ({"format": "hf", "dtype": "q4_0"}, "a Hugging Face folder is written in f32 or f16"),
])
def test_bad_options_are_one_line_errors(tmp_path, kwargs, match):
    with pytest.raises(LorashearError, match=match):
        export_model("demo", tmp_path / "x.gguf", **kwargs)


def test_gguf_output_must_be_a_gguf_file(tmp_path):
    with pytest.raises(LorashearError, match="must end in .gguf"):
        export_model("demo", tmp_path / "outdir", format="gguf")


@needs_demo
def test_folder_saved_without_its_reload_check_is_refused(tmp_path):
    model, tok = load_model("demo")
    save_pruned(model, tmp_path / "m", tokenizer=tok, verify=False)
    with pytest.raises(LorashearError, match="saved without its reload check"):
        export_model(tmp_path / "m", tmp_path / "m.gguf", format="gguf")
    assert not (tmp_path / "m.gguf").exists()


@needs_demo
def test_failed_read_back_leaves_nothing_behind(tmp_path, monkeypatch):
    from lorashear import deploy as mod

    def broken(*a, **k):
        raise LorashearError("GGUF export: tensor x reads back differently; nothing was written")

    monkeypatch.setattr(mod, "_check_written", broken)
    with pytest.raises(LorashearError, match="reads back differently"):
        export_model("demo", tmp_path / "d.gguf", format="gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_removes_a_selection_then_writes_gguf_and_refuses_to_overwrite(tmp_path, capsys):
    """``lorashear export`` is ``deploy.export``: units removed first (compress verifies), then the GGUF file; an
    existing output is refused in one line before any work (issue 23)."""
    import json as _json

    from gguf import GGUFReader

    from lorashear.cli import main
    from lorashear.data import DEMO_MODEL_DIR

    out = tmp_path / "m.gguf"
    units = {"model.layers.1.mlp:channels": list(range(40))}
    assert main(["export", str(DEMO_MODEL_DIR), "--out", str(out), "--format", "gguf", "--units",
                 _json.dumps(units)]) == 0
    text = capsys.readouterr().out
    assert "removed 40 units of 1 groups" in text and "llama-cli -m" in text
    fields = GGUFReader(str(out)).fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "deci"  # layer 1 differs: per-layer arrays
    assert main(["export", str(DEMO_MODEL_DIR), "--out", str(out), "--format", "gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lorashear export: error: --out: {out} already exists; pass --force to replace it"
