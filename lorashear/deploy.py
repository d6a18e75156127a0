"""Deploy a (pruned) model: one function, ``export_model``, writes it as a Hugging Face folder or as a GGUF file
that llama.cpp (``llama-cli``, ``llama-server``, llama-cpp-python, and the tools built on it) runs.

Why two llama.cpp architectures (read from llama.cpp's ``src/models/llama.cpp`` and ``src/models/deci.cpp``):

* ``llama`` reads ``n_head``, ``n_head_kv`` and ``n_ff`` of **layer 0 only** (``hparams.n_head()`` etc. in
  ``LLAMA_LOAD_LOCALS`` and in the graph), so a model whose layers differ would not load (tensor shape
  mismatch). A uniformly pruned model is written as ``llama``: the most widely supported name.
* ``deci`` (the Nemotron/DeciLM architecture, same block as LLaMA) reads ``hparams.n_head(il)``,
  ``n_head_kv(il)`` and ``n_ff(il)`` per layer both when creating tensors and in the graph, and the loader
  accepts ``{arch}.attention.head_count``/``head_count_kv``/``feed_forward_length`` as arrays (one entry per
  layer, ``get_key_or_arr``). A non-uniformly pruned model is written as ``deci`` with those arrays.

What llama.cpp cannot represent is refused in one line: a layer-0 without attention heads (the head size is
derived from layer 0), a head size that differs between layers or from the rotary dimension, query heads
not a multiple of kv heads, biases, non-default RoPE, a non-SiLU MLP, sliding-window attention, and any
architecture other than the ones in ``GGUF_ARCHITECTURES``. One case is represented exactly instead of being
refused: a layer whose MLP lost every channel is written with one all-zero channel, because ``deci`` treats
``n_ff = 0`` as "skip the rest of the block" and would also drop that layer's attention output.

Tensors use llama.cpp's names and layouts, including the q/k row permutation of its ``llama`` converter
(``LlamaModel.permute``: llama.cpp's rotary embedding rotates adjacent pairs, transformers' rotates halves),
done here per layer with that layer's head counts. Tied embeddings stay tied (no ``output.weight``). The
tokenizer is copied from the source GGUF when the model came from one (followed through the
``lorashear.json`` provenance chain and the GGUF cache marker), else converted from a byte-level BPE
Hugging Face tokenizer. Quantized files (``q8_0``, ``q4_0``) use the ``gguf`` package's own quantizers; a
matrix whose rows are not a multiple of the 32-value block falls back to F16 (as llama.cpp's converter
does) and is listed in the result. The file is written under a temporary name, read back with
``GGUFReader`` (every tensor's name, type, shape and bytes compared with what was meant to be written), and
only then renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .compress import CompressReport, compress
from .deploy_measure import figures_path, llama_cpp_module, measure_gguf, write_figures
from .errors import LorashearError
from .export import read_sidecar, save_pruned
from .export_settings import ExportSettings, parse_units
from .settings import SettingsError
from .groups import find_groups
from .loading import load_model, resolve_source
from .models import CACHE_MARKER, GGUF_SUFFIX, NAMED, package_gguf
from .prune.plan import load_plan
from .trace import trace

FORMATS = ("hf", "gguf")
DTYPES = ("f32", "f16", "q8_0", "q4_0")
GGUF_ARCHITECTURES = ("llama", "mistral")  # Hugging Face model_type values written to GGUF
_BLOCK = 32  # values per Q8_0 / Q4_0 block


@dataclass
class LayerSize:
    n_head: int
    n_head_kv: int
    n_ff: int  # as written (an MLP with no channel left is written as one zero channel)
    n_ff_model: int  # what the model has


@dataclass
class LlamaLayout:
    """What a LLaMA-family model needs to say to llama.cpp, checked against the modules themselves."""
    n_embd: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    rms_eps: float
    rope_theta: float
    tied: bool
    layers: list[LayerSize] = field(default_factory=list)

    @property
    def uniform(self) -> bool:
        return len({(s.n_head, s.n_head_kv, s.n_ff) for s in self.layers}) <= 1

    @property
    def architecture(self) -> str:
        return "llama" if self.uniform else "deci"


# ------------------------------------------------------------------------------------------------ public
def export_model(model_dir: str | Path, out: str | Path, *, format: str = "hf", dtype: str = "f32",
                 force: bool = False) -> dict[str, Any]:
    """Write the model at ``model_dir`` (a pruned folder, a plain HF folder, ``"demo"``, a named model or a
    ``.gguf`` file) to ``out`` as ``format``; returns what was written.

    ``hf``: the ``save_pruned`` folder (its reload verified before it appears), ``dtype`` f32 or f16.
    ``gguf``: one file for llama.cpp, ``dtype`` f32, f16, q8_0 or q4_0 (see the module docstring for the
    architecture choice and what is refused). ``out`` must not exist unless ``force``.
    """
    if format not in FORMATS:
        raise LorashearError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise LorashearError(f"unknown export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out).expanduser()
    if format == "gguf" and out.suffix.lower() != ".gguf":
        raise LorashearError(f"{out}: a GGUF output file must end in .gguf")
    if format == "hf" and dtype not in ("f32", "f16"):
        raise LorashearError(f"dtype {dtype} is a GGUF quantization; a Hugging Face folder is written in f32 or f16")
    if out.exists() and not force:
        raise LorashearError(f"{out} already exists; pass force=True (--force) to replace it")
    if out.exists() and format == "gguf" and out.is_dir():
        raise LorashearError(f"{out} is a directory; a GGUF export writes one file")
    src = resolve_source(model_dir)
    side = _sidecar(src)
    if side and (side.get("checks") or {}).get("round_trip_verified") is False:
        raise LorashearError(f"{src}: this folder was saved without its reload check (verify=False), so nothing proves "
                             "it reproduces the pruned model; save it again with verification before exporting")
    model, tok = load_model(model_dir, device="cpu", dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):  # a LoRA adapter folder: deploy the merged weights
        model = model.merge_and_unload()
    if format == "hf":
        return _export_hf(model, tok, src, side, out, dtype)
    return export_gguf(model, out, dtype=dtype, tokenizer=tok, source=model_dir, force=force)


def selection(st: ExportSettings) -> tuple[dict[str, list[int]] | None, str]:
    """The units an export removes first and where they come from: a hand selection (``units`` JSON), a saved
    plan's removal, or nothing (None: the model is written as it is)."""
    if st.units:
        return parse_units(st.units), "hand selection"
    if st.plan:
        plan = load_plan(st.plan)
        return {gid: list(u) for gid, u in plan.removal.items() if u}, f"plan {st.plan}"
    return None, ""


def export(model: str | Path, out: str | Path, settings: ExportSettings | None = None, *,
           progress: Callable[[float, str], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """The one call behind ``lorashear export``, the ``export`` job and the app's Export buttons: remove a selection
    of units first when one is given (a hand selection or a saved plan's; ``compress`` verifies masked vs compressed
    logits), then write the model as a Hugging Face folder (``save_pruned``, reload verified) or a GGUF file
    (``export_model``); with ``measure``, run the GGUF file in llama.cpp (``deploy_measure.measure_gguf``: its figures
    in ``llama_cpp``, and beside the file). ``overrides`` are ``ExportSettings`` fields. Returns what was written,
    with ``hint``: how to load or run it."""
    st = replace(settings, **overrides) if settings is not None else ExportSettings(**overrides)
    progress = progress or (lambda f, s: None)
    out = Path(out).expanduser()
    _check_output(out, st.format, st.dtype, st.force)  # before anything is loaded
    removal, origin = selection(st)
    if st.measure:
        llama_cpp_module()  # refused in one line before any work when llama-cpp-python is missing
    if removal is None:
        progress(0.1, f"writing {st.format} ({st.dtype})")
        info = export_model(model, out, format=st.format, dtype=st.dtype, force=st.force)
        return _measured(info, out, st, progress)
    progress(0.05, "loading the model")
    net, tok = load_model(model, device="cpu", dtype=torch.float32)
    progress(0.3, "tracing groups")
    groups = find_groups(trace(net))
    n_units = sum(map(len, removal.values()))
    progress(0.5, f"removing {n_units} units of {len(removal)} groups ({origin}); masked vs compressed compared")
    small, report = compress(net, groups, removal, verify=st.verify)
    provenance = {"method": "hand selection" if st.units else "plan", "source": str(model), "selection": origin,
                  "units": n_units}
    progress(0.75, "saving (the reload is verified before the output appears)")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        folder = Path(tmp) / "model"
        save_pruned(small.to(torch.float16) if st.format == "hf" and st.dtype == "f16" else small, folder,
                    report=report, tokenizer=tok, provenance=provenance, verify=st.verify)
        if st.format == "hf":
            if out.exists():  # --force (checked above): the old output goes only now that the new one is complete
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(folder, out)
            side = read_sidecar(out) or {}
            info = {"path": str(out), "format": "hf", "dtype": st.dtype, "architecture": type(small).__name__,
                    "n_params": sum(p.numel() for p in small.parameters()), "case": side.get("case"),
                    "case_reason": side.get("case_reason"), "layers": _hf_layers(small),
                    "stock_loaders": side.get("case") == "stock",
                    "hint": (f"AutoModelForCausalLM.from_pretrained(\"{out}\")" if side.get("case") == "stock"
                             else f"lorashear.load_pruned(\"{out}\")")}
        else:
            info = export_model(folder, out, format=st.format, dtype=st.dtype, force=st.force)
    info.update(selection=origin, units_removed=n_units, groups=len(removal), params_before=report.params_before,
                params_after=report.params_after, max_diff=report.max_diff)
    return _measured(info, out, st, progress)


def _measured(info: dict[str, Any], out: Path, st: ExportSettings,
              progress: Callable[[float, str], None]) -> dict[str, Any]:
    """Figures left beside a GGUF file this export replaced (``--force``) are removed first: they described the old
    file. With ``measure``, the new file is run in llama.cpp (``measure_gguf`` on ``measure_threads`` threads, its
    other defaults) and the figures go to ``info["llama_cpp"]`` and beside the file (``<file>.llama_cpp.json``)."""
    if st.format == "gguf":
        figures_path(out).unlink(missing_ok=True)
        if st.measure:
            progress(0.9, "measuring in llama.cpp (prompt and generation tokens/s)")
            try:
                figs = measure_gguf(out, threads=st.measure_threads)
            except LorashearError as exc:
                raise LorashearError(f"{out} was written, but not measured: {exc}") from None
            info["llama_cpp"] = figs
            info["llama_cpp_json"] = str(write_figures(out, figs))
    progress(1.0, "done")
    return info


def _check_output(out: Path, format: str, dtype: str, force: bool) -> None:
    """Refuse, before any work, an output the export could not write."""
    if format == "gguf" and out.suffix.lower() != ".gguf":
        raise SettingsError.one("out", f"{out}: a GGUF output file must end in .gguf")
    if out.exists() and not force:
        raise SettingsError.one("out", f"{out} already exists; pass --force to replace it")
    if out.exists() and format == "gguf" and out.is_dir():
        raise SettingsError.one("out", f"{out} is a directory; a GGUF export writes one file")


def export_gguf(model: nn.Module, out: str | Path, *, dtype: str = "f32", tokenizer: Any = None,
                source: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Write an in-memory LLaMA-family causal LM as a llama.cpp GGUF file (``export_model`` with
    ``format="gguf"`` loads the model and calls this). ``source`` is where the model came from: it is
    followed to the original GGUF file, whose tokenizer is copied; otherwise ``tokenizer`` is converted."""
    import gguf

    if dtype not in DTYPES:
        raise LorashearError(f"unknown export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise LorashearError(f"{out} already exists; pass force=True (--force) to replace it")
    layout = llama_layout(model)
    arch = layout.architecture
    source_gguf = find_source_gguf(source) if source is not None else None
    w_tok = _tokenizer_writer(source_gguf, tokenizer, layout.n_vocab)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    expected: dict[str, tuple[int, list[int], bytes]] = {}
    fallback: list[str] = []
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        name = str(source) if source is not None else (getattr(model.config, "_name_or_path", "") or "model")
        w.add_name(f"{Path(name).name} (lorashear export)")
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype])
        w.add_context_length(layout.n_ctx)
        w.add_embedding_length(layout.n_embd)
        w.add_block_count(len(layout.layers))
        heads = [s.n_head for s in layout.layers]
        kv = [s.n_head_kv for s in layout.layers]
        ff = [s.n_ff for s in layout.layers]
        # scalars where every layer agrees (what stock files carry), arrays where they differ
        w.add_head_count(heads[0] if len(set(heads)) == 1 else heads)
        w.add_head_count_kv(kv[0] if len(set(kv)) == 1 else kv)
        w.add_feed_forward_length(ff[0] if len(set(ff)) == 1 else ff)
        w.add_key_length(layout.head_dim)  # explicit: llama.cpp would otherwise take n_embd / n_head(layer 0)
        w.add_value_length(layout.head_dim)
        w.add_rope_dimension_count(layout.head_dim)
        w.add_rope_freq_base(layout.rope_theta)
        w.add_layer_norm_rms_eps(layout.rms_eps)
        w.add_vocab_size(layout.n_vocab)
        w_tok(w)
        for tname, arr in _tensors(model, layout):
            qtype, data = _encode(arr, dtype, gguf)
            if arr.ndim == 2 and dtype in ("q8_0", "q4_0") and qtype == gguf.GGMLQuantizationType.F16:
                fallback.append(tname)
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                w.add_tensor(tname, data)
            else:
                w.add_tensor(tname, data, raw_dtype=qtype)
            expected[tname] = (int(qtype), list(arr.shape), data.tobytes())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        _check_written(tmp, expected, arch, layout)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "path": str(out), "format": "gguf", "dtype": dtype, "architecture": arch,
        "uniform": layout.uniform, "bytes": out.stat().st_size, "tensors": len(expected),
        "n_params": sum(int(np.prod(s)) for _, s, _ in expected.values()),
        "n_embd": layout.n_embd, "head_dim": layout.head_dim, "n_vocab": layout.n_vocab, "tied_embeddings": layout.tied,
        "layers": [asdict(s) for s in layout.layers],
        "quantization_fallback_f16": fallback,
        "notes": [fallback_note(fallback, sum(1 for _, s, _ in expected.values() if len(s) == 2), dtype)] if fallback else [],
        "tokenizer": f"copied from {source_gguf}" if source_gguf else "converted from the Hugging Face tokenizer",
        "stock_loaders": True,
        "loads_in": ("llama.cpp (llama-cli, llama-server, llama-cpp-python) and tools on it that know 'llama'"
                     if arch == "llama" else
                     "llama.cpp (llama-cli, llama-server, llama-cpp-python) via its 'deci' architecture (per-layer sizes)"),
        "hint": f"llama-cli -m {out} -p \"Hello\"   (Python: llama_cpp.Llama(model_path=\"{out}\"))",
    }


def fallback_note(fallback: list[str], matrices: int, dtype: str) -> str:
    """One line for the person exporting: which matrices a quantized file keeps in F16, why, and the fix.

    Why say it: a q8_0/q4_0 file with F16 matrices is larger and, in llama.cpp, slower than its aligned twin
    (docs/deploy.md, "Speed": a globally pruned SmolLM2 without alignment is slower than dense at prompt processing)
    — nothing fails, so without this line nobody would know."""
    kinds = sorted({t.split(".")[-2] for t in fallback if t.count(".") >= 2})
    which = ", ".join(kinds) or "see quantization_fallback_f16"
    return (f"{len(fallback)} of {matrices} matrices stay F16 in this {dtype} file ({which}): their rows are not a whole number of 32-value blocks (pruned widths); "
            f"prune with --align 32 (or 64) to quantize every matrix — llama.cpp also runs aligned widths faster")


# ------------------------------------------------------------------------------------------------ checks
def llama_layout(model: nn.Module) -> LlamaLayout:
    """Per-layer sizes read from the weights and module attributes, and everything llama.cpp would compute
    differently refused in one line."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in GGUF_ARCHITECTURES:
        raise LorashearError(f"GGUF export supports LLaMA-family models ({', '.join(GGUF_ARCHITECTURES)}); "
                             f"this is '{mtype or type(base).__name__}'")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise LorashearError(f"GGUF export: hidden_act '{cfg.hidden_act}' — llama.cpp's LLaMA block uses SiLU")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise LorashearError("GGUF export: attention/MLP biases are not exported (not proven against llama.cpp)")
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise LorashearError(f"GGUF export: RoPE type '{rope.get('rope_type')}' is not written (only default RoPE)")
    window = getattr(cfg, "sliding_window", None)
    if window is not None and window < cfg.max_position_embeddings:
        raise LorashearError(f"GGUF export: sliding-window attention (window {window} < context "
                             f"{cfg.max_position_embeddings}); llama.cpp's llama/deci blocks attend to the whole context")
    inner = base.model
    emb = inner.embed_tokens.weight
    n_vocab, n_embd = emb.shape
    layers = list(inner.layers)
    head_dims = {int(l.self_attn.head_dim) for l in layers}
    if len(head_dims) != 1:
        raise LorashearError(f"GGUF export: head sizes differ between layers ({sorted(head_dims)}); llama.cpp has one head size")
    hd = head_dims.pop()
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    inv = getattr(inner.rotary_emb, "inv_freq", None)
    want = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    if inv is None or inv.shape != want.shape or not torch.allclose(inv.float().cpu(), want, rtol=1e-5, atol=0):
        raise LorashearError("GGUF export: the rotary frequencies are not default RoPE over the whole head "
                             f"(head size {hd}, theta {theta:g}); llama.cpp's llama/deci rotate every head dimension")
    if float(getattr(inner.rotary_emb, "attention_scaling", 1.0)) != 1.0:
        raise LorashearError("GGUF export: the rotary embedding scales attention; llama.cpp's default RoPE does not")
    eps = {float(m.variance_epsilon) for m in base.modules() if type(m).__name__.endswith("RMSNorm")}
    if len(eps) != 1:
        raise LorashearError(f"GGUF export: RMSNorm epsilons differ between norms ({sorted(eps)}); llama.cpp has one")
    sizes: list[LayerSize] = []
    for i, layer in enumerate(layers):
        att, mlp = layer.self_attn, layer.mlp
        if abs(float(att.scaling) - hd ** -0.5) > 1e-12 * hd:
            raise LorashearError(f"GGUF export: layer {i} scales attention by {att.scaling}, llama.cpp by 1/sqrt({hd})")
        q, k, v = att.q_proj.weight.shape[0], att.k_proj.weight.shape[0], att.v_proj.weight.shape[0]
        if q % hd or k % hd or k != v:
            raise LorashearError(f"GGUF export: layer {i} q/k/v widths {q}/{k}/{v} are not whole heads of {hd}")
        nh, nkv = q // hd, k // hd
        if (nh == 0) != (nkv == 0) or (nkv and nh % nkv):
            raise LorashearError(f"GGUF export: layer {i} has {nh} query heads for {nkv} kv heads; llama.cpp needs a multiple")
        if nkv and nh // nkv != getattr(att, "num_key_value_groups", nh // nkv):
            raise LorashearError(f"GGUF export: layer {i} groups {att.num_key_value_groups} query heads per kv head, "
                                 f"its weights {nh // nkv}")
        if i == 0 and nh == 0:
            raise LorashearError("GGUF export: layer 0 has no attention head left; llama.cpp derives the head layout "
                                 "from layer 0 and cannot load it")
        nff = mlp.gate_proj.weight.shape[0]
        sizes.append(LayerSize(n_head=nh, n_head_kv=nkv, n_ff=max(nff, 1), n_ff_model=nff))
    lm = base.get_output_embeddings().weight
    tied = lm is emb or (lm.data_ptr() == emb.data_ptr() and lm.shape == emb.shape)
    return LlamaLayout(n_embd=int(n_embd), head_dim=hd, n_vocab=int(n_vocab), n_ctx=int(cfg.max_position_embeddings),
                       rms_eps=eps.pop(), rope_theta=theta, tied=bool(tied), layers=sizes)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for its adjacent-pair RoPE (its converter's ``LlamaModel.permute``)."""
    if n_head == 0:
        return w
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: nn.Module, layout: LlamaLayout):
    """(llama.cpp name, float32 array in llama.cpp's layout) for every tensor the file holds."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model

    def f32(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())

    yield "token_embd.weight", f32(inner.embed_tokens.weight)
    yield "output_norm.weight", f32(inner.norm.weight)
    if not layout.tied:
        yield "output.weight", f32(base.get_output_embeddings().weight)
    for i, (layer, s) in enumerate(zip(inner.layers, layout.layers)):
        att, mlp = layer.self_attn, layer.mlp
        yield f"blk.{i}.attn_norm.weight", f32(layer.input_layernorm.weight)
        if s.n_head:  # deci: a layer with no head has no attention tensors
            yield f"blk.{i}.attn_q.weight", np.ascontiguousarray(_permute(f32(att.q_proj.weight), s.n_head))
            yield f"blk.{i}.attn_k.weight", np.ascontiguousarray(_permute(f32(att.k_proj.weight), s.n_head_kv))
            yield f"blk.{i}.attn_v.weight", f32(att.v_proj.weight)
            yield f"blk.{i}.attn_output.weight", f32(att.o_proj.weight)
        yield f"blk.{i}.ffn_norm.weight", f32(layer.post_attention_layernorm.weight)
        gate, up, down = f32(mlp.gate_proj.weight), f32(mlp.up_proj.weight), f32(mlp.down_proj.weight)
        if s.n_ff_model == 0:  # one zero channel: silu(0) * 0 = 0, so the block adds exactly nothing
            gate = np.zeros((1, layout.n_embd), np.float32)
            up = np.zeros((1, layout.n_embd), np.float32)
            down = np.zeros((layout.n_embd, 1), np.float32)
        yield f"blk.{i}.ffn_gate.weight", gate
        yield f"blk.{i}.ffn_up.weight", up
        yield f"blk.{i}.ffn_down.weight", down


def _encode(arr: np.ndarray, dtype: str, gguf) -> tuple[Any, np.ndarray]:
    """(GGML type, data) for one tensor: vectors stay F32 (as in llama.cpp's files); matrices take ``dtype``,
    falling back to F16 where a row is not a whole number of quantization blocks."""
    T = gguf.GGMLQuantizationType
    if arr.ndim == 1 or dtype == "f32":
        return T.F32, arr.astype(np.float32, copy=False)
    if dtype == "f16" or arr.shape[-1] % _BLOCK:
        return T.F16, arr.astype(np.float16)
    qtype = T.Q8_0 if dtype == "q8_0" else T.Q4_0
    try:
        return qtype, gguf.quants.quantize(arr, qtype)
    except (gguf.quants.QuantError, NotImplementedError):
        return T.F16, arr.astype(np.float16)


def _check_written(path: Path, expected: dict[str, tuple[int, list[int], bytes]], arch: str, layout: LlamaLayout) -> None:
    """Read the temporary file back: every tensor with the meant type, llama.cpp shape and bytes, and the
    per-layer metadata as meant. Nothing is renamed into place unless this passes."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    got = {t.name: t for t in r.tensors}
    if set(got) != set(expected):
        raise LorashearError(f"GGUF export: the written file holds tensors {sorted(set(got) ^ set(expected))[:3]} "
                             "it should not (or lacks them); nothing was written")
    for name, (qtype, shape, data) in expected.items():
        t = got[name]
        if int(t.tensor_type) != qtype or [int(x) for x in t.shape] != shape[::-1] or bytes(t.data.tobytes()) != data:
            raise LorashearError(f"GGUF export: tensor {name} reads back differently (type {t.tensor_type.name}, "
                                 f"shape {list(t.shape)}); nothing was written")
    meta = read_metadata(path)
    want = {"general.architecture": arch, f"{arch}.block_count": len(layout.layers)}
    for key, val in want.items():
        if meta.get(key) != val:
            raise LorashearError(f"GGUF export: {key} reads back as {meta.get(key)!r}, not {val!r}; nothing was written")
    for key, vals in ((f"{arch}.attention.head_count", [s.n_head for s in layout.layers]),
                      (f"{arch}.attention.head_count_kv", [s.n_head_kv for s in layout.layers]),
                      (f"{arch}.feed_forward_length", [s.n_ff for s in layout.layers])):
        have = meta.get(key)
        have = have if isinstance(have, list) else [have] * len(layout.layers)
        if have != vals:
            raise LorashearError(f"GGUF export: {key} reads back as {meta.get(key)!r}; nothing was written")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Every key of a GGUF file as plain Python values (strings, numbers, lists); used to check what was
    written and by tests."""
    from gguf import GGUFReader

    return {name: f.contents() for name, f in GGUFReader(path).fields.items() if not name.startswith("GGUF.")}


# --------------------------------------------------------------------------------------------- tokenizer
def find_source_gguf(source: str | Path | None, _depth: int = 0) -> Path | None:
    """The GGUF file a model came from: a ``.gguf`` path, a named model's packaged file, a GGUF cache folder
    (its marker), or a pruned folder whose ``lorashear.json`` provenance leads to one of these."""
    if source is None or _depth > 8:
        return None
    text = str(source)
    if text in NAMED and not Path(text).exists():
        try:
            return package_gguf(NAMED[text])
        except LorashearError:
            from .models import named_folder

            return find_source_gguf(named_folder(text), _depth + 1)
    path = Path(text).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        return path if path.is_file() else None
    if not path.is_dir():
        return None
    marker = path / CACHE_MARKER
    if marker.is_file():
        try:
            g = Path(json.loads(marker.read_text()).get("gguf") or "")
        except (json.JSONDecodeError, AttributeError):
            return None
        return g if g.suffix.lower() == GGUF_SUFFIX and g.is_file() else None
    side = _sidecar(path)
    if side:
        prov = side.get("provenance") or {}
        for key in ("source", "pruned_model"):
            found = find_source_gguf(prov.get(key), _depth + 1) if prov.get(key) else None
            if found:
                return found
    return None


def _tokenizer_writer(source_gguf: Path | None, tokenizer: Any, n_vocab: int):
    """A function that adds the tokenizer keys to a writer; built (and checked) before anything is written."""
    import gguf

    if source_gguf is not None:
        r = gguf.GGUFReader(source_gguf)
        fields = [f for name, f in r.fields.items() if name.startswith("tokenizer.")]
        tokens = r.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise LorashearError(f"{source_gguf}: the source GGUF carries no tokenizer to copy")
        if len(tokens.data) != n_vocab:
            raise LorashearError(f"GGUF export: the source GGUF's tokenizer has {len(tokens.data)} tokens, the model's "
                                 f"embedding {n_vocab} rows")
        items = [(f.name, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
                 for f in fields]

        def add(w) -> None:
            for name, val, vtype, sub in items:
                w.add_key_value(name, val, vtype, sub)
        return add
    return _hf_tokenizer_writer(tokenizer, n_vocab)


def _hf_tokenizer_writer(tok: Any, n_vocab: int):
    """A byte-level BPE tokenizer (GPT-2 style, what the demo model uses) as llama.cpp's ``gpt2`` tokenizer
    with the ``gpt-2`` pre-tokenizer; other tokenizers are refused — their llama.cpp pre-tokenizer cannot be
    derived without llama.cpp's own hash table."""
    import gguf

    if tok is None:
        raise LorashearError("GGUF export: no tokenizer with the model and no source GGUF to copy one from")
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise LorashearError(f"GGUF export: {type(tok).__name__} has no tokenizers backend to convert")
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True)
            or pre.get("add_prefix_space") or spec.get("normalizer")):
        raise LorashearError(f"GGUF export: the tokenizer ({model.get('type')}, pre-tokenizer {pre.get('type')}) is not "
                             "plain byte-level BPE, and the model came from no GGUF file to copy one from")
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if len(by_id) > n_vocab:
        raise LorashearError(f"GGUF export: the tokenizer has {len(by_id)} tokens, the model's embedding {n_vocab} rows")
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    added = {a["content"] for a in spec.get("added_tokens", [])}
    T = gguf.TokenType
    tokens, types = [], []
    for i in range(n_vocab):
        t = by_id.get(i)
        if t is None:  # an embedding row no token uses (padded vocabulary), as llama.cpp's converter names it
            tokens.append(f"[PAD{i}]")
            types.append(int(T.UNUSED))
        else:
            tokens.append(t)
            types.append(int(T.CONTROL if t in special else T.USER_DEFINED if t in added else T.NORMAL))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    probe = tok("a").input_ids
    add_bos = bool(tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id)
    add_eos = bool(tok.eos_token_id is not None and probe and probe[-1] == tok.eos_token_id)
    template = getattr(tok, "chat_template", None)

    def add(w) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        for setter, tid in ((w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, tok.eos_token_id),
                            (w.add_unk_token_id, tok.unk_token_id), (w.add_pad_token_id, tok.pad_token_id)):
            if tid is not None:
                setter(int(tid))
        w.add_add_bos_token(add_bos)
        w.add_add_eos_token(add_eos)
        if isinstance(template, str) and template:
            w.add_chat_template(template)
    return add


# -------------------------------------------------------------------------------------------------- hf
def _sidecar(path: Path) -> dict | None:

    return read_sidecar(path) if path.is_dir() else None


def _export_hf(model: nn.Module, tok: Any, src: Path, side: dict | None, out: Path, dtype: str) -> dict[str, Any]:
    """``save_pruned`` again (the reload verified before the folder appears), keeping the source folder's
    record of what was removed and where it came from."""

    side = side or {}
    if dtype == "f16":
        model = model.to(torch.float16)
    checks = side.get("checks") or {}
    n = sum(p.numel() for p in model.parameters())
    report = CompressReport(removed=side.get("removed") or {}, params_before=side.get("params_before") or n,
                            params_after=n, layer_sizes=side.get("layer_sizes") or {},
                            verified=bool(checks.get("compress_verified")), max_diff=checks.get("compress_max_diff"),
                            tolerance=checks.get("compress_tolerance"))
    provenance = dict(side.get("provenance") or {})
    provenance.setdefault("source", str(src))
    provenance["exported_from"] = str(src)
    written = save_pruned(model, out, report=report, tokenizer=tok, provenance=provenance)
    stock = written["case"] == "stock"
    return {
        "path": str(out), "format": "hf", "dtype": dtype, "architecture": type(model).__name__,
        "uniform": stock, "n_params": written["n_params"],
        "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "layers": _hf_layers(model), "case": written["case"], "case_reason": written["case_reason"],
        "stock_loaders": stock,
        "loads_in": "transformers (AutoModelForCausalLM.from_pretrained) and lorashear" if stock
                    else "lorashear.load_pruned only (per-layer sizes; a stock config cannot describe them)",
        "hint": (f"AutoModelForCausalLM.from_pretrained(\"{out}\")" if stock else f"lorashear.load_pruned(\"{out}\")"),
    }


def _hf_layers(model: nn.Module) -> list[dict[str, int]]:
    """Per-layer head / kv-head / MLP sizes for LLaMA-like layouts; empty for others."""
    try:
        layout = llama_layout(model)
    except (LorashearError, AttributeError):
        return []
    return [asdict(s) for s in layout.layers]
