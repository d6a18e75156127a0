"""Sweep tiny random-init configs of many HF causal-LM architectures: every group that find_groups marks
prunable must compress exactly (masked vs smaller model, fp32 max abs diff ≤ 1e-4) or be refused by
compress's self-verification (CompressionNotExact, listed as "refused at compress"); everything else must
carry a reason. The removal of the first prunable group alone (non-uniform) and the mixed removal are also
saved with save_pruned, which reloads the folder and compares logits itself. A wrong result or any other
exception is BAD. Prints one row per architecture. Run by hand:

    python bench/arch_sweep.py [model_type ...]
"""
from __future__ import annotations

import copy
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

TINY = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, num_hidden_layers=2,
            vocab_size=64, max_position_embeddings=64, head_dim=8, num_experts=4, num_local_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=16, shared_expert_intermediate_size=16, ffn_dim=48, n_inner=48, word_embed_proj_dim=32,
            bos_token_id=0, eos_token_id=0, pad_token_id=1, rotary_dim=4, partial_rotary_factor=0.5,
            d_model=32, n_positions=64)
TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt2", "opt", "gpt_neox", "gptj",
         "stablelm", "falcon", "bloom", "olmo", "olmo2", "cohere", "starcoder2", "gpt_bigcode", "mixtral", "qwen2_moe", "granite", "codegen", "xglm", "apertus", "olmoe", "olmo3"]


def build(model_type: str):
    from transformers import AutoConfig

    from lorashear.loading import model_from_config

    cfg = AutoConfig.for_model(model_type)
    for k, v in TINY.items():
        if hasattr(cfg, k) or k in getattr(cfg, "attribute_map", {}):
            try:
                setattr(cfg, k, v)
            except Exception:
                pass
    if isinstance(getattr(cfg, "layer_types", None), list):  # per-layer list sized for the default depth
        cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    return model_from_config(cfg, seed=0)


def check(model_type: str) -> str:
    from lorashear import CompressionNotExact, compress, find_groups, mask_units, save_pruned, trace

    model = build(model_type)
    t = time.time()
    groups = find_groups(trace(model))
    dt = time.time() - t
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    rng = random.Random(0)
    bad, ok, refused_at_compress, saved = [], [], [], []
    prunable = [g for g in groups if g.prunable]
    for g in prunable + (["mixed"] if prunable else []):
        removal = ({h.id: sorted(rng.sample(range(h.n_units), max(1, h.n_units // 3))) for h in prunable} if g == "mixed"
                   else {g.id: sorted(rng.sample(range(g.n_units), max(1, g.n_units // 3)))})
        name = g if g == "mixed" else g.id
        try:
            masked = copy.deepcopy(model)
            mask_units(masked, groups, removal)
            small, _ = compress(model, groups, removal)
            with torch.no_grad():
                d = (masked(input_ids=ids).logits - small(input_ids=ids).logits).abs().max().item()
            (ok if d <= 1e-4 else bad).append(f"{name} ({d:.1e})")
            if g == "mixed" or g is prunable[0]:  # uniform-ish and one-group (non-uniform) removals must save and reload
                with tempfile.TemporaryDirectory() as tmp:
                    small, report = compress(model, groups, removal)
                    side = save_pruned(small, Path(tmp) / "m", report=report)  # proves the reload itself
                    saved.append(f"{name}: {side['case']}")
        except CompressionNotExact:
            refused_at_compress.append(name)
        except Exception as exc:
            bad.append(f"{name} raised {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
    kinds = sorted({g.kind for g in prunable})
    refused = sorted({g.kind for g in groups if not g.prunable and g.kind in ("attention", "mlp", "hidden")})
    return (f"{'BAD ' if bad else 'ok  '}{model_type:<12} {dt:5.1f}s groups={len(groups):3d} prunable={len(prunable):2d} "
            f"kinds={','.join(kinds) or '-'} refused-kinds={','.join(refused) or '-'}"
            + (f"\n      saved and reloaded: {'; '.join(saved)}" if saved else "")
            + (f"\n      refused at compress: {', '.join(refused_at_compress)}" if refused_at_compress else "")
            + ("\n      " + "\n      ".join(bad) if bad else ""))


def main() -> None:
    for t in sys.argv[1:] or TYPES:
        try:
            print(check(t), flush=True)
        except Exception as exc:
            print(f"skip {t:<12} {type(exc).__name__}: {str(exc).strip().splitlines()[0][:150] if str(exc).strip() else ''}", flush=True)
            if "-v" in sys.argv:
                traceback.print_exc()


if __name__ == "__main__":
    main()
