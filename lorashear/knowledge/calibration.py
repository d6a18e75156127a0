"""Calibration tokens and the loss every estimator measures or differentiates.

All estimators score the same quantity — mean next-token cross-entropy over the calibration tokens — so
that their numbers are comparable and ablation (the measured loss increase) is the ground truth for the
others. Samples are equal-length windows (``data.calibration_samples``), so no padding or attention mask
is needed.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import SELF_DATA, calibration_samples, load_sources
from ..errors import LorashearError

MIN_TOKENS = 2


def calibration_data(
    tokenizer: Any,
    specs: Sequence[str] = ("demo",),
    *,
    n_samples: int = 16,
    seq_len: int = 128,
    seed: int = 0,
    model: Any | None = None,
    split: str | None = None,
    field: str = "text",
) -> tuple[torch.Tensor, dict]:
    """``[n_samples, seq_len]`` token windows drawn evenly from the given sources, plus a description for
    the report. Sources are command-line data specs (``demo``, ``demo:test``, ``[NAME=]PATH``); the
    samples are split over them as evenly as possible, each source sampled with its own seeded offsets."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise LorashearError(f"number of calibration samples must be >= 1, got {n_samples!r}")
    sources = load_sources(list(specs), field=field, split=split)
    names = list(sources)
    per = [n_samples // len(names) + (1 if i < n_samples % len(names) else 0) for i in range(len(names))]
    parts, counts = [], {}
    for i, (name, k) in enumerate(zip(names, per)):
        if k == 0:
            continue
        try:
            parts.append(calibration_samples(sources[name], tokenizer, k, seq_len, seed=seed + i, model=model))
        except LorashearError as exc:
            raise LorashearError(f"calibration source {name!r}: {exc}") from None
        counts[name] = k
    samples = torch.cat(parts)
    info = {"specs": list(specs), "samples_per_source": counts, "n_samples": int(samples.shape[0]),
            "seq_len": int(seq_len), "seed": int(seed), "tokens": int(samples.numel())}
    return samples, info


@torch.no_grad()
def self_generated(model: Any, tokenizer: Any, *, n_samples: int = 16, seq_len: int = 128, seed: int = 0,
                   batch_size: int | None = None) -> tuple[torch.Tensor, dict]:
    """``[n_samples, seq_len]`` windows sampled from ``model`` itself ("self-calibration", Williams et al., NAACL 2025,
    arXiv 2410.17170): each window starts at the tokenizer's BOS (EOS when it has none) and continues by ancestral
    sampling at temperature 1 (no top-k/top-p), EOS suppressed until the window is full.

    Why: windows cut from the training sources rank units by what matters *on those sources*, so a unit that only
    serves another domain (code, for a model calibrated on prose) looks free. The model's own samples follow its
    pre-training distribution, domains it was never given here included. Measured on SmolLM2-135M they rank its MLP
    channels worse than real text, the held-out source included (docs/lhspg.md). Seeded by ``seed`` without touching
    the global RNG; generated in chunks of ``batch_size`` rows."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise LorashearError(f"number of calibration samples must be >= 1, got {n_samples!r}")
    if seq_len < MIN_TOKENS:
        raise LorashearError(f"calibration windows need at least {MIN_TOKENS} tokens, got {seq_len}")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise LorashearError("self-generated calibration needs a BOS or EOS token to start from; the tokenizer has neither")
    from transformers import GenerationConfig

    new = seq_len - 1
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                           pad_token_id=start, eos_token_id=tokenizer.eos_token_id, use_cache=True)
    dev = _device(model)
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            for b in batches(torch.full((n_samples, 1), start, dtype=torch.long), batch_size):
                out = model.generate(input_ids=b.to(dev), attention_mask=torch.ones_like(b, device=dev),
                                     generation_config=cfg)
                parts.append(out[:, :seq_len].cpu())
    finally:
        model.train(was_training)
    samples = torch.cat(parts)
    if samples.shape[1] != seq_len:  # generation stopped early: the windows would not be the length asked for
        raise LorashearError(f"the model generated {samples.shape[1]} of {seq_len} tokens per calibration window")
    info = {"specs": [SELF_DATA], "generated": {"start_token": int(start), "temperature": 1.0, "sampling": "ancestral"},
            "n_samples": int(samples.shape[0]), "seq_len": int(seq_len), "seed": int(seed), "tokens": int(samples.numel())}
    return samples, info


def check_samples(samples: torch.Tensor) -> None:
    """Calibration input must be a non-empty ``[n, seq_len]`` LongTensor with ``seq_len >= 2``."""
    if not isinstance(samples, torch.Tensor) or samples.dim() != 2 or samples.dtype not in (torch.long, torch.int32, torch.int64):
        raise LorashearError("calibration samples must be a [n_samples, seq_len] tensor of token ids")
    if samples.shape[0] < 1 or samples.shape[1] < MIN_TOKENS:
        raise LorashearError(f"calibration data too short: got {tuple(samples.shape)} token ids; need at least 1 sample of >= {MIN_TOKENS} tokens")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def token_nll_sum(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of a batch (fp32), differentiable."""
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")


def batches(samples: torch.Tensor, batch_size: int | None) -> list[torch.Tensor]:
    bs = samples.shape[0] if not batch_size else max(1, int(batch_size))
    return [samples[i:i + bs] for i in range(0, samples.shape[0], bs)]


@torch.no_grad()
def mean_loss(model: nn.Module, samples: torch.Tensor, batch_size: int | None = None) -> float:
    """Mean next-token cross-entropy over all calibration tokens."""
    dev = _device(model)
    total = sum(float(token_nll_sum(model, b.to(dev))) for b in batches(samples, batch_size))
    return total / (samples.shape[0] * (samples.shape[1] - 1))


def backward_mean_loss(model: nn.Module, samples: torch.Tensor, batch_size: int | None = None,
                       after_batch: Callable[[], None] | None = None) -> float:
    """Accumulate into ``.grad`` the gradient of the mean loss over all samples (in chunks); return the loss."""
    dev = _device(model)
    n_tok = samples.shape[0] * (samples.shape[1] - 1)
    total = 0.0
    for b in batches(samples, batch_size):
        loss = token_nll_sum(model, b.to(dev)) / n_tok
        loss.backward()
        total += float(loss.detach())
        if after_batch is not None:
            after_batch()
    return total
