"""Tiny random-init configs of every architecture the group rules must get right (built in milliseconds)."""
from __future__ import annotations

import functools

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

from lorashear.loading import model_from_config

_COMMON = dict(vocab_size=64, num_hidden_layers=2, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda: LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=4, **_COMMON),
    "llama-gqa": lambda: LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8, **_COMMON),
    "llama-tied": lambda: LlamaConfig(hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      tie_word_embeddings=True, **_COMMON),
    "mistral": lambda: MistralConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8, **_COMMON),
    "qwen2": lambda: Qwen2Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, **_COMMON),
    "gpt2": lambda: GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=64, n_positions=64, bos_token_id=0, eos_token_id=0),
    "opt": lambda: OPTConfig(hidden_size=32, ffn_dim=48, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
                             max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0, pad_token_id=1),
}
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARCHS = list(CONFIGS)


def build(arch: str, lora: bool = False, seed: int = 0):
    """A random-init model; with ``lora``, PEFT LoRA on every linear projection with non-zero B."""
    model = model_from_config(CONFIGS[arch](), seed=seed)
    if lora:
        torch.manual_seed(seed + 1)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS.get(arch, DEFAULT_TARGETS), init_lora_weights=False)
        model = get_peft_model(model, cfg).eval()
    return model


@functools.lru_cache(maxsize=None)
def traced(arch: str, lora: bool = False):
    """(model, graph, groups) for one architecture, traced once per test session."""
    from lorashear import find_groups, trace

    model = build(arch, lora)
    og = trace(model)
    return model, og, find_groups(og)


def ids(seed: int = 0, batch: int = 2, seq: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (batch, seq), generator=g)


# families beyond ARCHS that break rules the ARCHS do not exercise (built the same way, on demand)
def _extra_configs():
    from transformers import (ApertusConfig, BertConfig, CodeGenConfig, GraniteConfig, MixtralConfig, Olmo2Config,
                              Olmo3Config, OlmoeConfig, Qwen2MoeConfig, Qwen3Config, XGLMConfig)

    moe = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=64, num_hidden_layers=2,
               max_position_embeddings=64)
    return {
        # heads == mp_num: the qkv split looks exactly like GPT-NeoX's in the graph; only verification tells them apart
        "codegen": lambda: CodeGenConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4,
                                         n_inner=48, bos_token_id=0, eos_token_id=0),
        # heads > mp_num: the heads axis straddles the (mp_num, -1) split, which the group rules refuse
        "codegen-8": lambda: CodeGenConfig(vocab_size=64, n_embd=64, n_layer=2, n_head=8, n_positions=64, rotary_dim=4,
                                           n_inner=48, bos_token_id=0, eos_token_id=0),
        "xglm": lambda: XGLMConfig(vocab_size=64, d_model=32, num_layers=2, attention_heads=4, ffn_dim=48,
                                   max_position_embeddings=64),
        "apertus": lambda: ApertusConfig(intermediate_size=48, **moe),  # xIELU activation (aten.min.other)
        "olmo2": lambda: Olmo2Config(intermediate_size=48, **moe),
        "granite": lambda: GraniteConfig(intermediate_size=48, **moe),
        "mixtral": lambda: MixtralConfig(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, head_dim=8, **moe),
        "qwen2-moe": lambda: Qwen2MoeConfig(intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                                            num_experts=4, num_experts_per_tok=2, **moe),
        "olmoe": lambda: OlmoeConfig(intermediate_size=48, num_experts=4, num_experts_per_tok=2, **moe),
        # q_norm over the whole q projection (heads × head_dim), before the head reshape: query heads refused
        "olmo3": lambda: Olmo3Config(intermediate_size=48, **moe),
        # q_norm per head (size head_dim), after the reshape: query heads stay prunable
        "qwen3": lambda: Qwen3Config(intermediate_size=48, head_dim=8, **moe),
        "bert": lambda: BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=64),
    }


def build_extra(name: str, seed: int = 0):
    """A random-init model of one of the extra families (a causal LM, except ``bert``: a BertModel)."""
    cfg = _extra_configs()[name]()
    if name == "bert":
        from transformers import BertModel

        torch.manual_seed(seed)
        return BertModel(cfg).eval()
    return model_from_config(cfg, seed=seed)


@functools.lru_cache(maxsize=None)
def traced_extra(name: str):
    from lorashear import find_groups, trace

    model = build_extra(name)
    og = trace(model)
    return model, og, find_groups(og)
