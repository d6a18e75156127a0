"""Save and reload pruned models: safetensors + config + tokenizer + a ``lorashear.json`` sidecar.

Two cases, and the sidecar says which one was produced:

* ``stock`` — every layer kept the same sizes and a stock config describes them (checked, not assumed: the
  config is instantiated on the meta device and every parameter shape and changed module attribute is
  compared). ``AutoModelForCausalLM.from_pretrained(dir)`` loads it.
* ``lorashear`` — per-layer sizes differ, or the architecture cannot express the new sizes in its config
  (e.g. GPT-2 derives head_dim from n_embd / n_head). ``load_pruned(dir)`` rebuilds the model from the
  config, resizes each parameter to its saved shape and restores the recorded module attributes.

Never pickles modules: weights are safetensors, everything else is JSON. The format itself — the sidecar,
the per-layer reshape, ``load_pruned`` — lives in ``pruned_format``, below both this writer and the loader;
``load_pruned`` and ``read_sidecar`` are importable from here too, as the export stage's public names.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .compress import CompressReport, verification_batch
from .errors import LorashearError
from .evaluate import forward_logits
from .jsonio import write_dir_atomic, write_json_atomic
from .pruned_format import ADAPTER, SIDECAR, SIDECAR_FORMAT, load_hint, load_pruned, model_from_config, read_sidecar, write_sidecar

__all__ = ["ADAPTER", "SIDECAR", "config_overrides", "load_hint", "load_pruned", "read_sidecar", "save_pruned"]


def _base(model: nn.Module, merge: bool = True) -> nn.Module:
    """The plain transformers model: LoRA merged (on a copy) when ``model`` is a PEFT model, or left out
    (base weights only) when not ``merge``."""
    if hasattr(model, "merge_and_unload") and not merge:
        return copy.deepcopy(model).unload()
    if hasattr(model, "merge_and_unload"):
        try:
            return copy.deepcopy(model).merge_and_unload()
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LorashearError(f"cannot merge the LoRA adapter into the base weights for saving: {msg}") from None
    return model


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _scalars(mod: nn.Module) -> dict[str, Any]:
    """The plain size/epsilon attributes a module's forward may read (ints, floats, int tuples)."""
    out = {}
    for attr, val in vars(mod).items():
        if attr.startswith("_") or isinstance(val, bool):
            continue
        if isinstance(val, (int, float)) or (isinstance(val, tuple) and all(isinstance(v, int) for v in val)):
            out[attr] = list(val) if isinstance(val, tuple) else val
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))
    return a == b


def config_overrides(model: nn.Module, config) -> tuple[dict[str, dict[str, Any]], str | None]:
    """What a model built from ``config`` gets wrong about ``model``: (attribute overrides, shape mismatch).

    Compares every parameter shape and every scalar module attribute (sizes, eps) — not only the ones
    compress changed: a config field shared by several modules (Qwen3's ``rms_norm_eps`` feeds the hidden
    norms and the per-head q/k norms) must not silently change one of them on reload.
    """
    ref = model_from_config(copy.deepcopy(config), meta=True)
    have = _shapes(ref)
    mismatch = next((f"config gives {k} shape {have.get(k)}, pruned model has {v}" for k, v in _shapes(model).items() if have.get(k) != v), None)
    if mismatch is None:  # non-persistent buffers (rotary inv_freq) are rebuilt from the config on load
        ref_buffers = {k: list(b.shape) for k, b in ref.named_buffers()}
        mismatch = next((f"config rebuilds buffer {k} with shape {ref_buffers.get(k)}, pruned model has {list(b.shape)}"
                         for k, b in model.named_buffers() if ref_buffers.get(k, list(b.shape)) != list(b.shape)), None)
    ref_mods = dict(ref.named_modules())
    overrides: dict[str, dict[str, Any]] = {}
    for path, mod in model.named_modules():
        refmod = ref_mods.get(path)
        if refmod is None:
            continue
        ref_vals = _scalars(refmod)
        for attr, val in _scalars(mod).items():
            if attr in ref_vals and not _same(ref_vals[attr], val):
                overrides.setdefault(path, {})[attr] = val
    return overrides, mismatch


def save_pruned(model: nn.Module, out_dir: str | Path, *, report: CompressReport | None = None,
                tokenizer: Any = None, provenance: dict | None = None, verify: bool = True,
                merge_lora: bool = True) -> dict:
    """Write the (LoRA-merged) model to ``out_dir`` atomically; returns the sidecar dict.

    With ``merge_lora=False`` a PEFT model keeps its adapter: the folder holds the pruned base weights and
    ``adapter/`` the pruned LoRA adapter (``base_model_name_or_path`` = ``..``), which ``lorashear`` commands
    open as ``OUT/adapter`` and PEFT as ``PeftModel.from_pretrained(load_pruned(OUT), OUT/"adapter")``.

    ``verify`` (default) proves the round trip before the folder appears: the temporary folder is reloaded
    the way a user will (stock ``from_pretrained`` for the stock case, ``load_pruned`` otherwise), its
    non-persistent buffers and its logits on a small seeded batch are compared with ``model``'s, and a
    mismatch is an error that leaves no folder behind.
    """
    out_dir = Path(out_dir)
    keep_adapter = not merge_lora and hasattr(model, "peft_config")
    base = _base(model, merge=not keep_adapter)
    config = base.config
    invalid = _config_problem(config)
    if invalid:
        # e.g. transformers refuses hidden_size % num_attention_heads != 0 even with an explicit head_dim:
        # keep the pre-pruning config; the sidecar's shapes and attributes describe the real model
        if not report or not report.config_before:
            raise LorashearError(f"the pruned config is invalid ({invalid}) and no original config is known")
        config = type(base.config).from_dict(report.config_before)
    module_attrs, mismatch = config_overrides(base, config)
    stock = not invalid and mismatch is None and not module_attrs
    if invalid:
        why = f"transformers rejects the pruned config: {invalid}"
    elif mismatch:
        why = mismatch
    elif module_attrs:
        path, attrs = next(iter(module_attrs.items()))
        attr, val = next(iter(attrs.items()))
        why = f"the config cannot give {path}.{attr} = {val}"
    else:
        why = "a stock config describes every layer"
    sidecar = {
        "format": SIDECAR_FORMAT,
        "case": "stock" if stock else "lorashear",
        "case_reason": why,
        "model_class": type(base).__name__,
        "n_params": sum(p.numel() for p in base.parameters()),
        "param_shapes": _shapes(base),
        "module_attrs": module_attrs,
        "removed": report.removed if report else {},
        "layer_sizes": report.layer_sizes if report else {},
        "params_before": report.params_before if report else None,
        "provenance": provenance or {},
        "adapter": ADAPTER if keep_adapter else None,
        # what was proven: compress's masked-vs-compressed check, and this folder's reload (it only exists if it passed)
        "checks": {"compress_verified": bool(report and report.verified),
                   "compress_max_diff": report.max_diff if report else None,
                   "compress_tolerance": report.tolerance if report else None,
                   "round_trip_verified": bool(verify)},
    }
    def write(tmp: Path) -> None:
        base.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_sidecar(tmp, sidecar)
        if keep_adapter:
            model.save_pretrained(tmp / ADAPTER)
            acfg_path = tmp / ADAPTER / "adapter_config.json"
            acfg = json.loads(acfg_path.read_text())
            acfg["base_model_name_or_path"] = ".."
            write_json_atomic(acfg_path, acfg)
        if verify:
            base.config = saved_config
            _check_round_trip(model, tmp, stock, tmp / ADAPTER if keep_adapter else None)

    saved_config, base.config = base.config, config
    try:
        write_dir_atomic(out_dir, write)  # the folder appears only once written and its reload proven
    finally:
        base.config = saved_config
    return sidecar


def _check_round_trip(model: nn.Module, folder: Path, stock: bool, adapter: Path | None = None) -> None:
    """Reload ``folder`` as a user would and compare it with the in-memory ``model``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    param = next(model.parameters())
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        back = (AutoModelForCausalLM.from_pretrained(folder, dtype=param.dtype) if stock
                else load_pruned(folder, dtype=param.dtype)).to(param.device).eval()
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise LorashearError(f"the saved folder does not reload ({'stock from_pretrained' if stock else 'load_pruned'}): {msg}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if adapter is not None:
        from peft import PeftModel

        back = PeftModel.from_pretrained(back, adapter).eval()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    have = dict(base.named_buffers())
    back_base = back.get_base_model() if hasattr(back, "get_base_model") else back
    for name, buf in back_base.named_buffers():
        mine = have.get(name)
        if mine is not None and not _same_buffer(mine, buf):
            raise LorashearError(f"the saved folder rebuilds buffer {name} differently from the pruned model "
                                 f"(shape {list(buf.shape)} vs {list(mine.shape)}, {_dtype(buf)} vs {_dtype(mine)}): "
                                 "the config does not describe it")
    ids = verification_batch(model)
    want, got = forward_logits(model, ids).float(), forward_logits(back, ids).float()
    scale = max(1.0, float(want.abs().max()))
    tol = (1e-5 if param.dtype in (torch.float32, torch.float64) else 2e-2) * scale
    diff = float((want - got).abs().max()) if want.shape == got.shape else float("inf")
    if not diff <= tol:
        raise LorashearError(f"the saved folder does not reproduce the model: reloaded logits differ by {diff:.3g} "
                             f"(tolerance {tol:.1g}); nothing was written")


def _same_buffer(mine: torch.Tensor, rebuilt: torch.Tensor) -> bool:
    """Whether a buffer the reload rebuilds from the config (rotary ``inv_freq``) holds what the in-memory model's
    does. Compared in the coarser of the two dtypes: a model cast to bf16 holds a bf16-rounded ``inv_freq`` that
    transformers rebuilds in fp32 on reload — the same numbers, not a different buffer."""
    if mine.shape != rebuilt.shape:
        return False
    if mine.is_floating_point() and rebuilt.is_floating_point():
        coarse = max((mine.dtype, rebuilt.dtype), key=lambda d: torch.finfo(d).eps)
        a, b = mine.to(coarse).float(), rebuilt.to(device=mine.device, dtype=coarse).float()
        return bool(torch.allclose(a, b, rtol=1e-6, atol=1e-7))
    return bool(torch.equal(mine, rebuilt.to(mine.device)))


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _config_problem(config) -> str | None:
    """Why transformers would refuse to save/load this config, or None."""
    try:
        if hasattr(config, "validate"):
            config.validate()
        model_from_config(copy.deepcopy(config), meta=True)  # some checks live in module constructors
    except Exception as exc:
        cause = exc.__cause__ or exc
        return str(cause).strip().splitlines()[0]
    return None
