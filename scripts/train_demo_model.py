#!/usr/bin/env python
"""Train the shipped demo model: a byte-level BPE tokenizer and a small LLaMA (GQA) on the demo corpus.

Pruning quality cannot be judged on random weights and nothing can be downloaded here, so the project
trains its own small model on CPU from the corpus that ``scripts/make_corpus.py`` extracts from CPython.

What it does (all seeded; see ``docs/demo_model.md`` for the numbers of the committed run):

1. Trains a byte-level BPE tokenizer (vocab 4096) on the train splits with ``tokenizers``; the prose
   sources are repeated (docs x4, docstrings x2) so merges are not all code.
2. Builds ``LlamaConfig(hidden 256, 6 layers, 8 query heads / 4 kv heads, head_dim 32, MLP 640,
   context 512, tied embeddings)`` — about 5.2 M parameters, fp32.
3. Packs each source into 512-token blocks (``lorashear.data.Mixture``), mixes them with weights
   proportional to sqrt(tokens) (so the small docs source is seen a few times, not drowned), and trains
   with AdamW (lr 3e-3, warm-up then cosine, wd 0.1, clip 1.0) for ``--steps`` steps of 8 blocks.
4. Saves a Hugging Face folder (``model.safetensors``, ``config.json``, tokenizer files) atomically
   (written to a temporary folder, then renamed), then measures validation perplexity per source under
   both protocols next to a unigram baseline and writes ``TRAINING.json`` beside the model.

Usage::

    python scripts/train_demo_model.py                 # full run (about 20 min on 2 CPU cores)
    python scripts/train_demo_model.py --steps 5 --out /tmp/m   # smoke test
    python scripts/train_demo_model.py --eval-only     # re-measure the committed model

Bitwise reproduction needs the same torch build and thread count (``--threads``, default 2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lorashear.data import DEMO_MODEL_DIR, DEMO_SOURCES, Mixture, demo_corpus, token_stream  # noqa: E402

SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
MODEL_CONFIG = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
    initializer_range=0.02,
)
PROSE_REPEAT = {"docs": 4, "docstrings": 2, "code": 1}


def train_tokenizer(train: dict[str, list[str]], vocab_size: int):
    """Byte-level BPE (no unknown bytes ever), wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL["unk_token"], SPECIAL["bos_token"], SPECIAL["eos_token"], SPECIAL["pad_token"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def docs():
        for source in DEMO_SOURCES:
            for _ in range(PROSE_REPEAT[source]):
                yield from train[source]

    tok.train_from_iterator(docs(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MODEL_CONFIG["max_position_embeddings"],
                                   **SPECIAL)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    corpus = demo_corpus("train")
    tokenizer = train_tokenizer(corpus, MODEL_CONFIG["vocab_size"])
    t_tok = time.time() - t0
    print(f"tokenizer trained in {t_tok:.1f}s (vocab {len(tokenizer)})", flush=True)

    mixture = Mixture(corpus, name="demo-train")
    packed = mixture.pack(tokenizer, args.seq_len)
    tokens = {s: int(b.numel()) for s, b in packed.blocks.items()}
    weights = {s: math.sqrt(n) for s, n in tokens.items()}
    total_w = sum(weights.values())
    weights = {s: w / total_w for s, w in weights.items()}
    print("train tokens per source:", tokens, "weights:", {s: round(w, 3) for s, w in weights.items()}, flush=True)
    schedule, sources = packed.sample(args.steps * args.batch_size, seed=args.seed, weights=weights)

    config = LlamaConfig(
        **MODEL_CONFIG,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    model.train()
    log = []
    t_train = time.time()
    ema = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        batch = schedule[step * args.batch_size: (step + 1) * args.batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            log.append({"step": step, "loss": round(loss.item(), 4), "elapsed_s": round(el, 1)})
            print(f"step {step:4d}/{args.steps}  loss {loss.item():.3f}  ema {ema:.3f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {el:.0f}s", flush=True)
    train_s = time.time() - t_train
    model.eval()
    return {
        "model": model,
        "tokenizer": tokenizer,
        "summary": {
            "seed": args.seed,
            "threads": args.threads,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "lr": args.lr,
            "warmup": args.warmup,
            "tokens_seen": args.steps * args.batch_size * args.seq_len,
            "train_tokens_per_source": tokens,
            "mixture_weights": weights,
            "blocks_drawn_per_source": {s: sources.count(s) for s in tokens},
            "parameters": n_params,
            "tokenizer_seconds": round(t_tok, 1),
            "train_seconds": round(train_s, 1),
            "final_train_loss_ema": round(ema, 4),
            "torch": torch.__version__,
            "log": log,
        },
    }


def save_atomic(model, tokenizer, out: Path) -> None:
    """Write to a temporary sibling folder, then swap it in, so a crash never leaves half a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the shipped folder must be readable
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def measure(model_dir: Path, threads: int) -> dict:
    """Validation perplexity per source, both protocols, next to a per-source unigram baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorashear.evaluate import evaluate_perplexity, unigram_perplexity

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    val = demo_corpus("validation")
    train_texts = demo_corpus("train")
    out = {}
    t0 = time.time()
    rows = evaluate_perplexity(model, tokenizer, val, protocols=("short", "long"))
    for r in rows:
        out.setdefault(r.source, {})[r.protocol] = {"ppl": round(r.ppl, 3), "tokens": r.n_tokens, "window": r.window}
    for s in val:
        out[s]["unigram"] = round(unigram_perplexity(train_texts[s], val[s], tokenizer), 3)
        out[s]["val_stream_tokens"] = int(token_stream(val[s], tokenizer).numel())
    print(f"evaluation took {time.time() - t0:.0f}s", flush=True)
    for s, r in out.items():
        print(f"{s:12s} short(128) {r['short']['ppl']:8.2f}  long({r['long']['window']}) {r['long']['ppl']:8.2f}"
              f"  unigram {r['unigram']:8.2f}  ratio {r['short']['ppl'] / r['unigram']:.3f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEMO_MODEL_DIR))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-only", action="store_true", help="only re-measure the model in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    report_path = out / "TRAINING.json"
    summary = {}
    if not args.eval_only:
        t0 = time.time()
        res = train(args)
        save_atomic(res["model"], res["tokenizer"], out)
        summary = res["summary"]
        summary["total_seconds"] = round(time.time() - t0, 1)
    elif report_path.exists():
        summary = json.loads(report_path.read_text())
    summary["validation"] = measure(out, args.threads)
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, report_path)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
